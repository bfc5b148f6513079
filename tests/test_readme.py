"""The README's commands, as a new user runs them: every line of its Use, Quantize and ONNX sections, on the demo
model (SmolLM2-135M-Instruct, which `./dev demo` prepares) in place of Fox-1, with each command's defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Use", "### Quantize and check", "### ONNX")
CHECKPOINT_NAMES = ("tensoropera/Fox-1-1.6B-Instruct-v0.1", "path/to/Fox-1-checkpoint", "CHECKPOINT")


def readme_commands() -> list[str]:
    """The command lines of the first bash block of each section, comments and the venv activation dropped."""
    text = README.read_text()
    commands = []
    for heading in SECTIONS:
        section = text[text.index(f"\n{heading}\n") :]
        block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("source "):
                commands.append(line)
    return commands


def test_readme_commands_run_on_the_demo_model(smollm2, tmp_path):
    commands = readme_commands()
    assert len(commands) >= 10 and any("--max-kld" in c for c in commands)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "XDG_STATE_HOME": str(tmp_path)}
    outputs = {}
    for command in commands:
        for name in CHECKPOINT_NAMES:
            command = command.replace(name, str(smollm2))
        run = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, input="Hello!\n", capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, (command, run.stderr[-3000:])
        assert "Traceback" not in run.stderr, (command, run.stderr[-3000:])
        outputs[command] = run
    # The accuracy budget picks a file and prints the table it chose from.
    (budget,) = [c for c in outputs if "--max-kld" in c]
    table = outputs[budget].stdout
    assert "meets the budget" in table, table
    chosen = re.search(r"-o (\S+)", budget)[1]
    assert (tmp_path / chosen).is_file()
    # Quantized models carry their check: PASS on the default bars, with no warning.
    for command, run in outputs.items():
        if re.search(r"--type|--quant |--precision int", command):
            assert "PASS" in run.stdout and "warning:" not in run.stderr, (command, run.stdout[-2000:], run.stderr[-2000:])
