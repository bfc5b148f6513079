"""Hostile and broken input through the real CLI, each in its own process under a memory and a time limit.

For every case: a non-zero exit (zero only where the input is valid), one line on stderr, no traceback,
no crash signal, no file left behind, and every input file byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MEMORY_LIMIT = 6 << 30  # address space (ulimit -v): a blow-up fails fast instead of taking the machine
TIME_LIMIT = 60


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fox_edge(*args: str, cwd: Path, stdin: bytes = b"", env: dict | None = None, script: str | None = None):
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "fox_edge.cli", *args]
    return subprocess.run(
        command, cwd=cwd, input=stdin, capture_output=True, timeout=TIME_LIMIT, preexec_fn=limited, env={**os.environ, **(env or {})}
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` (links not followed) -> its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "link"
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


@dataclass
class Case:
    args: list[str]  # {ckpt} the checkpoint copy, {gguf} an f16 GGUF, {work} the case's folder
    words: tuple[str, ...] = ()  # each in the one error line
    prepare: Callable[[Path], None] = lambda work: None  # damages the copies in `work`
    stdin: bytes = b""
    exit_codes: tuple[int, ...] = (1, 2)
    expected_files: tuple[str, ...] = ()  # outputs a valid input may leave
    env: dict = field(default_factory=dict)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def config(**values):
    return lambda work: edit_json(work / "ckpt" / "config.json", lambda c: c.update(values))


def json_tokenizer_only(change: Callable[[dict], None]):
    """The checkpoint with only tokenizer.json (so it is the one read), changed."""

    def prepare(work: Path) -> None:
        (work / "ckpt" / "tokenizer.model").unlink()
        edit_json(work / "ckpt" / "tokenizer.json", change)

    return prepare


def safetensors_header(change: Callable[[dict], None]):
    """The first shard's header changed in place (same length, padded with spaces)."""

    def prepare(work: Path) -> None:
        shard = sorted((work / "ckpt").glob("*.safetensors"))[0]
        data = shard.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        change(header)
        encoded = json.dumps(header, separators=(",", ":")).encode()
        assert len(encoded) <= length
        shard.write_bytes(data[:8] + encoded.ljust(length) + data[8 + length :])

    return prepare


def overlap_two_tensors(header: dict) -> None:
    first, second = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])[:2]
    begin = header[first]["data_offsets"][0]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    header[second]["data_offsets"] = [begin, begin + size]  # the second tensor's bytes now start inside the first's


def integer_tensor(header: dict) -> None:
    name = next(n for n in header if n != "__metadata__")
    header[name]["dtype"] = "I16"


def index_entry_outside(work: Path) -> None:
    ckpt = work / "ckpt"
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    shard.rename(work / "outside.safetensors")
    edit_json(
        ckpt / "model.safetensors.index.json",
        lambda i: i["weight_map"].update({k: "../outside.safetensors" for k, v in i["weight_map"].items() if v == shard.name}),
    )


def shard_linked_outside(work: Path) -> None:
    shard = sorted((work / "ckpt").glob("*.safetensors"))[0]
    shard.rename(work / "outside.safetensors")
    shard.symlink_to(work / "outside.safetensors")


def write(relative: str, text: str):
    return lambda work: (work / relative).write_text(text)


NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
HUGE_STRING = "{{ 'x' * 10000000000 }}"

