"""Importance matrices: per-input-column mean squared activations of every matrix llama.cpp quantizes.

Computed from the full-precision model with PyTorch forward hooks on calibration text, and read and
written in llama.cpp's own GGUF imatrix format (`<tensor>.in_sum2` and `<tensor>.counts`), so a matrix
from `llama-imatrix` works here and ours works with `llama-quantize --imatrix`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fox_edge.errors import FoxEdgeError
from fox_edge.files import atomic_output

MIN_CALIBRATION_TOKENS = 512

# Hugging Face module -> GGUF weight name (for a layer i); the output projection is token_embd when tied.
LINEAR_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@dataclass
class ImportanceMatrix:
    sums: dict[str, np.ndarray]  # GGUF tensor name -> sum over tokens of x_j^2, per input column j
    count: int  # tokens seen
    chunk_size: int
    datasets: list[str]

    def means(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantizer takes: the mean squared activation per input column."""
        return {name: (values / max(self.count, 1)).astype(np.float32) for name, values in self.sums.items()}


def compute_imatrix(
    model,
    chunks: Sequence[Sequence[int]],
    progress: Callable[[int, int, str], None] | None = None,
    dataset: str = "",
) -> ImportanceMatrix:
    """Run `chunks` through `model` and collect the activation statistics of every Linear's input."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    hooks = []

    def collect(name: str):
        def hook(module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)

        return hook

    for i, layer in enumerate(model.model.layers):
        for path, short in LINEAR_NAMES.items():
            hooks.append(layer.get_submodule(path).register_forward_pre_hook(collect(f"blk.{i}.{short}.weight")))
    # The output layer's input is the final norm's output: collected there, the vocabulary-wide logits of every position
    # are never computed (logits_to_keep=1), a fifth of SmolLM2's forward pass and a third of Fox-1's.
    head = collect("token_embd.weight" if model.config.tie_word_embeddings else "output.weight")
    hooks.append(model.model.norm.register_forward_hook(lambda module, inputs, output: head(module, (output,))))
    count, started = 0, time.monotonic()
    try:
        with torch.no_grad():
            for done, chunk in enumerate(chunks, 1):
                model(torch.tensor([list(chunk)]), logits_to_keep=1)
                count += len(chunk)
                if progress:
                    progress(done, len(chunks), f"{count / (time.monotonic() - started):.0f} tok/s")
    finally:
        for hook in hooks:
            hook.remove()
    return ImportanceMatrix({n: v.numpy() for n, v in sums.items()}, count, len(chunks[0]) if chunks else 0, [dataset] if dataset else [])


def calibration_chunks(tokens: list[int], chunk_size: int, bos_id: int | None, max_chunks: int) -> list[list[int]]:
    """Chunks as llama-imatrix makes them: consecutive pieces of the text, each starting with BOS."""
    if len(tokens) < MIN_CALIBRATION_TOKENS:
        raise FoxEdgeError(
            f"the calibration text is only {len(tokens)} tokens; give at least {MIN_CALIBRATION_TOKENS} (a few pages of representative text)"
        )
    chunk_size = min(chunk_size, len(tokens))
    chunks = [tokens[i : i + chunk_size] for i in range(0, len(tokens) - chunk_size + 1, chunk_size)][:max_chunks]
    if bos_id is not None:
        chunks = [[bos_id, *chunk[1:]] for chunk in chunks]
    return chunks


def save_imatrix(matrix: ImportanceMatrix, path: str | os.PathLike[str]) -> Path:
    with atomic_output(path) as temporary:
        writer = gguf.GGUFWriter(temporary, arch="")
        writer.add_type(gguf.GGUFType.IMATRIX)
        if matrix.datasets:
            writer.add_array(gguf.Keys.IMatrix.DATASETS, matrix.datasets)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, matrix.count // max(matrix.chunk_size, 1))
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, matrix.chunk_size)
        for name, values in sorted(matrix.sums.items()):
            writer.add_tensor(f"{name}.in_sum2", values.astype(np.float32).reshape(1, -1))
            writer.add_tensor(f"{name}.counts", np.array([[matrix.count]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def load_imatrix(path: str | os.PathLike[str]) -> ImportanceMatrix:
    try:
        reader = gguf.GGUFReader(path)
    except Exception:
        raise FoxEdgeError(
            f"{path} is not an imatrix file (llama.cpp's GGUF imatrix format); compute one with {{calibration}}", ["calibration"]
        ) from None
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    sums = {name.removesuffix(".in_sum2"): v.reshape(-1) for name, v in tensors.items() if name.endswith(".in_sum2")}
    if not sums:
        raise FoxEdgeError(f"{path} holds no importance matrix tensors; compute one with {{calibration}}", ["calibration"])
    counts = {name.removesuffix(".counts"): float(v.reshape(-1)[0]) for name, v in tensors.items() if name.endswith(".counts")}
    count = int(max(counts.values(), default=1))
    # Matrices with fewer observations (none here; MoE experts in llama.cpp's files) are scaled to the common count.
    sums = {name: values * (count / counts.get(name, count)) for name, values in sums.items()}
    size = reader.fields.get(gguf.Keys.IMatrix.CHUNK_SIZE)
    datasets = reader.fields.get(gguf.Keys.IMatrix.DATASETS)
    return ImportanceMatrix(sums, count, int(size.contents()) if size else 0, list(datasets.contents()) if datasets else [])


def hf_weight_name(gguf_name: str) -> str:
    """A GGUF weight name of LINEAR_NAMES (or the embedding / output) -> the checkpoint's name for the same matrix."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    _, layer, short, _ = gguf_name.split(".")
    path = next(path for path, name in LINEAR_NAMES.items() if name == short)
    return f"model.layers.{layer}.{path}.weight"


def checkpoint_importance(
    source: str | os.PathLike[str],
    calibration: str | os.PathLike[str],
    progress: Callable[[int, int, str], None] | None = None,
    *,
    chunk_size: int = 512,
    max_chunks: int = 64,
) -> dict[str, np.ndarray]:
    """The importance matrix of a Hugging Face checkpoint on `calibration` text ('builtin' or a file), keyed by the
    checkpoint's weight names: what convert_to_onnx searches its int8/int4 block scales against."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise FoxEdgeError("calibration needs PyTorch: pip install 'fox-edge[torch]' (install torch==2.13.0 first on CPU machines)")
    from fox_edge.backends.torch import TorchRunner
    from fox_edge.texts import read_text

    text = read_text(calibration, "calibration")
    if progress:
        progress(0, 0, "loading the model in PyTorch")
    with TorchRunner(source) as runner:
        chunks = calibration_chunks(runner.tokenize(text), chunk_size, runner.bos_id if runner.add_bos else None, max_chunks)
        matrix = compute_imatrix(runner.model, chunks, progress, dataset=str(calibration))
    return {hf_weight_name(name): values for name, values in matrix.means().items()}
