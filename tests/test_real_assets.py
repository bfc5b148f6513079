"""End-to-end on real assets: Gemma's 256K tokenizer (Fox-1's) and SmolLM2-135M-Instruct's trained weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from texts import TOKENIZER_TEXTS

from fox_edge.backends.llamacpp import LlamaCppRunner
from fox_edge.chat import ChatSession
from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.runner import chat_prompt, open_runner
from fox_edge.sampling import SamplingParams
from fox_edge.spec import FOX1
from fox_edge.testing import suite_assets
from fox_edge.testing.synthetic import llama_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_vocab_gguf(tmp_path_factory):
    """Gemma's tokenizer.json (no tokenizer.model, as the npm asset ships it) with Fox-1's config, vocabulary only."""
    folder = tmp_path_factory.mktemp("gemma") / "fox1-vocab"
    shutil.copytree(suite_assets.gemma_tokenizer(), folder)
    (folder / "config.json").write_text(json.dumps(llama_config(FOX1)))
    return folder, convert_to_gguf(folder, folder.parent / "vocab.gguf", vocab_only=True).output


def test_gemma_tokenizer_token_for_token(gemma_vocab_gguf, botchan):
    from tokenizers import Tokenizer

    folder, gguf_path = gemma_vocab_gguf
    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    runner = LlamaCppRunner(gguf_path, vocab_only=True)
    assert runner.n_vocab == 256000 and runner.bos_id == 2 and runner.eos_id == 1
    whitespace = [f"x{c * n}y" for c in (" ", "\n", "\t") for n in range(1, 40, 3)]
    for text in TOKENIZER_TEXTS + whitespace + [botchan[:5000]]:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert runner.tokenize(text, special=True) == expected, repr(text[:80])
        assert runner.detokenize(expected, special=True) == text, repr(text[:80])


def test_gemma_stop_tokens(gemma_vocab_gguf):
    _, gguf_path = gemma_vocab_gguf
    runner = LlamaCppRunner(gguf_path, vocab_only=True)
    end_of_turn = runner.tokenize("<end_of_turn>", special=True)
    assert len(end_of_turn) == 1 and {runner.eos_id, end_of_turn[0]} <= runner.stop_ids


def test_smollm2_logits_match_pytorch(smollm2, smollm2_gguf, botchan):
    from conftest import TorchReference

    reference = TorchReference(smollm2)
    with open_runner(smollm2_gguf, n_ctx=512, kv_type="f32", flash_attention=False) as runner:
        tokens = runner.tokenize(botchan[20000:22000])[:256]
        actual = runner.logits(tokens)
    expected = reference.logits(tokens)
    top1 = (actual.argmax(-1) == expected.argmax(-1)).mean()
    assert top1 >= 0.99, top1
    assert np.abs(actual - expected).max() < 0.05 * expected.std()


def test_smollm2_answers_paris(smollm2_gguf):
    with open_runner(smollm2_gguf, n_ctx=1024) as runner:
        session = ChatSession(runner, SamplingParams.greedy(48))
        answer = "".join(session.send("What is the capital of France?"))
    assert "Paris" in answer


def test_smollm2_chat_prompt_matches_transformers(smollm2, smollm2_gguf):
    from transformers import AutoTokenizer

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ]
    expected = AutoTokenizer.from_pretrained(smollm2).apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    with open_runner(smollm2_gguf, n_ctx=512) as runner:
        assert chat_prompt(runner, messages) == expected


def test_demo_end_to_end(smollm2):
    """`fox-edge demo` as a user runs it: every step reported, the stand-in named, a real answer."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fox_edge.cli", "demo"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for step in ("1/4", "2/4", "3/4", "4/4", "stand-in for Fox-1"):
        assert step in result.stdout
    assert "Paris" in result.stdout
