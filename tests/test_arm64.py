"""ARM64, shown rather than believed: the tiny Fox-1 through both runners on emulated ARM64 CPUs (qemu), with the
same greedy tokens as on x86-64, and `bundle verify` there. fox_edge/testing/arm64.py builds and caches the
ARM64 root; it runs alone too (`python -m fox_edge.testing.arm64`)."""

from __future__ import annotations

import os
import platform

import pytest

from fox_edge.check import CheckSettings
from fox_edge.quantize import quantize


@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine() != "x86_64" or os.geteuid() != 0, reason="the stage emulates ARM64 on x86-64 and needs root (mounts, chroot)"
)
@pytest.mark.prepared("ARM64 Python stage")
def test_arm64_runs_the_same_tokens_on_both_cpus(trained_tiny_fox1, tmp_path):
    """The trained tiny Fox-1: the random-weight one has near-ties that ARM's and x86's different float summation
    orders resolve differently (its Q8_0 greedy tokens diverge after a few tokens); a trained model has none here."""
    from fox_edge.bundle import make_bundle
    from fox_edge.converters.gguf import convert_to_gguf
    from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx
    from fox_edge.testing.arm64 import CPUS, run_stage

    f16 = convert_to_gguf(trained_tiny_fox1, tmp_path / "tiny.f16.gguf").output
    models = [quantize(f16, tmp_path / f"tiny.{t}.gguf", t, check=CheckSettings(enabled=False)).file.output for t in ("Q8_0", "Q4_0")]
    models.append(convert_to_onnx(trained_tiny_fox1, tmp_path / "tiny-int4", OnnxOptions(precision="int4")).output)
    bundle = make_bundle(models[1], tmp_path / "bundle").folder
    results = run_stage(models, bundle)

    assert {"cortex-a76", "cortex-a53"} <= set(CPUS)
    assert "asimddp" in results["cortex-a76"]["features"].split(" (absent")[0]  # the emulated CPUs are the ones asked for
    assert "asimddp" in results["cortex-a53"]["features"].split("(absent: ")[1]
    for cpu in CPUS:
        for model, tokens in results["x86_64"].items():
            assert len(tokens) == 16 and results[cpu]["tokens"][model] == tokens, (cpu, model)
        verify = results[cpu]["verify"]
        assert verify["exit"] == 0 and "intact" in verify["output"], (cpu, verify)
