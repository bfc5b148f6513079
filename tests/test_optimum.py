"""`convert --exporter optimum` in its own environment (optimum-onnx pins transformers<4.58), run by plain onnxruntime here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fox_edge.testing import suite_assets

pytestmark = [pytest.mark.slow, pytest.mark.prepared("optimum environment")]
REPO = Path(__file__).resolve().parents[1]
PROMPT = [2, 17, 95, 301, 44, 12, 260, 77, 5, 410, 33, 129]


def export(checkpoint: Path, output: Path, precision: str) -> Path:
    python = suite_assets.side_environment("optimum")
    command = [str(python), "-m", "fox_edge.cli", "convert", str(checkpoint), "--to", "onnx", "--exporter", "optimum"]
    result = subprocess.run(
        [*command, "--precision", precision, "-o", str(output)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return output


def run_standard_graph(folder: Path, tokens: list[int]) -> np.ndarray:
    """optimum's decoder: input_ids, attention_mask, position_ids and an empty past per layer."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {}
    for graph_input in session.get_inputs():
        if graph_input.name == "input_ids":
            feeds[graph_input.name] = np.array([tokens], np.int64)
        elif graph_input.name == "attention_mask":
            feeds[graph_input.name] = np.ones((1, len(tokens)), np.int64)
        elif graph_input.name == "position_ids":
            feeds[graph_input.name] = np.arange(len(tokens), dtype=np.int64)[None]
        else:  # past_key_values.*: (batch, kv heads, 0, head size)
            feeds[graph_input.name] = np.zeros((1, graph_input.shape[1], 0, graph_input.shape[3]), np.float32)
    return session.run(["logits"], feeds)[0][0]


def test_optimum_fp32_matches_pytorch_and_int4_quantizes_the_tied_head(tiny_fox1, tiny_reference, tmp_path):
    expected = tiny_reference.logits(PROMPT)
    fp32 = export(tiny_fox1, tmp_path / "fp32", "fp32")
    got = run_standard_graph(fp32, PROMPT)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()

    int4 = export(tiny_fox1, tmp_path / "int4", "int4")
    model = onnx.load(int4 / "model.onnx", load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    assert "MatMulNBits" in ops and "GroupQueryAttention" not in ops  # standard attention, quantized weights
    vocab, hidden = expected.shape[1], 256
    big_float = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= vocab * hidden]
    assert not big_float, big_float  # neither the embedding nor the tied lm_head stays fp32
    logits = run_standard_graph(int4, PROMPT)
    assert logits.shape == expected.shape and np.isfinite(logits).all()
