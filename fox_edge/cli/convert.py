"""`fox-edge convert`: flags into fox_edge.pipeline.convert, its result rendered."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fox_edge.cli.common import Calibration, ChatTemplate, NoCheck, Strict, Threads, errors, phase_bar, read_chat_template, say, show_check

TARGETS = ("gguf", "onnx")


def convert(
    source: Annotated[str, typer.Argument(help="Hugging Face checkpoint folder or hub id")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output file (GGUF) or folder (ONNX)")],
    to: Annotated[str, typer.Option("--to", help="target format: gguf or onnx")] = "gguf",
    dtype: Annotated[str, typer.Option("--dtype", help="GGUF: f16, bf16 or f32")] = "f16",
    vocab_only: Annotated[bool, typer.Option("--vocab-only", help="GGUF: write only the tokenizer (no weights needed)")] = False,
    quant: Annotated[
        str | None, typer.Option("--quant", "-q", help="GGUF: also quantize to this type (see `quantize --help`); no f16 file is left")
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="ONNX: fp32, fp16, int8 or int4 (weight-only, block-wise)")] = "int4",
    block_size: Annotated[int, typer.Option("--block-size", help="ONNX int8/int4: weights per quantization block")] = 32,
    accuracy_level: Annotated[
        int, typer.Option("--accuracy-level", help="ONNX int8/int4: MatMulNBits compute type, 0 (float) to 4 (int8, fastest on CPU)")
    ] = 4,
    symmetric: Annotated[
        bool,
        typer.Option("--symmetric/--asymmetric", help="ONNX int8/int4: blocks around zero, or min/max blocks with a zero point"),
    ] = False,
    block_offsets: Annotated[
        bool,
        typer.Option(
            "--block-offsets/--no-block-offsets",
            help="ONNX int4, asymmetric: keep each block's fractional zero point in extra input columns (accurate; without: a few % faster)",
        ),
    ] = True,
    embedding_bits: Annotated[
        int, typer.Option("--embedding-bits", help="ONNX int4: the tied embedding / lm_head's bits, 8 (accurate) or 4 (smaller, faster)")
    ] = 8,
    embedding_block_size: Annotated[
        int | None,
        typer.Option(
            "--embedding-block-size",
            help="ONNX int4: the tied embedding / lm_head's weights per block [default: 128 at 8 bits, --block-size at 4]",
        ),
    ] = None,
    exporter: Annotated[
        str, typer.Option("--exporter", help="ONNX: fox-edge (fused ONNX Runtime ops) or optimum (standard ops, its own environment)")
    ] = "fox-edge",
    ort_format: Annotated[
        bool, typer.Option("--ort-format", help="ONNX: also write model.ort and its operator config for mobile builds")
    ] = False,
    intra_op_threads: Annotated[
        int,
        typer.Option(
            "--intra-op-threads",
            min=0,
            help="ONNX: the threads genai_config.json gives onnxruntime-genai on the device that runs the model [default: this machine's cores]",
        ),
    ] = 0,
    chat_template: ChatTemplate = None,
    calibration: Calibration = None,
    no_check: NoCheck = False,
    strict: Strict = False,
    threads: Threads = None,
):
    """Convert a checkpoint to GGUF or ONNX, streaming tensor by tensor; quantized outputs are checked against the original."""
    with errors():
        from fox_edge.check import CheckSettings
        from fox_edge.converters.onnx import OnnxOptions
        from fox_edge.errors import InvalidOption
        from fox_edge.pipeline import GgufOptions
        from fox_edge.pipeline import convert as convert_model

        if to not in TARGETS:
            raise InvalidOption(f"unknown {{to}} {to!r}; fox-edge converts to: {', '.join(TARGETS)}", ["to"])
        options: GgufOptions | OnnxOptions
        if to == "onnx":
            if quant or vocab_only:
                raise InvalidOption(
                    "{quant}, {vocab_only} and {imatrix} are GGUF options; for ONNX use {precision} int8 or int4",
                    ["quant", "vocab_only", "imatrix", "precision"],
                )
            options = OnnxOptions(
                precision=precision, block_size=block_size, accuracy_level=accuracy_level, intra_op_threads=intra_op_threads,
                embedding_bits=embedding_bits, embedding_block_size=embedding_block_size, symmetric=symmetric, block_offsets=block_offsets,
                ort_format=ort_format, exporter=exporter,
            )  # fmt: skip
        else:
            if ort_format or exporter != "fox-edge":
                raise InvalidOption(
                    "{precision}, {ort_format} and {exporter} are ONNX options; add {to} onnx",
                    ["precision", "ort_format", "exporter", "to"],
                )
            options = GgufOptions(dtype=dtype, vocab_only=vocab_only, quant=quant)
        result = convert_model(
            source, output, options, calibration=calibration, chat_template=read_chat_template(chat_template),
            check=CheckSettings(enabled=not no_check), threads=threads, progress=phase_bar, on_message=say,
        )  # fmt: skip
        if to == "onnx":
            remedies = [
                flag
                for flag, useful in (
                    ("--calibration builtin", calibration == "none"),  # None: the built-in text when PyTorch is there
                    ("--asymmetric", symmetric),
                    ("--block-offsets", not block_offsets),
                    ("--embedding-bits 8", embedding_bits != 8),
                    ("--precision int8", precision == "int4"),
                )
                if useful
            ]
        else:
            from fox_edge.cli.quantize import what_to_try

            remedies = what_to_try(quant, bool(calibration)) if quant else []
        show_check(result.check, output, strict=strict, remedies=remedies)
