"""`convert --to onnx --exporter optimum`: a standard-op ONNX graph from optimum-onnx, for runtimes other than ONNX Runtime.

The graph is what optimum-onnx's exporter traces from transformers (plain MatMul / Softmax attention,
position_ids and a past/present KV cache per layer); int8/int4 are weight-only, by onnxruntime.quantization.
Two traps handled (FOX1.md): the tied lm_head reads the embedding through a Transpose, which the weight
quantizers skip, so it is given its own transposed initializer first (otherwise 524 M of Fox-1's parameters
stay fp32); and optimum's default post-processing (merging decoders) fails once the graph passes 2 GB,
so it is switched off.

optimum-onnx pins transformers<4.58 while fox-edge's environment runs transformers 5: install it in an
environment of its own (`pip install 'fox-edge[optimum]'` there). fox-edge's own runner and `check` run
only fox-edge's graphs (GroupQueryAttention with an in-place cache); these folders are for other runtimes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from fox_edge.converters.onnx import OnnxOptions, OnnxResult
from fox_edge.errors import FoxEdgeError, InvalidOption
from fox_edge.files import atomic_output, check_writable
from fox_edge.formats import ONNX_DATA, ONNX_MODEL
from fox_edge.hooks import OnMessage, ignore_message
from fox_edge.source import local_folder, open_checkpoint


def untie_lm_head(model) -> bool:
    """Give a MatMul that reads Transpose(initializer) its own transposed initializer; True if one was found."""
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] in initializers:
            continue
        transpose = producers.get(node.input[1])
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
            continue
        weight = onnx.numpy_helper.to_array(initializers[transpose.input[0]])
        if weight.ndim != 2:
            continue
        name = f"{transpose.input[0]}.transposed"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
        node.input[1] = name
        return True
    return False


def convert_with_optimum(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: OnnxOptions | None = None,
    *,
    on_message: OnMessage = ignore_message,
) -> OnnxResult:
    """Export with optimum-onnx, then (int8/int4) quantize the weights with onnxruntime.quantization."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError:
        raise FoxEdgeError(
            "{exporter} optimum needs optimum-onnx, whose pins (transformers<4.58) conflict with fox-edge's environment: "
            "in a separate venv, pip install 'fox-edge[optimum]'",
            ["exporter"],
        ) from None
    import onnx

    options = options or OnnxOptions()
    if options.precision not in ("fp32", "int8", "int4"):
        raise InvalidOption(f"{{exporter}} optimum writes fp32, int8 or int4, not {options.precision!r}", ["exporter"])
    started = time.monotonic()
    check_writable(output, folder=True, source_folders=[local_folder(source)])
    checkpoint = open_checkpoint(source)
    with atomic_output(output) as folder:
        exported = folder / "export"
        on_message(f"exporting {checkpoint.name} with optimum-onnx")
        main_export(str(checkpoint.path), exported, task="text-generation-with-past", no_post_process=True, do_validation=False)
        model = onnx.load(exported / ONNX_MODEL)
        if options.precision != "fp32":
            on_message(f"quantizing the weights to {options.precision} with onnxruntime.quantization")
            if untie_lm_head(model):
                on_message("the tied lm_head got its own weights, so it is quantized too")
            model = _quantize(model, options)
        onnx.save_model(model, folder / ONNX_MODEL, save_as_external_data=True, all_tensors_to_one_file=True, location=ONNX_DATA)
        for item in exported.iterdir():
            if item.suffix not in (".onnx", ".onnx_data", ".data"):
                item.replace(folder / item.name)
        for leftover in exported.iterdir():
            leftover.unlink()
        exported.rmdir()
    data = Path(output) / ONNX_DATA
    n_bytes = data.stat().st_size if data.is_file() else 0
    return OnnxResult(
        output=Path(output), precision=options.precision, n_initializers=len(model.graph.initializer), n_bytes=n_bytes,
        seconds=time.monotonic() - started, vocab_source="optimum", chat_template="tokenizer files",
    )  # fmt: skip


def _quantize(model, options: OnnxOptions):
    if options.precision == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # ORT's defaults are block 128 asymmetric; fox-edge's int4 recipe is block 32 symmetric, accuracy_level 4.
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=options.block_size,
            is_symmetric=options.symmetric,
            accuracy_level=options.accuracy_level,
            op_types_to_quantize=("MatMul", "Gather"),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer.process()
        return quantizer.model.model
    # int8: dynamic (per-tensor activations, per-channel weights), as the fused graph's measurement favoured
    # weight-only 8-bit there but the standard-op graph has no MatMulNBits to use.
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "in.onnx", Path(scratch) / "out.onnx"
        onnx.save_model(model, source, save_as_external_data=True, location="in.onnx.data")
        quantize_dynamic(
            source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"], use_external_data_format=True
        )
        return onnx.load(target)
