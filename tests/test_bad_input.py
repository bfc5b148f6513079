"""Bad input: one line naming the problem and the fix, a non-zero exit, and no partial output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from support import assert_clean_failure, cli


@pytest.fixture
def checkpoint(tiny_fox1, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_fox1, folder)
    return folder


def test_non_llama_config(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(architectures=["GemmaForCausalLM"], model_type="gemma")
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert_clean_failure(
        cli("convert", str(checkpoint), "-o", str(tmp_path / "out.gguf")), tmp_path, "GemmaForCausalLM", "LlamaForCausalLM"
    )


def test_missing_tokenizer(checkpoint, tmp_path):
    (checkpoint / "tokenizer.model").unlink()
    (checkpoint / "tokenizer.json").unlink()
    assert_clean_failure(cli("convert", str(checkpoint), "-o", str(tmp_path / "out.gguf")), tmp_path, "no tokenizer")


def test_truncated_safetensors(checkpoint, tmp_path):
    shard = sorted(checkpoint.glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_clean_failure(cli("convert", str(checkpoint), "-o", str(tmp_path / "out.gguf")), tmp_path, "truncated", shard.name)


def test_pickle_checkpoint_is_refused(checkpoint, tmp_path):
    for shard in checkpoint.glob("*.safetensors"):
        shard.unlink()
    (checkpoint / "model.safetensors.index.json").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    assert_clean_failure(cli("convert", str(checkpoint), "-o", str(tmp_path / "out.gguf")), tmp_path, "pytorch_model.bin", "safetensors")


def test_unwritable_output(checkpoint, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
            target = tmp_path / "a-file" / "out.gguf"
            (tmp_path / "a-file").write_text("")
        else:
            target = locked / "out.gguf"
        assert_clean_failure(cli("convert", str(checkpoint), "-o", str(target)), tmp_path, "cannot write")
    finally:
        locked.chmod(0o700)


def test_unknown_dtype(checkpoint, tmp_path):
    assert_clean_failure(cli("convert", str(checkpoint), "-o", str(tmp_path / "o.gguf"), "--dtype", "q3"), tmp_path, "f16")


def test_hub_id_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = cli("convert", "tensoropera/Fox-1-1.6B-does-not-exist", "-o", str(tmp_path / "o.gguf"))
    assert_clean_failure(result, tmp_path, "tensoropera/Fox-1-1.6B-does-not-exist")


def test_ctrl_c_during_conversion_leaves_nothing(checkpoint, tmp_path):
    """A real SIGINT arrives in the middle of writing tensors, in a real `fox-edge convert` process."""
    output = tmp_path / "out.gguf"
    script = (
        "import os, signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started with SIGINT ignored (nohup, &)\n"
        "import fox_edge.converters.gguf as g\n"
        "original = g._tensor_blocks\n"
        "def interrupted(weights, plan):\n"
        "    yield from original(weights, plan)\n"
        "    if plan.name == 'blk.0.attn_v.weight': os.kill(os.getpid(), signal.SIGINT)\n"
        "g._tensor_blocks = interrupted\n"
        "from fox_edge.cli import app\n"
        f"app(['convert', {str(checkpoint)!r}, '-o', {str(output)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130
    assert result.stderr.strip().splitlines()[-1] == "interrupted: nothing was written"
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_corrupt_gguf_in_chat(tiny_gguf, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf["f16"].read_bytes()[:100_000])
    code, _, stderr = cli("generate", str(broken), "-p", "hi")
    assert code != 0 and stderr.startswith("error: ") and "broken.gguf" in stderr and len(stderr.splitlines()) == 1


def test_not_a_gguf(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    code, _, stderr = cli("chat", str(other))
    assert (
        code != 0
        and stderr
        == f"error: {other} is neither a GGUF file, an ONNX model folder nor a fox-edge bundle; convert a checkpoint with `fox-edge convert`"
    )


def test_prompt_longer_than_context(tiny_gguf):
    code, _, stderr = cli("generate", str(tiny_gguf["f16"]), "-p", "samurai " * 400, "--ctx-size", "128")
    assert code == 1 and "longer than the 128-token context" in stderr and len(stderr.splitlines()) == 1


# --- ONNX ---------------------------------------------------------------------------------------


def assert_no_folder(tmp_path, name):
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((name, f".{name}"))]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--precision", "int3"], ["int3", "fp32, fp16, int8, int4"]),
        (["--block-size", "48"], ["48", "power of two"]),
        (["--embedding-block-size", "100"], ["--embedding-block-size 100", "power of two"]),
        (["--accuracy-level", "7"], ["7", "accuracy"]),
        (["--embedding-bits", "6"], ["6", "4 or 8"]),
        (["--quant", "Q4_0"], ["--quant", "--precision"]),
    ],
)
def test_onnx_bad_options(tiny_fox1, tmp_path, options, words):
    result = cli("convert", str(tiny_fox1), "--to", "onnx", "-o", str(tmp_path / "out"), "--no-check", *options)
    assert_clean_failure(result, tmp_path, *words)
    assert_no_folder(tmp_path, "out")


def test_onnx_output_exists(tiny_fox1, tmp_path):
    (tmp_path / "out").mkdir()
    result = cli("convert", str(tiny_fox1), "--to", "onnx", "-o", str(tmp_path / "out"), "--no-check")
    assert_clean_failure(result, tmp_path, "already exists")


def test_onnx_too_large_for_ort_format(tmp_path):
    """Full-size Fox-1 in fp32 cannot fit ORT's 2 GiB flatbuffer: refused before any weight is read."""
    from fox_edge.spec import FOX1
    from fox_edge.testing import suite_assets
    from fox_edge.testing.synthetic import llama_config

    folder = tmp_path / "fox1"
    shutil.copytree(suite_assets.gemma_tokenizer(), folder)
    (folder / "config.json").write_text(json.dumps(llama_config(FOX1)))
    (folder / "model.safetensors").write_bytes(b"")  # never opened: the size check comes first
    result = cli("convert", str(folder), "--to", "onnx", "--precision", "fp32", "--ort-format", "-o", str(tmp_path / "out"))
    assert_clean_failure(result, tmp_path, "2 GiB", "int4")
    assert_no_folder(tmp_path, "out")


