"""The Fox-1 specification, defined once.

Every converter, runner, test fixture and app reads Fox-1's shapes, special tokens and fallback
chat template from here (or, better, from the checkpoint itself: the checkpoint's files win).
"""

from __future__ import annotations

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
