"""`fox-edge chat` and `generate` on a GGUF must not need torch or transformers."""

import subprocess
import sys


def test_generate_runs_without_torch_and_transformers(tiny_gguf):
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # any import of these now raises ImportError
        "sys.modules['transformers'] = None\n"
        "from fox_edge.cli import app\n"
        f"app(['generate', {str(tiny_gguf['f16'])!r}, '-p', 'hello', '-n', '4', '--temperature', '0'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
