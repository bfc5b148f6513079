"""ONNX int8/int4 variants next to GGUF Q8_0 / Q4_K_M / Q4_0, all checked against PyTorch on the same text.

    .venv/bin/python benchmarks/onnx_accuracy.py [--tokens 2048]

Models: SmolLM2-135M-Instruct (real weights, which lie on a Q4_1 grid: see the test module's docstring)
and the trained tiny Fox-1 (bf16, no grid). Every candidate is scored by `fox_edge.check.check_model`
against the Hugging Face checkpoint on PyTorch: the built-in evaluation text, 512-token chunks.
Prints a Markdown table per model.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from onnx import TensorProto

from fox_edge.check import CheckSettings, check_model
from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.converters.onnx import GraphBuilder, OnnxOptions, convert_to_onnx
from fox_edge.downloads import smollm2_checkpoint
from fox_edge.quant.imatrix import checkpoint_importance
from fox_edge.quantize import quantize
from fox_edge.testing import suite_assets


def dynamic_int8_linear(self: GraphBuilder, x: str, sources: list[str], node_name: str) -> str:
    """int8 per-column weights read by DynamicQuantizeMatMul, which quantizes activations per tensor at run time:
    the alternative to 8-bit MatMulNBits that `--precision int8` was chosen against (benchmarks/README.md). Put in
    place of GraphBuilder.linear for one conversion (the folder's metadata still says int8 MatMulNBits)."""
    name = node_name.strip("/").replace("/", ".")
    matrix = np.concatenate([self.weights.float32(s) for s in sources]).T  # (K, N), at most one fused matrix
    scale = np.maximum(np.abs(matrix).max(0), 1e-12) / 127
    quantized = np.clip(np.rint(matrix / scale), -127, 127).astype(np.int8)
    self.data.add(f"{name}.weight_int8", TensorProto.INT8, quantized.shape, quantized)
    self.data.add(f"{name}.weight_scale", TensorProto.FLOAT, scale.shape, scale.astype(np.float32))
    inputs = [x, f"{name}.weight_int8", f"{name}.weight_scale"]
    return self.node("DynamicQuantizeMatMul", inputs, f"{node_name}/MatMul", domain="com.microsoft")[0]


# label -> (options, a replacement for GraphBuilder.linear or None, calibrated: block scales searched against the checkpoint's importance matrix on the
# built-in calibration text (Botchan), which is disjoint from the evaluation text (Hamlet))
ONNX_VARIANTS = {
    # Every option spelled out: the defaults move (issue 16: asymmetric, 8-bit embedding).
    "ONNX int8 symmetric (accuracy_level 4)": (OnnxOptions(precision="int8", symmetric=True), None, False),
    "ONNX int8 asymmetric": (OnnxOptions(precision="int8", symmetric=False), None, False),
    "ONNX int8 symmetric, accuracy_level 0": (OnnxOptions(precision="int8", symmetric=True, accuracy_level=0), None, False),
    "ONNX dynamic int8 (DynamicQuantizeMatMul)": (OnnxOptions(precision="int8", symmetric=True), dynamic_int8_linear, False),
    "ONNX int8 symmetric, calibrated": (OnnxOptions(precision="int8", symmetric=True), None, True),
    **{
        f"ONNX int4 {'symmetric' if symmetric else 'asymmetric'}, {bits}-bit embedding{', calibrated' if calibrated else ''}": (
            OnnxOptions(precision="int4", symmetric=symmetric, embedding_bits=bits, block_offsets=False), None, calibrated,
        )
        for symmetric in (True, False) for bits in (4, 8) for calibrated in (False, True)
    },
    # Block offsets: the fractional zero points integer ones round away, as extra columns (GraphBuilder.uses_block_offsets).
    **{
        f"ONNX int4 asymmetric with block offsets, {bits}-bit embedding{', calibrated' if calibrated else ''}{f', block {block}' if block != 32 else ''}": (
            OnnxOptions(precision="int4", symmetric=False, embedding_bits=bits, block_offsets=True, block_size=block), None, calibrated,
        )
        for bits in (4, 8) for calibrated in (False, True) for block in (32, 64, 128) if calibrated or block == 32
    },
    # The 8-bit embedding / lm_head in larger blocks (fewer scales and block sums for every token's lm_head to read).
    **{
        f"ONNX int4 asymmetric with block offsets, 8-bit embedding in blocks of {block}, calibrated": (
            OnnxOptions(precision="int4", symmetric=False, embedding_bits=8, embedding_block_size=block), None, True,
        )
        for block in (32, 64, 128, 256)
    },
}  # fmt: skip
GGUF_TYPES = ("Q8_0", "Q4_K_M", "Q4_0")


def size_mb(path: Path) -> float:
    files = [p for p in path.iterdir() if p.name != "model.ort"] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files if p.is_file()) / 1e6


def measure(checkpoint: Path, settings: CheckSettings, work: Path, variants: dict) -> list[tuple[str, float, object]]:
    rows = []
    importance = checkpoint_importance(checkpoint, "builtin")
    for i, (label, (options, linear, calibrated)) in enumerate(variants.items()):
        with mock.patch.object(GraphBuilder, "linear", linear) if linear else contextlib.nullcontext():
            folder = convert_to_onnx(checkpoint, work / f"onnx-{i}", options, importance=importance if calibrated else None).output
        rows.append((label, size_mb(folder), check_model(folder, checkpoint, settings)))
        print(f"  {label}: mean KLD {rows[-1][2].kld_mean:.5f}", flush=True)
    f16 = convert_to_gguf(checkpoint, work / "model.f16.gguf", "f16").output
    for type_name in GGUF_TYPES:
        output = work / f"model.{type_name}.gguf"
        quantize(f16, output, type_name, check=CheckSettings(enabled=False))
        rows.append((f"GGUF {type_name}", size_mb(output), check_model(output, checkpoint, settings)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--only", help="variants whose label contains this text (GGUF rows always)")
    args = parser.parse_args()
    variants = {label: v for label, v in ONNX_VARIANTS.items() if args.only is None or args.only in label}
    settings = CheckSettings(tokens=args.tokens, context=512, max_kld=100.0, min_top1=0.0, max_ppl_ratio=100.0)
    tiny = suite_assets.trained_tiny_fox1()
    for name, checkpoint in (("SmolLM2-135M-Instruct", smollm2_checkpoint()), ("trained tiny Fox-1", tiny)):
        with tempfile.TemporaryDirectory() as work:
            rows = measure(checkpoint, settings, Path(work), variants)
        print(f"\n**{name}** ({rows[0][2].tokens_scored} tokens scored, against PyTorch fp32)\n")
        print("| variant | MB | mean KLD | top-1 agreement | PPL ratio |\n|---|---|---|---|---|")
        for label, mb, r in rows:
            print(f"| {label} | {mb:.1f} | {r.kld_mean:.5f} ± {r.kld_mean_ci95:.5f} | {r.top1_agreement:.2%} | {r.ppl_ratio:.4f} |")


if __name__ == "__main__":
    main()
