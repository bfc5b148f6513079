"""Quantization, calibration and the accuracy checker on the tiny Fox-1-structured model (fast)."""

from __future__ import annotations

import subprocess
import sys

import gguf
import numpy as np
import pytest
from support import assert_clean_failure, cli

from fox_edge.check import check_accuracy, check_model, load_report, score_chunk
from fox_edge.converters.gguf_to_hf import load_torch_model
from fox_edge.quant.imatrix import ImportanceMatrix, calibration_chunks, compute_imatrix, load_imatrix, save_imatrix
from fox_edge.quantize import CheckSettings, quantize
from fox_edge.runner import open_runner

T = gguf.GGMLQuantizationType
FAST_CHECK = CheckSettings(tokens=512, context=256)


def types_of(path):
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def tiny_f16(tiny_gguf):
    return tiny_gguf["f16"]


def test_q8_0_quantizes_checks_and_stores_the_report(tiny_f16, tmp_path):
    output = tmp_path / "q8.gguf"
    outcome = quantize(tiny_f16, output, "Q8_0", check=FAST_CHECK)
    types = types_of(output)
    assert types["blk.0.attn_q.weight"] == T.Q8_0 and types["token_embd.weight"] == T.Q8_0
    assert types["blk.0.attn_norm.weight"] == T.F32
    assert outcome.check.precision == "int8" and outcome.check.tokens_scored > 100
    assert load_report(output)["kld_mean"] == pytest.approx(outcome.check.kld_mean)

    shown = cli("info", str(output)).stdout
    assert f"against {tiny_f16.name}" in shown and f"{outcome.check.kld_mean:.5f}" in shown
    with open_runner(output, n_ctx=256) as runner:  # llama.cpp loads and runs it
        assert runner.logits(runner.tokenize("the school"))[-1].shape == (512,)


def test_q4_k_m_with_embedding_override(tiny_f16, tmp_path):
    output = tmp_path / "q4.gguf"
    quantize(tiny_f16, output, "Q4_K_M", embedding="Q8_0", check=CheckSettings(enabled=False))
    types = types_of(output)
    assert types["token_embd.weight"] == T.Q8_0
    assert types["blk.0.attn_q.weight"] in (T.Q4_K, T.Q5_K, T.Q6_K)
    assert not (tmp_path / "q4.gguf.check.json").exists()


def test_unknown_type_lists_the_valid_ones(tiny_f16, tmp_path):
    result = cli("quantize", str(tiny_f16), "--type", "Q3_X", "-o", str(tmp_path / "o.gguf"))
    assert_clean_failure(result, tmp_path, "Q3_X", "Q4_K_M", "IQ4_XS", "Q8_0")


def test_requantizing_needs_permission(tiny_f16, tmp_path):
    first = tmp_path / "q8.gguf"
    quantize(tiny_f16, first, "Q8_0", check=CheckSettings(enabled=False))
    code, _, stderr = cli("quantize", str(first), "--type", "Q4_0", "-o", str(tmp_path / "again.gguf"), "--no-check")
    assert code == 1 and "already quantized" in stderr and "--allow-requantize" in stderr
    assert not (tmp_path / "again.gguf").exists()
    code, _, _ = cli("quantize", str(first), "--type", "Q4_0", "-o", str(tmp_path / "again.gguf"), "--no-check", "--allow-requantize")
    assert code == 0 and types_of(tmp_path / "again.gguf")["blk.0.attn_q.weight"] == T.Q4_0


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", ["only 0 tokens"]),
        (b"too short to calibrate anything", ["tokens", "at least"]),
        (b"caf\xe9 latin-1 text " * 200, ["not UTF-8", "line 1"]),
    ],
)
def test_bad_calibration_text(tiny_f16, tmp_path, content, words):
    folder = tmp_path / "out"
    folder.mkdir()
    calibration = tmp_path / "calibration.txt"
    calibration.write_bytes(content)
    result = cli("quantize", str(tiny_f16), "--type", "Q4_K_M", "-o", str(folder / "o.gguf"), "--calibration", str(calibration))
    assert_clean_failure(result, folder, *words)