@pytest.fixture(scope="module")
def tiny_onnx_int8(tmp_path_factory, tiny_fox1):
    from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx

    return convert_to_onnx(tiny_fox1, tmp_path_factory.mktemp("onnx") / "int8", OnnxOptions(precision="int8")).output


@pytest.mark.parametrize(("damage", "words"), [("missing", ["missing", "copy the whole folder"]), ("truncated", ["truncated", "bytes"])])
def test_onnx_damaged_weights(tiny_onnx_int8, tmp_path, damage, words):
    folder = tmp_path / "model"
    shutil.copytree(tiny_onnx_int8, folder)
    data = folder / "model.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        os.truncate(data, data.stat().st_size // 2)
    result = cli("generate", str(folder), "-p", "hi", "-n", "4")
    assert_clean_failure(result, tmp_path, "model.onnx.data", *words)


def test_onnx_prompt_longer_than_context(tiny_onnx_int8):
    code, _, stderr = cli("generate", str(tiny_onnx_int8), "-p", "word " * 300, "-c", "64")
    assert code != 0 and stderr.startswith("error: ") and "64-token context" in stderr and len(stderr.splitlines()) == 1


def test_onnx_gguf_only_options(tiny_onnx_int8):
    code, _, stderr = cli("bench", str(tiny_onnx_int8), "--kv-type", "q8_0", "-r", "1")
    assert code != 0 and "kv_type" in stderr and "GGUF" in stderr


def _files_limited_to(limit: int):
    """For a child process: writing a file past `limit` bytes fails (EFBIG), as it would on a full disk (ENOSPC); the
    signal Linux sends first is ignored, so the write returns the error instead of killing the process."""
    import resource
    import signal

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


@pytest.mark.parametrize(
    "args",
    [
        ["convert", "{ckpt}", "-o", "{out}/model.gguf"],
        ["convert", "{ckpt}", "--to", "onnx", "--calibration", "none", "--no-check", "-o", "{out}/onnx"],
        ["quantize", "{f16}", "--type", "Q4_0", "--no-check", "-o", "{out}/model.Q4_0.gguf"],
    ],
    ids=["convert gguf", "convert onnx", "quantize"],
)
def test_output_that_cannot_be_written_whole_fails_cleanly(args, tiny_fox1, tiny_gguf, tmp_path):
    """A write cut short mid-file (a full disk, a quota): one line naming the output and the fix, no partial file."""
    out = tmp_path / "out"
    out.mkdir()
    command = [a.format(ckpt=tiny_fox1, f16=tiny_gguf["f16"], out=out) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "fox_edge.cli", *command], capture_output=True, text=True, timeout=300,
        preexec_fn=_files_limited_to(64 * 1024),
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:") and line.strip()]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ") and str(out) in errors[0] and ("disk" in errors[0] or "space" in errors[0]), errors[0]
    assert list(out.iterdir()) == [], list(out.iterdir())
