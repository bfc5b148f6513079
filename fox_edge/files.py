"""Output files appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from fox_edge.errors import OutputError


def check_writable(
    path: str | os.PathLike[str],
    *,
    folder: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    source_folders: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Fail before any work if `path` cannot be created, or if writing it would destroy something the command reads:
    one of `inputs` (links resolved), or anything inside one of `source_folders` (a checkpoint being converted).
    A `folder` output (an ONNX model) must not exist yet; a file output may replace an unrelated file, never a folder."""
    final = Path(path)
    target = final.resolve()
    for given in inputs:
        if given is not None and Path(given).exists() and target == Path(given).resolve():
            raise OutputError(f"{final} is the input {given}: writing it would destroy the input; choose another output path")
    for source in source_folders:
        if source is not None and Path(source).is_dir() and target.is_relative_to(Path(source).resolve()):
            raise OutputError(f"{final} lies inside the source folder {source}, whose files it could replace; write it elsewhere")
    if folder and (final.exists() or final.is_symlink()):
        raise OutputError(f"{final} already exists; remove it or choose another output folder")
    if not folder and final.is_dir():
        raise OutputError(f"{final} is a folder; give the output file's path (for example {final / 'model.gguf'})")
    parent = final.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {final}: {parent} is a file, not a folder; choose another output path")
    if not parent.is_dir():
        raise OutputError(f"cannot write {final}: folder {parent} does not exist; create it or choose another output path")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {final}: folder {parent} is not writable; choose another output path")
    return final


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    On any error, Ctrl-C included, the temporary file (or folder) is removed and `path` is untouched.
    """
    final = Path(path)
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
