"""Hugging Face Llama checkpoint -> GGUF, streamed tensor by tensor with the `gguf` package.

Matches llama.cpp's convert_hf_to_gguf.py tensor for tensor (names, RoPE row order, types), and writes
the tokenizer so llama.cpp tokenizes exactly as Hugging Face does (see FOX1.md for the traps).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fox_edge.errors import DamagedModel, FoxEdgeError, InvalidOption, UnsupportedModel
from fox_edge.files import atomic_output, check_writable
from fox_edge.hooks import OnMessage, Progress, ignore_message
from fox_edge.source import Checkpoint, local_folder, open_checkpoint
from fox_edge.spec import FOX1_LICENSE, LlamaShape, is_fox1_vocab
from fox_edge.tokenizer import Vocab, read_vocab
from fox_edge.weights import SafetensorsWeights, check_llama_tensors

Q = gguf.GGMLQuantizationType
# --dtype -> (tensor type for matrices, GGUF file type). Vectors (norms) stay F32, as llama.cpp's converter keeps them.
DTYPES = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
SPECIAL_ID_KEYS = {
    "bos": gguf.Keys.Tokenizer.BOS_ID,
    "eos": gguf.Keys.Tokenizer.EOS_ID,
    "unk": gguf.Keys.Tokenizer.UNK_ID,
    "pad": gguf.Keys.Tokenizer.PAD_ID,
    "eot": gguf.Keys.Tokenizer.EOT_ID,
}
# Checkpoint tensors that carry nothing llama.cpp reads.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class TensorPlan:
    source: str  # Hugging Face name
    name: str  # GGUF name
    shape: tuple[int, ...]
    type: gguf.GGMLQuantizationType
    permute_heads: int = 0  # llama.cpp's RoPE row order for q/k: the number of heads to permute by

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * (4 if self.type == Q.F32 else 2)


@dataclass
class GgufResult:
    output: Path
    n_tensors: int
    n_bytes: int
    seconds: float
    vocab_source: str
    chat_template: str


def permute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face stores q/k rows as two halves per head (rotate_half); llama.cpp's RoPE wants them interleaved."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def plan_tensors(weights: SafetensorsWeights, shape: LlamaShape, tensor_type: gguf.GGMLQuantizationType) -> list[TensorPlan]:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape.n_layers)
    plans = []
    for source in weights:
        if source.endswith(SKIPPED_SUFFIXES):
            continue
        if source == "lm_head.weight" and shape.tie_word_embeddings:
            continue  # tied: llama.cpp reads the output projection from token_embd
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedModel(f"tensor {source} has no llama.cpp name; the checkpoint is not a plain Llama model")
        ref = weights.refs[source]
        permute = shape.n_heads if name.endswith("attn_q.weight") else shape.n_kv_heads if name.endswith("attn_k.weight") else 0
        kind = tensor_type if len(ref.shape) >= 2 and not name.endswith("_norm.weight") else Q.F32
        plans.append(TensorPlan(source, name, ref.shape, kind, permute))
    expected = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.attn_q.weight" for i in range(shape.n_layers)}
    missing = expected - {p.name for p in plans}
    if missing:
        raise DamagedModel(f"the checkpoint lacks {', '.join(sorted(missing)[:3])}: its safetensors are incomplete; re-download it")
    return plans


def _encode(block: np.ndarray, tensor_type: gguf.GGMLQuantizationType) -> np.ndarray:
    if tensor_type == Q.F32:
        return block.astype(np.float32, copy=False)
    if tensor_type == Q.F16:
        return block.astype(np.float16)
    return gguf.quants.quantize(block, Q.BF16)


def _tensor_blocks(weights: SafetensorsWeights, plan: TensorPlan) -> Iterator[np.ndarray]:
    if plan.permute_heads:
        yield _encode(permute_for_rope(weights.float32(plan.source), plan.permute_heads), plan.type)
        return
    for block in weights.float32_rows(plan.source):
        yield _encode(block, plan.type)


def write_metadata(writer: gguf.GGUFWriter, checkpoint: Checkpoint, vocab: Vocab, file_type: int) -> None:
    shape = checkpoint.shape
    writer.add_name(checkpoint.name)
    license_name = checkpoint.config.get("license") or (FOX1_LICENSE if is_fox1_vocab(vocab.tokens) else None)
    if license_name:
        writer.add_license(license_name)
    if checkpoint.hub_id:
        writer.add_source_url(f"https://huggingface.co/{checkpoint.hub_id}")
        writer.add_source_repo_url(f"https://huggingface.co/{checkpoint.hub_id}")
    # The hub id, or the folder's own name: never the absolute path, which would publish the user's folder layout.
    writer.add_string("general.source.path", checkpoint.hub_id or checkpoint.path.resolve().name)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_vocab_size(shape.vocab_size)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_rope_dimension_count(shape.head_size)
    writer.add_key_length(shape.head_size)
    writer.add_value_length(shape.head_size)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre or "default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model == "llama":
        writer.add_token_scores(vocab.scores)
        # llama.cpp adds a leading space unless told not to; SentencePiece models say per model.
        writer.add_add_space_prefix(vocab.add_space_prefix)
    else:
        writer.add_token_merges(vocab.merges)
    for key, token_id in vocab.special_ids.items():
        writer.add_uint32(SPECIAL_ID_KEYS[key], token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def convert_to_gguf(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    dtype: str = "f16",
    *,
    vocab_only: bool = False,
    chat_template: str | None = None,
    progress: Progress | None = None,
    on_message: OnMessage = ignore_message,
) -> GgufResult:
    """Convert a Llama-architecture Hugging Face checkpoint to a GGUF file at `output` (or only its tokenizer).

    `chat_template` replaces the checkpoint's; `on_message` receives notes and warnings, one line each."""
    if dtype not in DTYPES:
        raise InvalidOption(f"unknown {{dtype}} {dtype!r}; choose one of {', '.join(DTYPES)}", ["dtype"])
    tensor_type, file_type = DTYPES[dtype]
    started = time.monotonic()
    check_writable(output, source_folders=[local_folder(source)])
    checkpoint = open_checkpoint(source, weights=not vocab_only)
    weights = SafetensorsWeights(checkpoint.weight_files)  # checks every file's header and length first
    if not vocab_only:
        check_llama_tensors(weights, checkpoint.shape)
    plans = [] if vocab_only else plan_tensors(weights, checkpoint.shape, tensor_type)
    vocab = read_vocab(checkpoint, on_message, chat_template=chat_template)
    total = sum(p.nbytes for p in plans)
    done = 0
    try:
        with atomic_output(output) as temporary:
            writer = gguf.GGUFWriter(temporary, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
            write_metadata(writer, checkpoint, vocab, file_type)
            for plan in plans:
                writer.add_tensor_info(
                    plan.name, plan.shape, np.dtype(np.float32 if plan.type == Q.F32 else np.float16), plan.nbytes, raw_dtype=plan.type
                )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            (out,) = writer.fout
            for plan in plans:
                writer.write_padding(out, out.tell())
                for block in _tensor_blocks(weights, plan):
                    block.tofile(out)
                    done += block.nbytes
                    if progress:
                        progress(done, total, plan.name)
                writer.write_padding(out, plan.nbytes)
            writer.close()
    except OSError as exc:
        raise FoxEdgeError(f"cannot write {output}: {exc.strerror or exc}; free disk space or choose another output path") from None
    finally:
        weights.close()
    return GgufResult(
        output=Path(output), n_tensors=len(plans), n_bytes=total, seconds=time.monotonic() - started,
        vocab_source=vocab.source, chat_template=vocab.chat_template_source,
    )  # fmt: skip
