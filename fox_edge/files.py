"""Output files appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fox_edge.errors import FoxEdgeError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    On any error, Ctrl-C included, the temporary file (or folder) is removed and `path` is untouched.
    """
    final = Path(path)
    if final.is_dir() and not final.suffix == "":
        raise FoxEdgeError(f"{final} is a folder; give an output file name")
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise FoxEdgeError(f"cannot write {final}: folder {parent} does not exist; create it or choose another output path")
    if not os.access(parent, os.W_OK):
        raise FoxEdgeError(f"cannot write {final}: folder {parent} is not writable; choose another output path")
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
