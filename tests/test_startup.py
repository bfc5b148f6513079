"""`fox-edge chat` and `generate` on a GGUF file or an ONNX folder must not need torch or transformers."""

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def tiny_onnx_int4(tmp_path_factory, tiny_fox1):
    from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx

    return convert_to_onnx(tiny_fox1, tmp_path_factory.mktemp("startup") / "int4", OnnxOptions(precision="int4")).output


@pytest.mark.parametrize("kind", ["gguf", "onnx"])
def test_generate_runs_without_torch_and_transformers(tiny_gguf, tiny_onnx_int4, kind):
    model = tiny_gguf["f16"] if kind == "gguf" else tiny_onnx_int4
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # any import of these now raises ImportError
        "sys.modules['transformers'] = None\n"
        "from fox_edge.cli import app\n"
        f"app(['generate', {str(model)!r}, '-p', 'hello', '-n', '4', '--temperature', '0'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
