"""ONNX int8/int4 on trained weights against PyTorch with the default bars, and Gemma's tokenizer in ONNX folders.

SmolLM2's weights were published as a Q4_1 GGUF: every 32-weight block already lies on a 16-level grid with
a float minimum. 4-bit blocks with integer zero points alone (what ONNX Runtime's fast CPU kernels take: float
ones are 100x slower) land between those levels whether symmetric or not, as llama.cpp's Q4_0 does; the
default's block offsets carry the fractional zero points and re-represent the grid. The trained tiny Fox-1
(bf16, no grid) stands for Fox-1 (benchmarks/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
import pytest
from support import cli
from texts import TOKENIZER_TEXTS

from fox_edge.backends.onnx import OnnxRunner
from fox_edge.check import DEFAULT_BARS, CheckSettings, LogitsStore, check_model
from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx
from fox_edge.spec import FOX1
from fox_edge.testing import suite_assets
from fox_edge.testing.synthetic import build_checkpoint, fox1_tokenizer_config

pytestmark = pytest.mark.slow
CHECK = CheckSettings(tokens=2048, context=512)


def test_smollm2_int8_meets_the_bars_llama_cpp_q8_0_meets(smollm2, tmp_path):
    """KLD and perplexity bars at the defaults; top-1 misses the 97 % bar as llama.cpp's Q8_0 does on this model
    (94.3 % on the same text, benchmarks/README.md), so it is held to 93 % as the GGUF test holds Q8_0."""
    folder = convert_to_onnx(smollm2, tmp_path / "int8", OnnxOptions(precision="int8")).output
    report = check_model(folder, smollm2, CHECK)
    bars = DEFAULT_BARS["int8"]
    assert report.precision == "int8" and report.bars == bars
    assert report.kld_mean <= bars.max_kld and report.ppl_ratio <= bars.max_ppl_ratio, (report.kld_mean, report.ppl_ratio)
    assert report.top1_agreement >= 0.93, report.top1_agreement


@pytest.mark.parametrize("model", ["smollm2", pytest.param("trained_tiny_fox1", marks=pytest.mark.prepared("trained tiny Fox-1"))])
def test_default_int4_passes_and_matches_gguf_q4_k_m(model, request, tmp_path):
    """`convert --to onnx` at its defaults (int4: asymmetric with block offsets, 8-bit embedding, calibrated on the
    built-in text) passes the default int4 bars, with a mean KLD at most llama.cpp's Q4_K_M's on the same text."""
    from fox_edge.pipeline import convert
    from fox_edge.quantize import quantize

    checkpoint = request.getfixturevalue(model)
    folder = convert(checkpoint, tmp_path / "int4", OnnxOptions(), check=CheckSettings(enabled=False)).output
    with LogitsStore(tmp_path / "reference-logits") as kept:  # PyTorch's logits, computed once for both checks
        report = check_model(folder, checkpoint, CHECK, reference_logits=kept)
        assert report.precision == "int4" and report.bars == DEFAULT_BARS["int4"]
        assert report.passed, (report.kld_mean, report.top1_agreement, report.ppl_ratio)
        f16 = convert(checkpoint, tmp_path / "f16.gguf").output
        q4_k_m = quantize(f16, tmp_path / "q4_k_m.gguf", "Q4_K_M", check=CheckSettings(enabled=False)).file.output
        gguf = check_model(q4_k_m, checkpoint, CHECK, reference_logits=kept)
    assert report.kld_mean <= gguf.kld_mean, (report.kld_mean, gguf.kld_mean)


def test_trained_tiny_fox1_int8_passes_default_bars_at_defaults(trained_tiny_fox1, tmp_path):
    folder = convert_to_onnx(trained_tiny_fox1, tmp_path / "int8", OnnxOptions(precision="int8")).output
    report = check_model(folder, trained_tiny_fox1, CHECK)
    assert report.passed, (report.kld_mean, report.top1_agreement, report.ppl_ratio)


def test_int8_embedding_beats_int4_embedding(trained_tiny_fox1, tmp_path):
    """--embedding-bits 8 is worth its size: the tied embedding / lm_head dominates int4's error."""
    kld = {}
    with LogitsStore(tmp_path / "reference-logits") as kept:
        for bits in (4, 8):
            folder = convert_to_onnx(trained_tiny_fox1, tmp_path / f"e{bits}", OnnxOptions(precision="int4", embedding_bits=bits)).output
            kld[bits] = check_model(folder, trained_tiny_fox1, CHECK, reference_logits=kept).kld_mean
    assert kld[8] < 0.7 * kld[4], kld


def genai_deviates(text: str) -> bool:
    """onnxruntime-genai 0.18's tokenizer (not ours) differs on two of the texts: it stops at a NUL character
    (a C string), and it merges a long run of one letter differently from Hugging Face."""
    return "\x00" in text or (len(set(text)) == 1 and len(text) > 40)


