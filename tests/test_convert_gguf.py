"""The GGUF converter against the independent reference: PyTorch logits, Hugging Face tokenization, llama.cpp's loader."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from texts import TOKENIZER_TEXTS

from fox_edge.backends.llamacpp import LlamaCppRunner
from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.runner import generate_tokens, open_runner
from fox_edge.sampling import SamplingParams
from fox_edge.spec import FOX1_CHAT_TEMPLATE

PROMPT = "I was born in a family of samurai, and"


def _reference_tokens(folder, text):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("dtype, max_abs, min_top1", [("f32", 2e-3, 1.0), ("f16", 0.2, 0.98), ("bf16", 1.0, 0.95)])
def test_logits_match_pytorch(tiny_fox1, tiny_gguf, tiny_reference, botchan, dtype, max_abs, min_top1):
    tokens = [2] + _reference_tokens(tiny_fox1, botchan[5000:6500])[:200]
    expected = tiny_reference.logits(tokens)
    with open_runner(tiny_gguf[dtype], n_ctx=512, kv_type="f32", flash_attention=False) as runner:
        actual = runner.logits(tokens)
    assert actual.shape == expected.shape
    assert expected.std() > 1.0  # logits spread enough for top-1 agreement to mean something
    assert np.abs(actual - expected).max() < max_abs
    assert (actual.argmax(-1) == expected.argmax(-1)).mean() >= min_top1


def test_logits_from_a_position_are_the_reference_rows(tiny_fox1, tiny_gguf, tiny_reference, botchan):
    """logits(tokens, first): only the rows the accuracy check scores, as the reference computes them."""
    from fox_edge.backends.torch import TorchRunner

    tokens = [2] + _reference_tokens(tiny_fox1, botchan[5000:6500])[:120]
    expected = tiny_reference.logits(tokens)[70:]
    for runner in (LlamaCppRunner(tiny_gguf["f32"], n_ctx=256, kv_type="f32", flash_attention=False), TorchRunner(tiny_fox1)):
        with runner:
            actual = runner.logits(tokens, 70)
        assert actual.shape == expected.shape, runner.backend
        assert np.abs(actual - expected).max() < 2e-3, runner.backend


def test_greedy_continuation_matches_pytorch(tiny_fox1, tiny_gguf, tiny_reference):
    tokens = [2] + _reference_tokens(tiny_fox1, PROMPT)
    with open_runner(tiny_gguf["f32"], n_ctx=256) as runner:
        ours = list(generate_tokens(runner, tokens, SamplingParams.greedy(24), stop_ids=frozenset()))
    assert ours == tiny_reference.greedy(tokens, 24)


@pytest.mark.parametrize("tokenizer_file", ["tokenizer.model", "tokenizer.json"])
def test_tokenizer_matches_hugging_face(tiny_fox1, tmp_path, tokenizer_file, botchan):
    """Both tokenizer sources give llama.cpp the same tokenization as transformers, token for token."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_fox1, folder)
    other = {"tokenizer.model": "tokenizer.json", "tokenizer.json": "tokenizer.model"}[tokenizer_file]
    hf_tokens = {text: _reference_tokens(folder, text) for text in TOKENIZER_TEXTS + [botchan[:3000]]}
    (folder / other).unlink()
    output = convert_to_gguf(folder, tmp_path / "vocab.gguf", vocab_only=True).output
    runner = LlamaCppRunner(output, vocab_only=True)
    for text, expected in hf_tokens.items():
        assert runner.tokenize(text, special=True) == expected, text
        assert runner.detokenize(expected, special=True) == text


def test_metadata(tiny_gguf):
    reader = gguf.GGUFReader(tiny_gguf["f16"])
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 1
    assert field("tokenizer.ggml.add_space_prefix") is False
    assert field("tokenizer.ggml.bos_token_id") == 2 and field("tokenizer.ggml.eos_token_id") == 1  # from the tokenizer, not config.json
    assert field("tokenizer.chat_template") == FOX1_CHAT_TEMPLATE
    assert field("general.name") == "tiny-fox1"
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reads the output projection from token_embd
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_config_disagreement_is_reported(tiny_fox1, tmp_path):
    messages: list[str] = []
    convert_to_gguf(tiny_fox1, tmp_path / "x.gguf", "f16", on_message=messages.append)
    bos = [m for m in messages if "config.json and generation_config.json say bos_token_id=1" in m]
    assert bos and "<eos>" in bos[0] and "<bos> (id 2)" in bos[0]


def test_progress_reports_every_byte(tiny_fox1, tmp_path):
    seen = []
    result = convert_to_gguf(tiny_fox1, tmp_path / "x.gguf", "f16", progress=lambda done, total, name: seen.append((done, total)))
    assert seen[-1] == (result.n_bytes, result.n_bytes)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))


def test_repack_and_ubatch_change_memory_not_results(tiny_gguf, botchan, tmp_path):
    """llama.cpp's weight repacking (Q4_0's interleaved layout) off and a small micro-batch are memory levers (issue 15):
    the logits stay those of the defaults. (Where llama.cpp's AMX buffers would take the weights and crash, nothing
    is repacked: fox_edge/backends/llamacpp.py.)"""
    from fox_edge.backends import llamacpp
    from fox_edge.quant.gguf import quantize_gguf

    def repacked() -> bool:  # llama.cpp's load log names the repacked weights' buffer
        return any("CPU_REPACK model buffer" in line for line in llamacpp._log_lines)

    q4 = quantize_gguf(tiny_gguf["f16"], tmp_path / "tiny.Q4_0.gguf", "Q4_0").output
    with LlamaCppRunner(q4, n_ctx=256) as runner:
        assert repacked() != llamacpp.EXTRA_BUFFERS_CRASH
        tokens = runner.tokenize(botchan[:600])[:96]
        reference = runner.logits(tokens)
    for options in ({"repack": False}, {"n_ubatch": 16}):
        with LlamaCppRunner(q4, n_ctx=256, **options) as runner:
            assert repacked() == (options.get("repack", True) and not llamacpp.EXTRA_BUFFERS_CRASH), options
            logits = runner.logits(tokens)
        assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max(), options
        assert (logits.argmax(-1) == reference.argmax(-1)).mean() > 0.95, options
