"""`convert` as one library call: a checkpoint to GGUF or ONNX, quantized if asked, checked, no intermediate left.

    from fox_edge import GgufOptions, convert
    result = convert("tensoropera/Fox-1-1.6B-Instruct-v0.1", "fox1.Q4_K_M.gguf", GgufOptions(quant="Q4_K_M"))
    result.check.passed, result.check.kld_mean

The CLI's `fox-edge convert` parses its flags into this call and renders what it returns; the bundle
command builds on it too.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from fox_edge.check import CheckReport, CheckSettings, check_model, save_report
from fox_edge.converters.gguf import GgufResult, convert_to_gguf
from fox_edge.converters.onnx import OnnxOptions, OnnxResult, check_onnx_conversion, write_onnx
from fox_edge.errors import InvalidOption, Unchecked
from fox_edge.files import check_writable
from fox_edge.hooks import OnMessage, PhaseProgress, ignore_message, no_progress
from fox_edge.quant.gguf import QuantizedFile, parse_type
from fox_edge.quantize import quantize
from fox_edge.source import local_folder, resolve

EXPORTERS = ("fox-edge", "optimum")


@dataclass(frozen=True, kw_only=True)
class GgufOptions:
    """A conversion to GGUF: `dtype` (f16, bf16, f32) weights, or with `quant` (a `fox-edge quantize` type) that type,
    quantized from a `dtype` intermediate that is removed; `imatrix` saves (or, if it exists, reuses) the importance
    matrix of a calibrated quantization. `vocab_only` writes the tokenizer alone."""

    dtype: str = "f16"
    vocab_only: bool = False
    quant: str | None = None
    imatrix: str | Path | None = None


@dataclass(kw_only=True)
class ConvertResult:
    output: Path
    format: str  # "gguf" or "onnx"
    conversion: GgufResult | OnnxResult  # with `quant`: the f16 intermediate, since removed
    quantized: QuantizedFile | None = None
    check: CheckReport | None = None  # stored beside the output too
    not_checked: str | None = None  # why a quantized model has no check, when it has none


def convert(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: GgufOptions | OnnxOptions | None = None,
    *,
    calibration: str | Path | None = None,
    chat_template: str | None = None,
    check: CheckSettings | None = None,
    threads: int | None = None,
    progress: PhaseProgress | None = None,
    on_message: OnMessage = ignore_message,
) -> ConvertResult:
    """Convert `source` (a checkpoint folder or hub id) to `output`: a GGUF file (GgufOptions, the default) or an ONNX
    folder (OnnxOptions). `calibration` (a text file or "builtin"; "none": round to nearest) calibrates the quantization.
    Quantized outputs are checked against the original with `check` (check.enabled=False skips it); the report is in
    the result and stored beside the output. A failing check is reported, not raised: the caller decides what a FAIL
    means.
    """
    check = check or CheckSettings()
    phase, say = progress or no_progress, on_message
    if isinstance(options, OnnxOptions):
        result = _convert_onnx(source, Path(output), options, chat_template, calibration, threads, phase, say)
        if result.format == "onnx" and not result.not_checked and check.enabled and result.conversion.precision in ("int8", "int4"):
            result.check, result.not_checked = _check(output, source, check, threads, phase, say)
        return result
    options = options or GgufOptions()
    return _convert_gguf(source, Path(output), options, calibration, chat_template, check, threads, phase, say)


def _convert_gguf(source, output, options: GgufOptions, calibration, chat_template, check, threads, phase, say) -> ConvertResult:
    dtype, vocab_only, quant, imatrix = options.dtype, options.vocab_only, options.quant, options.imatrix
    if quant is None:
        if calibration or imatrix:
            raise InvalidOption(
                "{calibration} and {imatrix} go with {quant} TYPE (they calibrate the quantization)", ["calibration", "imatrix", "quant"]
            )
        with phase("converting") as progress:
            conversion = convert_to_gguf(
                source, output, dtype, vocab_only=vocab_only, chat_template=chat_template, progress=progress, on_message=say
            )
        say(_wrote_gguf(conversion))
        return ConvertResult(output=output, format="gguf", conversion=conversion)
    if vocab_only:
        raise InvalidOption("{vocab_only} writes no weights to quantize; drop {quant}", ["vocab_only", "quant"])
    parse_type(quant)
    check_writable(output, source_folders=[local_folder(source)])
    intermediate = output.with_name(f".{output.name}.{dtype}-{os.getpid()}.gguf")
    try:
        with phase("converting") as progress:
            conversion = convert_to_gguf(source, intermediate, dtype, chat_template=chat_template, progress=progress, on_message=say)
        say(_wrote_gguf(conversion))
        quantized = quantize(
            intermediate, output, quant, threads=threads or 0, calibration=calibration, imatrix=imatrix, check=check,
            reference=f"{source} (its {dtype} conversion)", on_message=say, progress=phase,
        )  # fmt: skip
    except Unchecked as interrupt:  # the reference to name is the source: the f16 intermediate is going
        raise Unchecked(output, source, interrupt.interrupt) from None
    finally:
        intermediate.unlink(missing_ok=True)
    return ConvertResult(output=output, format="gguf", conversion=conversion, quantized=quantized.file, check=quantized.check)


def _wrote_gguf(conversion: GgufResult) -> str:
    return (
        f"wrote {conversion.output}: {conversion.n_tensors} tensors, {conversion.n_bytes / 1e6:.1f} MB in {conversion.seconds:.1f} s "
        f"(tokenizer from {conversion.vocab_source}, chat template: {conversion.chat_template})"
    )


def _convert_onnx(source, output, options: OnnxOptions, chat_template, calibration, threads, phase, say) -> ConvertResult:
    if options.exporter not in EXPORTERS:
        raise InvalidOption(f"unknown {{exporter}} {options.exporter!r}; choose {' or '.join(EXPORTERS)}", ["exporter"])
    if options.exporter == "optimum":
        from fox_edge.converters.optimum import convert_with_optimum

        if options.ort_format or chat_template is not None or calibration not in (None, "none"):
            raise InvalidOption(
                "{ort_format}, {chat_template} and {calibration} go with fox-edge's own exporter; drop {exporter} optimum",
                ["ort_format", "chat_template", "calibration", "exporter"],
            )
        conversion = convert_with_optimum(source, output, options, on_message=say)
        say(
            f"wrote {conversion.output}: {conversion.precision} (optimum-onnx graph) in {conversion.seconds:.1f} s; "
            "runs in ONNX Runtime, not in fox-edge's runner"
        )
        return ConvertResult(output=output, format="onnx-optimum", conversion=conversion, not_checked="optimum-onnx graphs")
    importance = None
    checked = check_onnx_conversion(source, output, options)  # refused before minutes of calibration
    try:
        if calibration is None and options.precision == "int4":
            calibration = default_onnx_calibration(say)
        if calibration == "none":
            calibration = None
        if calibration is not None:
            if options.precision not in ("int8", "int4"):
                raise InvalidOption(
                    f"{{calibration}} chooses int8 / int4 block scales; {{precision}} {options.precision} has none: drop it",
                    ["calibration", "precision"],
                )
            from fox_edge.quant.imatrix import checkpoint_importance

            say(f"calibrating on {calibration}: the importance of every input column, through the checkpoint in PyTorch")
            with phase("calibrating") as progress:
                importance = checkpoint_importance(resolve(source, progress=False)[0], calibration, progress)
        with phase("converting") as progress:
            conversion = write_onnx(checked, chat_template=chat_template, progress=progress, on_message=say, importance=importance)
    finally:
        checked.weights.close()  # write_onnx closes them too; here, when calibration fails or is interrupted
    say(
        f"wrote {conversion.output}: {conversion.precision}, {conversion.n_initializers} initializers, "
        f"{conversion.n_bytes / 1e6:.1f} MB of weights in {conversion.seconds:.1f} s (tokenizer from {conversion.vocab_source}, "
        f"chat template: {conversion.chat_template})" + (f"; ORT format: {conversion.ort_model}" if conversion.ort_model else "")
    )
    return ConvertResult(output=output, format="onnx", conversion=conversion)


def default_onnx_calibration(say: OnMessage) -> str | None:
    """ONNX int4 searches its block scales against the built-in calibration text unless told otherwise (`none`): it took
    the int4 defaults below GGUF Q4_K_M's KLD on the trained tiny Fox-1 (benchmarks/README.md). It needs PyTorch."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        say("not calibrated: int4 block scales are rounded to nearest (calibration needs PyTorch: pip install 'fox-edge[torch]')")
        return None
    return "builtin"


def _check(output, source, check: CheckSettings, threads, phase, say) -> tuple[CheckReport | None, str | None]:
    """An ONNX conversion checked against its checkpoint on PyTorch (GGUF is checked against its f16 by quantize)."""
    if importlib.util.find_spec("torch") is None:
        reason = f"the reference needs PyTorch (pip install 'fox-edge[torch]'), then `fox-edge check {output} -r {source}`"
        say(f"not checked: {reason}")
        return None, reason
    say(f"checking {Path(output).name} against {source} (PyTorch) on {check.tokens} tokens")
    try:
        with phase("checking") as progress:
            report = check_model(output, resolve(source, progress=False)[0], check, progress=progress, n_threads=threads)
    except KeyboardInterrupt as interrupt:
        raise Unchecked(output, source, interrupt) from None
    save_report(report, output)
    return report, None
