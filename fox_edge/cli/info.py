"""`fox-edge info`: what a model file, an ONNX folder or a checkpoint holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fox_edge.cli.common import errors


def info(
    target: Annotated[str, typer.Argument(help="GGUF file, ONNX model folder, fox-edge bundle, checkpoint folder or hub id")],
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output: snake_case keys, numbers as numbers")] = False,
):
    """Architecture, parameters, tensor types and sizes, tokenizer, special ids, context, chat template."""
    with errors():
        from fox_edge.info import as_json, describe

        facts = describe(target)
        if json_output:
            typer.echo(json.dumps(as_json(facts), indent=2, ensure_ascii=False))
            return
        width = max(len(f.label) for f in facts)
        for f in facts:
            typer.echo(f"{f.label:<{width}}  {f.text}")
