"""`fox-edge bundle`: a model an app can embed (`bundle SOURCE --target ... -o DIR`), and `bundle verify DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from fox_edge.cli.common import ChatTemplate, CtxSize, Threads, errors, phase_bar, read_chat_template, say


class CreateByDefault(TyperGroup):
    """`fox-edge bundle SOURCE ...` means `fox-edge bundle create SOURCE ...`; `verify` is the other verb."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=CreateByDefault, no_args_is_help=True, help="App-ready bundles: `bundle SOURCE --target android -o DIR`, `bundle verify DIR`."
)


@app.command()
def create(
    source: Annotated[str, typer.Argument(help="checkpoint folder or hub id (converted, quantized, checked), GGUF file or ONNX folder")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the bundle folder to create")],
    target: Annotated[str, typer.Option("--target", help="android, ios or desktop: picks the defaults and the memory budget")] = "android",
    backend: Annotated[str, typer.Option("--backend", help="llama.cpp (GGUF) or onnx, for a checkpoint")] = "llama.cpp",
    quant: Annotated[str | None, typer.Option("--quant", "-q", help="GGUF type for a checkpoint (default: the target's, Q4_K_M)")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="ONNX precision for a checkpoint (default int4)")] = None,
    ctx_size: CtxSize = None,
    chat_template: ChatTemplate = None,
    allow_failed_check: Annotated[
        bool, typer.Option("--allow-failed-check", help="bundle a model that failed its accuracy check (the manifest says so)")
    ] = False,
    threads: Threads = None,
):
    """Bundle a model for an app: the model files, manifest.json (sizes, sha256, ids, template, defaults, memory, accuracy) and a README."""
    with errors():
        from fox_edge.bundle import make_bundle

        result = make_bundle(
            source, output, target=target, backend=backend, quant=quant, precision=precision, context=ctx_size,
            chat_template=read_chat_template(chat_template), allow_failed_check=allow_failed_check, threads=threads,
            progress=phase_bar, on_message=say,
        )  # fmt: skip
        manifest = result.manifest
        accuracy = manifest["accuracy"]
        verdict = (
            "not checked"
            if not accuracy["checked"]
            else ("PASS" if accuracy["passed"] else "FAIL") + f", mean KLD {accuracy['kld_mean']:.4f}"
        )
        say(
            f"wrote bundle {result.folder}: {len(manifest['files'])} files, {sum(f['size'] for f in manifest['files']) / 1e6:.1f} MB; "
            f"about {manifest['memory']['total_bytes'] / 1e9:.2f} GB at {manifest['context']['default']} tokens; accuracy {verdict}"
        )


@app.command()
def verify(folder: Annotated[Path, typer.Argument(help="the bundle folder")]):
    """Check a bundle: the manifest against its schema, every file's size and sha256, unlisted files, the template, and that the model loads."""
    with errors():
        from fox_edge.bundle import verify_bundle

        problems = verify_bundle(folder)
        for problem in problems:
            say(f"{problem.level}: {problem.message}")
        if any(p.level == "error" for p in problems):
            raise typer.Exit(1)
        typer.echo(f"bundle {folder} is intact: every file's size and sha256 match its manifest, and the model loads")
