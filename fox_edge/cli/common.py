"""What every verb of the CLI shares: error handling, progress bars, and options defined once."""

from __future__ import annotations

import errno
import functools
import inspect
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fox_edge.errors import FoxEdgeError, Unchecked
from fox_edge.hooks import Progress
from fox_edge.sampling import SamplingParams

_live_bars: list = []  # the progress bars on screen: a message goes above them, never onto the end of their line


def say(message: str) -> None:
    """One line for the user, on stderr (stdout carries only what a verb produces)."""
    if _live_bars:
        _live_bars[-1].console.print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        typer.echo(message, err=True)


# The library names an option by its parameter; the CLI by its flag, which is `--` and the name with dashes unless
# listed here (fox_edge/errors.py).
FLAGS = {
    "n_ctx": "--ctx-size",
    "n_threads": "--threads",
    "context": "--ctx",
    "chat_template": "--chat-template FILE",
    "embedding": "--embedding-type",
    "output_tensor": "--output-type",
    "use_mmap": "--mmap/--no-mmap",
    "repack": "--no-repack",
}


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def message(exc: FoxEdgeError) -> str:
    """The error's one line as the CLI says it: options named by their flags."""
    return exc.render(flag)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, a closing terminal), raised where Ctrl-C would be so the same cleanup runs."""


def _terminate(signum, frame):
    raise Terminated()


@contextmanager
def errors() -> Iterator[None]:
    """The CLI's one rule for failure: one line on stderr and a non-zero exit, never a traceback.

    Bad input ends in `error: ...` (exit 1); Ctrl-C in exit code 130 and SIGTERM in 143, after the same cleanup
    (temporary files, intermediates, child processes); anything unexpected in one line naming it, with the
    traceback shown only when FOX_EDGE_VERBOSE=1 asks for it.
    """
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except FoxEdgeError as exc:
        say(f"error: {message(exc)}")
        raise typer.Exit(1) from None
    except Unchecked as exc:
        say(f"interrupted: {exc.model} was written but not checked; check it with `fox-edge check {exc.model} -r {exc.reference}`")
        raise typer.Exit(143 if isinstance(exc.interrupt, Terminated) else 130) from None
    except KeyboardInterrupt as exc:
        say("interrupted: nothing was written")
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except MemoryError:
        say("error: out of memory; close other programs, or use a smaller model or context (--ctx-size)")
        raise typer.Exit(1) from None
    except BrokenPipeError:  # the reader went away (`| head`): nothing to say to it
        raise typer.Exit(141) from None
    except OSError as exc:
        if os.environ.get("FOX_EDGE_VERBOSE"):
            raise
        if exc.errno == errno.ENOSPC:
            say(f"error: the disk is full{' writing ' + exc.filename if exc.filename else ''}; free some space or write elsewhere")
        else:
            say(f"error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
        raise typer.Exit(1) from None
    except Exception as exc:
        if os.environ.get("FOX_EDGE_VERBOSE"):
            raise
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        say(f"error: unexpected {type(exc).__name__}{': ' + detail if detail else ''}; rerun with FOX_EDGE_VERBOSE=1 for the traceback")
        raise typer.Exit(1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# What each phase counts (fox_edge.hooks.PhaseProgress names them); None: bytes.
PHASE_UNITS = {"converting": None, "calibrating": "chunks", "quantizing": "tensors", "checking": "chunks", "benchmarking": "runs"}


@contextmanager
def progress_bar(description: str, unit: str | None = None) -> Iterator[Progress]:
    """A progress bar on stderr: what it is doing, done / total in bytes (unit None) or in `unit`, rate, time
    left, and the item at hand. Messages said meanwhile print above it; it leaves no line behind."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    if unit is None:
        counts = (DownloadColumn(), TransferSpeedColumn())
    else:
        rate = TextColumn(f"{{task.fields[rate]}} {unit}/s")
        counts = (MofNCompleteColumn(), TextColumn(unit), rate, TimeElapsedColumn())
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeRemainingColumn(),
        TextColumn("{task.fields[tensor]}"),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=None, tensor="", rate="-")
        _live_bars.append(bar)

        def update(done: int, total: int, tensor: str) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total or None, tensor=tensor, rate=f"{speed:.2g}" if speed else "-")

        try:
            yield update
        finally:
            _live_bars.remove(bar)


def phase_bar(phase: str):
    """fox_edge.hooks.PhaseProgress for the CLI: a bar per phase, named and counted in its unit."""
    return progress_bar(phase, PHASE_UNITS.get(phase.split()[0], "steps"))


