"""Shared fixtures: the tiny Fox-1-structured checkpoint, its GGUF conversions and the PyTorch reference.

Assets come from the package registries through fox_edge.testing.suite_assets and are cached under FOX_EDGE_CACHE
(default ~/.cache/fox-edge); everything built from them goes to pytest's temporary folders.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def pin_to_a_share_of_the_cpus() -> None:
    """Each xdist worker runs on its own share of the CPUs, so the runners, converters and PyTorch it starts default to
    that many threads (fox_edge.cpu.default_threads reads the affinity; PyTorch and OpenBLAS in the worker itself
    read OMP_NUM_THREADS when they load, hence before any import here). Two workers each starting two-thread runners on two cores made the spinning
    thread pools of llama.cpp and PyTorch wait on each other: see README, "Where a run's time goes"."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if worker.startswith("gw") and 1 < count <= len(cpus):
        share = cpus[int(worker[2:]) % count :: count]
        os.sched_setaffinity(0, share)
        os.environ.setdefault("OMP_NUM_THREADS", str(len(share)))  # PyTorch and OpenBLAS in this worker: their default ignores it


pin_to_a_share_of_the_cpus()

import numpy as np
import pytest

from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.downloads import smollm2_checkpoint
from fox_edge.testing import suite_assets
from fox_edge.testing.prepare import PREPARATIONS
from fox_edge.testing.stages import BACKGROUND, STAGE_LOG, done_marker, read_log, stage

# The long preparations (fox_edge/testing/prepare.py) start in one background process at the beginning of the run, in
# this order, and the tests that wait on one this cache never prepared run last. A test names what
# it waits on with @pytest.mark.prepared(...); asking for the trained_tiny_fox1 fixture counts as waiting on it.
# Under pytest-xdist (pyproject.toml: two workers) each worker collects and sorts the same way, and the first to get
# there starts the background process.
ARM64_STAGES = {"ARM64 Python stage", "ARM64 native core"}  # emulated on x86-64, as root


def needed_preparations(item: pytest.Item) -> set[str]:
    marker = item.get_closest_marker("prepared")
    names = set(marker.args if marker else ()) | ({"trained tiny Fox-1"} if "trained_tiny_fox1" in item.fixturenames else set())
    if platform.machine() != "x86_64" or os.geteuid() != 0:
        names -= ARM64_STAGES
    return names


PREPARED_BEFORE = "FOX_EDGE_PREPARED_BEFORE"  # what the cache held when the run began: both workers sort by it


def pytest_configure(config):
    if STAGE_LOG not in os.environ:  # the xdist workers inherit the controller's
        handle, path = tempfile.mkstemp(prefix="fox-edge-stages-", suffix=".jsonl")
        os.close(handle)
        os.environ[STAGE_LOG] = path
        os.environ[PREPARED_BEFORE] = json.dumps([name for name in PREPARATIONS if done_marker(name).exists()])


@pytest.hookimpl(trylast=True)  # after -k and -m deselected
def pytest_collection_modifyitems(session, config, items):
    order = list(PREPARATIONS)
    needs = {item.nodeid: needed_preparations(item) for item in items}
    prepared_before = set(json.loads(os.environ[PREPARED_BEFORE]))

    def place(item: pytest.Item) -> tuple[int, int]:
        """The slow tests first (the longest tail on two workers is the shortest), then the fast ones, then those
        waiting on what this cache has never prepared, in the order the background process prepares it."""
        waiting = [order.index(n) for n in needs[item.nodeid] if n not in prepared_before]
        return (2, max(waiting)) if waiting else (0 if item.get_closest_marker("slow") else 1, 0)

    items.sort(key=place)  # stable: file order within each place
    for item in items:  # tests sharing a module-scoped fixture run on one xdist worker, which builds it once
        shared = sorted(name for name, defs in item._fixtureinfo.name2fixturedefs.items() if defs[-1].scope == "module")
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{shared[0]}"))
    wanted = [name for name in order if any(name in names for names in needs.values())]
    if wanted and not config.getoption("collectonly"):
        start_preparations(config, wanted)


