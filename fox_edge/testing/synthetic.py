"""Checkpoints with Fox-1's structure built on this machine: for tests (tiny) and benchmarks (full size).

A tiny one has Fox-1's exact structure (GQA 4:1, tied embeddings, a byte-fallback SentencePiece
tokenizer with Gemma's special tokens and ids, Fox-1's chat template, config.json's disagreeing
bos/eos ids) at widths small enough to run in milliseconds. Needs torch and transformers.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import shutil
from pathlib import Path

from fox_edge.spec import FOX1, FOX1_CHAT_TEMPLATE, FOX1_TURN_TOKENS, LlamaShape

# Widths that K-quants accept (rows a multiple of 256), GQA 4:1 as in Fox-1, head_dim 64.
TINY_FOX1 = dataclasses.replace(
    FOX1, hidden_size=256, intermediate_size=512, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=512, context_length=1024
)
TINY_SPECIALS = ["<mask>", *FOX1_TURN_TOKENS]  # user-defined pieces after pad/eos/bos/unk (ids 0-3)


def train_sentencepiece(text: str, vocab_size: int, output: Path) -> None:
    """A Gemma-like SentencePiece BPE model: byte fallback, identity normalizer, no dummy prefix."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in text.splitlines() if line.strip()]),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=TINY_SPECIALS,
        byte_fallback=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    output.write_bytes(model.getvalue())


def fox1_tokenizer_config(template: str | None = FOX1_CHAT_TEMPLATE) -> dict:
    """Gemma's layout: control tokens pad/eos/bos/unk at 0-3, <mask> user-defined, the turn markers special."""
    specials = {"<pad>": (0, True), "<eos>": (1, True), "<bos>": (2, True), "<unk>": (3, True)}
    specials.update({t: (4 + i, t != "<mask>") for i, t in enumerate(TINY_SPECIALS)})
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "tokenizer_class": "GemmaTokenizer",
        "added_tokens_decoder": {
            str(i): {"content": t, "special": special, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
            for t, (i, special) in specials.items()
        },
    }
    if template:
        config["chat_template"] = template
    return config


