"""The ONNX converter and runner on the tiny Fox-1-structured checkpoint, against PyTorch and gguf-py.

Every graph runs in the real onnxruntime (and onnxruntime-genai); the reference is the Hugging Face model.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
import torch
from support import MEASURE_ONLY, cli

from fox_edge.backends.onnx import OnnxRunner
from fox_edge.check import CheckSettings, check_model
from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx
from fox_edge.converters.onnx_plan import OnnxPlan
from fox_edge.quant.blockwise import dequantize_blockwise, quantize_blockwise
from fox_edge.runner import generate_tokens, open_runner
from fox_edge.sampling import SamplingParams

PROMPT = [2, 17, 95, 301, 44, 12, 260, 77, 5, 410, 33, 129, 64, 8, 250, 19, 300, 71]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_fox1):
    """precision -> the tiny checkpoint converted to an ONNX folder (int4 also in ORT format)."""
    folder = tmp_path_factory.mktemp("tiny-onnx")
    return {
        precision: convert_to_onnx(tiny_fox1, folder / precision, OnnxOptions(precision=precision, ort_format=precision == "int4")).output
        for precision in ("fp32", "fp16", "int8", "int4")
    }


def dequantized_reference(
    tiny_fox1, bits: int, symmetric: bool = True, embedding_bits: int | None = None, integer_zero_points: bool = True
):
    """The PyTorch model with every matrix replaced by its block-quantized values (what MatMulNBits must compute)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_fox1, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2:
                is_embedding = "embed_tokens" in name
                b = (embedding_bits or bits) if is_embedding else bits
                integer = integer_zero_points or is_embedding
                block = OnnxPlan.resolve(OnnxOptions(embedding_bits=b)).embedding.block_size if is_embedding else 32
                packed, scales, zeros = quantize_blockwise(
                    parameter.numpy(), b, block, symmetric or (is_embedding and b != 8), integer_zero_points=integer
                )
                parameter.copy_(torch.from_numpy(dequantize_blockwise(packed, scales, b, parameter.shape[1], zeros)))
    return model


def test_fp32_logits_and_greedy_match_pytorch(tiny_onnx, tiny_reference):
    runner = OnnxRunner(tiny_onnx["fp32"], n_ctx=128, n_batch=5)  # prompts run in several batches
    expected = tiny_reference.logits(PROMPT)
    got = runner.logits(PROMPT)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    np.testing.assert_array_equal(runner.logits(PROMPT, 7), got[7:])  # the rows an accuracy check scores
    produced = list(generate_tokens(runner, PROMPT, SamplingParams.greedy(24), stop_ids=frozenset()))
    assert produced == tiny_reference.greedy(PROMPT, 24)
    assert runner.n_evaluated == 1  # each generated token reused the cache


def test_cache_rolls_back_to_a_common_prefix(tiny_onnx, tiny_reference):
    runner = OnnxRunner(tiny_onnx["fp32"], n_ctx=64)
    runner.prefill(PROMPT)
    branch = PROMPT[:7] + [90, 91, 92]
    logits = runner.prefill(branch)
    assert runner.n_evaluated == 3
    np.testing.assert_allclose(logits, tiny_reference.logits(branch)[-1], atol=1e-3)


