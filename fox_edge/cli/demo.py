"""`fox-edge demo`: a real model through convert -> GGUF -> a chat answer, step by step."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fox_edge.cli.common import errors, progress_bar


def demo(
    model: Annotated[
        str | None, typer.Option("--model", help="hub id or checkpoint folder (default: the offline SmolLM2 stand-in)")
    ] = None,
):
    """A real model through convert -> GGUF -> chat answer, step by step."""
    with errors():
        from fox_edge.demo import run_demo

        def write(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        with progress_bar("    converting") as progress:
            run_demo(model, typer.echo, write, progress)
