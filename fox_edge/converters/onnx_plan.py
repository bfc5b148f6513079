"""One ONNX conversion's decisions, made once: `OnnxOptions` (what a caller asks for) resolve into an `OnnxPlan` (every
layout choice that follows from them), which the graph builder, the size estimate and the metadata writer read, and
which `fox-edge info` reads back from a converted folder's metadata (one table of keys: ONNX_METADATA_KEYS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from fox_edge.errors import InvalidOption
from fox_edge.formats import ONNX_METADATA_KEYS
from fox_edge.quant.blockwise import with_offset_blocks
from fox_edge.spec import LlamaShape, llama_tensors

# --precision -> (activation element type, weight bits (0: float weights), what `fox-edge info` says about the weights).
# int8: MatMulNBits 8-bit beat dynamic int8 on speed and accuracy here (benchmarks/README.md, "ONNX int8").
PRECISIONS = {
    "fp32": (TensorProto.FLOAT, 0, "float32 weights and activations"),
    "fp16": (TensorProto.FLOAT16, 0, "float16 weights and activations"),
    "int8": (TensorProto.FLOAT, 8, "8-bit block-wise weights (MatMulNBits), float32 activations"),
    "int4": (TensorProto.FLOAT, 4, "4-bit block-wise weights (MatMulNBits), float32 activations"),
}
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: the minimum compute type (4 = int8 with dynamic activations)
# The 8-bit embedding / lm_head's default block: a quarter of block 32's scales and block sums for every token's
# lm_head to read, ~7 % of a decode step, for 2 % more KLD on the trained tiny Fox-1 (benchmarks/README.md).
EMBEDDING_BLOCK_AT_8_BITS = 128


@dataclass(frozen=True, kw_only=True)
class OnnxOptions:
    precision: str = "int4"
    block_size: int = 32
    accuracy_level: int = 4
    # A setting of the device that runs the model, written to genai_config.json (genai's own default ran at
    # single-core speed); 0: the converting machine's core count.
    intra_op_threads: int = 0
    # The defaults are what passed on SmolLM2 and the trained tiny Fox-1 with a mean KLD at most GGUF Q4_K_M's
    # (benchmarks/README.md, "Calibrated block scales"): asymmetric blocks and the tied embedding / lm_head at 8 bits.
    embedding_bits: int | None = 8  # the tied embedding / lm_head's bits (4 or 8); None: the precision's
    # The tied embedding / lm_head's block. None: EMBEDDING_BLOCK_AT_8_BITS at 8 bits, the weights' block_size at 4.
    embedding_block_size: int | None = None
    symmetric: bool = False  # int8/int4 blocks (a 4-bit embedding stays symmetric: see OnnxPlan.resolve)
    # Asymmetric int4: each block's fractional zero point, which integer zero points round away, carried by extra
    # input columns (the input's block means) in the same MatMulNBits: see GraphBuilder.uses_block_offsets.
    block_offsets: bool = True
    ort_format: bool = False  # also model.ort and its operator list, for onnxruntime's reduced mobile builds
    exporter: str = "fox-edge"  # or "optimum": a standard-op graph from optimum-onnx (fox_edge/converters/optimum.py)


@dataclass(frozen=True, kw_only=True)
class BlockLayout:
    """How one kind of matrix is stored block-wise."""

    bits: int
    block_size: int
    symmetric: bool

    def blocks(self, k: int) -> int:
        return -(-k // self.block_size)

    def stored_bytes(self, n: int, k: int, activation_bytes: int, offsets: bool = False) -> int:
        """What an (n, k) matrix writes: packed codes, scales and (asymmetric) zero points packed as the codes."""
        blocks = with_offset_blocks(self.blocks(k), self.block_size) if offsets else self.blocks(k)
        codes = n * blocks * self.block_size * self.bits // 8
        zero_points = 0 if self.symmetric else n * (blocks if self.bits == 8 else -(-blocks // 2))
        return codes + n * blocks * activation_bytes + zero_points


@dataclass(frozen=True, kw_only=True)
class OnnxPlan:
    """Every layout decision of one conversion. `matrices` and `embedding` are None for float weights."""

    precision: str
    activation: int  # TensorProto element type of hidden states, KV cache and float weights
    weights: str  # what `fox-edge info` says about the weights
    matrices: BlockLayout | None  # the layers' matrices (and an untied lm_head)
    embedding: BlockLayout | None  # the token embedding, and the tied lm_head that reads the same bytes
    block_offsets: bool  # asymmetric int4 blocks carry their fractional zero points (GraphBuilder.uses_block_offsets)
    accuracy_level: int
    calibrated: bool  # block scales searched against an importance matrix (else round to nearest)

    @classmethod
    def resolve(cls, options: OnnxOptions, calibrated: bool = False) -> OnnxPlan:
        """The plan for `options`, after checking every option."""
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
        activation, bits, weights = PRECISIONS[options.precision]
        matrices = embedding = None
        if bits:
            matrices = BlockLayout(bits=bits, block_size=options.block_size, symmetric=options.symmetric)
            embedding_bits = options.embedding_bits or bits
            embedding = BlockLayout(
                bits=embedding_bits,
                block_size=options.embedding_block_size or (EMBEDDING_BLOCK_AT_8_BITS if embedding_bits == 8 else options.block_size),
                # Asymmetric only at 8 bits, where both ops take the same (unpacked) zero points; at 4 bits they would
                # need GatherBlockQuantized to read MatMulNBits' packed layout.
                symmetric=options.symmetric or embedding_bits != 8,
            )
        return cls(
            precision=options.precision,
            activation=activation,
            weights=weights,
            matrices=matrices,
            embedding=embedding,
            block_offsets=bool(bits == 4 and options.block_offsets and not options.symmetric),
            accuracy_level=options.accuracy_level,
            calibrated=bool(bits and calibrated),
        )

    @property
    def numpy_activation(self) -> type:
        return np.float16 if self.activation == TensorProto.FLOAT16 else np.float32

    def offsets_for(self, k: int) -> bool:
        """Whether a matrix of k input columns carries block offsets (whole blocks only)."""
        return self.block_offsets and self.matrices is not None and k % self.matrices.block_size == 0

    def metadata(self) -> dict[str, str]:
        """The model's metadata_props: the plan as `fox-edge info` and `check` read it back (from_metadata)."""
        values = {"precision": self.precision, "weights": self.weights}
        if self.matrices is not None and self.embedding is not None:
            values |= {
                "block_size": str(self.matrices.block_size),
                "accuracy_level": str(self.accuracy_level),
                "symmetric": str(self.matrices.symmetric).lower(),
                "embedding_bits": str(self.embedding.bits),
                "embedding_block_size": str(self.embedding.block_size),
                "block_offsets": str(self.block_offsets).lower(),
                "block_scales": SEARCHED if self.calibrated else ROUNDED,
            }
        return {ONNX_METADATA_KEYS[field]: value for field, value in values.items()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> OnnxPlan | None:
        """The plan a folder was converted with, from its model's metadata; None if fox-edge did not convert it."""
        value = {field: metadata.get(key) for field, key in ONNX_METADATA_KEYS.items()}
        if value["precision"] not in PRECISIONS:
            return None
        activation, bits, weights = PRECISIONS[value["precision"]]
        plan = cls(
            precision=value["precision"], activation=activation, weights=value["weights"] or weights, matrices=None, embedding=None,
            block_offsets=False, accuracy_level=0, calibrated=False,
        )  # fmt: skip
        if not bits or value["block_size"] is None:
            return plan
        symmetric = value["symmetric"] == "true"
        embedding_bits = int(value["embedding_bits"] or bits)
        return dataclasses.replace(
            plan,
            matrices=BlockLayout(bits=bits, block_size=int(value["block_size"]), symmetric=symmetric),
            embedding=BlockLayout(
                bits=embedding_bits,
                block_size=int(value["embedding_block_size"] or value["block_size"]),
                symmetric=symmetric or embedding_bits != 8,
            ),
            block_offsets=value["block_offsets"] == "true",
            accuracy_level=int(value["accuracy_level"] or 0),
            calibrated=value["block_scales"] == SEARCHED,
        )


SEARCHED, ROUNDED = "searched against an importance matrix", "round to nearest"


def estimate_bytes(shape: LlamaShape, plan: OnnxPlan) -> int:
    """External data the conversion writes, less alignment padding (what progress counts and format limits are checked
    against): every tensor of the Llama table as the plan stores it."""
    act = 2 if plan.activation == TensorProto.FLOAT16 else 4
    total = shape.context_length * shape.head_size * act  # the rotary cos and sin caches, half a head each
    fused: dict[str, tuple[int, int]] = {}
    for name, (dims, weight) in llama_tensors(shape, lm_head=not shape.tie_word_embeddings).items():
        if weight.role == "norm" or plan.matrices is None or plan.embedding is None:
            total += int(np.prod(dims)) * act
        elif weight.role == "embedding":
            total += plan.embedding.stored_bytes(*dims, act)
        elif weight.role == "lm_head":
            total += plan.matrices.stored_bytes(*dims, act, plan.offsets_for(dims[1]))
        else:
            key = name.rsplit(".", 2)[0] + "." + weight.fused  # model.layers.3.self_attn.qkv_proj
            rows, k = fused.get(key, (0, dims[1]))
            fused[key] = (rows + dims[0], k)
    if plan.matrices is not None:
        total += sum(plan.matrices.stored_bytes(n, k, act, plan.offsets_for(k)) for n, k in fused.values())
    return total