def genai_greedy(folder, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after `prompt` from onnxruntime-genai on the folder."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    produced = []
    while not generator.is_done():
        generator.generate_next_token()
        produced.append(int(generator.get_next_tokens()[0]))
    return produced


def test_fp32_runs_in_onnxruntime_genai(tiny_onnx, tiny_reference):
    assert genai_greedy(tiny_onnx["fp32"], PROMPT, 24) == tiny_reference.greedy(PROMPT, 24)


def test_the_devices_threads_are_a_setting_of_their_own(tiny_fox1, tmp_path):
    """genai_config.json's thread count is what --intra-op-threads says, whatever threads the conversion itself ran on."""

    output = tmp_path / "fp32"
    args = [
        "convert",
        str(tiny_fox1),
        "--to",
        "onnx",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--intra-op-threads",
        "3",
        "-o",
        str(output),
    ]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert json.loads((output / "genai_config.json").read_text())["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 3


def test_genai_config_and_tokenizer_files(tiny_onnx, tiny_fox1):
    from transformers import AutoTokenizer

    folder = tiny_onnx["int4"]
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    reference = AutoTokenizer.from_pretrained(tiny_fox1)
    assert config["bos_token_id"] == reference.bos_token_id and config["pad_token_id"] == reference.pad_token_id
    assert reference.eos_token_id in (config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]])
    assert config["decoder"]["num_key_value_heads"] == 1 and config["decoder"]["session_options"]["intra_op_num_threads"] >= 1
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == reference.chat_template
    text = "It was a bright cold day in April, and the clocks were striking thirteen."
    assert list(og.Tokenizer(og.Model(str(folder))).encode(text)) == reference(text, add_special_tokens=False).input_ids
    assert OnnxRunner(folder).tokenize(text) == reference(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("bits", [8, 4])
def test_block_quantized_graph_computes_the_dequantized_model(tiny_fox1, tmp_path, bits):
    """accuracy_level 0 (float compute): ONNX Runtime must reproduce PyTorch running the dequantized weights."""
    precision = {8: "int8", 4: "int4"}[bits]
    for symmetric in (True, False):
        folder = convert_to_onnx(
            tiny_fox1,
            tmp_path / f"{precision}-{symmetric}",
            OnnxOptions(precision=precision, accuracy_level=0, symmetric=symmetric, embedding_bits=bits, block_offsets=False),
        ).output
        with torch.no_grad():
            expected = dequantized_reference(tiny_fox1, bits, symmetric)(torch.tensor([PROMPT])).logits[0].numpy()
        got = OnnxRunner(folder).logits(PROMPT)
        assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max(), (precision, symmetric)


def test_block_offsets_compute_the_float_zero_point_model(tiny_fox1, tmp_path):
    """Asymmetric int4 blocks keep their fractional zero points through the block offsets: ONNX Runtime computes the
    model whose blocks dequantize with float zero points (what integer zero points alone round away), up to the
    offsets' own 4-bit rounding."""
    with torch.no_grad():
        expected = dequantized_reference(tiny_fox1, 4, False, 8, integer_zero_points=False)(torch.tensor([PROMPT])).logits[0].numpy()
    errors = {}
    for block_offsets in (True, False):
        options = OnnxOptions(precision="int4", accuracy_level=0, symmetric=False, embedding_bits=8, block_offsets=block_offsets)
        folder = convert_to_onnx(tiny_fox1, tmp_path / str(block_offsets), options).output
        errors[block_offsets] = np.abs(OnnxRunner(folder).logits(PROMPT) - expected).max() / np.abs(expected).max()
    assert errors[True] < 0.1 * errors[False], errors


def test_symmetric_int4_blocks_agree_with_gguf_q4_0():
    """An independent reference for the 4-bit codes: gguf-py's Q4_0 (llama.cpp's layout: scale = max / -8)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 256)).astype(np.float32)
    packed, scales, zeros = quantize_blockwise(weight, 4, 32)
    assert zeros is None and packed.shape == (64, 8, 16) and scales.shape == (64, 8)
    ours = dequantize_blockwise(packed, scales.astype(np.float16).astype(np.float32), 4, 256)  # Q4_0 stores f16 scales
    theirs = gguf.quants.dequantize(gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q4_0), gguf.GGMLQuantizationType.Q4_0)
    assert np.mean(ours == theirs) > 0.999


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_searched_block_scales_lower_the_importance_weighted_error(bits, symmetric):
    """With an importance per input column, each block's scale (and zero point) is searched: the weighted squared
    error never exceeds round-to-nearest's, block by block, and the codes stay in range for ONNX Runtime."""
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((96, 320)) * 0.02).astype(np.float32)
    weight[:, 7] *= 30  # an outlier column, as real layers have
    importance = rng.gamma(0.5, 1.0, 320).astype(np.float32)
    errors = []
    for given in (None, importance):
        packed, scales, zeros = quantize_blockwise(weight, bits, 32, symmetric, given)
        if zeros is not None and bits == 8:
            assert zeros.dtype == np.uint8  # ONNX Runtime's 8-bit kernel takes integer zero points only
        approx = dequantize_blockwise(packed, scales, bits, 320, zeros)
        errors.append((importance * (weight - approx) ** 2).reshape(96, 10, 32).sum(-1))
    rtn, searched = errors
    assert np.all(searched <= rtn * (1 + 1e-5) + 1e-12)
    assert searched.sum() < {4: 0.95, 8: 0.99}[bits] * rtn.sum(), (searched.sum(), rtn.sum())


