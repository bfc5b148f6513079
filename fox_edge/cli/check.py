"""`fox-edge check`: how much a model lost against its reference, with pass/fail bars."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fox_edge.cli.common import EvalData, MaxKld, MaxPplRatio, MinTop1, Threads, errors, phase_bar


def check(
    candidate: Annotated[Path, typer.Argument(help="the model to check: GGUF file, ONNX model folder or fox-edge bundle")],
    reference: Annotated[
        Path,
        typer.Option(
            "--reference", "-r", help="full-precision reference: Hugging Face checkpoint folder (PyTorch), f16/f32 GGUF or fp32 ONNX folder"
        ),
    ],
    data: EvalData = "builtin",
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="tokens to score")] = 4096,
    ctx: Annotated[int, typer.Option("--ctx", min=16, help="chunk length; the second half of each chunk is scored")] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON report")] = False,
    save: Annotated[bool, typer.Option("--save", help="store the report beside the candidate (CANDIDATE.check.json)")] = False,
    max_kld: MaxKld = None,
    min_top1: MinTop1 = None,
    max_ppl_ratio: MaxPplRatio = None,
    threads: Threads = None,
):
    """Perplexity, KL divergence and top-1 agreement of CANDIDATE against REFERENCE, with pass/fail bars."""
    with errors():
        from fox_edge.check import CheckSettings, check_model, format_report, save_report

        settings = CheckSettings(text=data, tokens=tokens, context=ctx, max_kld=max_kld, min_top1=min_top1, max_ppl_ratio=max_ppl_ratio)
        with phase_bar("checking") as progress:
            report = check_model(candidate, reference, settings, progress=progress, n_threads=threads)
        if save:
            save_report(report, candidate)
        typer.echo(report.to_json() if as_json else format_report(report))
        if not report.passed:
            raise typer.Exit(1)