def test_bad_jsonl_calibration(tiny_f16, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    result = cli("quantize", str(tiny_f16), "--type", "Q4_K_M", "-o", str(folder / "o.gguf"), "--calibration", str(calibration))
    assert_clean_failure(result, folder, "line 2", '"text"')


def test_imatrix_matches_an_independent_computation(tiny_f16, tiny_fox1, botchan):
    """Layer 0's q/k/v input is RMSNorm(embedding) * attn_norm: recompute its statistics from the GGUF in numpy."""
    with open_runner(tiny_f16, n_ctx=256) as runner:
        tokens = runner.tokenize(botchan[:20000])
    chunks = calibration_chunks(tokens, 256, 2, max_chunks=4)
    matrix = compute_imatrix(load_torch_model(tiny_f16), chunks)

    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(tiny_f16).tensors}
    x = tensors["token_embd.weight"][np.concatenate(chunks)].astype(np.float64)
    normed = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * tensors["blk.0.attn_norm.weight"]
    expected = (normed * normed).sum(0)
    assert matrix.count == sum(len(c) for c in chunks)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_allclose(matrix.sums[name], expected, rtol=1e-4)
    assert set(matrix.sums) >= {"token_embd.weight", "blk.1.ffn_down.weight", "blk.1.attn_output.weight", "blk.1.ffn_gate.weight"}
    assert matrix.sums["blk.0.ffn_down.weight"].shape == (512,)
    # The tied output layer's input: the final hidden states of a plain forward pass, no hook involved.
    import torch

    with torch.no_grad():
        model = load_torch_model(tiny_f16)
        final = [model(torch.tensor([c]), output_hidden_states=True).hidden_states[-1][0].double() for c in chunks]
    np.testing.assert_allclose(matrix.sums["token_embd.weight"], sum((h * h).sum(0) for h in final).numpy(), rtol=1e-4)


def test_imatrix_file_round_trip(tmp_path):
    matrix = ImportanceMatrix(
        {"blk.0.attn_q.weight": np.arange(8, dtype=np.float64), "token_embd.weight": np.ones(4)}, 1024, 512, ["builtin"]
    )
    path = save_imatrix(matrix, tmp_path / "m.imatrix.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.type"].contents() == "imatrix"
    assert {t.name for t in reader.tensors} == {
        "blk.0.attn_q.weight.in_sum2",
        "blk.0.attn_q.weight.counts",
        "token_embd.weight.in_sum2",
        "token_embd.weight.counts",
    }
    loaded = load_imatrix(path)
    assert loaded.count == 1024 and loaded.chunk_size == 512 and loaded.datasets == ["builtin"]
    np.testing.assert_allclose(loaded.means()["blk.0.attn_q.weight"], np.arange(8) / 1024, rtol=1e-6)


