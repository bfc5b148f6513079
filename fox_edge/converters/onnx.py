"""Hugging Face Llama checkpoint -> an ONNX decoder folder for ONNX Runtime and onnxruntime-genai.

The graph is built node by node with the `onnx` package on ONNX Runtime's fused contrib ops, the
contracts documented in ONNX Runtime's ContribOperators.md:
- GroupQueryAttention with rotary fused and packed QKV: the KV cache holds only the kv heads, and it can
  share one buffer between past and present (what the runner and genai's past_present_share_buffer do);
- SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization: RMSNorm with the residual add fused;
- MatMulNBits (block-wise int4/int8 weights) and GatherBlockQuantized (the embedding read from the same
  packed weights as the tied lm_head).
Weights stream from the memory-mapped safetensors one matrix (or a block of embedding rows) at a time
straight into the external-data file, so peak memory stays near one matrix, whatever the model size.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from fox_edge.cpu import default_threads
from fox_edge.errors import FoxEdgeError, InvalidOption
from fox_edge.files import atomic_output, check_writable
from fox_edge.formats import (
    GENAI_CONFIG,
    LOGITS_TO_KEEP,
    ONNX_DATA,
    ONNX_MODEL,
    ONNX_TOKENIZER_FILES,
    ORT_MODEL,
    PAST_KEY,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_VALUE,
)
from fox_edge.hooks import OnMessage, Progress, ignore_message
from fox_edge.source import Checkpoint, local_folder, open_checkpoint
from fox_edge.spec import LlamaShape
from fox_edge.tokenizer import Vocab, read_vocab
from fox_edge.weights import SafetensorsWeights, check_llama_tensors

# ONNX protobuf and ORT's flatbuffer format cannot hold more than 2 GiB inline.
INLINE_LIMIT = 2**31 - 1
ALIGNMENT = 4096  # external data offsets page-aligned so ONNX Runtime can memory-map big initializers


@dataclass(frozen=True, kw_only=True)
class Precision:
    """How one --precision stores weights and computes activations."""

    activation: int  # TensorProto element type of hidden states, KV cache and float weights
    weight: str  # "float" or "nbits" (MatMulNBits); benchmarks/onnx_accuracy.py adds "dynamic-int8" to measure int8's choice
    bits: int = 0
    description: str = ""

    @property
    def numpy_activation(self) -> type:
        return np.float16 if self.activation == TensorProto.FLOAT16 else np.float32


PRECISIONS = {
    "fp32": Precision(activation=TensorProto.FLOAT, weight="float", description="float32 weights and activations"),
    "fp16": Precision(activation=TensorProto.FLOAT16, weight="float", description="float16 weights and activations"),
    # int8: MatMulNBits 8-bit beat dynamic int8 on speed and accuracy here (benchmarks/README.md, "ONNX int8").
    "int8": Precision(
        activation=TensorProto.FLOAT, weight="nbits", bits=8, description="8-bit block-wise weights (MatMulNBits), float32 activations"
    ),
    "int4": Precision(
        activation=TensorProto.FLOAT, weight="nbits", bits=4, description="4-bit block-wise weights (MatMulNBits), float32 activations"
    ),
}
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: the minimum compute type (4 = int8 with dynamic activations)


@dataclass(frozen=True, kw_only=True)
class OnnxOptions:
    precision: str = "int4"
    block_size: int = 32
    accuracy_level: int = 4
    intra_op_threads: int = 0  # written to genai_config.json; 0: this machine's core count
    # The defaults are what passed on SmolLM2 and the trained tiny Fox-1 with a mean KLD at most GGUF Q4_K_M's
    # (benchmarks/README.md, "Calibrated block scales"): asymmetric blocks and the tied embedding / lm_head at 8 bits.
    embedding_bits: int | None = 8  # the tied embedding / lm_head's bits (4 or 8); None: the precision's
    # The tied embedding / lm_head's block. None: 128 at 8 bits (a quarter of block 32's scales and block sums for every
    # token's lm_head to read, ~7 % of a decode step, for 2 % more KLD on the trained tiny Fox-1: benchmarks/README.md),
    # the weights' block_size at 4 bits.
    embedding_block_size: int | None = None
    symmetric: bool = False  # int8/int4 blocks (a 4-bit embedding stays symmetric: see GraphBuilder.embedding)
    # Asymmetric int4: each block's fractional zero point, which integer zero points round away, carried by extra
    # input columns (the input's block means) in the same MatMulNBits: see GraphBuilder.uses_block_offsets.
    block_offsets: bool = True


def embedding_layout(options: OnnxOptions, precision: Precision) -> tuple[int, int]:
    """The tied embedding / lm_head's (bits, block) in a block-wise conversion."""
    bits = options.embedding_bits or precision.bits
    return bits, options.embedding_block_size or (128 if bits == 8 else options.block_size)


def writes_block_offsets(options: OnnxOptions, precision: Precision) -> bool:
    """Whether the conversion carries asymmetric int4 blocks' fractional zero points (GraphBuilder.uses_block_offsets)."""
    return options.block_offsets and not options.symmetric and precision.bits == 4


@dataclass
class OnnxResult:
    output: Path
    precision: str
    n_initializers: int
    n_bytes: int  # external data written
    seconds: float
    vocab_source: str
    chat_template: str
    ort_model: Path | None = None


# --- block-wise quantization (MatMulNBits / GatherBlockQuantized layout) -------------------------------


