"""The two hooks through which the library speaks: it never prints (the CLI renders what they carry)."""

from __future__ import annotations

from collections.abc import Callable

# Long work: (done, total, what is being worked on), done and total in bytes or in steps (tensors, chunks).
Progress = Callable[[int, int, str], None]
# Notes and warnings for the user, one line each.
OnMessage = Callable[[str], None]


def ignore_message(message: str) -> None:
    """The default OnMessage: a library caller who passes none hears nothing."""