def test_calibrated_graph_computes_its_dequantized_model(tiny_fox1, tmp_path):
    """--calibration: the importance matrix of the checkpoint on calibration text reaches every matrix's block search
    (fused q/k/v and gate/up included): ONNX Runtime computes what PyTorch computes with those dequantized weights."""
    from transformers import AutoModelForCausalLM

    from fox_edge.pipeline import convert
    from fox_edge.quant.imatrix import checkpoint_importance

    importance = checkpoint_importance(tiny_fox1, "builtin")  # what convert computes: the same text and chunks
    folder = convert(
        tiny_fox1, tmp_path / "calibrated", OnnxOptions(precision="int4", accuracy_level=0, block_offsets=False),  # asymmetric, 8-bit embedding
        calibration="builtin", check=CheckSettings(enabled=False),
    ).output  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_fox1, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2:
                # the tied embedding / lm_head at 8 bits in blocks of 128, by default
                embedding = OnnxPlan.resolve(OnnxOptions()).embedding
                bits, block = (embedding.bits, embedding.block_size) if "embed_tokens" in name else (4, 32)
                packed, scales, zeros = quantize_blockwise(parameter.numpy(), bits, block, False, importance[name])
                parameter.copy_(torch.from_numpy(dequantize_blockwise(packed, scales, bits, parameter.shape[1], zeros)))
        expected = model(torch.tensor([PROMPT])).logits[0].numpy()
    runner = OnnxRunner(folder)
    assert runner.metadata["fox_edge.block_scales"] == "searched against an importance matrix"
    got = runner.logits(PROMPT)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()


def test_quantized_runs_track_pytorch_and_genai(tiny_onnx, tiny_reference):
    """fp16 and int8 (accuracy_level 4: int8 compute) near PyTorch; onnxruntime-genai greedy equals ours on the int4 graph.

    The tiny random weights are very sensitive to quantization: int4 is checked exactly above (float compute) and for
    accuracy on trained weights in test_onnx_accuracy.py."""
    expected = tiny_reference.logits(PROMPT)
    for precision, min_agreement in (("fp16", 0.95), ("int8", 0.7)):
        got = OnnxRunner(tiny_onnx[precision]).logits(PROMPT)
        assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= min_agreement, precision
    runner = OnnxRunner(tiny_onnx["int4"])
    ours = list(generate_tokens(runner, PROMPT, SamplingParams.greedy(16), stop_ids=frozenset()))
    assert ours == genai_greedy(tiny_onnx["int4"], PROMPT, 16)


def test_int4_embedding_is_shared_with_the_lm_head(tiny_onnx):
    folder = tiny_onnx["int4"]
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    users = [n.op_type for n in model.graph.node if "model.embed_tokens.qweight" in n.input]
    assert sorted(users) == ["GatherBlockQuantized", "MatMulNBits"]
    assert not [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 512 * 256]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fox_edge.precision"] == "int4" and meta["fox_edge.block_size"] == "32"


@pytest.mark.parametrize("precision", ["int4", "fp16"])
def test_one_default_changed_in_the_plan_moves_graph_estimate_and_info(tiny_fox1, tmp_path, monkeypatch, precision):
    """The embedding's default block is decided once (OnnxPlan.resolve): changed there, the graph's ops, the size
    estimate (every byte of every tensor written) and `fox-edge info` all follow."""
    from fox_edge.converters import onnx_plan
    from fox_edge.converters.onnx import ALIGNMENT
    from fox_edge.info import as_json, describe
    from fox_edge.source import open_checkpoint

    monkeypatch.setattr(onnx_plan, "EMBEDDING_BLOCK_AT_8_BITS", 64)
    options = OnnxOptions(precision=precision)
    result = convert_to_onnx(tiny_fox1, tmp_path / "out", options)
    model = onnx.load(result.output / "model.onnx", load_external_data=False)
    estimate = onnx_plan.estimate_bytes(open_checkpoint(tiny_fox1).shape, OnnxPlan.resolve(options))
    spans = {}  # offset -> length: a second view of the same bytes (the embedding's scales) is counted once
    for tensor in model.graph.initializer:
        entries = {e.key: int(e.value) for e in tensor.external_data if e.key in ("offset", "length")}
        if entries:
            spans[entries["offset"]] = entries["length"]
    assert estimate == sum(spans.values()) and result.n_bytes < estimate + ALIGNMENT * len(spans), (estimate, sum(spans.values()))
    if precision == "fp16":
        return
    blocks = {
        n.op_type: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["block_size"]
        for n in model.graph.node
        if "model.embed_tokens.qweight" in n.input
    }
    assert blocks == {"GatherBlockQuantized": 64, "MatMulNBits": 64}
    assert as_json(describe(result.output))["blocks"]["embedding_block_size"] == 64


