"""The native core's overhead: its generation speed against llama.cpp's own runner (llama-completion) on the same
GGUF, the same llama.cpp build, threads and context, in interleaved pairs. Writes benchmarks/NATIVE_OVERHEAD.md.

    .venv/bin/python benchmarks/native_overhead.py [--pairs 5] [--tokens 64] [--model GGUF ...]

Default models: the full-size random-weight Fox-1 at Q4_K_M (built once under the fox-edge cache, as the harness
builds it) and SmolLM2-135M (the demo's f16 GGUF). Both sides decode the same rendered chat prompt greedily, for
exactly --tokens tokens (the bundle's stop ids are replaced by one that greedy decoding does not reach here;
llama-completion gets --ignore-eos). Speed = decoded tokens / (decode + sampling time): llama-completion's
"eval" and "sampling" times; the core's generation time, which covers the same work (its first generated token
comes from the prompt's logits, so it decodes tokens - 1 times). Peak RSS: each process's own (os.wait4), the core
with an Android bundle (its manifest says: read the weights into memory, as llama.cpp repacks them), llama-completion
at its defaults (the file mapped).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import fox1_random_checkpoint, machine  # noqa: E402

from fox_edge.cpu import default_threads  # noqa: E402
from fox_edge.downloads import cache_dir  # noqa: E402
from fox_edge.testing.native import build_core  # noqa: E402

USER_MESSAGE = "Tell me a long story about a fox who lives near a castle on a hill, and what it sees every day."


def llama_completion(build: Path) -> Path:
    """llama.cpp's llama-completion from the same configured build as the core (same compiler, flags, llama.cpp)."""
    for command in (
        ["cmake", "-DFOX_EDGE_LLAMA_TOOLS=ON", str(build)],  # reconfigure the existing build
        ["cmake", "--build", str(build), "--target", "llama-completion", "-j", "2"],
    ):
        subprocess.run(command, check=True, capture_output=True)
    return next(build.rglob("bin/llama-completion"))


def fox1_q4_k_m() -> Path:
    target = cache_dir() / "bench" / "fox1-random.Q4_K_M.gguf"
    if not target.is_file():
        from fox_edge import GgufOptions, convert
        from fox_edge.check import CheckSettings

        target.parent.mkdir(parents=True, exist_ok=True)
        convert(fox1_random_checkpoint(), target, GgufOptions(quant="Q4_K_M"), check=CheckSettings(enabled=False))
    return target


def endless_bundle(gguf: Path, folder: Path) -> tuple[Path, str]:
    """A bundle of `gguf` whose only stop id is the last vocabulary entry, and the rendered prompt of USER_MESSAGE."""
    from fox_edge.bundle import make_bundle
    from fox_edge.runner import open_runner
    from fox_edge.template import render

    bundle = make_bundle(gguf, folder / gguf.stem, target="android").folder
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tokenizer"]["stop_ids"] = [manifest["tokenizer"]["vocab_size"] - 1]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with open_runner(gguf) as runner:
        prompt = render(
            runner.chat_template,
            [{"role": "user", "content": USER_MESSAGE}],
            runner.token_text(runner.bos_id),
            runner.token_text(runner.eos_id),
        )
    return bundle, prompt


