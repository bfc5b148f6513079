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

import dataclasses
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

from fox_edge.converters.onnx_plan import BlockLayout, OnnxOptions, OnnxPlan, estimate_bytes
from fox_edge.cpu import default_threads
from fox_edge.errors import FoxEdgeError
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
    ROTARY_CACHES,
)
from fox_edge.hooks import OnMessage, Progress, ignore_message
from fox_edge.quant.blockwise import integer_zero_point, pack, quantize_blockwise, with_offset_blocks
from fox_edge.source import Checkpoint, local_folder, open_checkpoint
from fox_edge.spec import LlamaShape, fused_matrices
from fox_edge.tokenizer import Vocab, read_vocab
from fox_edge.weights import SafetensorsWeights, check_llama_tensors

# ONNX protobuf and ORT's flatbuffer format cannot hold more than 2 GiB inline.
INLINE_LIMIT = 2**31 - 1
ALIGNMENT = 4096  # external data offsets page-aligned so ONNX Runtime can memory-map big initializers


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


# --- threads ----------------------------------------------------------------------------------------


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
    """The decoder graph, node by node, as the plan lays it out."""

    shape: LlamaShape
    plan: OnnxPlan
    weights: SafetensorsWeights
    data: ExternalData
    # Checkpoint weight name -> mean squared activation per input column (calibration): block scales are searched.
    importance: Mapping[str, np.ndarray] = field(default_factory=dict)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inline: list[TensorProto] = field(default_factory=list)
    _block_means: dict[str, str] = field(default_factory=dict)  # input -> input with its block means (with_block_means)

    def node(self, op: str, inputs: list[str], name: str, n_outputs: int = 1, domain: str = "", **attributes) -> list[str]:
        outputs = [f"{name}/output_{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attributes))
        return outputs

    def constant(self, name: str, array: np.ndarray) -> str:
        if not any(t.name == name for t in self.inline):  # shared by the nodes that name it
            self.inline.append(onnx.numpy_helper.from_array(array, name))
        return name

    def float_tensor(self, name: str, rows: Iterator[np.ndarray], shape: tuple[int, ...]) -> str:
        dtype = self.plan.numpy_activation
        self.data.add(name, self.plan.activation, shape, (r.astype(dtype) for r in rows))
        return name

    def source_rows(self, names: list[str]) -> Iterator[np.ndarray]:
        for name in names:
            yield from self.weights.float32_rows(name)

    def linear(self, x: str, sources: list[str], node_name: str) -> str:
        """x @ W.T for the checkpoint matrices `sources` stacked by rows (fused q/k/v)."""
        name = node_name.strip("/").replace("/", ".")  # initializers: model.layers.0.attn.qkv_proj.qweight
        k = self.weights.refs[sources[0]].shape[1]
        n = sum(self.weights.refs[s].shape[0] for s in sources)
        layout = self.plan.matrices
        if layout is None:
            # FusedMatMul with transB reads the checkpoint's (out, in) layout as is: no transpose to hold in memory.
            w = self.float_tensor(f"{name}.weight", self.source_rows(sources), (n, k))
            return self.node("FusedMatMul", [x, w], f"{node_name}/MatMul", domain="com.microsoft", transB=1)[0]
        if self.uses_block_offsets(k):
            tensors = self.nbits_tensors(name, sources, n, k, layout, block_offsets=True)
            return self.matmul_nbits([self.with_block_means(x, k), *tensors], node_name, n, k + k // layout.block_size, layout)
        return self.matmul_nbits([x, *self.nbits_tensors(name, sources, n, k, layout)], node_name, n, k, layout)

    def uses_block_offsets(self, k: int) -> bool:
        """Integer zero points cost accuracy where a block's best offset falls between codes (SmolLM2's weights lie on
        a Q4_1 grid, whose offsets are floats). Float zero points would keep it, but ONNX Runtime's CPU kernels run
        them 100x slower. So each block's fractional part, offset = scale * (integer zero point - float zero point),
        rides in the same MatMulNBits: the input gains K / block_size columns, its block means, and each output row
        gains the matching offsets times the block size, themselves 4-bit blocks: sum over a block of x * offset =
        offset * block size * mean(x)."""
        return self.plan.offsets_for(k)

    def with_block_means(self, x: str, k: int) -> str:
        """x (..., K) -> (..., K + K / block_size): x and the means of its blocks (computed once per input; the offsets
        are stored times the block size). One AveragePool over the last axis, which reads (batch, positions, K) as
        (batch, channels, length): a decode step is short enough for ONNX Runtime's per-node cost to show, and
        Reshape + ReduceSum is two nodes."""
        name = f"{x}/with_block_means"
        if name not in self._block_means:
            block = self.plan.matrices.block_size
            means = self.node("AveragePool", [x], f"{name}/AveragePool", kernel_shape=[block], strides=[block])[0]
            self._block_means[name] = self.node("Concat", [x, means], f"{name}/Concat", axis=-1)[0]
        return self._block_means[name]

    def matmul_nbits(self, inputs: list[str], name: str, n: int, k: int, layout: BlockLayout) -> str:
        return self.node(
            "MatMulNBits", inputs, f"{name}/MatMulNBits", domain="com.microsoft",
            K=k, N=n, bits=layout.bits, block_size=layout.block_size, accuracy_level=self.plan.accuracy_level,
        )[0]  # fmt: skip

    def nbits_tensors(self, name: str, sources: list[str], n: int, k: int, layout: BlockLayout, block_offsets: bool = False) -> list[str]:
        """Packed weights, scales (and integer zero points when asymmetric, packed as the weights) as MatMulNBits takes
        them, in the layout's blocks; `block_offsets`: each row followed by its blocks' fractional offsets (see
        uses_block_offsets)."""
        bits, block, symmetric = layout.bits, layout.block_size, layout.symmetric
        blocks, dtype = layout.blocks(k), self.plan.numpy_activation
        if block_offsets:
            blocks = with_offset_blocks(blocks, block)
        scales, zeros = [], []

        def quantize_rows(rows: np.ndarray, importance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            if not block_offsets:
                return quantize_blockwise(rows, bits, block, symmetric, importance)
            packed, row_scales, float_zeros = quantize_blockwise(rows, bits, block, False, importance, integer_zero_points=False)
            row_zeros = integer_zero_point(float_zeros, (1 << bits) - 1)
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
        self.data.add(f"{name}.scales", self.plan.activation, (n, blocks), np.concatenate(scales).astype(dtype))
        if symmetric:
            return [f"{name}.qweight", f"{name}.scales"]
        zeros = pack(np.concatenate(zeros), bits)
        self.data.add(f"{name}.zero_points", TensorProto.UINT8, zeros.shape, zeros)
        return [f"{name}.qweight", f"{name}.scales", f"{name}.zero_points"]

    def embedding(self, ids: str) -> tuple[str, Callable[[str], str]]:
        """The token embedding, and a function applying the lm_head (tied: the same stored weights)."""
        s, layout = self.shape, self.plan.embedding
        tied = s.tie_word_embeddings or "lm_head.weight" not in self.weights
        source = "model.embed_tokens.weight"
        if layout is not None:  # block-wise weights
            bits, block = layout.bits, layout.block_size
            tensors = self.nbits_tensors("model.embed_tokens", [source], s.vocab_size, s.hidden_size, layout)
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
                return embedded, lambda x: self.matmul_nbits([x, *tensors], "/model/lm_head", s.vocab_size, s.hidden_size, layout)
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
        dtype = self.plan.numpy_activation
        cos = self.float_tensor(ROTARY_CACHES[0], iter([np.cos(angles).astype(dtype)]), angles.shape)
        sin = self.float_tensor(ROTARY_CACHES[1], iter([np.sin(angles).astype(dtype)]), angles.shape)
        return cos, sin

    def build(self) -> onnx.ModelProto:
        s, act = self.shape, self.plan.activation
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
            prefix, name, matrices = f"model.layers.{i}", f"/model/layers.{i}", fused_matrices(i)
            x, residual = self.add_and_norm(pending, residual, f"{prefix}.input_layernorm.weight", f"{name}/input_layernorm")
            qkv = self.linear(x, matrices["qkv_proj"], f"{name}/attn/qkv_proj")
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
            attended = self.linear(attention, matrices["o_proj"], f"{name}/attn/o_proj")
            x, residual = self.add_and_norm(
                attended, residual, f"{prefix}.post_attention_layernorm.weight", f"{name}/post_attention_layernorm"
            )
            # Two matrices, not one packed gate_up and a Split: 5 % faster decoding with MatMulNBits on 2 cores (benchmarks/README.md).
            gate = self.linear(x, matrices["gate_proj"], f"{name}/mlp/gate_proj")
            up = self.linear(x, matrices["up_proj"], f"{name}/mlp/up_proj")
            silu = self.node("Mul", [gate, self.node("Sigmoid", [gate], f"{name}/mlp/Sigmoid")[0]], f"{name}/mlp/silu")[0]
            pending = self.linear(self.node("Mul", [silu, up], f"{name}/mlp/Mul")[0], matrices["down_proj"], f"{name}/mlp/down_proj")
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


@dataclass
class CheckedConversion:
    """A conversion that passed every up-front check, with what it goes on with."""

    source: str | os.PathLike[str]
    output: str | os.PathLike[str]
    options: OnnxOptions
    plan: OnnxPlan
    checkpoint: Checkpoint
    weights: SafetensorsWeights
    total: int  # bytes of external data to write


def check_onnx_conversion(
    source: str | os.PathLike[str], output: str | os.PathLike[str], options: OnnxOptions = OnnxOptions()
) -> CheckedConversion:
    """Everything convert_to_onnx refuses, refused before any work (a calibration pass comes first, and takes minutes):
    the options, the output, the checkpoint and its tensors."""
    plan = OnnxPlan.resolve(options)
    check_writable(output, folder=True, source_folders=[local_folder(source)])
    checkpoint = open_checkpoint(source)
    total = estimate_bytes(checkpoint.shape, plan)
    if options.ort_format and total > INLINE_LIMIT:
        raise FoxEdgeError(
            f"{{ort_format}} stores weights inside one flatbuffer, limited to 2 GiB; {checkpoint.name} at {options.precision} needs "
            f"{total / 2**30:.1f} GiB: use {{precision}} int4 or int8, or drop {{ort_format}}",
            ["ort_format", "precision"],
        )
    weights = SafetensorsWeights(checkpoint.weight_files)
    try:
        check_llama_tensors(weights, checkpoint.shape)
    except BaseException:
        weights.close()
        raise
    return CheckedConversion(source=source, output=output, options=options, plan=plan, checkpoint=checkpoint, weights=weights, total=total)


def convert_to_onnx(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: OnnxOptions = OnnxOptions(),
    *,
    chat_template: str | None = None,
    progress: Progress | None = None,
    on_message: OnMessage = ignore_message,
    importance: Mapping[str, np.ndarray] | None = None,
) -> OnnxResult:
    """Convert a Llama-architecture Hugging Face checkpoint to an ONNX model folder at `output`.

    `chat_template` replaces the checkpoint's; `on_message` receives notes and warnings, one line each.
    `importance` (checkpoint weight name -> mean squared input activation per column, from calibration text:
    fox_edge.quant.imatrix.checkpoint_importance) makes int8/int4 blocks search their scales against it."""
    return write_onnx(
        check_onnx_conversion(source, output, options), chat_template=chat_template, progress=progress, on_message=on_message,
        importance=importance,
    )  # fmt: skip


def write_onnx(
    checked: CheckedConversion,
    *,
    chat_template: str | None = None,
    progress: Progress | None = None,
    on_message: OnMessage = ignore_message,
    importance: Mapping[str, np.ndarray] | None = None,
) -> OnnxResult:
    """The folder of a conversion check_onnx_conversion passed (see convert_to_onnx)."""
    started = time.monotonic()
    output, checkpoint, weights = checked.output, checked.checkpoint, checked.weights
    plan = dataclasses.replace(checked.plan, calibrated=bool(checked.plan.matrices and importance))
    try:
        vocab = read_vocab(checkpoint, on_message, chat_template=chat_template)
        with atomic_output(output) as folder:
            folder.mkdir()
            data = ExternalData(folder / ONNX_DATA, progress, checked.total)
            try:
                model = GraphBuilder(checkpoint.shape, plan, weights, data, importance or {}).build()
            finally:
                data.close()
            _set_metadata(model, checkpoint, plan)
            onnx.save_model(model, folder / ONNX_MODEL)  # initializers already point at the external file
            _write_tokenizer(folder, checkpoint, vocab)
            _write_genai_config(folder, checkpoint, vocab, checked.options.intra_op_threads)
            ort_model = None
            if checked.options.ort_format:
                on_message("writing the ORT-format model")
                ort_model = write_ort_format(folder)
            n_bytes = (folder / ONNX_DATA).stat().st_size
    except OSError as exc:
        raise FoxEdgeError(f"cannot write {output}: {exc.strerror or exc}; free disk space or choose another output folder") from None
    finally:
        weights.close()
    output = Path(output)
    return OnnxResult(
        output=output, precision=checked.options.precision, n_initializers=len(model.graph.initializer), n_bytes=n_bytes,
        seconds=time.monotonic() - started, vocab_source=vocab.source, chat_template=vocab.chat_template_source,
        ort_model=output / ORT_MODEL if ort_model else None,
    )  # fmt: skip


def _set_metadata(model: onnx.ModelProto, checkpoint: Checkpoint, plan: OnnxPlan) -> None:
    metadata = {
        "general.name": checkpoint.name,
        "general.source": checkpoint.hub_id or checkpoint.path.resolve().name,  # never the user's folder layout
        **plan.metadata(),
    }
    onnx.helper.set_model_props(model, metadata)


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


def _write_genai_config(folder: Path, checkpoint: Checkpoint, vocab: Vocab, intra_op_threads: int) -> None:
    s = checkpoint.shape
    eos = [vocab.special_ids["eos"]] if "eos" in vocab.special_ids else []
    eos += [t for t in vocab.end_of_turn_ids if t not in eos]
    threads = intra_op_threads or default_threads()
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
