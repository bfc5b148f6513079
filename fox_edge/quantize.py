"""`fox-edge quantize`: a GGUF to int8/int4 with llama.cpp, calibrated if asked, and checked by default.

With an accuracy budget instead of a type, it tries the candidate types (and token-embedding choices)
from the smallest estimated file up and keeps the first that meets the budget. A candidate over the budget
beyond doubt after a few chunks is not scored on the rest of the text (check.check_accuracy's stop_early).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from fox_edge.check import BARS, Bars, CheckReport, CheckSettings, LogitsStore, check_model, save_report
from fox_edge.errors import FoxEdgeError, InvalidOption, Unchecked
from fox_edge.files import check_writable
from fox_edge.formats import gguf_tensors
from fox_edge.hooks import OnMessage, PhaseProgress, Progress, ignore_message, no_progress
from fox_edge.quant.gguf import QUANT_TYPES, TENSOR_TYPES, QuantizedFile, parse_tensor_type, parse_type, quantize_gguf, refuse_quantized
from fox_edge.texts import read_text


@dataclass(kw_only=True)
class QuantizeResult:
    file: QuantizedFile
    check: CheckReport | None = None
    imatrix: Path | None = None  # the importance matrix saved with --imatrix
    tried: list[dict] = field(default_factory=list)  # the accuracy-budget search's table


def prepare_imatrix(
    input_path: Path,
    calibration: str | Path | None,
    imatrix: str | Path | None,
    scratch: Path,
    *,
    on_message: OnMessage = ignore_message,
    progress: Progress | None = None,
    chunk_size: int = 512,
    max_chunks: int = 64,
) -> Path | None:
    """The importance matrix to quantize with: computed from `calibration` (saved to `imatrix` if given), or read from `imatrix`."""
    from fox_edge.converters.gguf_to_hf import load_torch_model
    from fox_edge.quant.imatrix import calibration_chunks, compute_imatrix, load_imatrix, save_imatrix

    if calibration is None:
        if imatrix is None:
            return None
        load_imatrix(imatrix)  # fails early, with a clear message, on a wrong file
        return Path(imatrix)
    text = read_text(calibration, "calibration")
    from fox_edge.backends.llamacpp import LlamaCppRunner

    with LlamaCppRunner(input_path, vocab_only=True) as vocab:
        tokens = vocab.tokenize(text)
        chunks = calibration_chunks(tokens, chunk_size, vocab.bos_id if vocab.add_bos else None, max_chunks)
    on_message(
        f"computing the importance matrix: {len(chunks)} chunks of {len(chunks[0])} tokens through the full-precision model in PyTorch"
    )
    if progress:
        progress(0, 0, "loading the model in PyTorch")
    model = load_torch_model(input_path)
    matrix = compute_imatrix(model, chunks, progress, dataset=str(calibration))
    del model
    target = Path(imatrix) if imatrix is not None else scratch / f".{input_path.name}.imatrix-{os.getpid()}.gguf"
    save_imatrix(matrix, target)
    if imatrix is not None:
        on_message(f"saved the importance matrix to {target} (llama.cpp's imatrix format)")
    return target


def check_inputs(input_path: Path, output: Path, calibration: str | Path | None, imatrix: str | Path | None) -> None:
    """Before any work: the output and a saved importance matrix destroy nothing the command reads."""
    calibration_file = None if calibration in (None, "builtin") else calibration
    check_writable(output, inputs=[input_path, calibration_file, imatrix if calibration is None else None])
    if calibration is not None and imatrix is not None:  # the importance matrix is written, not read
        check_writable(imatrix, inputs=[input_path, calibration_file, output])


def quantize(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    type_name: str,
    *,
    threads: int = 0,
    embedding: str | None = None,
    output_tensor: str | None = None,
    calibration: str | Path | None = None,
    imatrix: str | Path | None = None,
    allow_requantize: bool = False,
    check: CheckSettings | None = None,
    reference: str | None = None,
    reference_logits: LogitsStore | None = None,
    on_message: OnMessage = ignore_message,
    progress: PhaseProgress | None = None,
) -> QuantizeResult:
    """Quantize a GGUF to `type_name` with llama.cpp (calibrated with `calibration` or `imatrix`), then check it
    against the input unless check.enabled is False; the report is stored beside the output and names `reference`
    (default: the input) as what the model was checked against. reference_logits: where the input's logits are kept
    for the checks of other types quantized from it (see check.LogitsStore)."""
    phase = progress or no_progress
    input_path, output = Path(input_path), Path(output)
    check = check or CheckSettings()
    parse_type(type_name)
    parse_tensor_type(embedding, "embedding")
    parse_tensor_type(output_tensor, "output_tensor")
    calibration = None if calibration == "none" else calibration
    check_inputs(input_path, output, calibration, imatrix)
    refuse_quantized(input_path, allow_requantize)
    matrix = calibrate(input_path, calibration, imatrix, output.parent, on_message, phase)
    try:
        with phase("quantizing") as bar:
            file = quantize_gguf(
                input_path, output, type_name, threads=threads, embedding=embedding, output_tensor=output_tensor,
                imatrix_path=matrix, allow_requantize=allow_requantize, progress=bar,
            )  # fmt: skip
    finally:
        if matrix is not None and imatrix is None:
            matrix.unlink(missing_ok=True)
    on_message(f"wrote {output}: {file.type} (token embedding {file.embedding_type}), {file.bytes / 1e6:.1f} MB in {file.seconds:.1f} s")
    result = QuantizeResult(file=file, imatrix=Path(imatrix) if imatrix else None)
    if check.enabled:
        on_message(f"checking {output.name} against {reference or input_path.name} on {check.tokens} tokens")
        try:
            with phase("checking") as bar:
                result.check = check_model(output, input_path, check, progress=bar, reference_logits=reference_logits)
        except KeyboardInterrupt as interrupt:
            raise Unchecked(output, reference or input_path, interrupt) from None
        result.check.reference = reference or result.check.reference
        save_report(result.check, output)
    return result


def calibrate(input_path, calibration, imatrix, scratch: Path, on_message: OnMessage, phase: PhaseProgress) -> Path | None:
    """prepare_imatrix, under a "calibrating" progress bar when there is something to compute."""
    if calibration is None:
        return prepare_imatrix(input_path, None, imatrix, scratch)
    with phase("calibrating") as bar:
        return prepare_imatrix(input_path, calibration, imatrix, scratch, on_message=on_message, progress=bar)


def budget_candidates(input_path: Path, types: list[str] | None = None) -> list[tuple[str, str | None, float]]:
    """(type, token-embedding override or None for llama.cpp's choice, estimated bytes), smallest first."""
    infos = gguf_tensors(input_path)
    embedding = infos["token_embd.weight"].n_elements
    rest = sum(info.n_elements for name, info in infos.items() if name != "token_embd.weight" and info.n_dims > 1)
    candidates = []
    for name in types or list(QUANT_TYPES):
        quant = parse_type(name)
        default_embedding = "Q8_0" if quant.bits_per_weight >= 8 else "Q6_K"  # llama.cpp's rule for a tied output
        choices: list[str | None] = [None] + (["Q4_K"] if quant.precision in ("int4", "int5") else [])
        for choice in choices:
            bits = TENSOR_TYPES[choice or default_embedding][1]
            candidates.append((name.upper(), choice, (rest * quant.bits_per_weight + embedding * bits) / 8))
    return sorted(candidates, key=lambda c: c[2])


def quantize_to_budget(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    check: CheckSettings,
    *,
    types: list[str] | None = None,
    threads: int = 0,
    calibration: str | Path | None = None,
    imatrix: str | Path | None = None,
    on_message: OnMessage = ignore_message,
    progress: PhaseProgress | None = None,
) -> QuantizeResult:
    """The smallest candidate whose check meets the budget (check.max_kld / min_top1 / max_ppl_ratio)."""
    phase = progress or no_progress
    input_path, output = Path(input_path), Path(output)
    if check.max_kld is None and check.min_top1 is None and check.max_ppl_ratio is None:
        raise InvalidOption("an accuracy budget needs {max_kld}, {min_top1} or {max_ppl_ratio} (or give {type})", [*BARS, "type"])
    budget = Bars(
        max_kld=check.max_kld if check.max_kld is not None else math.inf,
        min_top1=check.min_top1 if check.min_top1 is not None else 0.0,
        max_ppl_ratio=check.max_ppl_ratio if check.max_ppl_ratio is not None else math.inf,
    )
    calibration = None if calibration == "none" else calibration
    check_inputs(input_path, output, calibration, imatrix)
    refuse_quantized(input_path, False)
    candidates = budget_candidates(input_path, types)
    matrix = calibrate(input_path, calibration, imatrix, output.parent, on_message, phase)
    tried: list[dict] = []
    try:
        with LogitsStore(output.with_name(f".{output.name}.reference-logits-{os.getpid()}")) as reference_logits:
            for type_name, embedding, estimate in candidates:
                label = f"{type_name} + embedding {embedding or 'default'}"
                on_message(f"trying {label} (about {estimate / 1e6:.0f} MB)")
                scratch = output.with_name(f".{output.name}.candidate-{os.getpid()}.gguf")
                try:
                    try:
                        with phase(f"quantizing {type_name}") as bar:
                            file = quantize_gguf(
                                input_path, scratch, type_name, threads=threads, embedding=embedding, imatrix_path=matrix, progress=bar
                            )
                    except FoxEdgeError as exc:  # llama.cpp cannot build this one (a 576-wide embedding in IQ4_XS, say): the next
                        on_message(f"skipped {label}: {exc}")
                        tried.append({"type": type_name, "embedding": embedding or "default", "mb": estimate / 1e6, "skipped": str(exc)})
                        continue
                    bars = dataclasses.replace(check, max_kld=budget.max_kld, min_top1=budget.min_top1, max_ppl_ratio=budget.max_ppl_ratio)
                    with phase(f"checking {type_name}") as bar:
                        result_check = check_model(
                            scratch, input_path, bars, progress=bar, stop_early=True, reference_logits=reference_logits
                        )
                    tried.append(
                        {
                            "type": type_name,
                            "embedding": file.embedding_type,
                            "mb": file.bytes / 1e6,
                            "kld": result_check.kld_mean,
                            "top1": result_check.top1_agreement,
                            "ppl_ratio": result_check.ppl_ratio,
                            "tokens": result_check.tokens_scored,
                            "stopped_early": result_check.stopped_early,
                            "passed": result_check.passed,
                        }
                    )
                    if result_check.passed:
                        scratch.replace(output)
                        file.output = output
                        result_check.candidate = str(output)
                        save_report(result_check, output)
                        return QuantizeResult(file=file, check=result_check, imatrix=Path(imatrix) if imatrix else None, tried=tried)
                finally:
                    scratch.unlink(missing_ok=True)
    finally:
        if matrix is not None and imatrix is None:
            matrix.unlink(missing_ok=True)
    checked = [row for row in tried if "kld" in row]
    if not checked:
        raise BudgetNotMet("llama.cpp could build none of the candidates (see the table); keep the f16 model", tried)
    best = min(checked, key=lambda row: row["kld"])
    raise BudgetNotMet(
        f"no candidate met the budget; the closest was {best['type']} (embedding {best['embedding']}): "
        f"KLD {best['kld']:.4f}, top-1 {best['top1']:.1%}. Loosen the budget or keep the f16 model",
        tried,
    )


class BudgetNotMet(FoxEdgeError):
    def __init__(self, message: str, tried: list[dict]):
        super().__init__(message)
        self.tried = tried
