"""`fox-edge bench`: load time, prompt and generation speed, time to first token and peak RSS of models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fox_edge.cli.common import CtxSize, Threads, errors, phase_bar
from fox_edge.errors import FoxEdgeError

FLASH_ATTENTION = {"auto": None, "on": True, "off": False}


def bench(
    models: Annotated[
        list[Path], typer.Argument(help="GGUF files, ONNX model folders or fox-edge bundles (several are interleaved A B A B)")
    ],
    prompt_lengths: Annotated[str, typer.Option("--prompt-lengths", help="comma-separated prompt lengths in tokens")] = "128,512",
    generate: Annotated[int, typer.Option("--generate", "-n", min=1, help="tokens to generate per run")] = 64,
    repeats: Annotated[int, typer.Option("--repeats", "-r", min=1, help="runs per model, each in a fresh process")] = 3,
    ctx_size: CtxSize = 2048,
    threads: Threads = None,
    flash_attention: Annotated[str, typer.Option("--flash-attention", help="GGUF: auto, on or off")] = "auto",
    kv_type: Annotated[str | None, typer.Option("--kv-type", help="GGUF KV cache type: f16 (default), f32 or q8_0")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="prompt tokens per forward pass (default 512)")] = None,
    mmap: Annotated[
        bool | None,
        typer.Option(
            "--mmap/--no-mmap", help="GGUF: map the file or read it into memory (default: read it when llama.cpp repacks its weights)"
        ),
    ] = None,
    repack: Annotated[
        bool, typer.Option("--repack/--no-repack", help="GGUF: llama.cpp's repacked weight layouts for its CPU kernels")
    ] = True,
    roofline: Annotated[
        bool, typer.Option("--roofline", help="measure memory read bandwidth each round; show generation as a fraction of its roofline")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """Load time, prompt and generation speed, time to first token and peak RSS: medians and spread of interleaved runs."""
    with errors():
        from dataclasses import asdict

        from fox_edge.bench import BenchSettings, format_table
        from fox_edge.bench import bench as bench_models

        try:
            lengths = tuple(int(n) for n in prompt_lengths.split(","))
            if min(lengths) < 1:
                raise ValueError
        except ValueError:
            raise FoxEdgeError(f"--prompt-lengths takes comma-separated whole numbers >= 1, not {prompt_lengths!r}") from None
        if flash_attention not in FLASH_ATTENTION:
            raise FoxEdgeError(f"--flash-attention takes auto, on or off, not {flash_attention!r}")
        if batch_size is not None and batch_size < 1:
            raise FoxEdgeError(f"--batch-size must be at least 1, not {batch_size}")
        settings = BenchSettings(
            prompt_lengths=lengths, generate_tokens=generate, repeats=repeats, threads=threads, n_ctx=ctx_size,
            flash_attention=FLASH_ATTENTION[flash_attention], kv_type=kv_type, n_batch=batch_size,
            use_mmap=mmap, repack=None if repack else False, roofline=roofline,
        )  # fmt: skip
        with phase_bar("benchmarking") as progress:
            results = bench_models([str(m) for m in models], settings, progress)
        typer.echo(json.dumps([asdict(r) for r in results], indent=2) if as_json else format_table(results, settings))
