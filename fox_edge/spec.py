"""The Fox-1 specification, defined once.

Every converter, runner, test fixture and app reads Fox-1's shapes, special tokens and fallback
chat template from here (or, better, from the checkpoint itself: the checkpoint's files win).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FOX1_HUB_IDS = ("tensoropera/Fox-1-1.6B", "tensoropera/Fox-1-1.6B-Instruct-v0.1")
FOX1_INSTRUCT = FOX1_HUB_IDS[1]
FOX1_LICENSE = "apache-2.0"


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters a Llama-architecture decoder is defined by."""

    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    head_dim: int | None = None  # None: hidden_size // n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.n_heads


@dataclass(frozen=True)
class LlamaWeight:
    """One tensor of a Llama checkpoint (`{i}`: the layer), its dimensions from the model's shape, its role and the
    matrix a converter fuses it into (q, k and v stacked by rows as one qkv_proj)."""

    name: str
    dims: Callable[[LlamaShape], tuple[int, ...]]
    role: str  # "embedding", "lm_head", "matrix" or "norm"
    fused: str | None = None


def _q(s: LlamaShape) -> int:
    return s.n_heads * s.head_size


def _kv(s: LlamaShape) -> int:
    return s.n_kv_heads * s.head_size


LLAMA_WEIGHTS = (
    LlamaWeight("model.embed_tokens.weight", lambda s: (s.vocab_size, s.hidden_size), "embedding"),
    LlamaWeight("model.layers.{i}.input_layernorm.weight", lambda s: (s.hidden_size,), "norm"),
    LlamaWeight("model.layers.{i}.self_attn.q_proj.weight", lambda s: (_q(s), s.hidden_size), "matrix", "qkv_proj"),
    LlamaWeight("model.layers.{i}.self_attn.k_proj.weight", lambda s: (_kv(s), s.hidden_size), "matrix", "qkv_proj"),
    LlamaWeight("model.layers.{i}.self_attn.v_proj.weight", lambda s: (_kv(s), s.hidden_size), "matrix", "qkv_proj"),
    LlamaWeight("model.layers.{i}.self_attn.o_proj.weight", lambda s: (s.hidden_size, _q(s)), "matrix", "o_proj"),
    LlamaWeight("model.layers.{i}.post_attention_layernorm.weight", lambda s: (s.hidden_size,), "norm"),
    LlamaWeight("model.layers.{i}.mlp.gate_proj.weight", lambda s: (s.intermediate_size, s.hidden_size), "matrix", "gate_proj"),
    LlamaWeight("model.layers.{i}.mlp.up_proj.weight", lambda s: (s.intermediate_size, s.hidden_size), "matrix", "up_proj"),
    LlamaWeight("model.layers.{i}.mlp.down_proj.weight", lambda s: (s.hidden_size, s.intermediate_size), "matrix", "down_proj"),
    LlamaWeight("model.norm.weight", lambda s: (s.hidden_size,), "norm"),
    LlamaWeight("lm_head.weight", lambda s: (s.vocab_size, s.hidden_size), "lm_head"),
)


def llama_tensors(shape: LlamaShape, lm_head: bool) -> dict[str, tuple[tuple[int, ...], LlamaWeight]]:
    """Every tensor of a Llama checkpoint of this shape, in checkpoint order: name -> (dims, its table entry).
    `lm_head`: whether the checkpoint stores an output matrix of its own (untied, or tied but saved twice)."""
    tensors = {}
    for weight in LLAMA_WEIGHTS:
        if weight.role == "lm_head" and not lm_head:
            continue
        for i in range(shape.n_layers) if "{i}" in weight.name else [None]:
            tensors[weight.name.format(i=i)] = (weight.dims(shape), weight)
    return tensors


def fused_matrices(layer: int) -> dict[str, list[str]]:
    """A layer's matrices as a converter builds them: fused name -> the checkpoint tensors stacked by rows."""
    fused: dict[str, list[str]] = {}
    for weight in LLAMA_WEIGHTS:
        if weight.fused:
            fused.setdefault(weight.fused, []).append(weight.name.format(i=layer))
    return fused


FOX1 = LlamaShape(
    hidden_size=2048,
    intermediate_size=4096,
    n_layers=32,
    n_heads=16,
    n_kv_heads=4,
    vocab_size=256000,
    context_length=8192,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)

# Gemma's special tokens, as Fox-1's tokenizer files name them (stock Gemma ids in the comment).
FOX1_SPECIAL_TOKENS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}  # 0, 1, 2, 3
FOX1_TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

# Zephyr-style with <eos> closing every turn. Used only when a Fox-1 checkpoint ships no template.
FOX1_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Token strings that end a turn in the chat formats we meet (Gemma, ChatML, Llama 3, Phi).
# A runner stops on eos and on every one of these present in the vocabulary.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")

# Architectures whose tensors and graph fox-edge knows.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


def is_fox1_vocab(tokens: list[str] | tuple[str, ...]) -> bool:
    """True for Gemma's 256K vocabulary (the one Fox-1 uses)."""
    return len(tokens) == FOX1.vocab_size and all(t in tokens[:8] for t in FOX1_SPECIAL_TOKENS.values())
