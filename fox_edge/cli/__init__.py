"""The `fox-edge` command line: a thin typer layer over functions you can import, one module per verb.

Each verb parses its flags, calls the library (fox_edge.pipeline, quantize, check, runner, chat, bench,
info, demo) and renders what it returns; options more than one verb takes are defined in common.py.
"""

from __future__ import annotations

import sys

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


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fox-1 to GGUF and ONNX, quantized, checked and run on your own devices.",
)
for verb in (convert.convert, info.info, quantize.quantize, check.check, generate.generate, chat.chat, bench.bench, demo.demo):
    app.command(name=verb.__name__)(verb)
app.add_typer(bundle.app, name="bundle")


def main() -> None:
    app()
