"""The bundle's manifest.json: its schema, reading it, and checking a bundle's files against it.

The format's one owner (as gguf-py owns GGUF): the runners open a bundle through `read_manifest` (the cheap
check an app makes on every launch: the schema and every file's size), `fox-edge bundle verify` adds every
file's sha256 through `manifest_problems`. The schema itself is fox_edge/data/bundle.schema.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fox_edge.errors import FoxEdgeError
from fox_edge.formats import BUNDLE_MANIFEST, BUNDLE_README
from fox_edge.template import template_problem

SCHEMA_VERSION = 1
SCHEMA = Path(__file__).with_name("data") / "bundle.schema.json"


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    message: str


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@cache
def schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def schema_problems(manifest) -> list[Problem]:
    """The manifest against the committed JSON Schema, one problem per violation (an unknown version alone)."""
    import jsonschema

    if not isinstance(manifest, dict):
        return [Problem("error", "manifest.json is not a JSON object; re-create the bundle with `fox-edge bundle`")]
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        return [
            Problem(
                "error",
                f"manifest.json has schema version {version!r}; this fox-edge reads version {SCHEMA_VERSION}: update fox-edge or re-create the bundle",
            )
        ]
    validator = jsonschema.Draft202012Validator(schema())
    return [
        Problem("error", f"manifest.json: {'/'.join(str(p) for p in e.absolute_path) or 'top level'}: {e.message[:200]}")
        for e in sorted(validator.iter_errors(manifest), key=lambda e: [str(p) for p in e.absolute_path])
    ]


def load_manifest(folder: Path) -> tuple[dict | None, list[Problem]]:
    path = folder / BUNDLE_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [Problem("error", f"{path} is missing; this is not a fox-edge bundle")]
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        return None, [Problem("error", f"{path} is not valid JSON ({str(exc)[:120]}); re-create the bundle with `fox-edge bundle`")]
    problems = schema_problems(manifest)
    return (None if problems else manifest), problems


def file_problems(folder: Path, manifest: dict, hashes: bool) -> list[Problem]:
    """Every listed file inside the bundle, present, at its size and (with `hashes`) its sha256."""
    problems = []
    root = folder.resolve()
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if not path.resolve().is_relative_to(root):
            problems.append(Problem("error", f"{entry['path']} leads outside the bundle; re-create the bundle"))
        elif not path.is_file():
            problems.append(Problem("error", f"{entry['path']} is missing; copy the whole bundle again"))
        elif path.stat().st_size != entry["size"]:
            size = path.stat().st_size
            problems.append(
                Problem(
                    "error", f"{entry['path']} is {size:,} bytes, the manifest says {entry['size']:,}: the copy is incomplete or damaged"
                )
            )
        elif hashes and file_sha256(path) != entry["sha256"]:
            problems.append(
                Problem("error", f"{entry['path']} does not match its sha256: the file is damaged or was changed; copy the bundle again")
            )
    return problems


def manifest_problems(folder: str | os.PathLike[str]) -> tuple[dict | None, list[Problem]]:
    """All a bundle's problems short of loading its model: schema, sizes, sha256s, unlisted files (warnings), template."""
    folder = Path(folder)
    if not folder.is_dir():
        return None, [Problem("error", f"{folder} is not a folder; give a bundle folder made by `fox-edge bundle`")]
    manifest, problems = load_manifest(folder)
    if manifest is None:
        return None, problems
    problems = file_problems(folder, manifest, hashes=True)
    listed = {entry["path"] for entry in manifest["files"]} | {BUNDLE_MANIFEST, BUNDLE_README}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.relative_to(folder).as_posix() not in listed:
            problems.append(Problem("warning", f"{path.relative_to(folder)} is not in the manifest; an app ignores it"))
    if problem := template_problem(manifest["chat_template"]):
        problems.append(Problem("error", f"manifest.json's {problem}"))
    return manifest, problems


def read_manifest(folder: str | os.PathLike[str]) -> dict:
    """The manifest of a bundle about to be run: schema-valid, every file present at its size (the cheap check of
    every launch). Raises one error naming the first problem."""
    folder = Path(folder)
    manifest, problems = load_manifest(folder)
    problems = problems or file_problems(folder, manifest, hashes=False)
    if problems:
        raise FoxEdgeError(f"bundle {folder}: {problems[0].message}")
    return manifest