CASES = {
    # data loss
    "quantize onto its input": Case(["quantize", "{gguf}", "--type", "Q8_0", "-o", "{gguf}"], ("is the input",)),
    "convert onto config.json": Case(["convert", "{ckpt}", "-o", "{ckpt}/config.json"], ("source folder",)),
    "convert onto a shard": Case(["convert", "{ckpt}", "-o", "{ckpt}/model-00001-of-00003.safetensors"], ("source folder",)),
    "quantize into an existing folder": Case(["quantize", "{gguf}", "--type", "Q8_0", "-o", "{work}"], ("is a folder",)),
    # crashes
    "empty vocabulary with added tokens": Case(
        ["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("empty vocabulary",), json_tokenizer_only(lambda t: t["model"].update(vocab={}))
    ),
    "threads 100000": Case(["generate", "{gguf}", "-p", "hi", "--threads", "100000"], ("--threads",)),
    # one number that would allocate the machine away
    "vocab_size 10^12": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("vocab_size",), config(vocab_size=10**12)),
    "tokenizer id 10^12": Case(
        ["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("outside the model's vocabulary",),
        json_tokenizer_only(lambda t: t["model"]["vocab"].update({"boom": 10**12})),
    ),
    "added token id 10^12": Case(
        ["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("outside the model's vocabulary",),
        lambda work: edit_json(work / "ckpt" / "tokenizer_config.json", lambda c: c.setdefault("added_tokens_decoder", {}).update({str(10**12): {"content": "x", "special": True}})),
    ),
    # unloadable output
    "hidden_size 0": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("hidden_size",), config(hidden_size=0)),
    "hidden_size 10^9": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("hidden_size",), config(hidden_size=10**9)),
    "shapes disagree with config": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("disagree",), config(hidden_size=512)),
    "shapes disagree with config (onnx)": Case(["convert", "{ckpt}", "--to", "onnx", "-o", "{work}/o"], ("disagree",), config(intermediate_size=1024)),
    "overlapping safetensors spans": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("overlaps",), safetensors_header(overlap_two_tensors)),
    "integer tensor": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("I16",), safetensors_header(integer_tensor)),
    # not contained
    "index entry outside the folder": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("outside the model folder",), index_entry_outside),
    "shard linked outside the folder": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("outside the model folder",), shard_linked_outside),
    # template denial of service
    "template with nested loops": Case(
        ["generate", "{gguf}", "-p", "hi", "--chat", "--chat-template", "{work}/t.jinja"], ("ran over",), write("t.jinja", NESTED_LOOPS)
    ),
    "template building a huge string": Case(
        ["generate", "{gguf}", "-p", "hi", "--chat", "--chat-template", "{work}/t.jinja"], ("characters",), write("t.jinja", HUGE_STRING)
    ),
    "template escaping the sandbox": Case(
        ["generate", "{gguf}", "-p", "hi", "--chat", "--chat-template", "{work}/t.jinja"], ("unsafe",),
        write("t.jinja", "{{ messages.append(1) }}{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    ),
    "template that does not parse": Case(
        ["generate", "{gguf}", "-p", "hi", "--chat", "--chat-template", "{work}/t.jinja"], ("does not parse",), write("t.jinja", "{% for")
    ),
    # wrong types and values
    "hidden_size 'abc'": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("hidden_size", "whole number"), config(hidden_size="abc")),
    "zero heads": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("num_attention_heads",), config(num_attention_heads=0)),
    "config.json is a list": Case(["convert", "{ckpt}", "-o", "{work}/o.gguf"], ("not an object",), write("ckpt/config.json", "[1, 2]")),
    "invalid UTF-8 prompt on stdin": Case(["generate", "{gguf}", "-p", "-"], ("UTF-8",), stdin=b"\xff\xfe hello"),
    "repeat penalty 0": Case(["generate", "{gguf}", "-p", "hi", "--repeat-penalty", "0"], ("--repeat-penalty",)),
    "temperature nan": Case(["generate", "{gguf}", "-p", "hi", "--temperature", "nan"], ("--temperature",)),
    "negative temperature": Case(["generate", "{gguf}", "-p", "hi", "--temperature", "-1"], ("--temperature",)),
    "top-p 2": Case(["generate", "{gguf}", "-p", "hi", "--top-p", "2"], ("--top-p",)),
    "top-k -5": Case(["generate", "{gguf}", "-p", "hi", "--top-k", "-5"], ("--top-k",)),
    "min-p 2": Case(["generate", "{gguf}", "-p", "hi", "--min-p", "2"], ("--min-p",)),
    "seed -1": Case(["generate", "{gguf}", "-p", "hi", "--seed", "-1"], ("--seed",)),
    "max tokens 0": Case(["generate", "{gguf}", "-p", "hi", "-n", "0"], ("--max-tokens",)),
    "max tokens -1": Case(["generate", "{gguf}", "-p", "hi", "-n", "-1"], ("--max-tokens",)),
    "check --ctx 1": Case(["check", "{gguf}", "-r", "{gguf}", "--ctx", "1"], ("--ctx",)),
    "check --tokens 0": Case(["check", "{gguf}", "-r", "{gguf}", "--tokens", "0"], ("--tokens",)),
    "bench -n -1": Case(["bench", "{gguf}", "-n", "-1"], ("--generate",)),
    "broken genai_config.json": Case(
        ["info", "{work}/onnx"], ("genai_config.json",),
        lambda work: ((work / "onnx").mkdir(), (work / "onnx" / "genai_config.json").write_text("{"), (work / "onnx" / "model.onnx").write_bytes(b"x")),
    ),
    # messages that name the real problem
    "vocabulary-only GGUF to generate": Case(
        ["generate", "{work}/vocab.gguf", "-p", "hi"], ("only a vocabulary",),
        lambda work: subprocess.run([sys.executable, "-m", "fox_edge.cli", "convert", str(work / "ckpt"), "--vocab-only", "-o", str(work / "vocab.gguf")], check=True, capture_output=True),
    ),
    "GGUF missing a tensor: llama.cpp's own reason": Case(
        ["generate", "{gguf}", "-p", "hi"], ("token_embd.weight",),
        lambda work: (work / "model.gguf").write_bytes((work / "model.gguf").read_bytes().replace(b"token_embd.weight", b"token_embx.weight", 1)),
    ),
    # valid input: exit 0
    "a template that does not render is converted with a warning": Case(
        ["convert", "{ckpt}", "-o", "{work}/o.gguf"], (), lambda work: edit_json(work / "ckpt" / "tokenizer_config.json", lambda c: c.update(chat_template="{{ raise_exception('no') }}")),
        exit_codes=(0,), expected_files=("o.gguf",),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def originals(tiny_fox1, tiny_gguf):
    return tiny_fox1, tiny_gguf["f16"]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, originals, tmp_path):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(originals[0], work / "ckpt")
    shutil.copyfile(originals[1], work / "model.gguf")
    case.prepare(work)
    before = snapshot(work)
    args = [a.format(ckpt=work / "ckpt", gguf=work / "model.gguf", work=work) for a in case.args]
    result = fox_edge(*args, cwd=tmp_path, stdin=case.stdin, env=case.env)
    stderr = result.stderr.decode("utf-8", errors="replace").strip()
    assert result.returncode in case.exit_codes, (result.returncode, stderr)  # a crash signal is a negative code
    assert "Traceback" not in stderr, stderr
    if case.exit_codes != (0,):
        assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
        for word in case.words:
            assert word in stderr, (word, stderr)
    after = snapshot(work)
    assert {k: v for k, v in after.items() if k in before} == before  # every input unchanged
    assert sorted(set(after) - set(before)) == sorted(case.expected_files)  # nothing left behind
    if case.exit_codes == (0,):
        assert "warning" in stderr


