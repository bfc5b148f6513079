"""Our GGUF tensors are byte-identical to what llama.cpp's own convert_hf_to_gguf.py writes for the same checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import gguf
import pytest

from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.testing import suite_assets

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_tensors_identical_to_convert_hf_to_gguf(tiny_fox1, tmp_path, dtype):
    tree = suite_assets.llama_cpp_source()
    reference = tmp_path / "reference.gguf"
    environment = {**os.environ, "PYTHONPATH": str(tree / "gguf-py")}
    subprocess.run(
        [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(tiny_fox1), "--outtype", dtype, "--outfile", str(reference)],
        check=True,
        capture_output=True,
        env=environment,
        timeout=600,
    )
    ours = convert_to_gguf(tiny_fox1, tmp_path / "ours.gguf", dtype).output
    theirs = {t.name: t for t in gguf.GGUFReader(reference).tensors}
    mine = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert mine[name].tensor_type == tensor.tensor_type, name
        assert list(mine[name].shape) == list(tensor.shape), name
        assert mine[name].data.tobytes() == tensor.data.tobytes(), name
