"""The CLI as a user drives it: info against independent counts, the chat REPL through stdin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fox_edge.cli import app


def test_info_on_gguf_matches_pytorch(tiny_gguf, tiny_reference):
    result = CliRunner().invoke(app, ["info", str(tiny_gguf["f16"]), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows["parameters"].startswith(f"{tiny_reference.model.num_parameters():,} ")
    assert rows["architecture"] == "llama" and rows["tied embeddings"] == "yes"
    assert rows["tokenizer"].startswith("llama (default), 512 tokens, add_space_prefix False")
    assert "bos 2 '<bos>'" in rows["special tokens"] and "eos 1 '<eos>'" in rows["special tokens"]
    assert rows["chat template"].startswith("present")
    assert "F16" in " ".join(rows) and "F32" in " ".join(rows)


def test_info_on_checkpoint(tiny_fox1, tiny_reference):
    result = CliRunner().invoke(app, ["info", str(tiny_fox1)])
    assert result.exit_code == 0, result.output
    assert f"{tiny_reference.model.num_parameters():,}" in result.stdout
    assert "bos_token_id=1 (<eos>)" in result.stdout  # the config.json disagreement is shown


def _chat(model, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fox_edge.cli", "chat", str(model), "--temperature", "0", "-n", "8", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chat_repl_turns_reset_and_exit(tiny_gguf):
    result = _chat(tiny_gguf["f32"], "hello\nsecond question\n/reset\nhello\n/exit\nnever read\n", "--system", "Be brief.")
    assert result.returncode == 0, result.stderr
    stats = [line for line in result.stderr.splitlines() if "tok/s" in line and line.startswith("[")]
    assert len(stats) == 3
    assert "[conversation reset]" in result.stderr
    replies = [line for line in result.stdout.split("> ") if line.strip()]
    # after /reset, "hello" gets exactly the reply it got as the first message
    assert replies[0] == replies[2]


@pytest.mark.parametrize("stdin", ['"""\nline one\nline two\n"""\n', "line one\\\nline two\n"])
def test_chat_multiline_input(tiny_gguf, stdin):
    from fox_edge.runner import chat_prompt, open_runner

    with open_runner(tiny_gguf["f32"]) as runner:
        expected = len(chat_prompt(runner, [{"role": "user", "content": "line one\nline two"}]))
    result = _chat(tiny_gguf["f32"], stdin)
    assert result.returncode == 0, result.stderr
    assert f"new of {expected} tokens" in result.stderr  # both lines went in as one message