@pytest.fixture(scope="module")
def gemma_onnx(tmp_path_factory):
    """A small random model with Gemma's 256K tokenizer (Fox-1's), converted to ONNX int4."""
    from dataclasses import replace

    work = tmp_path_factory.mktemp("gemma-onnx")
    tokenizer = suite_assets.gemma_tokenizer()
    shape = replace(FOX1, hidden_size=64, intermediate_size=128, n_layers=1, n_heads=2, n_kv_heads=1, context_length=512)
    checkpoint = build_checkpoint(work / "ckpt", shape, {"tokenizer.json": tokenizer / "tokenizer.json"}, fox1_tokenizer_config())
    return checkpoint, convert_to_onnx(checkpoint, work / "onnx", OnnxOptions(precision="int4")).output


def test_gemma_tokenizer_token_for_token(gemma_onnx, botchan):
    """Against Hugging Face `tokenizers` on the checkpoint's tokenizer.json, the reference the GGUF test uses too."""
    from tokenizers import Tokenizer

    checkpoint, folder = gemma_onnx
    reference = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    runner = OnnxRunner(folder)
    genai = og.Tokenizer(og.Model(str(folder)))
    assert runner.n_vocab == 256000 and runner.bos_id == 2 and runner.eos_id == 1 and runner.add_bos
    whitespace = [f"x{c * n}y" for c in (" ", "\n", "\t") for n in range(1, 40, 3)]
    for text in TOKENIZER_TEXTS + whitespace + [botchan[:5000]]:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert runner.tokenize(text) == expected, repr(text[:80])
        if not genai_deviates(text):
            assert list(genai.encode(text)) == expected, repr(text[:80])
        assert runner.detokenize(expected, special=True) == text, repr(text[:80])
    end_of_turn = runner.tokenize("<end_of_turn>")
    assert len(end_of_turn) == 1 and {runner.eos_id, end_of_turn[0]} <= runner.stop_ids
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    assert config["bos_token_id"] == 2 and config["pad_token_id"] == 0 and config["eos_token_id"] == [1, end_of_turn[0]]


def test_gemma_chat_template_renders_like_transformers(gemma_onnx):
    from transformers import AutoTokenizer

    from fox_edge.runner import chat_prompt

    checkpoint, folder = gemma_onnx
    messages = [
        {"role": "user", "content": "Name a fox."},
        {"role": "assistant", "content": "Fennec."},
        {"role": "user", "content": "Another?"},
    ]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    # Fox-1's template writes no BOS and add_bos_token is true: fox-edge puts it in front, as llama.cpp's server does
    # (and as the GGUF runner does); transformers' apply_chat_template leaves it to the template.
    runner = OnnxRunner(folder)
    assert expected[0] != runner.bos_id and chat_prompt(runner, messages) == [runner.bos_id, *expected]


def test_convert_checks_by_default_and_info_shows_it(trained_tiny_fox1, tmp_path):

    folder = tmp_path / "int4"
    result = cli("convert", str(trained_tiny_fox1), "--to", "onnx", "--precision", "int4", "-o", str(folder))
    assert result.exit_code == 0, result.stderr
    assert "PASS (int4 bars)" in result.stdout and (folder / "check.json").is_file()
    info = cli("info", str(folder))
    assert info.exit_code == 0 and "PASS (int4 bars)" in info.stdout and "GroupQueryAttention" in info.stdout
    generated = cli("generate", str(folder), "-p", "To be, or not to be", "-n", "8", "--temperature", "0")
    assert generated.exit_code == 0 and generated.stdout.strip()


def resident_bytes(path) -> int:
    """This process's resident bytes of mappings of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="Linux only: /proc/self/smaps")
def test_weights_file_pages_are_dropped_and_logits_equal_onnx_runtimes_own_loading(gemma_onnx, monkeypatch):
    """The runner maps the weights file itself for ONNX Runtime to read in place, and drops the mapping's pages once
    loaded (the tied lm_head's prepacking read the whole 256K embedding) and after every run (the embedding rows).
    Logits equal those of ONNX Runtime mapping the file itself, which keeps what it read."""
    import fox_edge.backends.onnx as onnx_backend

    _, folder = gemma_onnx
    data = (folder / "model.onnx.data").resolve()
    tokens = [2, *range(1000, 1040)]
    runner = OnnxRunner(folder)
    assert resident_bytes(data) < 256 * 1024
    logits = runner.logits(tokens)
    assert resident_bytes(data) < 256 * 1024

    monkeypatch.setattr(onnx_backend.WeightFiles, "hand_to", lambda self, options: None)
    monkeypatch.setattr(onnx_backend.WeightFiles, "drop_pages", lambda self, gathered_only=False: None)
    own = OnnxRunner(folder)
    assert resident_bytes(data) > 4 << 20  # ONNX Runtime's own mapping: the embedding it read to pack the lm_head
    assert np.array_equal(own.logits(tokens), logits)
    runner.close()
    own.close()
