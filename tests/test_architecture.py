"""The package's shape: dependencies one way, one registry of model formats, one pipeline, one runner base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from support import MEASURE_ONLY, cli

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: the layers, no converter in the runtime, no import cycle."""
    result = subprocess.run([Path(sys.executable).with_name("lint-imports")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_wheel_leaves_out_what_only_the_tests_use(tmp_path):
    """fox_edge/testing (apt-get, mounts, chroot, test assets) is not installed with the package; its data files are."""
    import shutil
    import zipfile

    source = tmp_path / "source"
    shutil.copytree(REPO / "fox_edge", source / "fox_edge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fox_edge/cli/__init__.py" in names and "fox_edge/data/bundle.schema.json" in names
    assert not [name for name in names if name.startswith("fox_edge/testing")]


@pytest.mark.parametrize("kind", ["text file", "empty folder", "folder of other files"])
def test_unknown_kind_of_path_gets_the_same_error_everywhere(tmp_path, kind):
    path = tmp_path / "thing"
    if kind == "text file":
        path.write_text("hello")
    else:
        path.mkdir()
        if kind == "folder of other files":
            (path / "model.onnx").write_bytes(b"not a graph, and no genai_config.json beside it")
    expected = (
        f"error: {path} is neither a GGUF file, an ONNX model folder nor a fox-edge bundle; convert a checkpoint with `fox-edge convert`"
    )
    for args in (["info", str(path)], ["bench", str(path), "-r", "1"], ["chat", str(path)], ["generate", str(path), "-p", "x"]):
        result = cli(*args, input="")
        assert result.exit_code == 1 and result.stderr.strip() == expected, (args, result.stderr)


def test_missing_path_says_so(tmp_path):
    for args in (["info", str(tmp_path / "nothing.gguf")], ["chat", str(tmp_path / "nothing.gguf")]):
        result = cli(*args, input="")
        assert result.exit_code == 1 and result.stderr.startswith(f"error: no such file or folder: {tmp_path / 'nothing.gguf'}")


def test_pipeline_converts_quantizes_and_checks_without_the_cli(tiny_fox1, tmp_path):
    from fox_edge import CheckSettings, GgufOptions, convert

    output = tmp_path / "tiny.Q8_0.gguf"
    result = convert(tiny_fox1, output, GgufOptions(quant="Q8_0"), check=CheckSettings(tokens=256, context=128))
    # The file holds Q8_0 matrices (read independently of fox-edge), and no f16 intermediate is left.
    types = {t.tensor_type for t in gguf.GGUFReader(output).tensors if len(t.shape) > 1}
    assert types == {gguf.GGMLQuantizationType.Q8_0}
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name, f"{output.name}.check.json"]
    assert result.format == "gguf" and result.quantized.type == "Q8_0" and result.output == output
    assert result.check is not None and result.check.tokens_scored > 0 and result.check.precision == "int8"
    assert 0 < result.check.kld_mean < 1


def test_pipeline_onnx_is_checked_against_the_checkpoint(tiny_fox1, tmp_path):
    from fox_edge import OnnxOptions, check_model, convert

    settings = MEASURE_ONLY
    result = convert(tiny_fox1, tmp_path / "int8", OnnxOptions(precision="int8"), check=settings)
    assert result.format == "onnx" and (tmp_path / "int8" / "check.json").is_file()
    again = check_model(result.output, tiny_fox1, settings)  # the same measurement, made on its own
    assert result.check.kld_mean == pytest.approx(again.kld_mean, rel=1e-4)


def test_chat_template_file_replaces_the_models(tiny_fox1, tiny_gguf, tmp_path):
    from fox_edge.runner import chat_prompt, open_runner, text_prompt

    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    messages = [{"role": "user", "content": "hello"}]
    with open_runner(tiny_gguf["f32"]) as runner:
        own = chat_prompt(runner, messages)
    with open_runner(tiny_gguf["f32"], chat_template=template.read_text()) as runner:
        given = chat_prompt(runner, messages)
        assert given == text_prompt(runner, "[user] hello\n[assistant] ") and given != own
    # convert writes the given template into the GGUF in place of the checkpoint's
    output = tmp_path / "templated.gguf"
    result = cli("convert", str(tiny_fox1), "-o", str(output), "--chat-template", str(template))
    assert result.exit_code == 0, result.stderr
    field = gguf.GGUFReader(output).fields["tokenizer.chat_template"]
    assert field.contents() == template.read_text()
    # a template that does not parse is refused before any work
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    result = cli("generate", str(tiny_gguf["f32"]), "-p", "x", "--chat", "--chat-template", str(bad))
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1 and "bad.jinja does not parse" in result.stderr


def test_pytorch_reference_stops_as_the_other_runners_do(tiny_fox1, tiny_gguf):
    from fox_edge.backends.llamacpp import LlamaCppRunner
    from fox_edge.backends.torch import TorchRunner

    with TorchRunner(tiny_fox1) as reference, LlamaCppRunner(tiny_gguf["f32"], vocab_only=True) as gguf_runner:
        end_of_turn = reference.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        assert end_of_turn in reference.stop_ids and reference.eos_id in reference.stop_ids
        assert reference.stop_ids == gguf_runner.stop_ids


FORMAT_NAMES = {"GGUF", "ONNX", "BUNDLE", "CHECKPOINT"}
FORMAT_SPELLINGS = {"gguf", "onnx", "bundle", "checkpoint"}


def test_only_the_registry_tells_formats_apart():
    """Outside formats.py no module compares a format (`is GGUF`, `== ONNX`) or a format's name (`== "gguf"`): they key a
    table by the format, or ask the format itself."""
    import ast

    branches = []
    for file in sorted((REPO / "fox_edge").rglob("*.py")):
        if file.name == "formats.py":
            continue
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if not isinstance(node, ast.Compare):
                continue
            sides = (node.left, *node.comparators)
            named = any(isinstance(side, ast.Name) and side.id in FORMAT_NAMES for side in sides)
            a_name = any(ast.unparse(side).endswith(("['name']", ".name")) for side in sides)
            spelled = a_name and any(isinstance(side, ast.Constant) and side.value in FORMAT_SPELLINGS for side in sides)
            if named or spelled:
                branches.append(f"{file.relative_to(REPO)}:{node.lineno}")
    assert not branches, branches


def test_an_onnx_folder_is_read_once_for_the_runner_bench_info_and_the_estimate(tiny_fox1, tmp_path, monkeypatch):
    """One scan of the graph's initializers (formats.onnx_inventory) answers the runner's mapping, the memory estimate,
    bench's bytes per token and `info`."""
    import onnx

    from fox_edge.bench import weight_bytes_per_token
    from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx
    from fox_edge.info import describe
    from fox_edge.runner import generate_tokens, open_runner
    from fox_edge.sampling import SamplingParams

    folder = convert_to_onnx(tiny_fox1, tmp_path / "int4", OnnxOptions(precision="int4")).output
    loads = []
    real_load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda path, *args, **kwargs: loads.append(Path(path).name) or real_load(path, *args, **kwargs))
    with open_runner(folder, n_ctx=64) as runner:
        resident = runner.resident_weights_bytes()
        assert len(list(generate_tokens(runner, runner.tokenize("The"), SamplingParams.greedy(2)))) == 2
    per_token = weight_bytes_per_token(folder)
    facts = describe(folder)
    assert loads == ["model.onnx"], loads
    assert 0 < per_token < resident and any(f.key == "initializers" for f in facts)