def test_int4_zero_points_are_what_onnx_runtime_prepacks(tiny_onnx):
    """Float zero points are valid MatMulNBits input, but ONNX Runtime's CPU kernels cannot prepack them and
    dequantize on every call: 0.5 tokens/s for full-size Fox-1 (benchmarks/README.md). Integer ones, packed as the
    weights (two 4-bit points a byte), take the fast path."""
    model = onnx.load(tiny_onnx["int4"] / "model.onnx", load_external_data=False)
    shapes = {t.name: (t.data_type, list(t.dims)) for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert matmuls and all(len(n.input) == 4 for n in matmuls)  # asymmetric by default: every one has zero points
    for node in matmuls:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        blocks = -(-attributes["K"] // attributes["block_size"])
        assert shapes[node.input[3]] == (onnx.TensorProto.UINT8, [attributes["N"], -(-blocks * attributes["bits"] // 8)]), node.name


def test_ort_format_keeps_weight_sharing(tiny_onnx):
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    folder = tiny_onnx["int4"]
    graph = InferenceSession.GetRootAs((folder / "model.ort").read_bytes(), 0).Model().Graph()
    initializers = [graph.Initializers(i) for i in range(graph.InitializersLength())]
    block = OnnxPlan.resolve(OnnxOptions()).embedding.block_size
    embedding_shape = [512, 256 // block, block]  # vocab, blocks, bytes per block (the embedding's default 8 bits)
    same_shape = [t.Name().decode() for t in initializers if t.DimsAsNumpy().tolist() == embedding_shape]
    assert same_shape == ["model.embed_tokens.qweight"]
    # Only the embedding's scales exist twice (the two ops want them in different ranks): a second embedding would not fit.
    assert sum(t.RawDataLength() for t in initializers) < (folder / "model.onnx.data").stat().st_size + np.prod(embedding_shape) // 2
    operators = (folder / "model.required_operators.config").read_text()
    assert "com.microsoft;1;" in operators and "MatMulNBits" in operators and "GroupQueryAttention" in operators
    np.testing.assert_array_equal(open_runner(folder / "model.ort").logits(PROMPT), OnnxRunner(folder).logits(PROMPT))


def test_check_reads_onnx_precision(tiny_onnx, tiny_fox1):
    report = check_model(tiny_onnx["int8"], tiny_fox1, MEASURE_ONLY)
    assert report.precision == "int8" and report.tokens_scored > 0 and report.kld_mean > 0


def test_weight_bytes_per_token_counts_every_matrix_once(tiny_onnx, tiny_gguf, tiny_reference):
    """The roofline's numerator (fox-edge bench --roofline, benchmarks/harness.py), against PyTorch's parameter count:
    the tied embedding is read whole, as the output projection, but only once."""
    from fox_edge.bench import weight_bytes_per_token
    from fox_edge.testing.synthetic import TINY_FOX1

    n_params = sum(p.numel() for p in tiny_reference.model.parameters())  # tied weights are one parameter
    assert weight_bytes_per_token(tiny_gguf["f32"]) == 4 * n_params
    rotary_caches = 2 * TINY_FOX1.context_length * TINY_FOX1.head_size // 2 * 4  # cos and sin, read by attention
    small_constants = 1024  # the attention mask's and logits_to_keep's scalars
    assert 4 * n_params <= weight_bytes_per_token(tiny_onnx["fp32"]) <= 4 * n_params + rotary_caches + small_constants
    # int4: everything in model.onnx.data is read per token (the embedding's bytes serve Gather and lm_head;
    # its scales are a second view of the same bytes), less the 4096-byte alignment padding.
    data = tiny_onnx["int4"] / "model.onnx.data"
    n_initializers = len(onnx.load(tiny_onnx["int4"] / "model.onnx", load_external_data=False).graph.initializer)
    assert data.stat().st_size - 4096 * n_initializers <= weight_bytes_per_token(tiny_onnx["int4"]) <= data.stat().st_size
    assert weight_bytes_per_token(tiny_onnx["int4"] / "model.ort") is None
