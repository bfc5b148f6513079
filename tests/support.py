"""What many test modules share: running the CLI in-process, the clean-failure assertion, fast check settings."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from typer.testing import CliRunner

from fox_edge.check import CheckSettings
from fox_edge.cli import app

# Bars the tiny random-weight model passes when nothing is wrong: its weights are far more fragile than a trained
# model's, so fox-edge's own bars would fail it on noise. A test of the bars themselves sets its own.
FAST_CHECK = CheckSettings(tokens=256, context=128, max_kld=1.0, min_top1=0.5, max_ppl_ratio=2.0)
# A measurement that never fails: for tests of what the report says, not of a verdict.
MEASURE_ONLY = CheckSettings(tokens=256, context=128, max_kld=10.0, min_top1=0.0, max_ppl_ratio=10.0)


class CliResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str  # stripped

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli(*args: str, input: str | None = None) -> CliResult:
    """`fox-edge ARGS`, run in this process as typer's test runner runs it."""
    result = CliRunner().invoke(app, list(args), input=input)
    return CliResult(result.exit_code, result.stdout, result.stderr.strip())


def cli_error(*args: str) -> str:
    """The one line a failing command prints (it must exit 1)."""
    result = cli(*args)
    assert result.exit_code == 1, result
    return result.stderr


def assert_clean_failure(result: CliResult, folder: Path, *words: str) -> None:
    """A non-zero exit, one line `error: ...` holding every one of `words`, and no partial output left in `folder`."""
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not [p for p in folder.iterdir() if p.suffix == ".gguf" or ".part" in p.name]
