"""The CLI as a user drives it: info against independent counts, the chat REPL through stdin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import cli


def test_info_on_gguf_matches_pytorch(tiny_gguf, tiny_reference):
    result = cli("info", str(tiny_gguf["f16"]), "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)  # stable snake_case keys, numbers as numbers
    assert facts["parameters"] == tiny_reference.model.num_parameters()
    assert facts["architecture"] == "llama" and facts["tied_embeddings"] is True
    assert facts["tokenizer"] == {"model": "llama", "pre": "default", "tokens": 512, "add_space_prefix": False}
    assert facts["special_tokens"]["bos"] == {"id": 2, "text": "<bos>"} and facts["special_tokens"]["eos"] == {"id": 1, "text": "<eos>"}
    assert "{%" in facts["chat_template"]  # the template itself
    assert {"F16", "F32"} <= set(facts["tensors"]) and sum(t["weights"] for t in facts["tensors"].values()) == facts["parameters"]
    config = tiny_reference.model.config
    assert facts["shape"] == {
        "layers": config.num_hidden_layers, "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
        "hidden_size": config.hidden_size, "feed_forward_size": config.intermediate_size,
    }  # fmt: skip
    assert all(key == key.lower() and " " not in key for key in facts)


def test_info_on_checkpoint(tiny_fox1, tiny_reference):
    result = cli("info", str(tiny_fox1))
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


def test_chat_in_a_terminal(tiny_gguf, tmp_path):
    """A real terminal (a pty), read as a person sees it (pyte renders the screen): a reply with its token-limit marker,
    Up recalls the last message, /help lists the commands, an unknown command is refused, Ctrl-C at the prompt clears the
    line without sending it, and Ctrl-D quits with 0 and a newline."""
    import os

    import pexpect
    import pyte

    rows, columns = 40, 120
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    env = os.environ | {"XDG_STATE_HOME": str(tmp_path), "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    command = ["-m", "fox_edge.cli", "chat", str(tiny_gguf["f32"]), "--temperature", "0", "-n", "8"]
    child = pexpect.spawn(sys.executable, command, env=env, dimensions=(rows, columns), timeout=60)

    def lines() -> list[str]:
        return [line.rstrip() for line in screen.display if line.strip()]

    def until(seen, what: str) -> list[str]:
        """Read the terminal until `seen(lines)` holds."""
        import time

        deadline = time.monotonic() + 60
        while not seen(lines()):
            assert time.monotonic() < deadline, f"{what} never appeared; the screen:\n" + "\n".join(lines())
            try:
                stream.feed(child.read_nonblocking(65536, timeout=1))
            except pexpect.TIMEOUT:
                pass
        return lines()

    def count(text: str) -> int:
        return sum(text in line for line in lines())

    until(lambda s: s and s[-1] == ">", "the prompt")
    child.send("hello\r")
    until(lambda s: count("tok/s") == 1 and s[-1] == ">", "a reply")
    assert count("[reply cut at the 8-token limit: --max-tokens raises it]") == 1
    child.send("\x1b[A")  # Up: the last message comes back, ready to send again
    until(lambda s: s[-1] == "> hello", "the recalled message")
    child.send("\r")
    until(lambda s: count("tok/s") == 2 and s[-1] == ">", "a second reply")
    child.send("/help\r")
    until(lambda s: any(line.lstrip().startswith("/system") for line in s) and s[-1] == ">", "the commands")
    child.send("/nope\r")
    until(lambda s: any("unknown command /nope" in line for line in s) and s[-1] == ">", "the refusal")
    child.send("half a message")
    until(lambda s: s[-1] == "> half a message", "the typed text")
    child.send("\x03")  # Ctrl-C at the prompt: the line is dropped, nothing is sent
    until(lambda s: any("Ctrl-C again or Ctrl-D to quit" in line for line in s) and s[-1] == ">", "a cleared prompt")
    assert count("tok/s") == 2
    child.send("\x04")  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.exitstatus
