"""benchmarks/harness.py end to end on the tiny checkpoint: every converter and engine runs, the report is whole.

Only that it runs and reports: the figures themselves are measurements (benchmarks/BENCHMARKS.md), not test results.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_harness_on_the_tiny_checkpoint(tiny_fox1, tmp_path):
    output = tmp_path / "report"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "harness.py"),
            "--checkpoint",
            str(tiny_fox1),
            "--rounds",
            "1",
            "--pairs",
            "1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from harness import QUANT_TYPES, entries
    finally:
        sys.path.remove(str(BENCHMARKS))

    report = (output / "BENCHMARKS.md").read_text()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines() if line.startswith("| ")]
    for entry in entries(tiny_fox1, tmp_path):  # every engine and tuning setting: one row, with figures
        second = entry.tuning or next(r[1] for r in rows if r[0] == entry.label and not r[1].startswith("--"))
        matching = [r for r in rows if r[:2] == [entry.label, second]]  # its table row, and its memory row for a 4-bit one
        assert matching and not any(cell.startswith("0.0 ") for row in matching for cell in row), matching
    for step in ("llama.cpp convert_hf_to_gguf.py", "onnxruntime-genai model builder", *(f"--type {t}" for t in QUANT_TYPES)):
        assert step in report
    assert "raw llama-cpp-python" in report and "GB/s" in report
    assert "whole tensors at once" in report and "bundle estimate MB" in report
    assert (output / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
