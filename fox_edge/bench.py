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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fox_edge.backends.base import estimate_memory, weights_bytes
from fox_edge.cpu import default_threads
from fox_edge.errors import FoxEdgeError
from fox_edge.formats import BUNDLE, CHECKPOINT, GGUF, ONNX, ORT_MODEL, gguf_tensors, identify, onnx_graph_file, onnx_inventory
from fox_edge.hooks import Progress


@dataclass(kw_only=True)
class BenchSettings:
    prompt_lengths: tuple[int, ...] = (128, 512)
    generate_tokens: int = 64
    repeats: int = 3
    threads: int | None = None
    n_ctx: int = 2048
    flash_attention: bool | None = None  # None: the backend decides
    kv_type: str | None = None  # None: the backend's default (llama.cpp: f16)
    n_batch: int | None = None  # prompt tokens per forward pass; None: the runner's default (512)
    use_mmap: bool | None = None  # GGUF: map the file (True) or read it (False); None: the runner's choice
    repack: bool | None = None  # GGUF: llama.cpp's repacked weight layouts; None: the runner's default (on)
    roofline: bool = False  # measure the memory read bandwidth before each round; report generation against it

    @classmethod
    def from_json(cls, text: str) -> BenchSettings:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})


@dataclass
class BenchResult:
    model: str
    backend: str = ""
    threads: int = 0
    file_mb: float = 0.0
    weights_mb: float | None = None  # weights a decoding step reads (weight_bytes_per_token)
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
    options = {
        "flash_attention": settings.flash_attention,
        "kv_type": settings.kv_type,
        "n_batch": settings.n_batch,
        "use_mmap": settings.use_mmap,
        "repack": settings.repack,
    }
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
    if shape := getattr(runner, "shape", None):  # what a bundle's manifest would say this model needs (bundle.py)
        weights = weights_bytes(runner.path)
        estimate = estimate_memory(
            weights_bytes=weights,
            shape=shape,
            n_vocab=runner.n_vocab,
            n_ctx=runner.n_ctx,
            resident_weights_bytes=runner.resident_weights_bytes(),
        )
        result["estimate_mb"], result["kv_cache_mb"] = estimate["total_bytes"] / 1e6, estimate["kv_cache_bytes"] / 1e6
    result |= measure_protocol(
        settings,
        text_tokens,
        runner.prefill,
        lambda prompt: generate_tokens(runner, prompt, SamplingParams.greedy(settings.generate_tokens + 1), stop_ids=frozenset()),
    )
    runner.close()
    return result


def measure_protocol(
    settings: BenchSettings,
    text_tokens: list[int],
    prefill: Callable[[list[int]], object],
    generate: Callable[[list[int]], Iterator[object]],
) -> dict[str, float | int]:
    """Prompt speed at each length, time to first token and generation speed, the same way for every engine.

    `prefill(tokens)` evaluates a prompt from an empty cache; `generate(prompt)` yields at least
    settings.generate_tokens + 1 tokens after it. The caller loads the model and warms it up first.
    """
    result: dict[str, float | int] = {}
    for i, length in enumerate(settings.prompt_lengths):
        prompt = text_tokens[(i + 1) * 7 : (i + 1) * 7 + length]  # a different prefix each time: nothing reused from the cache
        started = time.perf_counter()
        prefill(prompt)
        result[f"prompt_{length}_tps"] = length / (time.perf_counter() - started)

    started = time.perf_counter()
    stream = generate(text_tokens[1000 : 1000 + min(settings.prompt_lengths)])
    next(stream)
    first = time.perf_counter()
    for _ in range(settings.generate_tokens):
        next(stream)
    result["ttft_ms"] = (first - started) * 1000
    result["generate_tps"] = settings.generate_tokens / (time.perf_counter() - first)
    result["peak_rss_mb"] = peak_rss_mb()
    result["threads"] = settings.threads or default_threads()
    return result