def start_preparations(config, wanted: list[str]) -> None:
    owner = open(Path(os.environ[STAGE_LOG]).with_suffix(".owner"), "w")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another xdist worker started them
        owner.close()
        return
    log = open(Path(os.environ[STAGE_LOG]).with_suffix(".out"), "w")  # noqa: SIM115 (closed with the process)
    config._fox_edge_preparing = (owner, subprocess.Popen(
        ["nice", "-n", "10", sys.executable, "-m", "fox_edge.testing.prepare", *wanted],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ | {BACKGROUND: "1"},
    ))  # fmt: skip


def pytest_sessionfinish(session, exitstatus):
    """The worker that started the preparations waits for them (the other may still need them), unless the run was
    interrupted: then they stop, with every build they started."""
    owner, preparing = getattr(session.config, "_fox_edge_preparing", (None, None))
    if preparing is None:
        return
    if exitstatus == pytest.ExitCode.INTERRUPTED and preparing.poll() is None:
        os.killpg(preparing.pid, signal.SIGTERM)
    preparing.wait()
    owner.close()


def pytest_terminal_summary(terminalreporter):
    entries = read_log(Path(os.environ[STAGE_LOG]))
    if not entries:
        return
    terminalreporter.section("preparations (fox_edge/testing/stages.py), longest first")
    rows = []
    for name in dict.fromkeys(e["stage"] for e in entries):
        runs = [e for e in entries if e["stage"] == name]
        built = max(runs, key=lambda e: e["seconds"])
        waited = sum(e["waited"] for e in runs if not e["background"])
        where = "in the background" if built["background"] else "in the tests"
        done = f"{built['seconds']:.0f} s {where}" if built["seconds"] >= 1 else "cached"
        rows.append((built["seconds"], f"{name}: {done}; the tests waited {waited:.0f} s for it"))
    for _, line in sorted(rows, reverse=True):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def botchan() -> str:
    return suite_assets.botchan_text()


@pytest.fixture(scope="session")
def tiny_fox1(tmp_path_factory, botchan):
    from fox_edge.testing.synthetic import build_tiny_fox1

    return build_tiny_fox1(tmp_path_factory.mktemp("tiny") / "tiny-fox1", botchan)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_fox1):
    """dtype -> the tiny checkpoint converted to GGUF."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    return {dtype: convert_to_gguf(tiny_fox1, folder / f"tiny.{dtype}.gguf", dtype).output for dtype in ("f32", "f16", "bf16")}


class TorchReference:
    """The Hugging Face model in float32: the independent reference for logits and greedy text."""

    def __init__(self, folder):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def logits(self, tokens: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor([tokens])).logits[0].float().numpy()

    def greedy(self, tokens: list[int], n: int) -> list[int]:
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([tokens]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, len(tokens) :].tolist()


@pytest.fixture(scope="session")
def tiny_reference(tiny_fox1):
    return TorchReference(tiny_fox1)


@pytest.fixture(scope="session")
def smollm2():
    with stage("SmolLM2 checkpoint"):  # one xdist worker converts it, the other waits
        return smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory, smollm2):
    return convert_to_gguf(smollm2, tmp_path_factory.mktemp("smollm2") / "smollm2.f32.gguf", "f32").output


@pytest.fixture(scope="session")
def trained_tiny_fox1():
    return suite_assets.trained_tiny_fox1()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_gguf, tmp_path_factory):
    from fox_edge.bundle import make_bundle

    return make_bundle(tiny_gguf["f16"], tmp_path_factory.mktemp("native") / "tiny-bundle").folder


@pytest.fixture(scope="session")
def scripted_bundle(tiny_fox1, tmp_path_factory):
    """A bundle whose greedy reply is SCRIPTED_REPLY, one byte per token outside ASCII (cut mid-character)."""
    from fox_edge.bundle import make_bundle
    from fox_edge.chat import ChatSession
    from fox_edge.runner import open_runner
    from fox_edge.sampling import SamplingParams
    from fox_edge.testing.native import SCRIPTED_REPLY
    from fox_edge.testing.synthetic import build_scripted_model

    folder = tmp_path_factory.mktemp("scripted")
    gguf = convert_to_gguf(build_scripted_model(folder / "checkpoint", tiny_fox1, SCRIPTED_REPLY), folder / "scripted.gguf").output
    bundle = make_bundle(gguf, folder / "scripted-bundle").folder
    with open_runner(bundle) as runner:  # the Python runner says it too: the model is what the tests assume
        assert "".join(ChatSession(runner, SamplingParams.greedy(max_tokens=40)).send("Hi")) == SCRIPTED_REPLY
    return bundle