def show_check(report, model: Path, *, strict: bool, remedies: list[str]) -> None:
    """The accuracy report of a model just written. A FAIL says what to try next; it exits 1 only when the user asked
    for a bar (`strict`: --max-kld, --min-top1, --max-ppl-ratio or --strict). The model and its report stay."""
    from fox_edge.check import format_report

    if report is None:
        return
    typer.echo(format_report(report))
    if report.passed:
        return
    advice = f"; to do better, try {' or '.join(remedies)}" if remedies else ""
    if strict:
        say(f"error: {model} fails the accuracy bar you set (the model and its report are kept){advice}")
        raise typer.Exit(1)
    say(f"warning: {model} is below fox-edge's default bars for its precision (kept, with its report){advice}")


def open_for_text(model: Path, *, ctx_size, threads, chat_template: Path | None, device: str, sampling: dict, max_tokens, default_max: int):
    """What chat and generate start with: the runner (the flags they share) and its sampling, the user's flags over
    the model's defaults (a bundle's) over the command's."""
    from fox_edge.runner import open_runner, sampling_params

    runner = open_runner(model, n_ctx=ctx_size, n_threads=threads, chat_template=read_chat_template(chat_template), device=device)
    return runner, sampling_params(runner, {"max_tokens": default_max}, max_tokens=max_tokens, **sampling)


def read_chat_template(path: Path | None) -> str | None:
    from fox_edge.template import read_template_file

    return None if path is None else read_template_file(path)


# Options more than one verb takes.
Threads = Annotated[int | None, typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores this process may use)")]
CtxSize = Annotated[
    int | None,
    typer.Option("--ctx-size", "-c", min=16, help="context length in tokens (default 4096 or the bundle's, capped at the model's)"),
]
ChatTemplate = Annotated[Path | None, typer.Option("--chat-template", help="Jinja chat template file to use instead of the model's own")]
Calibration = Annotated[
    str | None,
    typer.Option(
        "--calibration",
        help="calibration text (.txt or .jsonl with a text field), 'builtin' or 'none': compute an importance matrix "
        "(ONNX int4: builtin by default when PyTorch is installed)",
    ),
]
NoCheck = Annotated[bool, typer.Option("--no-check", help="skip the accuracy check after quantizing")]
Strict = Annotated[bool, typer.Option("--strict", help="exit 1 when the check fails the default bars (bars you set always do)")]
MaxKld = Annotated[float | None, typer.Option("--max-kld", help="bar / budget: highest mean KL divergence")]
MinTop1 = Annotated[float | None, typer.Option("--min-top1", help="bar / budget: lowest top-1 agreement (0-1)")]
MaxPplRatio = Annotated[float | None, typer.Option("--max-ppl-ratio", help="bar / budget: highest perplexity ratio")]
EvalData = Annotated[str, typer.Option("--data", help="evaluation text (.txt, .jsonl) or 'builtin'")]

SAMPLING = SamplingParams()  # the defaults, defined once in fox_edge/sampling.py
Device = Annotated[str, typer.Option("--device", help="auto (Metal / CoreML on Apple Silicon when present, else the CPU), cpu or gpu")]
_SAMPLING_OPTIONS = [
    inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[kind | None, typer.Option(help=f"{text} (default {getattr(SAMPLING, name)}, or the bundle's)")],
    )
    for name, kind, text in (
        ("temperature", float, "0 for greedy"),
        ("top_k", int, "0 for off"),
        ("top_p", float, "1 for off"),
        ("min_p", float, "0 for off"),
        ("repeat_penalty", float, "1 for off"),
        ("seed", int, "random seed"),
    )
]  # fmt: skip


def sampling_options(command: Callable) -> Callable:
    """Give `command` the sampling flags (--temperature, --top-k, --top-p, --min-p, --repeat-penalty, --seed) and hand it
    the ones the user gave as a dict, `sampling`: the runner fills in the rest from the model (a bundle's defaults) and
    fox_edge.sampling's (fox_edge.runner.sampling_params). Nonsense is refused before the model is loaded."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "sampling"]
    names = [p.name for p in _SAMPLING_OPTIONS]

    @functools.wraps(command)
    def with_sampling(**arguments):
        chosen = {name: value for name in names if (value := arguments.pop(name)) is not None}
        with errors():
            SamplingParams(**chosen)
        return command(sampling=chosen, **arguments)

    with_sampling.__signature__ = signature.replace(parameters=[*kept, *_SAMPLING_OPTIONS])
    with_sampling.__annotations__ = {p.name: p.annotation for p in (*kept, *_SAMPLING_OPTIONS)}
    return with_sampling
