"""The two hooks through which the library speaks: it never prints (the CLI renders what they carry)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

# Long work: (done, total, what is being worked on), done and total in bytes or in steps (tensors, chunks).
Progress = Callable[[int, int, str], None]
# Work in phases ("converting", "calibrating", "quantizing", "checking"): a Progress for each, opened and closed in turn.
PhaseProgress = Callable[[str], AbstractContextManager[Progress | None]]
# Notes and warnings for the user, one line each.
OnMessage = Callable[[str], None]


@contextlib.contextmanager
def no_progress(phase: str) -> Iterator[None]:
    """The default PhaseProgress: no progress reported."""
    yield None


def ignore_message(message: str) -> None:
    """The default OnMessage: a library caller who passes none hears nothing."""