def test_template_warning_names_the_problem(originals, tmp_path):
    work = tmp_path / "ckpt"
    shutil.copytree(originals[0], work)
    edit_json(work / "tokenizer_config.json", lambda c: c.update(chat_template="{{ raise_exception('no system role') }}"))
    result = fox_edge("convert", str(work), "-o", str(tmp_path / "o.gguf"), cwd=tmp_path)
    assert result.returncode == 0 and b"warning: chat template: no system role" in result.stderr


def test_external_data_outside_the_folder_is_named(originals, tmp_path):
    """An ONNX folder whose weights point at /etc/passwd is refused with that path, not read as 'truncated'."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "onnx"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copyfile(originals[0] / name, folder / name)
    genai = {
        "model": {"context_length": 64, "vocab_size": 512, "decoder": {"num_hidden_layers": 1, "num_key_value_heads": 1, "head_size": 64}}
    }
    (folder / "genai_config.json").write_text(json.dumps(genai))
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=[0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../../../../etc/passwd"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight]
    )
    onnx.save_model(helper.make_model(graph), folder / "model.onnx")
    result = fox_edge("generate", str(folder), "-p", "hi", cwd=tmp_path)
    stderr = result.stderr.decode().strip()
    assert result.returncode == 1 and len(stderr.splitlines()) == 1 and "outside the model folder" in stderr and "/etc/passwd" in stderr


def test_gguf_names_its_source_folder_not_its_path(originals, tmp_path):
    import gguf

    result = fox_edge("convert", str(originals[0]), "-o", str(tmp_path / "o.gguf"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    source = gguf.GGUFReader(tmp_path / "o.gguf").fields["general.source.path"].contents()
    assert source == originals[0].name and "/" not in source


# --- signals and the last-resort rule -------------------------------------------------------------

SELF_SIGNAL = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "import {module} as target\n"
    "original = target.{function}\n"
    "def once(*args, **kwargs):\n"
    "    os.kill(os.getpid(), signal.{signal})\n"
    "    return original(*args, **kwargs)\n"
    "target.{function} = once\n"
    "from fox_edge.cli import app\n"
    "sys.argv[0] = 'fox-edge'\n"
    "app(sys.argv[1:])\n"
)


def quantizer_children(folder: Path) -> list[str]:
    """llama.cpp quantizer processes working in `folder` (the other xdist worker may be quantizing elsewhere)."""
    lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in lines if "fox_edge.quant.gguf" in line and str(folder) in line]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signal_mid_convert_quant_leaves_nothing_and_no_child(originals, tmp_path, signal_name):
    """A signal while llama.cpp's quantizer child runs: the child is stopped, the f16 intermediate and the part file removed."""
    script = SELF_SIGNAL.format(module="fox_edge.quant.gguf", function="_follow", signal=signal_name)
    result = fox_edge("convert", str(originals[0]), "-o", str(tmp_path / "o.gguf"), "--quant", "Q8_0", cwd=tmp_path, script=script)
    stderr = result.stderr.decode().strip()
    assert result.returncode == (143 if signal_name == "SIGTERM" else 130), stderr
    assert stderr.splitlines()[-1] == "interrupted: nothing was written" and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []
    assert quantizer_children(tmp_path) == []


