"""The README's commands, as a new user runs them: every line of its Use, Quantize and ONNX sections, on the demo
model (SmolLM2-135M-Instruct, which `./dev demo` prepares) in place of Fox-1, with each command's defaults.

The lines are split into tests the two workers share: a line that reads only the checkpoint or the first line's f16
GGUF is a test of its own (the f16 conversion takes seconds and runs again for each), and a line that reads what
another line wrote (`chat fox1-int4` after the ONNX conversion) runs in that line's test, after it."""

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


def writes(command: str) -> set[str]:
    return set(re.findall(r"(?:-o|>)\s+(\S+)", command))


def reads_from(commands: list[str], index: int) -> list[int]:
    """The earlier lines that write what line `index` reads: the latest writer of each file it names."""
    writers = []
    for name in set(commands[index].split()) - writes(commands[index]):
        writers += [i for i in range(index) if name in writes(commands[i])][-1:]
    return sorted(writers)


def grouped(commands: list[str]) -> list[list[int]]:
    """The lines of each test, in README order."""
    groups: list[list[int]] = []
    group_of: dict[int, int] = {}
    for index in range(len(commands)):
        after = [i for i in reads_from(commands, index) if i != 0]
        if not after:
            groups.append([])
        group_of[index] = group_of[max(after)] if after else len(groups) - 1
        groups[group_of[index]].append(index)
    return groups


COMMANDS = readme_commands()
GROUPS = grouped(COMMANDS)


def test_the_readme_shows_every_step():
    assert len(COMMANDS) >= 10 and any("--max-kld" in c for c in COMMANDS)
    assert sorted(i for group in GROUPS for i in group) == list(range(len(COMMANDS)))
    onnx = COMMANDS.index(next(c for c in COMMANDS if "-o fox1-int4 " in f"{c} "))
    assert [onnx, COMMANDS.index("fox-edge chat fox1-int4")] in GROUPS


@pytest.mark.parametrize("group", GROUPS, ids=[f"{g[0]:02d} {COMMANDS[g[0]].split()[1]}" for g in GROUPS])
def test_readme_command_runs_on_the_demo_model(group, smollm2, tmp_path):
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "XDG_STATE_HOME": str(tmp_path)}

    def run(command: str) -> subprocess.CompletedProcess:
        for name in CHECKPOINT_NAMES:
            command = command.replace(name, str(smollm2))
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, input="Hello!\n", capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, (command, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, (command, result.stderr[-3000:])
        return result

    for index in [*reads_from(COMMANDS, group[0]), *group]:
        command = COMMANDS[index]
        result = run(command)
        if "--max-kld" in command:  # the accuracy budget picks a file and prints the table it chose from
            assert "meets the budget" in result.stdout, result.stdout
            assert (tmp_path / re.search(r"-o (\S+)", command)[1]).is_file()
        if re.search(r"--type|--quant |--precision int", command):  # quantized models carry their check: PASS on the default bars
            assert "PASS" in result.stdout and "warning:" not in result.stderr, (command, result.stdout[-2000:], result.stderr[-2000:])
