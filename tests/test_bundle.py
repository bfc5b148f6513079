"""App-ready bundles: what the manifest says is checked against the files and the models themselves, and
`bundle verify` catches every kind of damage with one line."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from support import FAST_CHECK, cli

from fox_edge.check import CheckSettings, load_report
from fox_edge.quantize import quantize

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "fox_edge" / "data" / "bundle.schema.json").read_text())


def greedy(model, prompt: str = "The castle", n: int = 12) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fox_edge.cli", "generate", str(model), "-p", prompt, "-n", str(n), "--temperature", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def checked_q8(tiny_gguf, tmp_path_factory):
    """A Q8_0 of the tiny model with its check report stored beside it, as `fox-edge quantize` leaves it."""
    output = tmp_path_factory.mktemp("q8") / "tiny.Q8_0.gguf"
    quantize(tiny_gguf["f16"], output, "Q8_0", check=FAST_CHECK)
    return output


@pytest.fixture(scope="module")
def bundle(checked_q8, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles") / "android"
    code, _, stderr = cli("bundle", str(checked_q8), "--target", "android", "-o", str(folder))
    assert code == 0, stderr
    return folder


def test_manifest_tells_the_truth_about_the_files_and_the_model(bundle, checked_q8):
    manifest = json.loads((bundle / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)  # the committed schema, read independently of fox-edge's reader
    (entry,) = manifest["files"]
    model = bundle / entry["path"]
    assert model.read_bytes() == checked_q8.read_bytes()
    assert entry["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest() and entry["size"] == model.stat().st_size
    report = load_report(checked_q8)
    accuracy = manifest["accuracy"]
    assert accuracy["checked"] and accuracy["passed"] == report["passed"] and accuracy["kld_mean"] == report["kld_mean"]
    assert accuracy["reference"] == Path(report["reference"]).name
    assert manifest["format"]["quant_type"] == "Q8_0" and manifest["format"]["precision"] == "int8"
    assert manifest["context"]["default"] == 1024  # android's 2048, capped at the tiny model's own 1024
    assert manifest["tokenizer"]["bos_id"] == 2 and 1 in manifest["tokenizer"]["stop_ids"]
    assert "<end_of_turn>" in manifest["chat_template"] or "eos_token" in manifest["chat_template"]
    memory = manifest["memory"]
    kv = 2 * 2 * 1 * 64 * 1024 * 2  # K and V x 2 layers x 1 kv head x head size 64 x 1024 tokens x f16
    assert memory["kv_cache_bytes"] == kv and memory["weights_bytes"] == entry["size"]
    assert memory["resident_weights_bytes"] == memory["weights_bytes"]  # llama.cpp holds the file as it is
    assert memory["total_bytes"] == memory["resident_weights_bytes"] + memory["kv_cache_bytes"] + memory["compute_bytes"]
    assert (bundle / "README.md").is_file() and "sha256" in (bundle / "README.md").read_text()


def test_bundle_runs_as_its_model_does(bundle, checked_q8, tmp_path):
    assert greedy(bundle) == greedy(checked_q8)
    code, stdout, stderr = cli("info", str(bundle), "--json")
    assert code == 0, stderr and "bundle" in json.loads(stdout)
    code, stdout, stderr = cli("bundle", "verify", str(bundle))
    assert code == 0 and "intact" in stdout and stderr == ""


def damaged(bundle: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    damage(copy)
    return copy


def flip_a_byte(folder: Path) -> None:
    model = folder / "model.gguf"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))


def edit_manifest(change):
    def damage(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return damage


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (flip_a_byte, ["model.gguf", "sha256"]),
        (lambda folder: (folder / "model.gguf").unlink(), ["model.gguf", "missing"]),
        (lambda folder: (folder / "model.gguf").write_bytes(b"GGUF"), ["model.gguf", "bytes"]),
        (edit_manifest(lambda m: m.update(schema_version=99)), ["schema version 99"]),
        (edit_manifest(lambda m: m.pop("chat_template")), ["chat_template"]),
        (edit_manifest(lambda m: m["files"][0].update(sha256="not-a-hash")), ["files/0/sha256"]),
        (lambda folder: (folder / "manifest.json").write_text("{"), ["not valid JSON"]),
    ],
    ids=["flipped byte", "missing file", "truncated file", "unknown schema version", "no template", "malformed sha256", "broken JSON"],
)
def test_verify_names_each_problem_in_one_line(bundle, tmp_path, damage, words):
    copy = damaged(bundle, tmp_path, damage)
    code, stdout, stderr = cli("bundle", "verify", str(copy))
    assert code == 1 and len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    assert "does not load" not in stderr  # the model is never loaded from a bundle that failed
    for word in words:
        assert word in stderr, (word, stderr)


def test_an_unlisted_file_is_a_warning(bundle, tmp_path):
    copy = damaged(bundle, tmp_path, lambda folder: (folder / "notes.txt").write_text("hello"))
    code, stdout, stderr = cli("bundle", "verify", str(copy))
    assert code == 0 and stderr == "warning: notes.txt is not in the manifest; an app ignores it" and "intact" in stdout


def test_runners_refuse_a_bundle_whose_files_are_cut_short(bundle, tmp_path):
    copy = damaged(bundle, tmp_path, lambda folder: (folder / "model.gguf").write_bytes((folder / "model.gguf").read_bytes()[:1000]))
    code, _, stderr = cli("generate", str(copy), "-p", "hi")
    assert code == 1 and "model.gguf is 1,000 bytes" in stderr and len(stderr.splitlines()) == 1


def test_failed_check_is_bundled_only_when_allowed(tiny_gguf, tmp_path):
    failing = tmp_path / "tiny.Q4_0.gguf"
    result = quantize(tiny_gguf["f16"], failing, "Q4_0", check=CheckSettings(tokens=256, context=128, max_kld=1e-6))
    assert not result.check.passed
    code, _, stderr = cli("bundle", str(failing), "-o", str(tmp_path / "b"))
    assert code == 1 and "--allow-failed-check" in stderr and not (tmp_path / "b").exists()
    code, _, stderr = cli("bundle", str(failing), "-o", str(tmp_path / "b"), "--allow-failed-check")
    assert code == 0, stderr
    accuracy = json.loads((tmp_path / "b" / "manifest.json").read_text())["accuracy"]
    assert accuracy["passed"] is False and accuracy["bundled_despite_failure"] is True and accuracy["failures"]


def test_checkpoint_to_onnx_bundle(tiny_fox1, tmp_path):
    """A checkpoint through the library pipeline: converted to ONNX int4 (ORT format for a phone), checked against PyTorch."""
    folder = tmp_path / "ios"
    code, _, stderr = cli("bundle", str(tiny_fox1), "--target", "ios", "--backend", "onnx", "-o", str(folder), "--allow-failed-check")
    assert code == 0, stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    paths = {f["path"] for f in manifest["files"]}
    assert {"model/model.onnx", "model/model.onnx.data", "model/model.ort", "model/genai_config.json"} <= paths
    assert manifest["format"]["backend"] == "onnxruntime" and manifest["accuracy"]["checked"]
    assert manifest["accuracy"]["reference"] == tiny_fox1.name
    assert manifest["model"]["source"] == tiny_fox1.name  # a folder's name, never the user's path
    code, stdout, stderr = cli("bundle", "verify", str(folder))
    assert code == 0, stderr
    assert greedy(folder) == greedy(folder / "model")


def test_bundle_refuses_bad_targets_and_existing_output(checked_q8, tmp_path):
    code, _, stderr = cli("bundle", str(checked_q8), "--target", "watch", "-o", str(tmp_path / "b"))
    assert code == 1 and "android" in stderr
    (tmp_path / "exists").mkdir()
    code, _, stderr = cli("bundle", str(checked_q8), "-o", str(tmp_path / "exists"))
    assert code == 1 and "already exists" in stderr


@pytest.mark.slow
def test_smollm2_bundle_chats_as_its_gguf(smollm2_gguf, tmp_path):
    folder = tmp_path / "smollm2"
    code, _, stderr = cli("bundle", str(smollm2_gguf), "--target", "android", "-o", str(folder))
    assert code == 0, stderr
    jsonschema.validate(json.loads((folder / "manifest.json").read_text()), SCHEMA)

    def chat(model) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "fox_edge.cli", "chat", str(model), "--temperature", "0", "-n", "32"],
            input="What is the capital of France?\n", capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    answer = chat(folder)
    assert answer == chat(smollm2_gguf) and "Paris" in answer


def test_weights_load_as_the_target_says(bundle, checked_q8, tiny_gguf, tmp_path):
    """Android's bundle reads its weights into memory (llama.cpp repacks them for its CPU kernels; a mapped file's pages
    would stay resident beside the repacked copy), the caller's choice wins, and a bare GGUF is read when it holds
    types llama.cpp repacks, mapped otherwise. The load mode is llama.cpp's own word (its log)."""
    from fox_edge.backends import llamacpp
    from fox_edge.runner import open_runner

    def load_mode(model, **options) -> str:
        with open_runner(model, n_ctx=128, **options):
            return next(line for line in llamacpp._log_lines if "load_mode = " in line).split("load_mode = ")[1].strip(" )\n")

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"]["runtime_options"] | {"use_mmap": False, "repack": True} == manifest["format"]["runtime_options"]
    assert load_mode(bundle) == "none"
    assert load_mode(bundle, use_mmap=True) == "mmap"
    # Q8_0: a type the CPU backend may repack (never where its AMX buffers would crash: fox_edge/backends/llamacpp.py)
    assert load_mode(checked_q8) == ("mmap" if llamacpp.EXTRA_BUFFERS_CRASH else "none")
    assert load_mode(checked_q8, repack=False) == "mmap"
    assert load_mode(tiny_gguf["f16"]) == "mmap"
    ios = tmp_path / "ios"
    assert cli("bundle", str(checked_q8), "--target", "ios", "-o", str(ios))[0] == 0
    assert json.loads((ios / "manifest.json").read_text())["format"]["runtime_options"]["use_mmap"] is True
    assert load_mode(ios, device="cpu") == "mmap"
