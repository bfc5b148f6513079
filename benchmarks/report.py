"""BENCHMARKS.md and speed.png from one run of benchmarks/harness.py."""

from __future__ import annotations

import statistics
from datetime import date
from pathlib import Path

from fox_edge.bench import BenchResult, BenchSettings
from fox_edge.files import atomic_output


def cell(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio(a: BenchResult, b: BenchResult, metric: str) -> float:
    return a.median(metric) / b.median(metric)


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)])


PEAK_HEADER = ["peak RSS MB", "of which anon MB", "file-backed MB"]


def peak_cells(result: BenchResult) -> list[str]:
    """The highest peak over the runs, and its split (the run with the highest peak)."""
    worst = max(range(len(result.samples["peak_rss_mb"])), key=result.samples["peak_rss_mb"].__getitem__)
    return [f"{result.samples[k][worst]:.0f}" if k in result.samples else "-" for k in ("peak_rss_mb", "peak_anon_mb", "peak_file_mb")]


def write_report(
    output: Path,
    command: str,
    model: str,
    today: date,
    seconds: float,
    machine: dict,
    steps,
    aliases: dict[str, str],
    rotation,
    settings: BenchSettings,
    results: list[BenchResult],
    bandwidth: list[float],
    pairs: dict[tuple[tuple[str, str], tuple[str, str]], list[tuple[dict, dict]]],
    filled: dict[tuple[str, str], dict],
) -> None:
    """`aliases` shortens paths in the commands shown (the scratch folder to WORK, and so on)."""
    by_key = {(e.label, e.tuning): r for e, r in zip(rotation, results, strict=True)}
    main = [(e, r) for e, r in zip(rotation, results, strict=True) if not e.tuning]
    tuning = [(e, r) for e, r in zip(rotation, results, strict=True) if e.tuning]
    lengths = settings.prompt_lengths
    rounds = len(bandwidth)

    speed_rows = []
    for entry, result in main:
        roofline = statistics.median(bandwidth) * 1e3 / result.weights_mb
        speed_rows.append([
            entry.label, result.backend, f"{result.file_mb:.0f}", f"{result.weights_mb:.0f}", cell(result.samples["load_s"], "{:.2f}"),
            *(cell(result.samples[f"prompt_{n}_tps"]) for n in lengths), cell(result.samples["ttft_ms"], "{:.0f}"),
            cell(result.samples["generate_tps"]), f"{roofline:.1f}", f"{statistics.median(result.samples['of_roofline']):.0%}",
            *peak_cells(result),
        ])  # fmt: skip
    speed_header = ["variant, engine", "backend", "file MB", "weights read per token MB", "load s", *(f"prompt {n} tok/s" for n in lengths),
                    "TTFT ms", "generate tok/s", "roofline tok/s", "of roofline", *PEAK_HEADER]  # fmt: skip

    tuning_rows = []
    for entry, result in tuning:
        default = by_key[(entry.label, "")]
        changes = [f"{ratio(result, default, m) - 1:+.0%}" for m in (f"prompt_{lengths[-1]}_tps", "generate_tps")]
        tuning_rows.append([
            entry.label, entry.tuning, *(cell(result.samples[f"prompt_{n}_tps"]) for n in lengths), cell(result.samples["ttft_ms"], "{:.0f}"),
            cell(result.samples["generate_tps"]), *peak_cells(result), cell(result.samples["load_s"], "{:.2f}"), *changes,
        ])  # fmt: skip
    tuning_header = ["model", "setting", *(f"prompt {n} tok/s" for n in lengths), "TTFT ms", "generate tok/s", *PEAK_HEADER, "load s",
                     f"prompt {lengths[-1]} vs default", "generate vs default"]  # fmt: skip

    # Issue 15's bar: a 4-bit Fox-1 chat in at most 1.15 x (its file + the KV cache), and the estimate a bundle states.
    memory_rows = []
    for entry, result in [*main, *tuning]:
        if entry.label not in ("GGUF Q4_K_M", "ONNX int4") or "kv_cache_mb" not in result.samples:
            continue
        peak, kv, estimate = max(result.samples["peak_rss_mb"]), result.median("kv_cache_mb"), result.median("estimate_mb")
        memory_rows.append([
            entry.label, entry.tuning or "defaults", f"{result.file_mb:.0f}", f"{kv:.0f}", f"{1.15 * (result.file_mb + kv):.0f}",
            f"{peak:.0f}", f"{peak / (result.file_mb + kv):.2f}", f"{estimate:.0f}", f"{estimate / peak - 1:+.1%}",
        ])  # fmt: skip
    filled_rows = []
    for (label, tuning), measured in filled.items():
        file_mb = by_key[(label, tuning)].file_mb
        peak, kv = measured["peak_rss_mb"], measured["kv_cache_mb"]
        filled_rows.append([
            label, tuning or "defaults", f"{file_mb:.0f}", f"{kv:.0f}", f"{1.15 * (file_mb + kv):.0f}", f"{peak:.0f}",
            f"{measured.get('peak_anon_mb', 0):.0f}", f"{measured.get('peak_file_mb', 0):.0f}", f"{peak / (file_mb + kv):.2f}",
            f"{measured['estimate_mb']:.0f}", f"{measured['estimate_mb'] / peak - 1:+.1%}",
        ])  # fmt: skip
    memory_header = ["model", "setting", "file MB", "KV cache MB", "bar: 1.15 x (file + KV) MB", "peak RSS MB", "peak / (file + KV)",
                     "bundle estimate MB", "estimate vs peak"]  # fmt: skip
    filled_header = [*memory_header[:5], *PEAK_HEADER, *memory_header[6:]]
    filled_length = next(int(k.split("_")[1]) for k in next(iter(filled.values())) if k.startswith("prompt_"))

    first_pair = next(iter(pairs.values()))
    n_pairs = len(first_pair)
    pair_prompt = next(int(k.split("_")[1]) for k in first_pair[0][0] if k.startswith("prompt_"))  # harness.PAIR_PROMPT
    pair_rows, rotation_ratios = [], []
    for (a, b), measured in pairs.items():
        names = [label + (f", {tuning}" if tuning else "") for label, tuning in (a, b)]
        generate = [x["generate_tps"] / y["generate_tps"] for x, y in measured]
        prompt = [x[f"prompt_{pair_prompt}_tps"] / y[f"prompt_{pair_prompt}_tps"] for x, y in measured]
        pair_rows.append([
            *names, cell([x["generate_tps"] for x, _ in measured]), cell([y["generate_tps"] for _, y in measured]),
            cell(generate, "{:.3f}"), cell(prompt, "{:.3f}"),
        ])  # fmt: skip
        rotation_ratios.append(
            f"{ratio(by_key[a], by_key[b], 'generate_tps'):.3f} (generation) and "
            f"{ratio(by_key[a], by_key[b], f'prompt_{pair_prompt}_tps'):.3f} (prompt) for {names[0]} / {names[1]}"
        )
    rotation_ratios = "; ".join(rotation_ratios)
    text = f"""# fox-edge benchmarks

Written by `{command}` (benchmarks/harness.py; what it does: benchmarks/README.md) on {today},
in {seconds / 60:.0f} minutes. Do not edit by hand: rerun the command. Model: {model}.

## Machine
- CPU: {machine["cpu"]}
- memory: {machine["memory"]}; read bandwidth, measured at the start of each round (best of 5 passes over 2 GiB,
  {results[0].threads} threads): {", ".join(f"{b:.1f}" for b in bandwidth)} GB/s
- system: {machine["system"]}
- {machine["versions"]}

## Conversion: wall time and peak RSS, each in a fresh process

{table(["step", "output GB", "wall time s", "peak RSS MB"], [[s.name, f"{s.output_gb:.2f}", f"{s.seconds:.1f}", f"{s.peak_rss_mb:.0f}"] for s in steps])}

Commands, with CHECKPOINT the random-weight folder and WORK a scratch folder:

```
{chr(10).join(_shown(s.command, aliases) for s in steps)}
```

## Speed

Prompts of {", ".join(map(str, lengths))} tokens from an empty cache, then {settings.generate_tokens} tokens generated greedily after a
{lengths[0]}-token prompt; context {settings.n_ctx}; every engine at its defaults with {results[0].threads} threads; median (min-max) of
{rounds} rounds, every measurement in a fresh process after a warm-up, all engines interleaved in each round, each round starting at a different entry.
"Weights read per token" counts every matrix once (the tied embedding whole, as the output projection; an
embedding read only by a Gather, one row, as nothing); roofline = bandwidth of the round / those bytes, and
"of roofline" is the median over rounds of generation speed / roofline of the same round.

{table(speed_header, speed_rows)}

![prompt and generation speed per variant and engine](speed.png)

### Head to head (the issue's bars)

After the rounds, each pair of engines ran {n_pairs} more times back to back, in alternating order, with a
{pair_prompt}-token prompt; the ratio is taken within each pair (median and min-max over the pairs), so a
host that slows down or speeds up moves both sides alike. Raw llama-cpp-python is `Llama.eval` and
`Llama.generate` on the same file with the same context, threads and batch and flash attention on (what
fox-edge's default, llama.cpp's auto, picks on CPU); onnxruntime-genai runs with intra_op_num_threads set to
the thread count (its default threading is far slower here). In the rotation above the same ratios were
{rotation_ratios}.

{table(["fox-edge", "peer", "generate tok/s, fox-edge", "generate tok/s, peer", "generation ratio", f"prompt {pair_prompt} ratio"], pair_rows)}

## Memory: a 4-bit Fox-1 chat against its file and KV cache

Peak RSS (VmHWM) of the measuring process at the context above, after the prompts and the generation; the KV
cache as the runtime keeps it (llama.cpp f16, ONNX Runtime the graph's type); "bundle estimate" is what
`fox-edge bundle` writes into the manifest for the same model and context (fox_edge.backends.base.estimate_memory).

{table(memory_header, memory_rows)}

The same chat with its context filled: one {filled_length}-token prompt, then {settings.generate_tokens} generated tokens
(one run each, after the head-to-head pairs). llama.cpp clears its whole KV cache at load; ONNX Runtime's pages
become resident as positions fill.

{table(filled_header, filled_rows)}

## Tuning: one setting changed from the defaults

Same rounds as the table above (interleaved with it); "vs default" compares medians with the default row
of the same model.

{table(tuning_header, tuning_rows)}
"""
    output.mkdir(parents=True, exist_ok=True)
    with atomic_output(output / "BENCHMARKS.md") as path:
        path.write_text(text)
    plot(output / "speed.png", main, lengths, model, today, machine)


