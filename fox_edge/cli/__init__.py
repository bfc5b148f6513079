"""The `fox-edge` command line: a thin typer layer over functions you can import, one module per verb.

Each verb parses its flags, calls the library (fox_edge.pipeline, quantize, check, runner, chat, bench,
info, demo) and renders what it returns; options more than one verb takes are defined in common.py.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from fox_edge.cli import bench, bundle, chat, check, convert, demo, generate, info, quantize


class OneLineErrors(TyperGroup):
    """Usage errors (a flag out of range, an unknown option) in one line, as every other error: `error: ...`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's exceptions, as typer vendors them
            if type(exc).__name__ == "NoArgsIsHelpError":  # `fox-edge` alone: the help, as usual
                exc.show()
            else:
                context = getattr(exc, "ctx", None)
                command = f"fox-edge {context.info_name}" if context is not None and context.parent is not None else "fox-edge"
                typer.echo(f"error: {exc.format_message().rstrip('.')}; see `{command} --help`", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# Shown under each verb's --help: what people type first.
EXAMPLES = {
    "convert": [
        "fox-edge convert tensoropera/Fox-1-1.6B-Instruct-v0.1 -o fox1.f16.gguf",
        "fox-edge convert ./Fox-1-1.6B --quant Q4_K_M -o fox1.Q4_K_M.gguf",
        "fox-edge convert ./Fox-1-1.6B --to onnx --precision int4 -o fox1-int4",
    ],
    "info": ["fox-edge info fox1.Q4_K_M.gguf", "fox-edge info fox1-int4 --json"],
    "quantize": [
        "fox-edge quantize fox1.f16.gguf --type Q4_K_M -o fox1.Q4_K_M.gguf",
        "fox-edge quantize fox1.f16.gguf --type Q4_K_M --calibration builtin -o fox1.Q4_K_M.gguf",
        "fox-edge quantize fox1.f16.gguf --max-kld 0.05 -o fox1.small.gguf",
    ],
    "check": ["fox-edge check fox1.Q4_K_M.gguf fox1.f16.gguf", "fox-edge check fox1-int4 ./Fox-1-1.6B --max-kld 0.05 --json"],
    "generate": ['fox-edge generate fox1.Q4_K_M.gguf -p "The fox" -n 64', 'echo "Hi" | fox-edge generate fox1-android --chat -p -'],
    "chat": ["fox-edge chat fox1.Q4_K_M.gguf", 'fox-edge chat fox1-android --system "Answer briefly." --temperature 0'],
    "bench": ["fox-edge bench fox1.Q4_K_M.gguf fox1-int4", "fox-edge bench fox1.Q4_K_M.gguf --no-repack --roofline --json"],
    "demo": ["fox-edge demo"],
}


def _epilog(verb: str) -> str:
    # \b keeps click from re-wrapping the lines below it.
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in EXAMPLES[verb])


def _version(shown: bool) -> None:
    if shown:
        from fox_edge import __version__

        typer.echo(f"fox-edge {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: flags shown as flags (typer's rich help labels every option with its type)
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Fox-1 to GGUF and ONNX, quantized, checked and run on your own devices.",
)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="show fox-edge's version and exit")
    ] = False,
) -> None:
    """Fox-1 to GGUF and ONNX, quantized, checked and run on your own devices."""


for verb in (convert.convert, info.info, quantize.quantize, check.check, generate.generate, chat.chat, bench.bench, demo.demo):
    app.command(name=verb.__name__, epilog=_epilog(verb.__name__))(verb)
app.add_typer(bundle.app, name="bundle")


def main() -> None:
    app()