def quantize_blockwise(
    weight: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool = True,
    importance: np.ndarray | None = None,
    integer_zero_points: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows of `weight` (N, K) -> (packed uint8 (N, blocks, block_size*bits/8), scales (N, blocks), zero points or None).

    Symmetric, as llama.cpp's Q4_0/Q8_0: the value of largest magnitude in each block maps to the lowest
    code and the zero point is MatMulNBits' implicit default (8 or 128), so none is stored. Asymmetric, as
    Q4_1: each block's min..max spans the codes, with an integer zero point per block (uint8, unpacked here).
    MatMulNBits also accepts float zero points, but ONNX Runtime's CPU kernels cannot prepack them and fall back
    to dequantizing every call: 100x slower, 0.5 tokens/s for full-size Fox-1 (benchmarks/README.md).
    `integer_zero_points=False` returns the float zero points (float32) for a caller that carries their fractions
    some other way (GraphBuilder's block offsets).

    `importance` (K,), the mean squared activation of each input column on calibration text (an importance
    matrix): each block's scale (and zero point) is then searched to minimise the importance-weighted squared
    error, sum_j importance_j (w_j - dequantized_j)^2, which is the expected error of the layer's output when
    inputs are uncorrelated. Without it, round to nearest from the block's extremes, as above.
    """
    n, k = weight.shape
    blocks = -(-k // block_size)
    if blocks * block_size != k:
        weight = np.pad(weight, ((0, 0), (0, blocks * block_size - k)))
    w = weight.reshape(n, blocks, block_size).astype(np.float32, copy=False)
    top = (1 << bits) - 1
    if importance is not None:
        block_importance = _block_importance(importance, blocks * block_size, block_size)
        scales, zero = _searched_scales(w, block_importance, bits, symmetric, integer_zero_points)
    elif symmetric:
        peak = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)[..., 0]
        scales = peak / -(1 << (bits - 1))
        zero = np.full_like(scales, 1 << (bits - 1))
    else:
        low = w.min(-1)
        scales = (w.max(-1) - low) / top
        zero = _zero_point(low, scales, top, integer_zero_points)
    codes = _codes(w, scales, zero, top)
    if symmetric:
        return _pack(codes, bits), scales.astype(np.float32), None
    return _pack(codes, bits), scales.astype(np.float32), zero.astype(np.uint8 if integer_zero_points else np.float32)


def _ordered_map(function: Callable, items: Iterator, workers: int | None = None) -> Iterator:
    """function over items on a few threads (numpy releases the GIL), results in order, at most `workers` in flight:
    the scale search is the slow part of a calibrated conversion, and chunks of rows are independent."""
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or default_threads()
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _codes(w: np.ndarray, scales: np.ndarray, zero: np.ndarray, top: int) -> np.ndarray:
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
    return np.clip(np.rint(w * inverse[..., None] + zero[..., None]), 0, top).astype(np.uint8)


def _zero_point(offset: np.ndarray, scale: np.ndarray, top: int, integer: bool = True) -> np.ndarray:
    """The code at which `offset + scale * code` is zero (w = scale * (code - zero point)); integer: rounded, within 0..top."""
    zero = -offset * np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    return _integer_zero_point(zero, top) if integer else zero


def _integer_zero_point(zero: np.ndarray, top: int) -> np.ndarray:
    return np.clip(np.rint(zero), 0, top)


def _with_offset_blocks(blocks: int, block_size: int) -> int:
    """A row's blocks plus those its block offsets take (one offset per block, block_size to a block)."""
    return blocks + -(-blocks // block_size)


def _block_importance(importance: np.ndarray, padded: int, block_size: int) -> np.ndarray:
    """(K,) -> (blocks, block_size), padding columns weighing nothing; a column never seen weighs a little."""
    values = np.asarray(importance, dtype=np.float32).reshape(-1)
    floor = max(float(values.mean()), 1e-12) * 1e-3
    values = np.maximum(values, floor)
    return np.pad(values, (0, padded - values.size)).reshape(-1, block_size)


# Candidate scales around the extremes' own, as llama.cpp's quantizers try them: the block's extreme maps to
# the last code plus these offsets (in codes), before the weighted least-squares refit.
SCALE_OFFSETS = tuple(0.1 * i for i in range(-9, 10))


def _searched_scales(
    w: np.ndarray, importance: np.ndarray, bits: int, symmetric: bool, integer_zero: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the (scale, zero point) with the least importance-weighted squared error among candidates: each
    candidate rounds the block to codes, then the scale (and, asymmetric, the offset; `integer_zero`: rounded to an
    integer zero point and the scale refit to it) is refit to those codes by weighted least squares. The plain
    round-to-nearest choice is a candidate too, so the search never does worse.

    The codes and residuals are computed in place: this search is most of a calibrated conversion's time."""
    top = (1 << bits) - 1
    half = 1 << (bits - 1)
    iw = importance * w
    sw = np.broadcast_to(importance.sum(-1), w.shape[:2])  # sum(i), sum(i w) per block: the refits' constants
    sx = iw.sum(-1)
    best_error = np.full(w.shape[:2], np.inf, dtype=np.float64)
    best_scale = np.zeros(w.shape[:2], dtype=np.float32)
    best_zero = np.zeros(w.shape[:2], dtype=np.float32)

    def codes(scale: np.ndarray, zero: np.ndarray, centred: bool = True) -> np.ndarray:
        """The codes _codes packs as float32, computed in place; `centred`: minus the zero point."""
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = w * inverse[..., None]
        q += zero[..., None]
        np.rint(q, out=q)
        np.clip(q, 0, top, out=q)
        if centred:
            q -= zero[..., None]
        return q

    def sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sum(i w q), sum(i q^2) per block, summed pairwise: einsum's running sums move the 8-bit refits."""
        return (iw * q).sum(-1), (importance * q * q).sum(-1)

    def consider(scale: np.ndarray, zero: np.ndarray, fit: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """Keep (scale, zero) where its error is the least so far; `fit`: also return its codes' sums."""
        scale = np.where(np.isfinite(scale), scale, 0).astype(np.float32)
        q = codes(scale, zero)
        fitted = sums(q) if fit else None
        q *= -scale[..., None]
        q += w  # the residual, whose weighted square is summed directly: expanding it cancels at 8 bits
        error = np.einsum("bk,nbk,nbk->nb", importance, q, q)
        better = error < best_error
        best_error[better], best_scale[better], best_zero[better] = error[better], scale[better], zero[better]
        return fitted

    if symmetric:
        peak = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)[..., 0]
        zero = np.full(w.shape[:2], half, dtype=np.float32)
        consider(peak / -half, zero)
        for offset in SCALE_OFFSETS:
            scale = peak / -(half + offset)
            # The scale that fits these codes best: sum(iw q) / sum(i q^2).
            numerator, denominator = sums(codes(scale, zero))
            consider(np.divide(numerator, denominator, out=scale.copy(), where=denominator > 0), zero)
        return best_scale, best_zero
    low, high = w.min(-1), w.max(-1)
    span = high - low
    plain = span / top
    consider(plain, _zero_point(low, plain, top, integer_zero))
    for offset in SCALE_OFFSETS:
        scale = span / (top + offset)
        start_zero = _zero_point(low, scale, top, integer=False)
        q = codes(scale, start_zero, centred=False)
        # w ~ a q + b by weighted least squares; then scale a and zero point -b / a.
        sxq, sqq = sums(q)
        sq = (importance * q).sum(-1)
        determinant = sw * sqq - sq * sq
        ok = determinant > 1e-20 * np.maximum(sw * sqq, 1e-30)
        a = np.divide(sw * sxq - sx * sq, determinant, out=scale.copy(), where=ok)
        b = np.divide(sqq * sx - sq * sxq, determinant, out=low.copy(), where=ok)
        a = np.where(a > 0, a, scale)
        zero = _zero_point(b, a, top, integer_zero)
        if not integer_zero:
            consider(a, zero)
            continue
        numerator, denominator = consider(a, zero, fit=True)
        # The scale that fits the codes best around that integer zero point: sum(iw q) / sum(i q^2), q = codes - zero.
        consider(np.divide(numerator, denominator, out=a.copy(), where=denominator > 0), zero)
    return best_scale, best_zero


def dequantize_blockwise(packed: np.ndarray, scales: np.ndarray, bits: int, k: int, zero_points: np.ndarray | None = None) -> np.ndarray:
    """The inverse of quantize_blockwise."""
    zero = (1 << (bits - 1)) if zero_points is None else zero_points[..., None].astype(np.float32)
    values = (_unpack(packed, bits).astype(np.float32) - zero) * scales[..., None]
    return values.reshape(values.shape[0], -1)[:, :k]


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros_like(codes[..., :1])], -1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # element 0 in the low nibble


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], -1).reshape(*packed.shape[:-1], -1)


# --- external data ---------------------------------------------------------------------------------


class ExternalData:
    """Initializers whose bytes are appended to one external-data file as they are produced."""

    def __init__(self, path: Path, progress: Progress | None, total: int):
        self.file = path.open("wb")
        self.location = ONNX_DATA
        self.initializers: list[TensorProto] = []
        self.progress, self.total, self.done = progress, total, 0

    def add(self, name: str, elem_type: int, shape: tuple[int, ...], chunks: Iterator[np.ndarray] | np.ndarray) -> TensorProto:
        """Write `chunks` (C order, already of the element type) and declare them as initializer `name`."""
        self.file.write(b"\0" * (-self.file.tell() % ALIGNMENT))
        offset = self.file.tell()
        for chunk in [chunks] if isinstance(chunks, np.ndarray) else chunks:
            np.ascontiguousarray(chunk).tofile(self.file)
            self.done += chunk.nbytes
            if self.progress:
                self.progress(self.done, self.total, name)
        return self.alias(name, elem_type, shape, offset, self.file.tell() - offset)

    def alias(self, name: str, elem_type: int, shape: tuple[int, ...], offset: int, length: int) -> TensorProto:
        """Declare an initializer over bytes already written (one copy on disk, two shapes in the graph)."""
        tensor = TensorProto(name=name, data_type=elem_type, dims=list(shape), data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return tensor

    def close(self) -> None:
        self.file.close()


def _external_span(tensor: TensorProto) -> tuple[int, int]:
    entries = {e.key: e.value for e in tensor.external_data}
    return int(entries["offset"]), int(entries["length"])


# --- the graph ---------------------------------------------------------------------------------------


@dataclass
class GraphBuilder:
    """The decoder graph, node by node. `precision_for` and `linear` are where a variant differs
    (benchmarks/onnx_accuracy.py builds dynamic int8 that way, to measure the int8 choice)."""

    shape: LlamaShape
    precision: Precision
    options: OnnxOptions
    weights: SafetensorsWeights
    data: ExternalData
    # Checkpoint weight name -> mean squared activation per input column (calibration): block scales are searched.
    importance: Mapping[str, np.ndarray] = field(default_factory=dict)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inline: list[TensorProto] = field(default_factory=list)
    _block_means: dict[str, str] = field(default_factory=dict)  # input -> input with its block means (with_block_means)

    @classmethod
    def precision_for(cls, options: OnnxOptions) -> Precision:
        """The Precision of options.precision, after checking every option."""
        return _precision(options)

    def node(self, op: str, inputs: list[str], name: str, n_outputs: int = 1, domain: str = "", **attributes) -> list[str]:
        outputs = [f"{name}/output_{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attributes))
        return outputs

    def constant(self, name: str, array: np.ndarray) -> str:
        if not any(t.name == name for t in self.inline):  # shared by the nodes that name it
            self.inline.append(onnx.numpy_helper.from_array(array, name))
        return name

    def float_tensor(self, name: str, rows: Iterator[np.ndarray], shape: tuple[int, ...]) -> str:
        dtype = self.precision.numpy_activation
        self.data.add(name, self.precision.activation, shape, (r.astype(dtype) for r in rows))
        return name

    def source_rows(self, names: list[str]) -> Iterator[np.ndarray]:
        for name in names:
            yield from self.weights.float32_rows(name)

    def linear(self, x: str, sources: list[str], node_name: str) -> str:
        """x @ W.T for the checkpoint matrices `sources` stacked by rows (fused q/k/v)."""
        name = node_name.strip("/").replace("/", ".")  # initializers: model.layers.0.attn.qkv_proj.qweight
        k = self.weights.refs[sources[0]].shape[1]
        n = sum(self.weights.refs[s].shape[0] for s in sources)
        kind = self.precision.weight
        if kind == "float":
            # FusedMatMul with transB reads the checkpoint's (out, in) layout as is: no transpose to hold in memory.
            w = self.float_tensor(f"{name}.weight", self.source_rows(sources), (n, k))
            return self.node("FusedMatMul", [x, w], f"{node_name}/MatMul", domain="com.microsoft", transB=1)[0]
        bits, symmetric = self.precision.bits, self.options.symmetric
        if self.uses_block_offsets(k):
            tensors = self.nbits_tensors(name, sources, n, k, bits, symmetric, block_offsets=True)
            return self.matmul_nbits([self.with_block_means(x, k), *tensors], node_name, n, k + k // self.options.block_size, bits)
        return self.matmul_nbits([x, *self.nbits_tensors(name, sources, n, k, bits, symmetric)], node_name, n, k, bits)

    def uses_block_offsets(self, k: int) -> bool:
        """Integer zero points cost accuracy where a block's best offset falls between codes (SmolLM2's weights lie on
        a Q4_1 grid, whose offsets are floats). Float zero points would keep it, but ONNX Runtime's CPU kernels run
        them 100x slower. So each block's fractional part, offset = scale * (integer zero point - float zero point),
        rides in the same MatMulNBits: the input gains K / block_size columns, its block means, and each output row
        gains the matching offsets times the block size, themselves 4-bit blocks: sum over a block of x * offset =
        offset * block size * mean(x)."""
        return writes_block_offsets(self.options, self.precision) and k % self.options.block_size == 0

    def with_block_means(self, x: str, k: int) -> str:
        """x (..., K) -> (..., K + K / block_size): x and the means of its blocks (computed once per input; the offsets
        are stored times the block size). One AveragePool over the last axis, which reads (batch, positions, K) as
        (batch, channels, length): a decode step is short enough for ONNX Runtime's per-node cost to show, and
        Reshape + ReduceSum is two nodes."""
        name = f"{x}/with_block_means"
        if name not in self._block_means:
            block = self.options.block_size
            means = self.node("AveragePool", [x], f"{name}/AveragePool", kernel_shape=[block], strides=[block])[0]
            self._block_means[name] = self.node("Concat", [x, means], f"{name}/Concat", axis=-1)[0]
        return self._block_means[name]

    def matmul_nbits(self, inputs: list[str], name: str, n: int, k: int, bits: int, block: int | None = None) -> str:
        return self.node(
            "MatMulNBits", inputs, f"{name}/MatMulNBits", domain="com.microsoft",
            K=k, N=n, bits=bits, block_size=block or self.options.block_size, accuracy_level=self.options.accuracy_level,
        )[0]  # fmt: skip

    def nbits_tensors(
        self,
        name: str,
        sources: list[str],
        n: int,
        k: int,
        bits: int,
        symmetric: bool = True,
        block_offsets: bool = False,
        block: int | None = None,
    ) -> list[str]:
        """Packed weights, scales (and integer zero points when asymmetric, packed as the weights) as MatMulNBits takes
        them, in blocks of `block` (default: the options'); `block_offsets`: each row followed by its blocks' fractional
        offsets (see uses_block_offsets)."""
        block = block or self.options.block_size
        blocks, dtype = -(-k // block), self.precision.numpy_activation
        if block_offsets:
            blocks = _with_offset_blocks(blocks, block)
        scales, zeros = [], []

        def quantize_rows(rows: np.ndarray, importance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            if not block_offsets:
                return quantize_blockwise(rows, bits, block, symmetric, importance)
            packed, row_scales, float_zeros = quantize_blockwise(rows, bits, block, False, importance, integer_zero_points=False)
            row_zeros = _integer_zero_point(float_zeros, (1 << bits) - 1)
            offsets = row_scales * (row_zeros - float_zeros) * block  # with_block_means feeds the blocks' means
            offset_packed, offset_scales, offset_zeros = quantize_blockwise(offsets, bits, block, False)
            return (
                np.concatenate([packed, offset_packed], 1),
                np.concatenate([row_scales, offset_scales], 1),
                np.concatenate([row_zeros.astype(np.uint8), offset_zeros], 1),
            )

        def packed_rows() -> Iterator[np.ndarray]:
            importance = self.importance.get(sources[0])  # fused q/k/v or gate/up share their input
            work = partial(quantize_rows, importance=importance)
            # The search is worth the cores; round to nearest is quick and stays one chunk in memory at a time.
            for packed, row_scales, row_zeros in _ordered_map(work, self.source_rows(sources), None if importance is not None else 1):
                scales.append(row_scales)
                zeros.append(row_zeros)
                yield packed

        self.data.add(f"{name}.qweight", TensorProto.UINT8, (n, blocks, block * bits // 8), packed_rows())
        self.data.add(f"{name}.scales", self.precision.activation, (n, blocks), np.concatenate(scales).astype(dtype))
        if symmetric:
            return [f"{name}.qweight", f"{name}.scales"]
        zeros = _pack(np.concatenate(zeros), bits)
        self.data.add(f"{name}.zero_points", TensorProto.UINT8, zeros.shape, zeros)
        return [f"{name}.qweight", f"{name}.scales", f"{name}.zero_points"]

    def embedding(self, ids: str) -> tuple[str, Callable[[str], str]]:
        """The token embedding, and a function applying the lm_head (tied: the same stored weights)."""
        s, kind = self.shape, self.precision.weight
        tied = s.tie_word_embeddings or "lm_head.weight" not in self.weights
        source = "model.embed_tokens.weight"
        if kind != "float":  # block-wise weights
            bits, block = embedding_layout(self.options, self.precision)
            # Asymmetric only at 8 bits, where both ops take the same (unpacked) zero points; at 4 bits they would
            # need GatherBlockQuantized to read MatMulNBits' packed layout.
            symmetric = self.options.symmetric or bits != 8
            tensors = self.nbits_tensors("model.embed_tokens", [source], s.vocab_size, s.hidden_size, bits, symmetric, block=block)
            # GatherBlockQuantized wants scales (and zero points) of the data's rank: second views of the same bytes.
            blocks = -(-s.hidden_size // block)
            stored = self.data.initializers[-len(tensors) + 1 :]
            views = [self.data.alias(f"{t.name}_3d", t.data_type, (s.vocab_size, blocks, 1), *_external_span(t)).name for t in stored]
            gathered = self.node(
                "GatherBlockQuantized", [tensors[0], ids, *views], "/model/embed_tokens/GatherBlockQuantized", domain="com.microsoft",
                gather_axis=0, quantize_axis=2, block_size=block, bits=bits,
            )[0]  # fmt: skip
            hidden_shape = self.constant("/model/embed_tokens/shape", np.array([0, 0, -1], np.int64))
            embedded = self.node("Reshape", [gathered, hidden_shape], "/model/embed_tokens/Reshape")[0]
            if s.hidden_size % block:
                embedded = self.node("Slice", [embedded, *self._slice_last(s.hidden_size)], "/model/embed_tokens/Slice")[0]
            if tied:
                return embedded, lambda x: self.matmul_nbits([x, *tensors], "/model/lm_head", s.vocab_size, s.hidden_size, bits, block)
        else:
            table = self.float_tensor(source, self.weights.float32_rows(source), (s.vocab_size, s.hidden_size))
            embedded = self.node("Gather", [table, ids], "/model/embed_tokens/Gather")[0]
            if tied:
                return embedded, lambda x: self.node("FusedMatMul", [x, table], "/model/lm_head/MatMul", domain="com.microsoft", transB=1)[
                    0
                ]
        return embedded, lambda x: self.linear(x, ["lm_head.weight"], "/model/lm_head")

    def _slice_last(self, size: int) -> list[str]:
        return [
            self.constant("/model/embed_tokens/starts", np.array([0], np.int64)),
            self.constant("/model/embed_tokens/ends", np.array([size], np.int64)),
            self.constant("/model/embed_tokens/axes", np.array([-1], np.int64)),
        ]

    def norm(self, source: str, name: str) -> str:
        return self.float_tensor(f"{name}.weight", iter([self.weights.float32(source)]), (self.shape.hidden_size,))

    def rotary_caches(self) -> tuple[str, str]:
        s = self.shape
        inv_freq = 1.0 / (s.rope_theta ** (np.arange(0, s.head_size, 2, dtype=np.float64) / s.head_size))
        angles = np.outer(np.arange(s.context_length, dtype=np.float64), inv_freq)
        dtype = self.precision.numpy_activation
        cos = self.float_tensor("cos_cache", iter([np.cos(angles).astype(dtype)]), angles.shape)
        sin = self.float_tensor("sin_cache", iter([np.sin(angles).astype(dtype)]), angles.shape)
        return cos, sin

    def build(self) -> onnx.ModelProto:
        s, act = self.shape, self.precision.activation
        batch, seq, total, past = "batch_size", "sequence_length", "total_sequence_length", "past_sequence_length"
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, total]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, "logits_length", s.vocab_size])]
        # GroupQueryAttention's lengths: seqlens_k is each row's last position (tokens - 1), plus the total length.
        mask_sum = self.node(
            "ReduceSum", ["attention_mask", self.constant("/model/attn_mask/axes", np.array([1], np.int64))], "/model/attn_mask/ReduceSum"
        )[0]
        last = self.node("Sub", [mask_sum, self.constant("/model/attn_mask/one", np.array(1, np.int64))], "/model/attn_mask/Sub")[0]
        seqlens_k = self.node("Cast", [last], "/model/attn_mask/seqlens_k", to=TensorProto.INT32)[0]
        mask_shape = self.node("Shape", ["attention_mask"], "/model/attn_mask/Shape", start=1, end=2)[0]
        total_len = self.node(
            "Cast", [self.node("Squeeze", [mask_shape], "/model/attn_mask/Squeeze")[0]], "/model/attn_mask/total", to=TensorProto.INT32
        )[0]

        hidden, lm_head = self.embedding("input_ids")
        cos, sin = self.rotary_caches()
        residual, pending = hidden, None  # pending: the last block's output, added to the residual by the next norm
        for i in range(s.n_layers):
            prefix, name = f"model.layers.{i}", f"/model/layers.{i}"
            x, residual = self.add_and_norm(pending, residual, f"{prefix}.input_layernorm.weight", f"{name}/input_layernorm")
            qkv = self.linear(x, [f"{prefix}.self_attn.{p}_proj.weight" for p in "qkv"], f"{name}/attn/qkv_proj")
            inputs += [
                helper.make_tensor_value_info(n.format(i), act, [batch, s.n_kv_heads, past, s.head_size]) for n in (PAST_KEY, PAST_VALUE)
            ]
            attention, present_key, present_value = self.node(
                "GroupQueryAttention", [qkv, "", "", PAST_KEY.format(i), PAST_VALUE.format(i), seqlens_k, total_len, cos, sin],
                f"{name}/attn/GroupQueryAttention", n_outputs=3, domain="com.microsoft",
                num_heads=s.n_heads, kv_num_heads=s.n_kv_heads, do_rotary=1, rotary_interleaved=0,
                scale=float(s.head_size**-0.5), local_window_size=-1,
            )  # fmt: skip
            self.nodes.append(helper.make_node("Identity", [present_key], [PRESENT_KEY.format(i)], name=f"{name}/present_key"))
            self.nodes.append(helper.make_node("Identity", [present_value], [PRESENT_VALUE.format(i)], name=f"{name}/present_value"))
            outputs += [
                helper.make_tensor_value_info(n.format(i), act, [batch, s.n_kv_heads, total, s.head_size])
                for n in (PRESENT_KEY, PRESENT_VALUE)
            ]
            attended = self.linear(attention, [f"{prefix}.self_attn.o_proj.weight"], f"{name}/attn/o_proj")
            x, residual = self.add_and_norm(
                attended, residual, f"{prefix}.post_attention_layernorm.weight", f"{name}/post_attention_layernorm"
            )
            # Two matrices, not one packed gate_up and a Split: 5 % faster decoding with MatMulNBits on 2 cores (benchmarks/README.md).
            gate = self.linear(x, [f"{prefix}.mlp.gate_proj.weight"], f"{name}/mlp/gate_proj")
            up = self.linear(x, [f"{prefix}.mlp.up_proj.weight"], f"{name}/mlp/up_proj")
            silu = self.node("Mul", [gate, self.node("Sigmoid", [gate], f"{name}/mlp/Sigmoid")[0]], f"{name}/mlp/silu")[0]
            pending = self.linear(
                self.node("Mul", [silu, up], f"{name}/mlp/Mul")[0], [f"{prefix}.mlp.down_proj.weight"], f"{name}/mlp/down_proj"
            )
        # Logits for the last `logits_to_keep` positions (0 = all). An overridable initializer: genai leaves it at 0,
        # fox-edge's runner asks for 1 while generating, which spares the 256K-wide lm_head for every prompt token.
        keep = self.constant(LOGITS_TO_KEEP, np.array([0], np.int64))
        inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
        starts = self.node("Neg", [keep], "/model/logits_to_keep/Neg")[0]
        ends = self.constant("/model/logits_to_keep/ends", np.array([np.iinfo(np.int64).max], np.int64))
        axes = self.constant("/model/logits_to_keep/axes", np.array([1], np.int64))
        pending = self.node("Slice", [pending, starts, ends, axes], "/model/logits_to_keep/Slice_hidden")[0]
        residual = self.node("Slice", [residual, starts, ends, axes], "/model/logits_to_keep/Slice_residual")[0]
        x, _ = self.add_and_norm(pending, residual, "model.norm.weight", "/model/norm")
        logits = lm_head(x)
        if act != TensorProto.FLOAT:
            logits = self.node("Cast", [logits], "/model/lm_head/Cast", to=TensorProto.FLOAT)[0]
        self.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/model/logits"))

        graph = helper.make_graph(self.nodes, "fox-edge-llama", inputs, outputs, initializer=self.inline + self.data.initializers)
        opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets, producer_name="fox-edge", ir_version=10)

    def add_and_norm(self, pending: str | None, residual: str, source: str, name: str) -> tuple[str, str]:
        """RMSNorm(pending + residual) and the new residual; the first layer has nothing pending."""
        gamma = self.norm(source, name)
        eps = float(self.shape.rms_norm_eps)
        if pending is None:
            return self.node("SimplifiedLayerNormalization", [residual, gamma], f"{name}/SimplifiedLayerNorm", axis=-1, epsilon=eps)[
                0
            ], residual
        normed, _, _, summed = self.node(
            "SkipSimplifiedLayerNormalization",
            [pending, residual, gamma],
            f"{name}/SkipLayerNorm",
            n_outputs=4,
            domain="com.microsoft",
            epsilon=eps,
        )
        return normed, summed


# --- folder ------------------------------------------------------------------------------------------


def estimate_bytes(shape: LlamaShape, precision: Precision, options: OnnxOptions) -> int:
    """External data the conversion will write (what progress counts and format limits are checked against)."""
    s, block = shape, options.block_size
    act = 2 if precision.activation == TensorProto.FLOAT16 else 4
    per_layer = [
        ((s.n_heads + 2 * s.n_kv_heads) * s.head_size, s.hidden_size),
        (s.hidden_size, s.n_heads * s.head_size),
        (2 * s.intermediate_size, s.hidden_size),
        (s.hidden_size, s.intermediate_size),
    ]
    embeddings = [(s.vocab_size, s.hidden_size)] * (1 if s.tie_word_embeddings else 2)
    if precision.weight == "float":
        weights = sum(n * k * act for n, k in per_layer * s.n_layers + embeddings)
    else:

        def blockwise(matrices: list[tuple[int, int]], bits: int, offsets: bool = False, block: int = block) -> int:
            blocks = [-(-k // block) for _, k in matrices]
            if offsets:  # GraphBuilder.uses_block_offsets: a row's offsets are blocks of their own
                blocks = [_with_offset_blocks(b, block) for b in blocks]
            return sum(n * b * (block * bits // 8 + act) for (n, _), b in zip(matrices, blocks, strict=True))

        embedding_bits, embedding_block = embedding_layout(options, precision)
        weights = blockwise(per_layer * s.n_layers, precision.bits, writes_block_offsets(options, precision)) + blockwise(
            embeddings, embedding_bits, block=embedding_block
        )
    return weights + (2 * s.n_layers + 1) * s.hidden_size * act + s.context_length * s.head_size * act


def check_onnx_conversion(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: OnnxOptions = OnnxOptions(),
    *,
    ort_format: bool = False,
    builder: type[GraphBuilder] = GraphBuilder,
) -> tuple[Precision, Checkpoint, SafetensorsWeights, int]:
    """Everything convert_to_onnx refuses, refused before any work (a calibration pass comes first, and takes minutes):
    the options, the output, the checkpoint and its tensors. Returns what the conversion goes on with."""
    precision = builder.precision_for(options)
    check_writable(output, folder=True, source_folders=[local_folder(source)])
    checkpoint = open_checkpoint(source)
    total = estimate_bytes(checkpoint.shape, precision, options)
    if ort_format and total > INLINE_LIMIT:
        raise FoxEdgeError(
            f"{{ort_format}} stores weights inside one flatbuffer, limited to 2 GiB; {checkpoint.name} at {options.precision} needs "
            f"{total / 2**30:.1f} GiB: use {{precision}} int4 or int8, or drop {{ort_format}}",
            ["ort_format", "precision"],
        )
    weights = SafetensorsWeights(checkpoint.weight_files)
    check_llama_tensors(weights, checkpoint.shape)
    return precision, checkpoint, weights, total


def convert_to_onnx(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: OnnxOptions = OnnxOptions(),
    *,
    ort_format: bool = False,
    chat_template: str | None = None,
    progress: Progress | None = None,
    on_message: OnMessage = ignore_message,
    builder: type[GraphBuilder] = GraphBuilder,
    importance: Mapping[str, np.ndarray] | None = None,
) -> OnnxResult:
    """Convert a Llama-architecture Hugging Face checkpoint to an ONNX model folder at `output`.

    `chat_template` replaces the checkpoint's; `on_message` receives notes and warnings, one line each.
    `importance` (checkpoint weight name -> mean squared input activation per column, from calibration text:
    fox_edge.quant.imatrix.checkpoint_importance) makes int8/int4 blocks search their scales against it."""
    started = time.monotonic()
    precision, checkpoint, weights, total = check_onnx_conversion(source, output, options, ort_format=ort_format, builder=builder)
    shape = checkpoint.shape
    vocab = read_vocab(checkpoint, on_message, chat_template=chat_template)
    try:
        with atomic_output(output) as folder:
            folder.mkdir()
            data = ExternalData(folder / ONNX_DATA, progress, total)
            try:
                model = builder(shape, precision, options, weights, data, importance or {}).build()
            finally:
                data.close()
            _set_metadata(model, checkpoint, options, precision, bool(importance))
            onnx.save_model(model, folder / ONNX_MODEL)  # initializers already point at the external file
            _write_tokenizer(folder, checkpoint, vocab)
            _write_genai_config(folder, checkpoint, vocab, options, precision)
            ort_model = None
            if ort_format:
                on_message("writing the ORT-format model")
                ort_model = write_ort_format(folder)
            n_bytes = (folder / ONNX_DATA).stat().st_size
    except OSError as exc:
        raise FoxEdgeError(f"cannot write {output}: {exc.strerror or exc}; free disk space or choose another output folder") from None
    finally:
        weights.close()
    output = Path(output)
    return OnnxResult(
        output=output, precision=options.precision, n_initializers=len(model.graph.initializer), n_bytes=n_bytes,
        seconds=time.monotonic() - started, vocab_source=vocab.source, chat_template=vocab.chat_template_source,
        ort_model=output / ORT_MODEL if ort_model else None,
    )  # fmt: skip


def _precision(options: OnnxOptions) -> Precision:
    if options.precision not in PRECISIONS:
        raise InvalidOption(f"unknown {{precision}} {options.precision!r}; choose one of {', '.join(PRECISIONS)}", ["precision"])
    for option, block in (("block_size", options.block_size), ("embedding_block_size", options.embedding_block_size)):
        if block is not None and (block < 16 or block & (block - 1)):
            raise InvalidOption(
                f"{{{option}}} {block} is not a power of two of at least 16 (MatMulNBits' rule); use 32, 64 or 128", [option]
            )
    if options.accuracy_level not in ACCURACY_LEVELS:
        raise InvalidOption(
            f"{{accuracy_level}} {options.accuracy_level} is not one of {ACCURACY_LEVELS}; 4 (int8 compute) is the fast CPU choice",
            ["accuracy_level"],
        )
    if options.embedding_bits not in (None, 4, 8):
        raise InvalidOption(f"{{embedding_bits}} {options.embedding_bits} is not 4 or 8", ["embedding_bits"])
    return PRECISIONS[options.precision]


def _set_metadata(model: onnx.ModelProto, checkpoint: Checkpoint, options: OnnxOptions, precision: Precision, calibrated: bool) -> None:
    metadata = {
        "general.name": checkpoint.name,
        "general.source": checkpoint.hub_id or checkpoint.path.resolve().name,  # never the user's folder layout
        "fox_edge.precision": options.precision if precision in PRECISIONS.values() else precision.weight,
        "fox_edge.weights": precision.description,
        "fox_edge.block_size": str(options.block_size) if precision.weight == "nbits" else "",
        "fox_edge.accuracy_level": str(options.accuracy_level) if precision.weight == "nbits" else "",
        "fox_edge.symmetric": str(options.symmetric).lower() if precision.weight == "nbits" else "",
        "fox_edge.embedding_bits": str(options.embedding_bits or precision.bits) if precision.weight != "float" else "",
        "fox_edge.embedding_block_size": str(embedding_layout(options, precision)[1]) if precision.weight == "nbits" else "",
        "fox_edge.block_offsets": str(writes_block_offsets(options, precision)).lower() if precision.weight == "nbits" else "",
        "fox_edge.block_scales": ("searched against an importance matrix" if calibrated else "round to nearest")
        if precision.weight == "nbits"
        else "",
    }
    onnx.helper.set_model_props(model, {k: v for k, v in metadata.items() if v})


def _write_tokenizer(folder: Path, checkpoint: Checkpoint, vocab: Vocab) -> None:
    for name in ONNX_TOKENIZER_FILES:
        if (checkpoint.path / name).is_file():
            shutil.copyfile(checkpoint.path / name, folder / name)
    # The chat template (the checkpoint's or Fox-1's fallback) travels in tokenizer_config.json, where genai reads it.
    config = dict(checkpoint.tokenizer_config)
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    config.setdefault("add_bos_token", vocab.add_bos)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _write_genai_config(folder: Path, checkpoint: Checkpoint, vocab: Vocab, options: OnnxOptions, precision: Precision) -> None:
    s = checkpoint.shape
    eos = [vocab.special_ids["eos"]] if "eos" in vocab.special_ids else []
    eos += [t for t in vocab.end_of_turn_ids if t not in eos]
    threads = options.intra_op_threads or default_threads()
    config = {
        "model": {
            "bos_token_id": vocab.special_ids.get("bos", 0),
            "context_length": s.context_length,
            "decoder": {
                # genai's own default threading ran at single-core speed (FOX1.md); set it explicitly.
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": [], "intra_op_num_threads": threads},
                "filename": ONNX_MODEL,
                "head_size": s.head_size,
                "hidden_size": s.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": PAST_KEY.replace("{}", "%d"),
                    "past_value_names": PAST_VALUE.replace("{}", "%d"),
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": PRESENT_KEY.replace("{}", "%d"),
                    "present_value_names": PRESENT_VALUE.replace("{}", "%d"),
                },
                "num_attention_heads": s.n_heads,
                "num_hidden_layers": s.n_layers,
                "num_key_value_heads": s.n_kv_heads,
            },
            "eos_token_id": eos if len(eos) != 1 else eos[0],
            "pad_token_id": vocab.special_ids.get("pad", eos[0] if eos else 0),
            "type": "llama",
            "vocab_size": s.vocab_size,
        },
        "search": {
            "do_sample": False,
            "max_length": s.context_length,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
    (folder / GENAI_CONFIG).write_text(json.dumps(config, indent=2))


def write_ort_format(folder: Path) -> Path:
    """model.onnx -> model.ort plus model.required_operators.config, the operator list for a reduced (mobile) build.

    ONNX Runtime's own converter, optimizations fixed for ARM. The tied embedding stays shared: it is one
    initializer read directly by MatMulNBits and GatherBlockQuantized, so constant folding has nothing to
    duplicate (only the embedding's scales, which the two ops want in different ranks, exist twice).
    """
    import contextlib
    import io
    import logging

    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    onnxruntime.set_default_logger_severity(3)
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        convert_onnx_models_to_ort(folder / ONNX_MODEL, folder, [OptimizationStyle.Fixed], target_platform="arm")
    if not (folder / ORT_MODEL).is_file():
        raise FoxEdgeError(
            f"ONNX Runtime's converter wrote no {ORT_MODEL}; drop {{ort_format}} and convert the ONNX model on its own", ["ort_format"]
        )
    return folder / ORT_MODEL