def _shown(command: list[str], aliases: dict[str, str]) -> str:
    text = " ".join(command)
    for long in sorted(aliases, key=len, reverse=True):
        text = text.replace(long, aliases[long])
    return text


def plot(path: Path, rows, lengths: tuple[int, ...], model: str, today: date, machine: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [entry.label for entry, _ in rows][::-1]
    metrics = [("generate_tps", "generation tok/s"), *((f"prompt_{n}_tps", f"prompt {n} tok/s") for n in lengths)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.45 * len(labels) + 1.5), sharey=True)
    for axis, (metric, title) in zip(axes, metrics, strict=True):
        medians = [result.median(metric) for _, result in rows][::-1]
        lows = [m - result.spread(metric)[0] for m, (_, result) in zip(medians, rows[::-1], strict=True)]
        highs = [result.spread(metric)[1] - m for m, (_, result) in zip(medians, rows[::-1], strict=True)]
        axis.barh(labels, medians, xerr=[lows, highs], color="#3b7dd8", capsize=2)
        axis.set_title(title)
        axis.grid(axis="x", alpha=0.3)
        for y, value in enumerate(medians):
            axis.text(value, y, f" {value:.1f}", va="center", fontsize=8)
    figure.suptitle(f"{model} on {machine['cpu']}, {today}: median and min-max", fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