def test_interrupted_check_says_the_model_is_written_but_unchecked(originals, tmp_path):
    script = SELF_SIGNAL.format(module="fox_edge.quantize", function="check_model", signal="SIGINT")
    output = tmp_path / "o.gguf"
    result = fox_edge("quantize", str(originals[1]), "--type", "Q8_0", "-o", str(output), cwd=tmp_path, script=script)
    stderr = result.stderr.decode().strip()
    assert result.returncode == 130 and output.is_file()
    assert stderr.splitlines()[-1] == (
        f"interrupted: {output} was written but not checked; check it with `fox-edge check {output} -r {originals[1]}`"
    )


def test_unexpected_exception_is_one_line_unless_asked(originals, tmp_path):
    script = (
        "import sys\n"
        "import fox_edge.info as info\n"
        "def broken(target):\n"
        "    raise RuntimeError('something nobody planned for')\n"
        "info.describe = broken\n"
        "from fox_edge.cli import app\n"
        "app(sys.argv[1:])\n"
    )
    result = fox_edge("info", str(originals[1]), cwd=tmp_path, script=script)
    stderr = result.stderr.decode().strip()
    assert result.returncode == 1 and stderr == (
        "error: unexpected RuntimeError: something nobody planned for; rerun with FOX_EDGE_VERBOSE=1 for the traceback"
    )
    verbose = fox_edge("info", str(originals[1]), cwd=tmp_path, script=script, env={"FOX_EDGE_VERBOSE": "1"})
    assert verbose.returncode != 0 and b"Traceback" in verbose.stderr and b"something nobody planned for" in verbose.stderr
