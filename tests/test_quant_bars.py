"""The quantization bars on real weights: SmolLM2-135M (its weights lie on a Q4_1 grid) and a Fox-1-structured
model trained on public-domain text. Figures from the same runs are in benchmarks/README.md."""

from __future__ import annotations

import pytest

from fox_edge.check import LogitsStore
from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.quantize import CheckSettings, quantize

pytestmark = pytest.mark.slow

MEASURE = CheckSettings(tokens=2048, context=512, max_kld=100.0, min_top1=0.0, max_ppl_ratio=100.0)  # record, never fail here


@pytest.fixture(scope="module", params=["trained-tiny-fox1", "smollm2"])
def model_f16(request, tmp_path_factory):
    source = request.getfixturevalue("trained_tiny_fox1" if request.param == "trained-tiny-fox1" else "smollm2")
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, convert_to_gguf(source, folder / "f16.gguf", "f16").output


@pytest.mark.prepared("trained tiny Fox-1")  # through model_f16
def test_kld_ordering_and_q8_0_agreement(model_f16):
    name, f16 = model_f16
    with LogitsStore(f16.with_name("reference-logits")) as kept:  # the f16 model's logits, computed once for the three
        checks = {
            t: quantize(f16, f16.with_name(f"{t}.gguf"), t, check=MEASURE, reference_logits=kept).check for t in ("Q8_0", "Q6_K", "Q4_K_M")
        }
    kld = {t: c.kld_mean for t, c in checks.items()}
    assert kld["Q8_0"] < kld["Q6_K"] < kld["Q4_K_M"], kld
    # The 97 % bar holds for the trained Fox-1-structured model. SmolLM2 reaches 94-95 % with llama.cpp's
    # Q8_0 (its 576-wide rows and Q4_1-grid weights; measured, see benchmarks/README.md): it gets its own floor.
    floor = 0.97 if name == "trained-tiny-fox1" else 0.93
    assert checks["Q8_0"].top1_agreement >= floor, checks["Q8_0"].top1_agreement


def test_imatrix_lowers_int4_kld_on_held_out_text(smollm2, tmp_path):
    """Calibrated on Botchan, evaluated on Hamlet. (On the trained tiny model calibration does not help:
    its KLD is within the confidence interval either way; see benchmarks/README.md.)"""
    f16 = convert_to_gguf(smollm2, tmp_path / "f16.gguf", "f16").output
    imatrix = tmp_path / "smollm2.imatrix.gguf"
    with LogitsStore(tmp_path / "reference-logits") as kept:  # the f16 model's logits, computed once for the four
        for type_name in ("Q4_K_M", "IQ4_XS"):
            plain = quantize(f16, tmp_path / f"{type_name}.gguf", type_name, check=MEASURE, reference_logits=kept).check
            calibrated = quantize(
                f16,
                tmp_path / f"{type_name}-imatrix.gguf",
                type_name,
                check=MEASURE,
                reference_logits=kept,
                **({"imatrix": imatrix} if imatrix.exists() else {"calibration": "builtin", "imatrix": imatrix}),
            ).check
            print(f"{type_name}: mean KLD {plain.kld_mean:.5f} without calibration, {calibrated.kld_mean:.5f} with")
            assert calibrated.kld_mean + calibrated.kld_mean_ci95 < plain.kld_mean - plain.kld_mean_ci95
