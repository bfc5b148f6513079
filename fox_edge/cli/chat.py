"""`fox-edge chat`: a conversation in the terminal, streamed, the KV cache kept across turns."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from fox_edge.cli.common import ChatTemplate, CtxSize, Device, Terminated, Threads, errors, open_for_text, sampling_options, say
from fox_edge.errors import FoxEdgeError


@sampling_options
def chat(
    model: Annotated[Path, typer.Argument(help="GGUF file, ONNX model folder or fox-edge bundle")],
    system: Annotated[str | None, typer.Option("--system", "-s", help="system prompt")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", min=1, help="longest reply (default 512)")] = None,
    chat_template: ChatTemplate = None,
    ctx_size: CtxSize = None,
    threads: Threads = None,
    device: Device = "auto",
    *,
    sampling: dict,
):
    """Chat in the terminal. /reset starts over, /exit quits; end a line with \\ to continue it, or wrap a block in \"\"\"."""
    with errors():
        from fox_edge.chat import ChatSession

        runner, params = open_for_text(
            model, ctx_size=ctx_size, threads=threads, chat_template=chat_template, device=device, sampling=sampling,
            max_tokens=max_tokens, default_max=512,
        )  # fmt: skip
        session = ChatSession(runner, params, system, on_message=say)
        say(
            f"{runner.metadata.get('general.name', model.name)} on {runner.backend}, {runner.n_ctx}-token context. "
            "/reset starts over, /exit quits, Ctrl-C stops a reply."
        )
        if hasattr(sys.stdin, "reconfigure"):  # bad bytes reach read_message as surrogates instead of a crash
            sys.stdin.reconfigure(errors="surrogateescape")
        while True:
            text = read_message()
            if text is None or text.strip() == "/exit":
                return
            if text.strip() == "/reset":
                session.reset()
                say("[conversation reset]")
                continue
            if not text.strip():
                continue
            if any("\udc80" <= c <= "\udcff" for c in text):
                say("error: that message is not UTF-8 text; type it again")
                continue
            cancel = threading.Event()
            try:
                for piece in session.send(text, cancel):
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            except Terminated:
                raise
            except KeyboardInterrupt:
                cancel.set()
                say("\n[reply stopped]")
            except FoxEdgeError as exc:
                say(f"error: {exc}")
                continue
            stats = session.last_stats
            sys.stdout.write("\n")
            say(
                f"[{stats.generated_tokens} tokens, {stats.tokens_per_second:.1f} tok/s; prompt {stats.prompt_evaluated} new of "
                f"{stats.prompt_tokens} tokens at {stats.prompt_tokens_per_second:.0f} tok/s]"
            )


def read_message() -> str | None:
    """One user message: a line, lines joined by a trailing backslash, or a block between \"\"\" lines. None at end of input."""
    lines: list[str] = []
    block = False
    prompt = "> "
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return "\n".join(lines) if lines else None
        if line.strip() == '"""':
            if block:
                return "\n".join(lines)
            block, prompt = True, ". "
            continue
        if block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
            prompt = ". "
        else:
            lines.append(line)
            return "\n".join(lines)
