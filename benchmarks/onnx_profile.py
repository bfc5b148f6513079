"""Where a decode step's time goes, node by node, in ONNX Runtime: fox-edge's int4 graph next to any other.

    .venv/bin/python benchmarks/onnx_profile.py FOLDER [FOLDER ...] [--past 128] [--steps 24] [--threads 2]

Each folder's model.onnx runs one-token steps on top of a KV cache of --past positions (zeros: the kernels'
work does not depend on the values) under ONNX Runtime's profiler, with the session options both engines use
(2 intra-op threads, spinning on). Prints, per graph, the time per step by operator and by node role (the node
name with its layer number taken out: all 32 layers' gate/up matmuls are one row), then the framework's share
(the step's wall time minus its kernels).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def feeds(session: ort.InferenceSession, past: int, folder: Path) -> dict[str, np.ndarray]:
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    values = {}
    for node in session.get_inputs():
        dtype = TYPES[node.type]
        if node.name == "input_ids":
            values[node.name] = np.full((1, 1), 100, dtype)
        elif node.name == "attention_mask":
            values[node.name] = np.ones((1, past + 1), dtype)
        elif node.name == "position_ids":
            values[node.name] = np.full((1, 1), past, dtype)
        elif "past" in node.name:  # (batch, kv heads, positions, head size)
            values[node.name] = np.zeros((1, decoder["num_key_value_heads"], past, decoder["head_size"]), dtype)
    return values


def role(name: str) -> str:
    return re.sub(r"layers\.\d+", "layers.N", name).removesuffix("_kernel_time")


def profile(folder: Path, past: int, steps: int, threads: int) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inputs = feeds(session, past, folder)
    for _ in range(steps):
        session.run(["logits"], inputs)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"][4:]  # the first few warm up
    start, end = runs[0]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
    by_op: dict[str, float] = defaultdict(float)
    by_role: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and start <= e["ts"] <= end:
            by_op[e["args"]["op_name"]] += e["dur"]
            by_role[(e["args"]["op_name"], role(e["name"]))] += e["dur"]
    per_step = sum(r["dur"] for r in runs) / len(runs) / 1000
    kernels = sum(by_op.values()) / len(runs) / 1000
    print(f"\n**{folder}**: {per_step:.1f} ms per step ({len(runs)} steps, {past} past positions), kernels {kernels:.1f} ms\n")
    print("| operator | ms per step | share |\n|---|---|---|")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        if us / len(runs) >= 10:
            print(f"| {op} | {us / len(runs) / 1000:.2f} | {us / len(runs) / 10 / per_step:.1f} % |")
    print(f"| (framework: between kernels) | {per_step - kernels:.2f} | {100 * (per_step - kernels) / per_step:.1f} % |")
    print("\n| node (all layers) | operator | ms per step |\n|---|---|---|")
    for (op, name), us in sorted(by_role.items(), key=lambda kv: -kv[1])[:12]:
        print(f"| {name} | {op} | {us / len(runs) / 1000:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for folder in args.folders:
        profile(folder, args.past, args.steps, args.threads)


if __name__ == "__main__":
    main()