def test_kld_matches_torch(tiny_reference):
    import torch

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(10, 50)).astype(np.float32) * 3
    candidate = reference + rng.normal(size=(10, 50)).astype(np.float32) * 0.3
    targets = rng.integers(0, 50, size=10)
    scores = score_chunk(reference, candidate, targets, rows=3)
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(torch.tensor(candidate, dtype=torch.float64), -1),
        torch.log_softmax(torch.tensor(reference, dtype=torch.float64), -1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    np.testing.assert_allclose(scores["kld"], expected.numpy(), rtol=1e-9)
    np.testing.assert_allclose(
        scores["nll_r"], -torch.log_softmax(torch.tensor(reference, dtype=torch.float64), -1)[range(10), targets].numpy()
    )


def test_check_against_pytorch_reference(tiny_gguf, tiny_fox1):
    """An f32 GGUF against the PyTorch checkpoint: no loss, measured through two different runtimes."""
    text = open(__file__).read() * 3
    with (
        open_runner(tiny_fox1, n_ctx=256) as reference,
        open_runner(tiny_gguf["f32"], n_ctx=256, kv_type="f32", flash_attention=False) as candidate,
    ):
        report = check_accuracy(candidate, reference, text, n_tokens=300, context=256)
    assert report.passed and report.precision == "f16"
    assert report.kld_mean < 1e-5 and report.top1_agreement == 1.0
    assert report.ppl_ratio == pytest.approx(1.0, abs=1e-3)


def test_check_refuses_different_tokenizers(tiny_gguf, smollm2_gguf, tmp_path):
    code, _, stderr = cli("check", str(tiny_gguf["f16"]), "--reference", str(smollm2_gguf), "--tokens", "100")
    assert code == 1 and "different models" in stderr and len(stderr.splitlines()) == 1


def test_check_fails_with_nonzero_exit_and_json(tiny_gguf, tmp_path):
    quantized = tmp_path / "q4.gguf"
    quantize(tiny_gguf["f16"], quantized, "Q4_0", check=CheckSettings(enabled=False))
    code, _, _ = cli("check", str(quantized), "-r", str(tiny_gguf["f16"]), "--tokens", "256", "--ctx", "256", "--max-kld", "0.0000001")
    assert code == 1
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fox_edge.cli",
            "check",
            str(quantized),
            "-r",
            str(tiny_gguf["f16"]),
            "--tokens",
            "256",
            "--ctx",
            "256",
            "--json",
            "--max-kld",
            "10",
            "--min-top1",
            "0",
            "--max-ppl-ratio",
            "10",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert report["passed"] and report["bars"] == {"max_kld": 10.0, "min_top1": 0.0, "max_ppl_ratio": 10.0}
    assert 0 < report["kld_mean"] and report["kld_p90"] <= report["kld_p99"] <= report["kld_max"]


def test_truncated_candidate(tiny_gguf, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf["f16"].read_bytes()[:300_000])
    code, _, stderr = cli("check", str(broken), "-r", str(tiny_gguf["f16"]))
    assert code == 1 and "broken.gguf" in stderr and len(stderr.splitlines()) == 1


def test_convert_with_quant_leaves_no_intermediate(tiny_fox1, tmp_path):
    code, _, stderr = cli("convert", str(tiny_fox1), "-o", str(tmp_path / "tiny.q8.gguf"), "--quant", "Q8_0", "--no-check")
    assert code == 0, stderr
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.q8.gguf"]
    assert types_of(tmp_path / "tiny.q8.gguf")["blk.0.attn_q.weight"] == T.Q8_0


def test_ctrl_c_during_quantization_leaves_nothing(tiny_f16, tmp_path):
    output = tmp_path / "q.gguf"
    script = (
        "import os, signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started with SIGINT ignored (nohup, &)\n"
        "import fox_edge.quant.gguf as q\n"
        "original = q._follow\n"
        "def interrupted(child, progress):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return original(child, progress)\n"
        "q._follow = interrupted\n"
        "from fox_edge.cli import app\n"
        f"app(['quantize', {str(tiny_f16)!r}, '--type', 'Q4_K_M', '-o', {str(output)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_budget_keeps_the_smallest_passing(tiny_f16, tmp_path):
    from fox_edge.quantize import quantize_to_budget

    output = tmp_path / "best.gguf"
    # The random-weight tiny model is far more sensitive than a trained one: only Q6_K and Q8_0 stay under 1.0.
    outcome = quantize_to_budget(tiny_f16, output, CheckSettings(tokens=256, context=256, max_kld=1.0), types=["Q4_0", "Q6_K", "Q8_0"])
    passed = [row for row in outcome.tried if row["passed"]]
    assert len(passed) == 1 and outcome.tried[-1] is passed[0]  # it stops at the first that meets the budget
    assert all(row["mb"] <= passed[0]["mb"] for row in outcome.tried)
    assert passed[0]["type"] == "Q6_K" and len(outcome.tried) == 3
    assert output.exists() and load_report(output)["kld_mean"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.gguf", "best.gguf.check.json"]


def test_a_failed_check_advises_and_fails_only_when_a_bar_was_asked_for(tiny_f16, tmp_path):
    """Below the default bars: the model and its report are kept, a warning names what to try next, exit 0. With
    --strict, or a bar of the user's own, the same result is an error (exit 1). The random-weight tiny model's Q4_0
    is far over the int4 bars (see test_budget_keeps_the_smallest_passing)."""

    output = tmp_path / "tiny.Q4_0.gguf"
    base = ["quantize", str(tiny_f16), "--type", "Q4_0", "--check-tokens", "256", "-o", str(output)]
    code, _, stderr = cli(*base)
    assert code == 0, stderr
    (warning,) = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert "below fox-edge's default bars" in warning and "--calibration builtin" in warning and "--type Q4_K_M" in warning
    assert output.is_file() and load_report(output)["passed"] is False
    for asked in (["--strict"], ["--max-kld", "0.5"]):
        code, _, stderr = cli(*base, *asked)
        assert code == 1 and stderr.splitlines()[-1].startswith("error: ") and "--calibration builtin" in stderr, (asked, stderr)


def test_check_against_a_checkpoint_prints_only_fox_edges_output(tiny_gguf, tiny_fox1):
    """The PyTorch reference loads without transformers' progress bars landing in the middle of fox-edge's output."""
    code, _, stderr = cli("check", str(tiny_gguf["f16"]), "--reference", str(tiny_fox1), "--tokens", "64")
    assert code == 0, stderr
    assert "Loading weights" not in stderr and "it/s]" not in stderr, stderr


def test_budget_search_stops_scoring_a_candidate_over_the_budget_beyond_doubt(tiny_f16, tmp_path):
    """The search's rejections stop after EARLY_CHUNKS chunks when the candidate is far over its bar, and the full
    text gives the same verdict; a candidate within the bar is scored on all of it, with the figures of a plain check."""
    from fox_edge.check import EARLY_CHUNKS
    from fox_edge.quant.gguf import quantize_gguf

    settings = CheckSettings(tokens=1024, context=256, max_kld=0.05)
    q4 = quantize_gguf(tiny_f16, tmp_path / "q4.gguf", "Q4_0").output
    early, full = check_model(q4, tiny_f16, settings, stop_early=True), check_model(q4, tiny_f16, settings)
    assert early.stopped_early and early.chunks == EARLY_CHUNKS < full.chunks and not full.stopped_early, (early.chunks, full.chunks)
    assert not early.passed and not full.passed and full.kld_mean > settings.max_kld
    q8 = quantize_gguf(tiny_f16, tmp_path / "q8.gguf", "Q8_0").output
    loose = CheckSettings(tokens=1024, context=256, max_kld=1.0)
    kept, plain = check_model(q8, tiny_f16, loose, stop_early=True), check_model(q8, tiny_f16, loose)
    assert kept.passed and not kept.stopped_early and kept.chunks == full.chunks
    assert kept.kld_mean == plain.kld_mean and kept.ppl_ratio == plain.ppl_ratio


def test_a_stored_reference_scores_as_a_fresh_one_and_is_computed_once(tiny_f16, tmp_path):
    """The budget search keeps the reference's logits for its next candidates: each check against the store gives
    the figures of a plain check, a second check adds nothing to it, and it is gone on exit."""
    from fox_edge.check import LogitsStore
    from fox_edge.quant.gguf import quantize_gguf

    settings = CheckSettings(tokens=512, context=256)
    q4 = quantize_gguf(tiny_f16, tmp_path / "q4.gguf", "Q4_0").output
    q8 = quantize_gguf(tiny_f16, tmp_path / "q8.gguf", "Q8_0").output
    with LogitsStore(tmp_path / "reference-logits") as store:
        stored_q4 = check_model(q4, tiny_f16, settings, reference_logits=store)
        size = store.path.stat().st_size
        stored_q8 = check_model(q8, tiny_f16, settings, reference_logits=store)
        assert store.path.stat().st_size == size > 0
    assert not store.path.exists()
    for stored, model in ((stored_q4, q4), (stored_q8, q8)):
        plain = check_model(model, tiny_f16, settings)
        assert (stored.kld_mean, stored.ppl_ratio, stored.top1_agreement) == (plain.kld_mean, plain.ppl_ratio, plain.top1_agreement)
