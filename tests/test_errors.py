"""Errors a program can catch: each kind of failure is its own FoxEdgeError subclass, worded with the library's
parameter names, while the CLI prints the same line with flags."""

from __future__ import annotations

import shutil

import pytest
from support import cli_error

from fox_edge.chat import ChatSession
from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx
from fox_edge.errors import ContextOverflow, DamagedModel, FoxEdgeError, InvalidOption, ModelNotFound, OutputError
from fox_edge.runner import open_runner
from fox_edge.sampling import SamplingParams


def test_a_prompt_that_does_not_fit_is_a_context_overflow(tiny_gguf):
    with open_runner(tiny_gguf["f32"], n_ctx=64) as small:
        session = ChatSession(small, SamplingParams.greedy(8))
        with pytest.raises(ContextOverflow) as caught:
            "".join(session.send("word " * 200))
    assert "raise n_ctx" in str(caught.value) and "--" not in str(caught.value)
    assert isinstance(caught.value, ValueError) and caught.value.options == ("n_ctx",)


def test_an_unknown_option_value_names_the_parameter_and_the_cli_the_flag(tiny_fox1, tiny_gguf, tmp_path):
    with pytest.raises(InvalidOption) as caught:
        convert_to_onnx(tiny_fox1, tmp_path / "out", OnnxOptions(precision="int4", block_size=20))
    assert str(caught.value).startswith("block_size 20 is not a power of two") and caught.value.options == ("block_size",)
    assert not (tmp_path / "out").exists()
    shown = cli_error("convert", str(tiny_fox1), "--to", "onnx", "--precision", "int4", "--block-size", "20", "-o", str(tmp_path / "o"))
    assert shown == f"error: --block-size 20{str(caught.value)[len('block_size 20') :]}"
    with pytest.raises(InvalidOption, match="unknown precision 'int3'"):
        convert_to_onnx(tiny_fox1, tmp_path / "out", OnnxOptions(precision="int3"))
    with pytest.raises(InvalidOption, match="^n_threads 999 is outside"):
        open_runner(tiny_gguf["f32"], n_threads=999)


def test_a_damaged_model_and_a_missing_one_are_model_errors(tiny_gguf, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with open(tiny_gguf["f32"], "rb") as source, open(truncated, "wb") as target:
        shutil.copyfileobj(source, target)
        target.truncate(truncated.stat().st_size // 2)
    with pytest.raises(DamagedModel, match="truncated"):
        open_runner(truncated)
    with pytest.raises(ModelNotFound):
        open_runner(tmp_path / "nothing.gguf")
    assert cli_error("info", str(truncated)).startswith(f"error: {truncated} is truncated")


def test_an_output_over_the_input_is_an_output_error(tiny_gguf, tmp_path):
    from fox_edge.quant.gguf import quantize_gguf

    with pytest.raises(OutputError, match="destroy the input"):
        quantize_gguf(tiny_gguf["f32"], tiny_gguf["f32"], "Q8_0")
    with pytest.raises(FoxEdgeError):  # every kind is still a FoxEdgeError
        quantize_gguf(tiny_gguf["f32"], tmp_path / "o.gguf", "Q3_Z")


def test_an_interrupted_check_is_unchecked_and_says_what_is_on_disk(tiny_gguf, tmp_path):
    """Ctrl-C during the check that follows a quantization: the model stays written, and the interruption a caller
    catches names it and its reference, and carries the original KeyboardInterrupt."""
    import contextlib

    from fox_edge.errors import Unchecked
    from fox_edge.quantize import CheckSettings, quantize

    @contextlib.contextmanager
    def interrupt_the_check(phase: str):
        if phase == "checking":
            raise KeyboardInterrupt
        yield None

    output = tmp_path / "q8.gguf"
    with pytest.raises(Unchecked) as caught:
        quantize(tiny_gguf["f16"], output, "Q8_0", check=CheckSettings(tokens=256, context=256), progress=interrupt_the_check)
    assert isinstance(caught.value, KeyboardInterrupt) and type(caught.value.interrupt) is KeyboardInterrupt
    assert (caught.value.model, caught.value.reference) == (str(output), str(tiny_gguf["f16"]))
    assert output.is_file() and not output.with_name("q8.gguf.check.json").exists()
