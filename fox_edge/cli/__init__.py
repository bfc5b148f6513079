"""The `fox-edge` command line: a thin typer layer over functions you can import, one module per verb.

Each verb parses its flags, calls the library (fox_edge.pipeline, quantize, check, runner, chat, bench,
info, demo) and renders what it returns; options more than one verb takes are defined in common.py.
"""

from __future__ import annotations

import typer

from fox_edge.cli import bench, chat, check, convert, demo, generate, info, quantize

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fox-1 to GGUF and ONNX, quantized, checked and run on your own devices."
)
for verb in (convert.convert, info.info, quantize.quantize, check.check, generate.generate, chat.chat, bench.bench, demo.demo):
    app.command(name=verb.__name__)(verb)


def main() -> None:
    app()
