"""Peak RSS and wall time of fox-edge's converters on a full-size random-weight Fox-1, side by side with the peers:
GGUF f16 next to llama.cpp's own convert_hf_to_gguf.py (from the installed llama-cpp-python's source archive),
ONNX int4 next to onnxruntime-genai's model builder (int4, CPU) and optimum-onnx's export (fp32; it runs in
its own environment, fox_edge.assets.side_environment("optimum"), since it pins transformers<4.58).

    ./dev bench            (or: .venv/bin/python benchmarks/convert_memory.py [--keep])

Builds the checkpoint once (Fox-1's exact shapes, bf16, Gemma's 256K tokenizer; about 1 minute, 3.3 GB)
under the fox-edge cache, runs each converter in its own process and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from fox_edge import assets
from fox_edge.spec import FOX1

# Runs a command and prints its wall time and the peak RSS of its process tree's largest process.
MEASURE = (
    "import resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
)


def fox1_random_checkpoint() -> Path:
    from fox_edge.synthetic import build_checkpoint, fox1_tokenizer_config

    folder = assets.cache_dir() / "bench" / "fox1-random-bf16"
    if not (folder / "config.json").is_file():
        tokenizer = assets.gemma_tokenizer()
        build_checkpoint(folder, FOX1, {"tokenizer.json": tokenizer / "tokenizer.json"}, fox1_tokenizer_config(), max_shard_size="2GB")
    return folder


def measure(command: list[str]) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True).stdout
    seconds, rss_mb = out.split()
    return float(seconds), float(rss_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    checkpoint = fox1_random_checkpoint()
    tree = assets.llama_cpp_source()
    fox_edge = str(Path(sys.executable).with_name("fox-edge"))
    optimum_python = assets.side_environment("optimum")
    with tempfile.TemporaryDirectory(dir=assets.cache_dir()) as scratch:
        output, folder = Path(scratch) / "out.gguf", Path(scratch) / "out"
        commands = {
            "fox-edge convert --to gguf --dtype f16": [fox_edge, "convert", str(checkpoint), "--dtype", "f16", "-o", str(output)],
            "llama.cpp convert_hf_to_gguf.py --outtype f16": [
                "env",
                f"PYTHONPATH={tree / 'gguf-py'}",
                sys.executable,
                str(tree / "convert_hf_to_gguf.py"),
                str(checkpoint),
                "--outtype",
                "f16",
                "--outfile",
                str(output),
            ],
            "fox-edge convert --to onnx --precision int4": [fox_edge, "convert", str(checkpoint), "--to", "onnx", "--no-check", "-o", str(folder)],
            "onnxruntime-genai model builder -p int4 -e cpu": [
                sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(folder),
                "-p", "int4", "-e", "cpu", "-c", str(Path(scratch) / "builder-cache"),
            ],
            "optimum-onnx export (fp32, --no-post-process)": [
                str(optimum_python), "-m", "optimum.exporters.onnx", "--model", str(checkpoint),
                "--task", "text-generation-with-past", "--no-post-process", str(folder),
            ],
        }  # fmt: skip
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        sizes: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, so a noisy machine does not favour one
            for name, command in commands.items():
                results[name].append(measure(command))
                written = [output] if output.exists() else [p for p in folder.rglob("*") if p.is_file()]
                sizes[name] = sum(p.stat().st_size for p in written) / 1e9
                output.unlink(missing_ok=True)
                shutil.rmtree(folder, ignore_errors=True)

    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, {date.today()}; checkpoint: {checkpoint} (Fox-1 shapes, random bf16 weights)"
    )
    print("| converter | output GB | wall time (s), each run | peak RSS (MB), each run |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {sizes[name]:.2f} | {', '.join(f'{s:.1f}' for s, _ in runs)} | {', '.join(f'{m:.0f}' for _, m in runs)} |")


if __name__ == "__main__":
    main()
