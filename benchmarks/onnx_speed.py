"""Prompt and generation speed of ONNX int4 models: fox-edge's runner vs onnxruntime-genai, interleaved.

    .venv/bin/python benchmarks/onnx_speed.py OURS_FOLDER... [--builder FOLDER] [--gguf Q4_K_M.gguf] [--rounds 3] [--threads 2]

OURS_FOLDER comes from `fox-edge convert CHECKPOINT --to onnx --precision int4` (the first one also runs under
onnxruntime-genai); the --builder folder from
onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder -p int4 -e cpu`). Every
measurement runs in a fresh process, the engines alternate A B C A B C, and the table reports medians and
min-max. onnxruntime-genai gets `intra_op_num_threads` set to --threads in its config overlay (its own
default threading runs at single-core speed, FOX1.md), so the comparison is with it tuned. --gguf adds a GGUF
run through fox-edge's llama.cpp runner to the same rotation, for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROMPT, GENERATE = 128, 64

CHILD = r"""
import json, sys, time
engine, folder, threads, prompt_len, generate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
prompt = list(range(1000, 1000 + prompt_len))
if engine == "fox-edge":
    from fox_edge.runner import open_runner
    runner = open_runner(folder, n_ctx=1024, n_threads=threads)
    runner.prefill(list(range(500, 532)))
    start = time.perf_counter(); runner.prefill(prompt); prompt_s = time.perf_counter() - start
    tokens = list(prompt)
    start = time.perf_counter()
    for i in range(generate):
        tokens.append(7 + i); runner.prefill(tokens)
    generate_s = time.perf_counter() - start
else:
    import onnxruntime_genai as og
    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    def generator():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_len + generate + 1, do_sample=False)
        return og.Generator(model, params)
    warm = generator(); warm.append_tokens(list(range(500, 532)))
    g = generator()
    start = time.perf_counter(); g.append_tokens(prompt); prompt_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(generate):
        g.generate_next_token()
    generate_s = time.perf_counter() - start
print(json.dumps({"prompt_tps": prompt_len / prompt_s, "generate_tps": generate / generate_s}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ours", type=Path, nargs="+")
    parser.add_argument("--builder", type=Path)
    parser.add_argument("--gguf", type=Path, help="a GGUF model to run through fox-edge's llama.cpp runner in the same rotation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engines = [(f"fox-edge ONNX runner, {folder.name}", "fox-edge", folder) for folder in args.ours]
    engines.append((f"onnxruntime-genai, {args.ours[0].name}", "genai", args.ours[0]))
    if args.builder:
        engines.append((f"onnxruntime-genai, builder graph {args.builder.name}", "genai", args.builder))
    if args.gguf:
        engines.append((f"fox-edge llama.cpp runner, {args.gguf.name}", "fox-edge", args.gguf))
    samples: dict[str, dict[str, list[float]]] = {label: {"prompt_tps": [], "generate_tps": []} for label, _, _ in engines}
    for _ in range(args.rounds):
        for label, engine, folder in engines:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, engine, str(folder), str(args.threads), str(PROMPT), str(GENERATE)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            for key, value in json.loads(out.strip().splitlines()[-1]).items():
                samples[label][key].append(value)
    print(f"| engine, graph | prompt {PROMPT} tok/s | generate tok/s |\n|---|---|---|")
    for label, values in samples.items():
        cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for v in values.values()]
        print(f"| {label} | {' | '.join(cells)} |")
    print(f"\nmedian (min-max) of {args.rounds} interleaved runs, {args.threads} threads, each in a fresh process")


if __name__ == "__main__":
    main()
