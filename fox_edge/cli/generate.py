"""`fox-edge generate`: text from a prompt, only the generated text on stdout (for scripts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fox_edge.cli.common import ChatTemplate, CtxSize, Device, Threads, errors, open_for_text, sampling_options
from fox_edge.errors import FoxEdgeError


def read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FoxEdgeError(f"the prompt on stdin is not UTF-8 text (byte {exc.start}); convert it to UTF-8 first") from None


@sampling_options
def generate(
    model: Annotated[Path, typer.Argument(help="GGUF file, ONNX model folder or fox-edge bundle")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="prompt text ('-' reads stdin)")],
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", min=1, help="most tokens to generate (default 256)")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="wrap the prompt in the model's chat template")] = False,
    chat_template: ChatTemplate = None,
    ctx_size: CtxSize = None,
    threads: Threads = None,
    device: Device = "auto",
    *,
    sampling: dict,
):
    """Generate from a prompt: only the generated text goes to stdout (for scripts)."""
    with errors():
        from fox_edge.runner import chat_prompt, generate_tokens, stream_text, text_prompt

        text = read_stdin() if prompt == "-" else prompt
        runner, params = open_for_text(
            model, ctx_size=ctx_size, threads=threads, chat_template=chat_template, device=device, sampling=sampling,
            max_tokens=max_tokens, default_max=256,
        )  # fmt: skip
        tokens = chat_prompt(runner, [{"role": "user", "content": text}]) if chat else text_prompt(runner, text)
        for piece in stream_text(runner, generate_tokens(runner, tokens, params)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
