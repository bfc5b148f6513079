"""`fox-edge quantize`: a GGUF to a type, or to the smallest type that meets an accuracy budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fox_edge.cli.common import (
    Calibration,
    EvalData,
    MaxKld,
    MaxPplRatio,
    MinTop1,
    NoCheck,
    Strict,
    Threads,
    errors,
    phase_bar,
    say,
    show_check,
)


def quantize(
    model: Annotated[Path, typer.Argument(help="f16/bf16/f32 GGUF file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output file")],
    type_name: Annotated[
        str | None, typer.Option("--type", help="Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q4_0, IQ4_NL or IQ4_XS; omit with a budget")
    ] = None,
    embedding_type: Annotated[
        str | None, typer.Option("--embedding-type", help="token-embedding (= tied output) type: Q4_K, Q5_K, Q6_K, Q8_0, F16")
    ] = None,
    output_type: Annotated[str | None, typer.Option("--output-type", help="output tensor type (untied models)")] = None,
    calibration: Calibration = None,
    imatrix: Annotated[
        Path | None, typer.Option("--imatrix", help="importance matrix file: saved here with --calibration, else read from here")
    ] = None,
    allow_requantize: Annotated[bool, typer.Option("--allow-requantize", help="accept an already quantized input")] = False,
    no_check: NoCheck = False,
    strict: Strict = False,
    check_tokens: Annotated[int, typer.Option("--check-tokens", min=1, help="tokens scored by the accuracy check")] = 4096,
    data: EvalData = "builtin",
    max_kld: MaxKld = None,
    min_top1: MinTop1 = None,
    max_ppl_ratio: MaxPplRatio = None,
    threads: Threads = None,
):
    """Quantize with llama.cpp, then check against the input (unless --no-check). Without --type: the smallest type that meets --max-kld / --min-top1."""
    with errors():
        from fox_edge.check import CheckSettings
        from fox_edge.quantize import BudgetNotMet, quantize_to_budget
        from fox_edge.quantize import quantize as quantize_model

        check = CheckSettings(
            enabled=not no_check, text=data, tokens=check_tokens, max_kld=max_kld, min_top1=min_top1, max_ppl_ratio=max_ppl_ratio
        )
        if type_name:
            result = quantize_model(
                model, output, type_name, threads=threads or 0, embedding=embedding_type, output_tensor=output_type,
                calibration=calibration, imatrix=imatrix, allow_requantize=allow_requantize, check=check,
                on_message=say, progress=phase_bar,
            )  # fmt: skip
            bars_given = any(bar is not None for bar in (max_kld, min_top1, max_ppl_ratio))
            show_check(result.check, output, strict=strict or bars_given, remedies=what_to_try(type_name, bool(calibration or imatrix)))
            return
        try:
            result = quantize_to_budget(
                model, output, check, threads=threads or 0, calibration=calibration, imatrix=imatrix, on_message=say, progress=phase_bar
            )
        except BudgetNotMet as exc:
            print_tried(exc.tried)
            raise
        print_tried(result.tried)
        say(f"kept {output}: {result.file.type} with token embedding {result.file.embedding_type}, {result.file.bytes / 1e6:.1f} MB")


def print_tried(rows: list[dict]) -> None:
    """The budget search's table: every candidate, checked or skipped (a type llama.cpp cannot build here), in order."""
    typer.echo(f"{'type':<8} {'embedding':<10} {'MB':>8} {'mean KLD':>10} {'top-1':>7} {'PPL ratio':>9}  result")
    for row in rows:
        if "skipped" in row:
            typer.echo(f"{row['type']:<8} {row['embedding']:<10} {'~' + format(row['mb'], '.1f'):>8} {'-':>10} {'-':>7} {'-':>9}  "
                       f"skipped: {row['skipped']}")  # fmt: skip
            continue
        typer.echo(
            f"{row['type']:<8} {row['embedding']:<10} {row['mb']:>8.1f} {row['kld']:>10.5f} {row['top1']:>7.2%} {row['ppl_ratio']:>9.4f}  "
            + ("meets the budget" if row["passed"] else f"over (after {row['tokens']} tokens)" if row["stopped_early"] else "over")
        )


def what_to_try(type_name: str, calibrated: bool) -> list[str]:
    """After a FAIL: the flags that keep more accuracy, from the budget search's table of types (nearest first)."""
    from fox_edge.quant.gguf import QUANT_TYPES, parse_type

    bits = parse_type(type_name).bits_per_weight
    larger = sorted((q.bits_per_weight, name) for name, q in QUANT_TYPES.items() if q.bits_per_weight > bits)
    return [
        *([] if calibrated or bits >= 8 else ["--calibration builtin"]),
        *(f"--type {name}" for _, name in larger[:2]),
        "a budget instead of a type (--max-kld 0.1: the smallest type that meets it)",
    ]
