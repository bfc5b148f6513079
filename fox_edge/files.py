"""Output files appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fox_edge.errors import FoxEdgeError


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail before any work if `path` cannot be created."""
    final = Path(path)
    parent = final.parent
    if parent.exists() and not parent.is_dir():
        raise FoxEdgeError(f"cannot write {final}: {parent} is a file, not a folder; choose another output path")
    if not parent.is_dir():
        raise FoxEdgeError(f"cannot write {final}: folder {parent} does not exist; create it or choose another output path")
    if not os.access(parent, os.W_OK):
        raise FoxEdgeError(f"cannot write {final}: folder {parent} is not writable; choose another output path")
    return final


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    On any error, Ctrl-C included, the temporary file (or folder) is removed and `path` is untouched.
    """
    final = check_writable(path)
    parent = final.parent
    temporary = parent / f".{final.name}.part-{os.getpid()}"
    try:
        yield temporary
        os.replace(temporary, final)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        raise
