"""`fox-edge chat`: a conversation in the terminal, streamed, the KV cache kept across turns.

In a terminal, lines are read with prompt_toolkit (editing, history kept across sessions, as a shell's);
from a pipe, with input(). Commands start with a slash; a message that itself starts with one is typed
with two (`//usr/bin is ...`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fox_edge.cli.common import ChatTemplate, CtxSize, Device, Terminated, Threads, errors, message, open_for_text, sampling_options, say
from fox_edge.errors import FoxEdgeError

QUIT = ("/bye", "/quit", "/exit")
COMMANDS = {
    "/help": "these commands",
    "/reset": "start the conversation over",
    "/system": "/system TEXT sets a new system prompt and starts over; /system alone shows it",
    "/bye": "quit (or /quit, /exit, Ctrl-D)",
}
HELP = "\n".join(f"  {name:<8} {text}" for name, text in COMMANDS.items()) + (
    '\n  Ctrl-C stops a reply or clears the line; end a line with \\ to continue it, or wrap a block in """; '
    "// sends a message that starts with /"
)


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
    """Chat in the terminal: /help lists the commands, Ctrl-D or /bye quits."""
    with errors():
        from fox_edge.chat import ChatSession

        runner, params = open_for_text(
            model, ctx_size=ctx_size, threads=threads, chat_template=chat_template, device=device, sampling=sampling,
            max_tokens=max_tokens, default_max=512,
        )  # fmt: skip
        session = ChatSession(runner, params, system, on_message=say)
        say(f"{runner.name or model.name} on {runner.backend}, {runner.n_ctx}-token context. /help for commands, Ctrl-D or /bye to quit.")
        read_line = terminal_reader() if sys.stdin.isatty() and sys.stdout.isatty() else pipe_reader()
        cleared = False  # the last input was a Ctrl-C at the prompt: a second one quits
        while True:
            try:
                text = read_message(read_line)
            except KeyboardInterrupt as exc:
                if isinstance(exc, Terminated) or cleared:
                    raise typer.Exit(0) from None
                cleared = True
                say("(Ctrl-C again or Ctrl-D to quit)")
                continue
            cleared = False
            if text is None:  # Ctrl-D: leave the shell's prompt on a line of its own
                sys.stdout.write("\n")
                return
            if text.startswith("/") and not text.startswith("//"):
                if not run_command(text, session):
                    return
                continue
            text = text[1:] if text.startswith("//") else text
            if not text.strip():
                continue
            if any("\udc80" <= c <= "\udcff" for c in text):
                say("error: that message is not UTF-8 text; type it again")
                continue
            reply(session, text)


def run_command(text: str, session) -> bool:
    """A slash command; False when it quits."""
    name, _, argument = text.strip().partition(" ")
    if name in QUIT:
        return False
    if name == "/help":
        say(HELP)
    elif name == "/reset":
        session.reset()
        say("[conversation reset]")
    elif name == "/system" and argument.strip():
        session.system = argument.strip()
        session.reset()
        say("[new system prompt; conversation reset]")
    elif name == "/system":
        say(f"[system prompt: {session.system!r}]" if session.system else "[no system prompt]")
    else:
        say(f"unknown command {name}; the commands are {', '.join([*COMMANDS, *QUIT[1:]])} (// sends a message starting with /)")
    return True


def reply(session, text: str) -> None:
    """Stream one reply to stdout; Ctrl-C stops it, and what is typed meanwhile is neither echoed nor kept."""
    cancel = threading.Event()
    try:
        with quiet_input():
            for piece in session.send(text, cancel):
                sys.stdout.write(piece)
                sys.stdout.flush()
    except Terminated:
        raise
    except KeyboardInterrupt:
        cancel.set()
        say("\n[reply stopped]")
        return
    except FoxEdgeError as exc:
        say(f"error: {message(exc)}")
        return
    stats = session.last_stats
    sys.stdout.write("\n")
    if stats.stop_reason == "length":
        say(f"[reply cut at the {session.params.max_tokens}-token limit: --max-tokens raises it]")
    elif stats.stop_reason == "context":
        say("[reply cut: the context is full; /reset starts over, --ctx-size makes it larger]")
    say(
        f"[{stats.generated_tokens} tokens, {stats.tokens_per_second:.1f} tok/s; prompt {stats.prompt_evaluated} new of "
        f"{stats.prompt_tokens} tokens at {stats.prompt_tokens_per_second:.0f} tok/s]"
    )


@contextmanager
def quiet_input() -> Iterator[None]:
    """While a reply streams: keys typed are not echoed into it, and are dropped afterwards (Ctrl-C still works)."""
    try:
        import termios
    except ImportError:  # Windows
        yield
        return
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~(termios.ECHO | termios.ICANON)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcflush(fd, termios.TCIFLUSH)
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def terminal_reader() -> Callable[[str], str]:
    """Lines with editing and a history file (Up recalls earlier messages, across sessions, as a shell does)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "fox-edge"
    try:
        state.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(state / "chat_history"))
    except OSError:  # a read-only home: history for this session only
        history = InMemoryHistory()
    return PromptSession(history=history).prompt


def pipe_reader() -> Callable[[str], str]:
    if hasattr(sys.stdin, "reconfigure"):  # bad bytes reach read_message as surrogates instead of a crash
        sys.stdin.reconfigure(errors="surrogateescape")
    return input


def read_message(read_line: Callable[[str], str]) -> str | None:
    """One user message: a line, lines joined by a trailing backslash, or a block between \"\"\" lines. None at end of input."""
    lines: list[str] = []
    block = False
    prompt = "> "
    while True:
        try:
            line = read_line(prompt)
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