def run_measured(command: list[str]) -> tuple[str, float]:
    """The command's stderr and its peak RSS in MB, as GNU time reports it. Not os.wait4 here: a child that Python
    starts with vfork carries this process's own peak (the model it opened to render the prompt) across exec."""
    result = subprocess.run(["/usr/bin/time", "-f", "peak-rss-kb %M", *command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed: {result.stderr[-2000:]}")
    return result.stderr, int(re.findall(r"peak-rss-kb (\d+)", result.stderr)[-1]) / 1024


def core_speed(tool: Path, bundle: Path, tokens: int, threads: int, n_ctx: int) -> tuple[float, int, float]:
    stderr, peak = run_measured(
        [
            str(tool),
            str(bundle),
            "-t",
            str(threads),
            "-c",
            str(n_ctx),
            "-n",
            str(tokens),
            "--temp",
            "0",
            "--repeat-penalty",
            "1",
            "-p",
            USER_MESSAGE,
        ]
    )
    found = re.search(r"generation: (\d+) tokens at ([\d.]+) tok/s", stderr)
    generated, rate = int(found[1]), float(found[2])
    seconds = generated / rate
    return (generated - 1) / seconds, generated, peak


def llama_speed(tool: Path, gguf: Path, prompt: str, tokens: int, threads: int, n_ctx: int) -> tuple[float, int, float]:
    stderr, peak = run_measured(
        [str(tool), "-m", str(gguf), "-p", prompt, "-n", str(tokens), "-t", str(threads), "-c", str(n_ctx), "--temp", "0",
         "--ignore-eos", "-no-cnv", "--no-warmup", "--no-display-prompt"],
    )  # fmt: skip
    eval_ms, runs = re.search(r"\beval time =\s+([\d.]+) ms /\s+(\d+) runs", stderr).groups()
    sampling_ms = float(re.search(r"sampling time =\s+([\d.]+) ms", stderr)[1])
    return int(runs) / ((float(eval_ms) + sampling_ms) / 1000), int(runs) + 1, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument(
        "--model", type=Path, action="append", help="a GGUF file (repeatable); default: full-size Fox-1 Q4_K_M and SmolLM2 f16"
    )
    parser.add_argument("--output", type=Path, default=HERE / "NATIVE_OVERHEAD.md")
    args = parser.parse_args()

    build = build_core(own_llama=True)  # llama-completion is compiled in the same folder, from the same llama.cpp
    completion = llama_completion(build)
    models = args.model or [fox1_q4_k_m(), cache_dir() / "demo" / "SmolLM2-135M-Instruct.f16.gguf"]
    rows = []
    with tempfile.TemporaryDirectory(dir=cache_dir()) as work:
        for gguf in models:
            bundle, prompt = endless_bundle(gguf, Path(work))
            core, llama, peaks = [], [], {"core": [], "llama": []}
            measures = {
                "core": functools.partial(core_speed, build / "fox_edge_chat", bundle, args.tokens, args.threads, args.ctx),
                "llama": functools.partial(llama_speed, completion, gguf, prompt, args.tokens, args.threads, args.ctx),
            }
            for pair in range(args.pairs):
                for name in ("core", "llama") if pair % 2 == 0 else ("llama", "core"):
                    rate, generated, peak = measures[name]()
                    peaks[name].append(peak)
                    if generated != args.tokens:
                        sys.exit(f"{name} generated {generated} tokens instead of {args.tokens}; pick another stop id")
                    (core if name == "core" else llama).append(rate)
                print(f"{gguf.name} pair {pair + 1}: core {core[-1]:.2f}, llama-completion {llama[-1]:.2f} tok/s", flush=True)
            kv_mb = json.loads((bundle / "manifest.json").read_text())["memory"]["kv_cache_bytes"] / 1e6
            rows.append((gguf.name, core, llama, max(peaks["core"]), max(peaks["llama"]), gguf.stat().st_size / 1e6, kv_mb))
            shutil.rmtree(bundle)

    info = machine()
    lines = [
        "# The native core against llama.cpp's own runner",
        "",
        f"Measured {date.today()} by `benchmarks/native_overhead.py` on {info['cpu']}, {info['memory']}; {info['system']}.",
        f"Same llama.cpp build (llama-cpp-python {info['versions'].split(',')[0].split()[-1]}'s), {args.threads} threads, {args.ctx}-token context,",
        f"greedy, {args.tokens} generated tokens after the same rendered prompt, {args.pairs} interleaved pairs; medians.",
        "",
        "",
        "Peak RSS: the highest of each side's runs; the bar (issue 15) is 1.15 x (file + KV cache at the context).",
        "",
        "| model | core tok/s | llama-completion tok/s | core / llama-completion | every pair (core / llama) "
        "| core peak RSS MB | llama-completion peak RSS MB | file + KV MB | core / (file + KV) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, core, llama, core_peak, llama_peak, file_mb, kv_mb in rows:
        ratio = statistics.median(core) / statistics.median(llama)
        pairs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(core, llama, strict=True))
        lines.append(
            f"| {name} | {statistics.median(core):.2f} | {statistics.median(llama):.2f} | {ratio:.3f} | {pairs} "
            f"| {core_peak:.0f} | {llama_peak:.0f} | {file_mb + kv_mb:.0f} | {core_peak / (file_mb + kv_mb):.2f} |"
        )
    args.output.write_text("\n".join(lines) + "\n")
    print(args.output.read_text())


if __name__ == "__main__":
    main()
