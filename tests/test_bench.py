"""`fox-edge bench`: what it measures and how (interleaving, fresh processes); never how fast anything is."""

from __future__ import annotations

import json

import numpy as np
from support import cli

from fox_edge.bench import BenchSettings, bench, format_table


def test_models_are_interleaved_and_every_metric_has_one_sample_per_repeat(tiny_gguf):
    order: list[str] = []
    settings = BenchSettings(prompt_lengths=(16, 64), generate_tokens=8, repeats=2, n_ctx=256)
    models = [str(tiny_gguf["f32"]), str(tiny_gguf["f16"])]
    results = bench(models, settings, progress=lambda done, total, what: order.append(what))
    assert order == ["tiny.f32.gguf run 1", "tiny.f16.gguf run 1", "tiny.f32.gguf run 2", "tiny.f16.gguf run 2"]
    for result, model in zip(results, models, strict=True):
        assert result.model == model and result.backend == "llama.cpp" and result.threads >= 1
        assert set(result.samples) == {
            *("load_s", "prompt_16_tps", "prompt_64_tps", "ttft_ms", "generate_tps"),
            *("peak_rss_mb", "peak_anon_mb", "peak_file_mb", "estimate_mb", "kv_cache_mb"),
        }
        assert all(len(v) == 2 and min(v) > 0 for v in result.samples.values())
        # The sampled split's sum is at most the kernel's peak (VmHWM) and close to it.
        for total, anon, file in zip(*(result.samples[k] for k in ("peak_rss_mb", "peak_anon_mb", "peak_file_mb")), strict=True):
            assert 0.8 * total <= anon + file <= total + 1
    assert results[0].file_mb > results[1].file_mb  # f32 is twice the f16 file
    # The estimate a bundle's manifest states: the weight file, the KV cache and the compute buffers at the context.
    estimates = [result.median("estimate_mb") for result in results]
    assert 0 < estimates[0] - results[0].file_mb and abs((estimates[0] - results[0].file_mb) - (estimates[1] - results[1].file_mb)) < 0.01
    table = format_table(results, settings)
    assert "prompt 64 tok/s" in table and "tiny.f16.gguf" in table and "of which anon MB" in table


def test_cli_json(tiny_gguf):
    result = cli("bench", str(tiny_gguf["f16"]), "-r", "1", "--prompt-lengths", "16", "-n", "4", "-c", "128", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["samples"]["generate_tps"][0] > 0


def test_batch_size_no_mmap_and_roofline(tiny_gguf):
    result = cli(
        *[
            "bench",
            str(tiny_gguf["f16"]),
            "-r",
            "2",
            "--prompt-lengths",
            "16",
            "-n",
            "4",
            "-c",
            "128",
            "-b",
            "8",
            "--no-mmap",
            "--roofline",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["weights_mb"] > 0 and len(entry["samples"]["bandwidth_gbs"]) == 2  # measured once per round
    assert all(b > 0.5 for b in entry["samples"]["bandwidth_gbs"]) and all(f > 0 for f in entry["samples"]["of_roofline"])


def test_peak_rss_is_the_child_processs_own(tiny_gguf):
    """getrusage's ru_maxrss of a vfork'ed child includes its parent's peak: a large parent must not leak into it."""
    ballast = np.ones(1 << 28)  # 2 GiB resident in this (the parent) process
    (result,) = bench([str(tiny_gguf["f16"])], BenchSettings(prompt_lengths=(16,), generate_tokens=4, repeats=1, n_ctx=128))
    assert ballast[-1] == 1 and result.median("peak_rss_mb") < 1000


def test_prompt_longer_than_context_is_refused(tiny_gguf):
    code, _, stderr = cli("bench", str(tiny_gguf["f16"]), "-r", "1", "--prompt-lengths", "512", "-c", "256")
    assert code == 1 and "do not fit the 256-token context" in stderr and len(stderr.splitlines()) == 1