class MemorySampler:
    """The peak resident memory split into anonymous memory (runtime allocations, repacked or prepacked weights, KV
    cache, compute buffers) and file-backed pages (memory-mapped weights). Linux keeps only the peak of the sum
    (VmHWM), so a thread reads RssAnon and RssFile of /proc/self/status every 100 ms and keeps the sample with the
    largest sum: a peak shorter than the interval can be missed, VmHWM cannot. Not more often: on 2 cores a 5 ms
    sampler slowed ONNX Runtime's spinning thread pool by 8 % (20.8 -> 19.2 tok/s, alternating runs).

        with MemorySampler() as memory:
            ...
        memory.peak_anon_mb, memory.peak_file_mb
    """

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak_anon_mb = self.peak_file_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        try:
            fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
            anon, file = (int(fields[key].split()[0]) / 1024 for key in ("RssAnon", "RssFile"))
        except (OSError, KeyError, ValueError):  # not Linux: VmHWM's fallback in peak_rss_mb still reports the total
            return
        if anon + file > self.peak_anon_mb + self.peak_file_mb:
            self.peak_anon_mb, self.peak_file_mb = anon, file

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def measured_child(measure: Callable[[], dict]) -> dict:
    """A measuring child's result with its peak memory split (MemorySampler) added."""
    with MemorySampler() as memory:
        result = measure()
    if memory.peak_anon_mb + memory.peak_file_mb:
        result |= {"peak_anon_mb": memory.peak_anon_mb, "peak_file_mb": memory.peak_file_mb}
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program.

    Linux: VmHWM of /proc/self/status. Not getrusage's ru_maxrss there: a child started with vfork carries its
    parent's peak into its own ru_maxrss across exec, so a child of a large parent would report the parent's.
    """
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def bench(models: list[str | Path], settings: BenchSettings, progress: Progress | None = None) -> list[BenchResult]:
    for model in models:
        identify(model)
    results = [BenchResult(str(m), file_mb=size_mb(Path(m)), weights_mb=_mb(weight_bytes_per_token(m))) for m in models]
    total, done = settings.repeats * len(models), 0
    for repeat in range(settings.repeats):
        bandwidth = measure_bandwidth() if settings.roofline else None
        for result in results:  # interleaved: A B A B ...
            command = [sys.executable, "-m", "fox_edge.bench", result.model, json.dumps(asdict(settings))]
            add_sample(result, run_child(command, result.model), bandwidth)
            done += 1
            if progress:
                progress(done, total, f"{Path(result.model).name} run {repeat + 1}")
    return results


def run_child(command: list[str], what: str) -> dict:
    """Run one measuring child process; it prints its measurements as JSON on its last line."""
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        try:  # the child's FoxEdgeError, whose options the CLI names as flags
            error = json.loads(last)
            message, options = error["error"], error["options"]
        except (ValueError, KeyError, TypeError):
            message, options = last, ()
        raise FoxEdgeError(f"benchmarking {what} failed: {message}", options)
    return json.loads(child.stdout.strip().splitlines()[-1])


def add_sample(result: BenchResult, measured: dict, bandwidth_gbs: float | None = None) -> None:
    """One child's measurements; with the memory bandwidth of the same round, generation as a fraction of
    its roofline (bandwidth / weights read per token)."""
    result.backend, result.threads = measured.pop("backend"), measured.pop("threads")
    if bandwidth_gbs and result.weights_mb:
        measured["bandwidth_gbs"] = bandwidth_gbs
        measured["of_roofline"] = measured["generate_tps"] * result.weights_mb / (bandwidth_gbs * 1e3)
    for metric, value in measured.items():
        result.samples.setdefault(metric, []).append(value)


def measure_bandwidth() -> float:
    """read_bandwidth_gbs in a child process: a 2 GiB peak here would show in the peak RSS of later children
    (a child started with vfork inherits its parent's peak, see peak_rss_mb)."""
    return run_child([sys.executable, "-m", "fox_edge.bench", "--bandwidth"], "the memory bandwidth")["read_gbs"]


def _mb(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else n_bytes / 1e6


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def read_bandwidth_gbs(size: int = 2 << 30, passes: int = 5, threads: int | None = None) -> float:
    """Best of `passes` sums over a buffer far larger than the caches, split over the runners' thread count
    (numpy releases the GIL inside reductions): how fast this machine's cores can stream memory now."""
    threads = threads or default_threads()
    import numpy as np

    data = np.ones(size // 8)  # written once, so every page is resident before the clock starts
    parts = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes):
            started = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, size / (time.perf_counter() - started))
    return best / 1e9


def weight_bytes_per_token(model: str | Path) -> int | None:
    """Bytes of weights a decoding step reads: every matrix once; of an embedding table that only a Gather
    reads, one row (counted as nothing); a tied embedding is read whole, as the output projection.
    None for a model.ort flatbuffer (its initializers are not read here)."""
    model = Path(model)
    return WEIGHTS_READ_PER_TOKEN[identify(model)](model)


def _bundle_weight_bytes(model: Path) -> int | None:
    from fox_edge.manifest import read_manifest

    return weight_bytes_per_token(model / read_manifest(model)["format"]["model_path"])


def _gguf_weight_bytes(model: Path) -> int:
    tensors = {name: tensor.n_bytes for name, tensor in gguf_tensors(model).items()}
    return sum(tensors.values()) - (tensors["token_embd.weight"] if "output.weight" in tensors else 0)


def _checkpoint_weight_bytes(model: Path) -> int:
    from fox_edge.weights import read_header

    refs = {ref.name: ref for file in model.glob("*.safetensors") for ref in read_header(file)}
    embedding = "model.embed_tokens.weight" if "lm_head.weight" in refs else None
    return sum(ref.nbytes for name, ref in refs.items() if name != embedding)


def _onnx_folder_weight_bytes(model: Path) -> int | None:
    graph = onnx_graph_file(model)
    return None if graph is None or graph.name == ORT_MODEL else onnx_inventory(graph).bytes_read_per_token()


WEIGHTS_READ_PER_TOKEN = {
    BUNDLE: _bundle_weight_bytes, GGUF: _gguf_weight_bytes, CHECKPOINT: _checkpoint_weight_bytes, ONNX: _onnx_folder_weight_bytes,
}  # fmt: skip


METRICS = (
    ("load_s", "load s", "{:.2f}"),
    ("ttft_ms", "TTFT ms", "{:.0f}"),
    ("generate_tps", "generate tok/s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("peak_anon_mb", "of which anon MB", "{:.0f}"),
    ("peak_file_mb", "file MB", "{:.0f}"),
    ("estimate_mb", "estimate MB", "{:.0f}"),
)


def format_table(results: list[BenchResult], settings: BenchSettings) -> str:
    columns = [(f"prompt_{n}_tps", f"prompt {n} tok/s", "{:.1f}") for n in settings.prompt_lengths]
    columns = [METRICS[0], *columns, *METRICS[1:]]
    if settings.roofline:
        columns.insert(-1, ("of_roofline", "of roofline", "{:.0%}"))
    header = ["model", "backend", "threads", "MB", "weights/token MB", *(title for _, title, _ in columns)]
    rows = []
    for r in results:
        cells = [Path(r.model).name, r.backend, str(r.threads), f"{r.file_mb:.0f}", "-" if r.weights_mb is None else f"{r.weights_mb:.0f}"]
        for metric, _, fmt in columns:
            if metric not in r.samples:
                cells.append("-")
                continue
            low, high = r.spread(metric)
            cells.append(f"{fmt.format(r.median(metric))} ({fmt.format(low)}-{fmt.format(high)})")
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    note = f"\n\nmedian (min-max) of {settings.repeats} interleaved runs, each in a fresh process after a warm-up"
    if settings.roofline:
        bandwidths = next((r.samples["bandwidth_gbs"] for r in results if "bandwidth_gbs" in r.samples), [])
        note += (
            f"; memory read bandwidth per run: {', '.join(f'{b:.1f}' for b in bandwidths)} GB/s; roofline = bandwidth / weights per token"
        )
    return "\n".join(lines) + note


if __name__ == "__main__":
    if sys.argv[1:] == ["--bandwidth"]:
        print(json.dumps({"read_gbs": read_bandwidth_gbs()}))
        sys.exit()
    try:
        print(json.dumps(measured_child(lambda: measure_once(sys.argv[1], BenchSettings.from_json(sys.argv[2])))))
    except FoxEdgeError as exc:
        sys.exit(json.dumps({"error": exc.template, "options": exc.options}))