def llama_config(shape: LlamaShape, bos_token_id: int = 1, eos_token_id: int = 2) -> dict:
    """config.json as Fox-1 publishes it (bos 1 / eos 2, which disagree with its tokenizer), at `shape`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.context_length,
        "rope_theta": shape.rope_theta,
        "rms_norm_eps": shape.rms_norm_eps,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "bfloat16",
    }


def build_checkpoint(
    folder: Path,
    shape: LlamaShape,
    tokenizer_files: dict[str, Path],
    tokenizer_config: dict,
    seed: int = 0,
    init_std: float = 0.02,
    max_shard_size: str = "5GB",
) -> Path:
    """Random-weight LlamaForCausalLM at `shape`, saved as bf16 safetensors with the given tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**{k: v for k, v in llama_config(shape).items() if k not in ("architectures", "torch_dtype")})
    config.initializer_range = init_std
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        # Norm weights of 1.0 would hide a missing or misplaced norm; make them distinct.
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.data = (1.0 + 0.2 * torch.randn_like(parameter, dtype=torch.float32)).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    # save_pretrained writes config.json in its own layout; write Fox-1's (transformers-4 layout, rope_theta at top level).
    (folder / "config.json").write_text(json.dumps(llama_config(shape), indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    for name, path in tokenizer_files.items():
        shutil.copyfile(path, folder / name)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return folder


def build_tiny_fox1(folder: Path, text: str, seed: int = 0) -> Path:
    """The tiny Fox-1-structured checkpoint: trained SentencePiece tokenizer (both file forms) and random weights."""
    from transformers import AutoTokenizer

    work = folder.parent / (folder.name + ".tokenizer")
    work.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(text, TINY_FOX1.vocab_size, work / "tokenizer.model")
    # transformers writes the Hugging Face (tokenizer.json) form of the same SentencePiece model.
    AutoTokenizer.from_pretrained(work, tokenizer_class="GemmaTokenizer").save_pretrained(work / "hf")
    build_checkpoint(
        folder,
        TINY_FOX1,
        {"tokenizer.model": work / "tokenizer.model", "tokenizer.json": work / "hf" / "tokenizer.json"},
        fox1_tokenizer_config(),
        seed=seed,
        init_std=0.2,  # large enough that logits separate clearly: top-1 comparisons are then meaningful
        max_shard_size="1MB",
    )
    shutil.rmtree(work)
    return folder


# Small enough to train in minutes on 2 CPU cores, with rows K-quants accept (multiples of 256) and GQA 4:1.
TRAINED_TINY_FOX1 = dataclasses.replace(
    FOX1, hidden_size=256, intermediate_size=768, n_layers=4, n_heads=4, n_kv_heads=1, vocab_size=1024, context_length=512
)


def train_tiny_fox1(folder: Path, text: str, steps: int = 600, seq_len: int = 128, batch: int = 16, seed: int = 0, log=None) -> Path:
    """A Fox-1-structured model trained on `text`: real weights, so quantization loss means something.

    The tokenizer is trained on the same text; training is plain next-token prediction with AdamW.
    """
    import math

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    work = folder.parent / (folder.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_sentencepiece(text, TRAINED_TINY_FOX1.vocab_size, work / "tokenizer.model")
    tokenizer = AutoTokenizer.from_pretrained(work, tokenizer_class="GemmaTokenizer")
    tokenizer.save_pretrained(work / "hf")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)

    # One thread: the same weights on every machine whatever its cores, and no spinning of a second thread while the
    # suite trains this beside other work (tests/conftest.py prepares it in the background).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    config = LlamaConfig(**{k: v for k, v in llama_config(TRAINED_TINY_FOX1).items() if k not in ("architectures", "torch_dtype")})
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=generator)
        x = torch.stack([ids[s : s + seq_len] for s in starts])
        x[:, 0] = 2  # every sequence starts with BOS, as inference will
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step}: loss {loss.item():.3f}")
    model.eval()
    torch.set_num_threads(threads)

    weights_dir = work / "weights"
    model.to(torch.bfloat16).save_pretrained(weights_dir)
    build_dir = folder.with_name(folder.name + ".part")
    shutil.rmtree(build_dir, ignore_errors=True)
    shutil.copytree(weights_dir, build_dir)
    (build_dir / "config.json").write_text(json.dumps(llama_config(TRAINED_TINY_FOX1), indent=2))
    (build_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    shutil.copyfile(work / "tokenizer.model", build_dir / "tokenizer.model")
    shutil.copyfile(work / "hf" / "tokenizer.json", build_dir / "tokenizer.json")
    (build_dir / "tokenizer_config.json").write_text(json.dumps(fox1_tokenizer_config(), indent=2))
    build_dir.replace(folder)
    shutil.rmtree(work)
    return folder


def build_scripted_model(folder: Path, tokenizer_from: Path, reply: str) -> Path:
    """A Llama checkpoint (the tiny Fox-1's tokenizer and template) whose greedy reply to any chat is `reply`, split
    one UTF-8 byte per token wherever it is not ASCII: what streaming code must reassemble into whole characters.

    A bigram machine: attention and MLP weights are zero, so the last position's hidden state is its token's
    embedding; embeddings are one-hot (a dimension per scripted token) and the untied lm_head maps each scripted
    token's dimension to the next one's logit. The chain starts at the generation prompt's last token and ends
    with <eos>; every token appears once in it, so repeated characters use their byte token the second time.
    """
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    from fox_edge.template import render

    tokenizer = Tokenizer.from_file(str(tokenizer_from / "tokenizer.json"))
    chain: list[int] = []
    for char in reply:
        piece = tokenizer.token_to_id(char.replace(" ", "\u2581")) if char.isascii() else None
        if piece is not None and piece not in chain:
            chain.append(piece)
            continue
        for byte in char.encode():
            token = tokenizer.token_to_id(f"<0x{byte:02X}>")
            if token in chain:
                raise ValueError(f"the reply needs token <0x{byte:02X}> twice; a bigram machine cannot say it")
            chain.append(token)
    prompt = render(FOX1_CHAT_TEMPLATE, [{"role": "user", "content": "Hi"}], "<bos>", "<eos>")
    trigger = tokenizer.encode(prompt, add_special_tokens=False).ids[-1]
    if trigger in chain:
        raise ValueError("the reply uses the generation prompt's last token")
    chain = [trigger, *chain, tokenizer.token_to_id("<eos>")]  # Fox-1's template ends a turn with <eos>
    if None in chain:
        raise ValueError("the tokenizer lacks a byte token or <eos>")

    shape = dataclasses.replace(TINY_FOX1, n_layers=1, tie_word_embeddings=False)
    h, kv = shape.hidden_size, shape.n_kv_heads * shape.hidden_size // shape.n_heads
    embedding = torch.zeros(shape.vocab_size, h)
    lm_head = torch.zeros(shape.vocab_size, h)
    for dimension, (token, following) in enumerate(itertools.pairwise(chain)):
        embedding[token, dimension] = 1.0
        lm_head[following, dimension] = 1.0
    weights = {"model.embed_tokens.weight": embedding, "lm_head.weight": lm_head, "model.norm.weight": torch.ones(h)}
    zeros = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, h),
             "mlp.gate_proj": (shape.intermediate_size, h), "mlp.up_proj": (shape.intermediate_size, h), "mlp.down_proj": (h, shape.intermediate_size)}  # fmt: skip
    for name, size in zeros.items():
        weights[f"model.layers.0.{name}.weight"] = torch.zeros(size)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        weights[f"model.layers.0.{norm}.weight"] = torch.ones(h)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(llama_config(shape) | {"torch_dtype": "float32"}, indent=2))
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_from / name, folder / name)
    return folder
