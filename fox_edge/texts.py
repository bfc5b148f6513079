"""Text for calibration and evaluation: the built-in public-domain sets, or a user's file (plain text or JSONL)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from fox_edge.errors import FoxEdgeError

# Disjoint on purpose: an importance matrix fitted to the evaluation text would flatter the check.
BUILTIN_TEXTS = {
    "calibration": "calibration.txt",  # Natsume Soseki, Botchan, chapters I-II (Project Gutenberg #8868)
    "evaluation": "evaluation.txt",  # Shakespeare, Hamlet, Act I
}


def builtin_text(name: str) -> str:
    return files("fox_edge.data").joinpath(BUILTIN_TEXTS[name]).read_text(encoding="utf-8")


def read_text(source: str | Path, builtin: str) -> str:
    """`source` is a file (.jsonl: one JSON object per line with a "text" field; anything else: UTF-8 text) or "builtin"."""
    if str(source) == "builtin":
        return builtin_text(builtin)
    path = Path(source)
    if not path.is_file():
        raise FoxEdgeError(f"no such text file: {path}; give a UTF-8 text or JSONL file, or 'builtin'")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FoxEdgeError(f"{path} is not UTF-8 (byte {exc.start}, line {line}); convert it, e.g. with iconv -t UTF-8") from None
    if path.suffix == ".jsonl":
        parts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                parts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise FoxEdgeError(f'{path} line {number} is not a JSON object with a "text" field') from None
        text = "\n\n".join(parts)
    return text
