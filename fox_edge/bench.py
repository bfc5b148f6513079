"""`fox-edge bench`: load time, prompt and generation speed, time to first token and peak memory of models.

Every measurement runs in a fresh child process (`python -m fox_edge.bench`), so load time and peak
RSS belong to one model alone; models are interleaved (A B A B ...) across repeats so that a noisy,
shared machine does not favour whichever ran first. Each child warms up before it measures.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fox_edge.errors import FoxEdgeError
from fox_edge.runner import default_threads


@dataclass
class BenchSettings:
    prompt_lengths: tuple[int, ...] = (128, 512)
    generate_tokens: int = 64
    repeats: int = 3
    threads: int | None = None
    n_ctx: int = 2048
    flash_attention: bool | None = None  # None: the backend decides
    kv_type: str | None = None  # None: the backend's default (llama.cpp: f16)


@dataclass
class BenchResult:
    model: str
    backend: str = ""
    threads: int = 0
    file_mb: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per repeat

    def median(self, metric: str) -> float:
        return statistics.median(self.samples[metric])

    def spread(self, metric: str) -> tuple[float, float]:
        return min(self.samples[metric]), max(self.samples[metric])


def measure_once(model: str, settings: BenchSettings) -> dict[str, float | str | int]:
    """One child's measurements of one model (called in the child process)."""
    from fox_edge.runner import generate_tokens, open_runner
    from fox_edge.sampling import SamplingParams
    from fox_edge.texts import builtin_text

    started = time.perf_counter()
    options = {"flash_attention": settings.flash_attention, "kv_type": settings.kv_type}
    runner = open_runner(model, n_ctx=settings.n_ctx, n_threads=settings.threads, **{k: v for k, v in options.items() if v is not None})
    load = time.perf_counter() - started
    text_tokens = runner.tokenize(builtin_text("evaluation") * 4)
    longest = max(settings.prompt_lengths)
    if longest + settings.generate_tokens + 8 > runner.n_ctx:
        raise FoxEdgeError(
            f"prompts of {longest} plus {settings.generate_tokens} generated tokens do not fit the {runner.n_ctx}-token context"
        )
    runner.prefill(text_tokens[:32])  # warm-up: first-call allocations and page faults are not measured

    result: dict[str, float | str | int] = {"load_s": load, "backend": runner.backend}
    for i, length in enumerate(settings.prompt_lengths):
        prompt = text_tokens[(i + 1) * 7 : (i + 1) * 7 + length]  # a different prefix each time: nothing reused from the cache
        started = time.perf_counter()
        runner.prefill(prompt)
        result[f"prompt_{length}_tps"] = length / (time.perf_counter() - started)

    prompt = text_tokens[1000 : 1000 + min(settings.prompt_lengths)]
    started = time.perf_counter()
    stream = generate_tokens(runner, prompt, SamplingParams.greedy(settings.generate_tokens + 1), stop_ids=frozenset())
    next(stream)
    first = time.perf_counter()
    produced = 1 + sum(1 for _ in stream)
    result["ttft_ms"] = (first - started) * 1000
    result["generate_tps"] = (produced - 1) / (time.perf_counter() - first)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["threads"] = settings.threads or default_threads()
    runner.close()
    return result


def bench(models: list[str | Path], settings: BenchSettings, progress: Callable[[int, int, str], None] | None = None) -> list[BenchResult]:
    for model in models:
        if not Path(model).exists():
            raise FoxEdgeError(f"no such model: {model}")
    results = {str(m): BenchResult(str(m), file_mb=_size_mb(Path(m))) for m in models}
    total, done = settings.repeats * len(models), 0
    for repeat in range(settings.repeats):
        for model in models:  # interleaved: A B A B ...
            child = subprocess.run(
                [sys.executable, "-m", "fox_edge.bench", str(model), json.dumps(asdict(settings))], capture_output=True, text=True
            )
            if child.returncode != 0:
                last = (child.stderr.strip().splitlines() or ["no output"])[-1]
                raise FoxEdgeError(f"benchmarking {model} failed: {last}")
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            result = results[str(model)]
            result.backend, result.threads = measured.pop("backend"), measured.pop("threads")
            for metric, value in measured.items():
                result.samples.setdefault(metric, []).append(value)
            done += 1
            if progress:
                progress(done, total, f"{Path(model).name} run {repeat + 1}")
    return list(results.values())


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


METRICS = (
    ("load_s", "load s", "{:.2f}"),
    ("ttft_ms", "TTFT ms", "{:.0f}"),
    ("generate_tps", "generate tok/s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
)


def format_table(results: list[BenchResult], settings: BenchSettings) -> str:
    columns = [(f"prompt_{n}_tps", f"prompt {n} tok/s", "{:.1f}") for n in settings.prompt_lengths]
    columns = [METRICS[0], *columns, *METRICS[1:]]
    header = ["model", "backend", "threads", "MB", *(title for _, title, _ in columns)]
    rows = []
    for r in results:
        cells = [Path(r.model).name, r.backend, str(r.threads), f"{r.file_mb:.0f}"]
        for metric, _, fmt in columns:
            low, high = r.spread(metric)
            cells.append(f"{fmt.format(r.median(metric))} ({fmt.format(low)}-{fmt.format(high)})")
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + f"\n\nmedian (min-max) of {settings.repeats} interleaved runs, each in a fresh process after a warm-up"


if __name__ == "__main__":
    child_settings = BenchSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[2]).items()})
    try:
        print(json.dumps(measure_once(sys.argv[1], child_settings)))
    except FoxEdgeError as exc:
        sys.exit(str(exc))
