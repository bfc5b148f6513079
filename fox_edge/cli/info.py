"""`fox-edge info`: what a model file, an ONNX folder or a checkpoint holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fox_edge.cli.common import errors


def info(
    target: Annotated[str, typer.Argument(help="GGUF file, ONNX model folder, fox-edge bundle, checkpoint folder or hub id")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """Architecture, parameters, tensor types and sizes, tokenizer, special ids, context, chat template."""
    with errors():
        from fox_edge.info import describe

        rows = describe(target)
        if as_json:
            typer.echo(json.dumps(dict(rows), indent=2))
            return
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            typer.echo(f"{label:<{width}}  {value}")
