"""Building the native core (native/) for the tests: against the llama.cpp that the installed llama-cpp-python vendors,
cached under FOX_EDGE_CACHE/native by the sources' hash (the first build takes about 4 minutes on 2 cores).

    python -m fox_edge.testing.native      # builds (or finds) the core and prints its build folder
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from fox_edge.assets import cache_dir

NATIVE = Path(__file__).resolve().parents[2] / "native"

# What the Python side expects of the core and its wrappers (tests/test_native.py, tests/test_android_jvm.py).
CONVERSATIONS = {
    "one turn": [["user", "Hello!"]],
    "system and two turns": [
        ["system", "You are concise."],
        ["user", "Hi"],
        ["assistant", "Hello. How can I help?"],
        ["user", "Name a fox."],
    ],
    "unicode": [["user", "héllo 🦊 世界"], ["assistant", "¡Hola! 🦊"], ["user", "Ça va?\nOui."]],
}
SCRIPTED_REPLY = "héllo 🦊 世界"
TURNS = ["Hello, who are you?", "Tell me about the castle.", "And then?"]


def edit_manifest(bundle: Path, copy: Path, change) -> Path:
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def template_cases(bundle: Path, name: str, at: str | None = None) -> list[dict]:
    from fox_edge.runner import open_runner
    from fox_edge.template import render

    with open_runner(bundle) as runner:
        bos, eos = runner.token_text(runner.bos_id), runner.token_text(runner.eos_id)
        template = runner.chat_template
    cases = []
    for label, messages in CONVERSATIONS.items():
        for add in (True, False):
            expected = render(template, [{"role": r, "content": c} for r, c in messages], bos, eos, add_generation_prompt=add)
            cases.append({"name": f"{name} {label}{'' if add else ' (no generation prompt)'}", "bundle": at or str(bundle), "messages": messages,
                          "add_generation_prompt": add, "expected": expected})  # fmt: skip
    return cases


def greedy_case(bundle: Path, name: str, system: str = "", at: str | None = None) -> dict:
    """The Python runner's greedy replies over a multi-turn conversation (KV cache kept, as the core keeps it)."""
    from fox_edge.chat import ChatSession
    from fox_edge.runner import open_runner
    from fox_edge.sampling import SamplingParams

    expected = []
    with open_runner(bundle) as runner:
        session = ChatSession(runner, SamplingParams.greedy(max_tokens=16), system or None)
        for turn in TURNS:
            "".join(session.send(turn))
            expected.append(session.last_stats.tokens)
    return {"name": name, "bundle": at or str(bundle), "system": system, "turns": TURNS, "max_tokens": 16, "expected": expected}


def sources_hash() -> str:
    digest = hashlib.sha256(importlib.metadata.version("llama-cpp-python").encode())
    for path in sorted(p for p in NATIVE.rglob("*") if p.is_file()):
        digest.update(path.relative_to(NATIVE).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def adopt_build_folder(build: Path) -> None:
    """A persistent build folder configured from another checkout of fox-edge (CI clones anew each time): forget
    that configuration, keeping the compiled llama.cpp objects, whose sources have not moved."""
    cache = build / "CMakeCache.txt"
    if cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={NATIVE}\n" not in cache.read_text():
        cache.unlink()
        shutil.rmtree(build / "CMakeFiles", ignore_errors=True)


def build_core() -> Path:
    """The build folder holding libfox_edge.so and fox_edge_tests for this machine. The build folder persists, so a
    change to native/ recompiles only the core; llama.cpp is compiled once per llama-cpp-python version."""
    from fox_edge.testing.assets import llama_cpp_source

    release = importlib.metadata.version("llama-cpp-python")
    build = cache_dir() / "native" / f"{platform.machine()}-llama-cpp-python-{release}"
    stamp = build / ".fox-edge-sources"
    if stamp.is_file() and stamp.read_text() == sources_hash() and (build / "fox_edge_tests").is_file():
        return build
    source = llama_cpp_source()
    adopt_build_folder(build)
    jobs = str(os.cpu_count() or 2)
    for command in (
        ["cmake", "-S", str(NATIVE), "-B", str(build), f"-DFOX_EDGE_LLAMA_SOURCE={source}", "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "--target", "fox_edge", "fox_edge_tests", "-j", jobs],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    stamp.write_text(sources_hash())
    return build


if __name__ == "__main__":
    print(build_core())
    sys.exit(0)
