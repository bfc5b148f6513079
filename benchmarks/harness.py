"""Every speed and memory figure of fox-edge and its peers, side by side, in one run on one machine.

    ./dev bench [--rounds 3] [--output benchmarks] [--work DIR] [--optimum]

1. Builds, once, a full-size random-weight checkpoint with Fox-1's exact shapes under the fox-edge cache.
2. Converts it, each converter in a fresh process, timing it and reading its peak RSS: fox-edge to GGUF f16
   and ONNX int8/int4, llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python source archive),
   onnxruntime-genai's model builder (int4, CPU), then `fox-edge quantize` to Q8_0, Q4_K_M, Q4_0 and IQ4_XS.
   --optimum adds optimum-onnx's export (3 minutes, 17 GB, in its own environment).
3. Runs every engine on every variant (fox-edge's runners; raw llama-cpp-python, onnxruntime-genai and
   transformers + PyTorch through benchmarks/peers.py) and the tuning settings, each measurement in a fresh
   process, all interleaved for --rounds rounds; the memory read bandwidth is measured at the start of
   every round and each generation figure is divided by the roofline of its own round.
4. Writes BENCHMARKS.md and speed.png into --output.

About 30 minutes on 2 cores. Variants are built in a temporary folder under the fox-edge cache (about 12 GB)
and removed afterwards unless --work names a folder to keep them in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path

from fox_edge.bench import BenchResult, BenchSettings, add_sample, measure_bandwidth, run_child, size_mb, weight_bytes_per_token
from fox_edge.cpu import default_threads
from fox_edge.spec import FOX1
from fox_edge.testing import suite_assets

HERE = Path(__file__).resolve().parent
QUANT_TYPES = ("Q8_0", "Q4_K_M", "Q4_0", "IQ4_XS")
SETTINGS = BenchSettings(prompt_lengths=(128, 512), generate_tokens=64, n_ctx=2048)


# -- the checkpoint and its conversions -------------------------------------------------------------------


def fox1_random_checkpoint() -> Path:
    from fox_edge.testing.synthetic import build_checkpoint, fox1_tokenizer_config

    folder = suite_assets.cache_dir() / "bench" / "fox1-random-bf16"
    if not (folder / "config.json").is_file():
        tokenizer = suite_assets.gemma_tokenizer()
        build_checkpoint(folder, FOX1, {"tokenizer.json": tokenizer / "tokenizer.json"}, fox1_tokenizer_config(), max_shard_size="2GB")
    return folder


@dataclass
class Conversion:
    name: str
    command: list[str]
    output: Path
    keep: bool = True  # False: only measured, deleted afterwards (a second copy of a kept output)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    output_gb: float = 0.0


def conversions(checkpoint: Path, work: Path, optimum: bool) -> list[Conversion]:
    tree = suite_assets.llama_cpp_source()
    fox_edge = str(Path(sys.executable).with_name("fox-edge"))
    f16 = work / "fox1.f16.gguf"
    steps = [
        Conversion("fox-edge convert --to gguf --dtype f16", [fox_edge, "convert", str(checkpoint), "--dtype", "f16", "-o", str(f16)], f16),
        Conversion(
            "llama.cpp convert_hf_to_gguf.py --outtype f16",
            ["env", f"PYTHONPATH={tree / 'gguf-py'}", sys.executable, str(tree / "convert_hf_to_gguf.py"), str(checkpoint),
             "--outtype", "f16", "--outfile", str(work / "llama.cpp.f16.gguf")],
            work / "llama.cpp.f16.gguf", keep=False,
        ),
        *(
            # Uncalibrated: the same graph and sizes as the calibrated default (which adds a PyTorch pass of minutes).
            Conversion(f"fox-edge convert --to onnx --precision {p} --calibration none", [fox_edge, "convert", str(checkpoint), "--to",
                       "onnx", "--precision", p, "--calibration", "none", "--no-check", "-o", str(work / f"onnx-{p}")], work / f"onnx-{p}")
            for p in ("int4", "int8")
        ),
        Conversion(
            "fox-edge convert --to onnx --precision int4 --embedding-bits 4 --calibration none",
            [fox_edge, "convert", str(checkpoint), "--to", "onnx", "--precision", "int4", "--embedding-bits", "4", "--calibration",
             "none", "--no-check", "-o", str(work / "onnx-int4-e4")],
            work / "onnx-int4-e4",
        ),
        Conversion(
            "fox-edge convert --to onnx --precision int4 --no-block-offsets --calibration none",
            [fox_edge, "convert", str(checkpoint), "--to", "onnx", "--precision", "int4", "--no-block-offsets", "--calibration",
             "none", "--no-check", "-o", str(work / "onnx-int4-integer")],
            work / "onnx-int4-integer",
        ),
        Conversion(
            "onnxruntime-genai model builder -p int4 -e cpu",
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(work / "builder-int4"),
             "-p", "int4", "-e", "cpu", "-c", str(work / "builder-cache")],
            work / "builder-int4",
        ),
        *(
            Conversion(f"fox-edge quantize --type {t}", [fox_edge, "quantize", str(f16), "--type", t, "--no-check", "-o",
                       str(work / f"fox1.{t}.gguf")], work / f"fox1.{t}.gguf")
            for t in QUANT_TYPES
        ),
        # Before issue 15: llama.cpp's quantizer held a whole tensor in f32 (the 256K x 2048 embedding: 2.1 GB).
        Conversion(
            "fox-edge quantize --type Q4_K_M, whole tensors at once (the previous default)",
            [sys.executable, "-c", f"from fox_edge.quant.gguf import quantize_gguf; quantize_gguf({str(f16)!r}, "
             f"{str(work / 'whole-tensors.Q4_K_M.gguf')!r}, 'Q4_K_M', slab_bytes=0)"],
            work / "whole-tensors.Q4_K_M.gguf", keep=False,
        ),
    ]  # fmt: skip
    if optimum:
        steps.append(
            Conversion(
                "optimum-onnx export (fp32, --no-post-process)",
                [str(suite_assets.side_environment("optimum")), "-m", "optimum.exporters.onnx", "--model", str(checkpoint),
                 "--task", "text-generation-with-past", "--no-post-process", str(work / "optimum")],
                work / "optimum", keep=False,
            )
        )  # fmt: skip
    return steps


def run_measured(step: Conversion) -> None:
    """Run one conversion in a fresh process: its wall time and the peak RSS of that process (os.wait4).

    That peak includes this process's own (small: conversions run before anything large happens here),
    since a child started with vfork inherits its parent's peak across exec."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(step.command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            errors.seek(0)
            last = (errors.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            sys.exit(f"{step.name} failed: {last}")
    step.seconds = time.perf_counter() - started
    step.peak_rss_mb = usage.ru_maxrss / 1024
    step.output_gb = size_mb(step.output) / 1e3
    if not step.keep:
        remove(step.output)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# -- what runs in the speed rotation --------------------------------------------------------------------


@dataclass
class Entry:
    label: str
    engine: str  # "fox-edge" (fox_edge.bench) or one of benchmarks/peers.py's PEERS
    model: Path
    tuning: str = ""  # "": the main table, with defaults; else the setting this entry changes
    overrides: dict = field(default_factory=dict)  # BenchSettings fields

    def command(self, **more: object) -> list[str]:
        settings = json.dumps(asdict(SETTINGS) | self.overrides | more)
        if self.engine == "fox-edge":
            return [sys.executable, "-m", "fox_edge.bench", str(self.model), settings]
        return [sys.executable, str(HERE / "peers.py"), self.engine, str(self.model), settings]


def entries(checkpoint: Path, work: Path) -> list[Entry]:
    gguf = {t: work / f"fox1.{t}.gguf" for t in ("f16", *QUANT_TYPES)}
    q4km, int4 = gguf["Q4_K_M"], work / "onnx-int4"
    return [
        Entry("GGUF Q4_K_M", "fox-edge", q4km),
        Entry("GGUF Q4_K_M, raw llama-cpp-python", "llama-cpp-python", q4km),
        *(Entry(f"GGUF {t}", "fox-edge", path) for t, path in gguf.items() if t != "Q4_K_M"),
        Entry("ONNX int8", "fox-edge", work / "onnx-int8"),
        Entry("ONNX int4", "fox-edge", int4),
        Entry("ONNX int4 (fox-edge graph), onnxruntime-genai", "onnxruntime-genai", int4),
        Entry("ONNX int4 (builder graph), onnxruntime-genai", "onnxruntime-genai", work / "builder-int4"),
        Entry("Hugging Face bf16, transformers generate", "torch-bf16", checkpoint),
        Entry("Hugging Face fp32, transformers generate", "torch-fp32", checkpoint),
        # Tuning: one setting changed from the defaults each.
        Entry("GGUF Q4_K_M", "fox-edge", q4km, "--threads 1", {"threads": 1}),
        Entry("GGUF Q4_K_M", "fox-edge", q4km, "--batch-size 128", {"n_batch": 128}),
        Entry("GGUF Q4_K_M", "fox-edge", q4km, "--batch-size 256", {"n_batch": 256}),
        Entry("GGUF Q4_K_M", "fox-edge", q4km, "--flash-attention on", {"flash_attention": True}),
        Entry("GGUF Q4_K_M", "fox-edge", q4km, "--flash-attention off", {"flash_attention": False}),
        Entry("GGUF Q4_K_M", "fox-edge", q4km, "--kv-type q8_0", {"kv_type": "q8_0"}),
        Entry("GGUF Q4_K_M", "fox-edge", q4km, MAPPED, {"use_mmap": True}),
        Entry("GGUF Q4_K_M", "fox-edge", q4km, "--no-repack", {"repack": False}),
        Entry("ONNX int4", "fox-edge", work / "onnx-int4-e4", EMBEDDING_4),
        Entry("ONNX int4", "fox-edge", work / "onnx-int4-integer", INTEGER_ZERO_POINTS),
    ]


MAPPED = "--mmap (the default before issue 15)"
EMBEDDING_4 = "--embedding-bits 4 (the phone's choice)"
INTEGER_ZERO_POINTS = "--no-block-offsets (integer zero points alone, the default before)"

# The bars of issues 5 and 15, measured again head to head: the two engines run back to back, in alternating order,
# --pairs times after the rounds, and compared pair by pair (a noisy host moves both alike).
PAIR_PROMPT = 128  # tokens: pairs measure one prompt length, to keep them short
# Entries are (label, tuning); "" is the default row.
HEAD_TO_HEAD = (
    (("GGUF Q4_K_M", ""), ("GGUF Q4_K_M, raw llama-cpp-python", "")),
    (("ONNX int4", ""), ("ONNX int4 (builder graph), onnxruntime-genai", "")),
    # the same engine on both graphs: whether a difference above comes from the graph or from the loop
    (("ONNX int4 (fox-edge graph), onnxruntime-genai", ""), ("ONNX int4 (builder graph), onnxruntime-genai", "")),
    (("ONNX int4", EMBEDDING_4), ("ONNX int4 (builder graph), onnxruntime-genai", "")),
    (("ONNX int4", INTEGER_ZERO_POINTS), ("ONNX int4 (builder graph), onnxruntime-genai", "")),
    # issue 15: today's defaults against the previous ones
    (("GGUF Q4_K_M", ""), ("GGUF Q4_K_M", MAPPED)),
)


# Issue 15's memory bar holds at a full context too: ONNX Runtime's KV cache pages become resident as positions
# fill (llama.cpp clears its whole cache at load), so the 2048-token chat is measured once, one prompt filling it.
FULL_CONTEXT = (("GGUF Q4_K_M", ""), ("ONNX int4", ""), ("ONNX int4", EMBEDDING_4))


def full_context(rotation: list[Entry], checkpoint: Path) -> dict[tuple[str, str], dict]:
    by_key = {(e.label, e.tuning): e for e in rotation}
    n_ctx = min(SETTINGS.n_ctx, json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"])
    length = n_ctx - SETTINGS.generate_tokens - 16
    measured = {key: run_child(by_key[key].command(prompt_lengths=[length]), " ".join(key)) for key in FULL_CONTEXT}
    for key, result in measured.items():
        log(f"  full context: {' '.join(key)}: peak RSS {result['peak_rss_mb']:.0f} MB")
    return measured


def head_to_head(rotation: list[Entry], n_pairs: int) -> dict[tuple[tuple[str, str], tuple[str, str]], list[tuple[dict, dict]]]:
    by_key = {(e.label, e.tuning): e for e in rotation}
    pairs: dict = {pair: [] for pair in HEAD_TO_HEAD}
    for i in range(n_pairs):
        for a, b in HEAD_TO_HEAD:
            order = (a, b) if i % 2 == 0 else (b, a)
            measured = {key: run_child(by_key[key].command(prompt_lengths=[PAIR_PROMPT]), " ".join(key)) for key in order}
            pairs[(a, b)].append((measured[a], measured[b]))
            log(f"  pair {i + 1}/{n_pairs}: {a} / {b}: generation {measured[a]['generate_tps'] / measured[b]['generate_tps']:.3f}x")
    return pairs


# -- the run ------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), ""
    )
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("llama-cpp-python", "onnxruntime", "onnxruntime-genai", "torch", "transformers", "numpy")
    )
    return {
        "cpu": f"{platform.machine()} {cpu or platform.processor()}, {default_threads()} cores usable of {os.cpu_count()}",
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        "system": f"{platform.platform()}, Python {platform.python_version()}",
        "versions": versions,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the speed rotation")
    parser.add_argument("--pairs", type=int, default=4, help="head-to-head pairs per bar after the rounds")
    parser.add_argument("--output", type=Path, default=HERE, help="where BENCHMARKS.md and speed.png go")
    parser.add_argument("--work", type=Path, help="keep the converted variants in this folder")
    parser.add_argument("--optimum", action="store_true", help="also time optimum-onnx's export (3 min, 17 GB)")
    parser.add_argument(
        "--checkpoint", type=Path, help="another Hugging Face checkpoint folder instead of the full-size random Fox-1 (a quick try)"
    )
    args = parser.parse_args()
    started, today = time.time(), date.today()

    if args.checkpoint is None:
        log("building the full-size random-weight Fox-1 checkpoint (once, cached)")
    checkpoint = args.checkpoint or fox1_random_checkpoint()
    with tempfile.TemporaryDirectory(dir=suite_assets.cache_dir()) as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        steps = conversions(checkpoint, work, args.optimum)
        for i, step in enumerate(steps, 1):
            remove(step.output)
            log(f"[{i}/{len(steps)}] {step.name}")
            run_measured(step)
            log(f"    {step.seconds:.1f} s, peak RSS {step.peak_rss_mb:.0f} MB, {step.output_gb:.2f} GB")
        remove(work / "builder-cache")  # the model builder's download cache, empty for a local checkpoint

        rotation = entries(checkpoint, work)
        weights = {e.model: weight_bytes_per_token(e.model) / 1e6 for e in rotation}  # reading a GGUF's 256K-token vocabulary takes a while
        results = [BenchResult(e.label, file_mb=size_mb(e.model), weights_mb=weights[e.model]) for e in rotation]
        measured_entries = list(zip(rotation, results, strict=True))
        bandwidth: list[float] = []
        total, done, rotation_started = args.rounds * len(rotation), 0, time.perf_counter()
        for round_index in range(args.rounds):
            bandwidth.append(measure_bandwidth())
            log(f"round {round_index + 1}/{args.rounds}: memory read bandwidth {bandwidth[-1]:.1f} GB/s")
            # Each round starts at a different entry: the first run after the bandwidth measurement ran slow
            # (its prompts 10-15 % below the same settings later in the round), so no entry may always be first.
            shift = round_index * len(rotation) // args.rounds
            for entry, result in measured_entries[shift:] + measured_entries[:shift]:
                add_sample(result, run_child(entry.command(), entry.label), bandwidth[-1])
                done += 1
                left = (time.perf_counter() - rotation_started) / done * (total - done)
                log(
                    f"  [{done}/{total}] {entry.label} {entry.tuning}: {result.samples['generate_tps'][-1]:.1f} tok/s generating; {left / 60:.0f} min left"
                )
        pairs = head_to_head(rotation, args.pairs)
        filled = full_context(rotation, checkpoint)

    from report import write_report

    command = " ".join(["./dev bench", *sys.argv[1:]])
    aliases = {
        str(checkpoint): "CHECKPOINT",
        str(work): "WORK",
        str(suite_assets.llama_cpp_source()): "LLAMA_CPP_SOURCE",
        str(Path(sys.executable).with_name("fox-edge")): "fox-edge",
        sys.executable: "python",
    }
    if args.optimum:
        aliases[str(suite_assets.side_environment("optimum"))] = "OPTIMUM_ENV_PYTHON"
    seconds = time.time() - started
    model = (
        f"{checkpoint.name} (--checkpoint)"
        if args.checkpoint
        else "full-size Fox-1 shapes and tokenizer, random bf16 weights (speed and memory, not accuracy)"
    )
    write_report(
        args.output, command, model, today, seconds, machine(), steps, aliases, rotation, SETTINGS, results, bandwidth, pairs, filled
    )
    log(f"wrote {args.output / 'BENCHMARKS.md'} and {args.output / 'speed.png'}")


if __name__ == "__main__":
    main()
