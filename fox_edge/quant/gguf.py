"""GGUF quantization through llama.cpp's own quantizer (`llama_model_quantize`), no CLI needed.

The quantizer runs in a child process (`python -m fox_edge.quant.gguf`): it cannot be interrupted from
Python while inside C, and a child can be stopped cleanly on Ctrl-C. Its per-tensor log lines, relayed
as JSON lines on the child's stdout, drive the progress hook.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fox_edge.cpu import check_threads
from fox_edge.errors import FoxEdgeError, InvalidOption
from fox_edge.files import atomic_output, check_writable
from fox_edge.formats import PRECISION_CLASSES, gguf_tensors

T = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class QuantType:
    file_type: gguf.LlamaFileType
    bits_per_weight: float  # nominal, for ordering candidates by size

    @property
    def precision(self) -> str:
        """Which default accuracy bars apply (formats.PRECISION_CLASSES)."""
        return PRECISION_CLASSES[self.file_type.name.removeprefix("MOSTLY_")]


# The types `fox-edge quantize --type` offers, smallest first.
QUANT_TYPES = {
    "IQ4_XS": QuantType(gguf.LlamaFileType.MOSTLY_IQ4_XS, 4.25),
    "Q4_K_S": QuantType(gguf.LlamaFileType.MOSTLY_Q4_K_S, 4.58),
    "IQ4_NL": QuantType(gguf.LlamaFileType.MOSTLY_IQ4_NL, 4.5),
    "Q4_0": QuantType(gguf.LlamaFileType.MOSTLY_Q4_0, 4.5),
    "Q4_K_M": QuantType(gguf.LlamaFileType.MOSTLY_Q4_K_M, 4.85),
    "Q5_K_M": QuantType(gguf.LlamaFileType.MOSTLY_Q5_K_M, 5.69),
    "Q6_K": QuantType(gguf.LlamaFileType.MOSTLY_Q6_K, 6.56),
    "Q8_0": QuantType(gguf.LlamaFileType.MOSTLY_Q8_0, 8.5),
}
# Tensor types for the token-embedding / output overrides, with their bits per weight.
TENSOR_TYPES = {"Q4_K": (T.Q4_K, 4.5), "Q5_K": (T.Q5_K, 5.5), "Q6_K": (T.Q6_K, 6.56), "Q8_0": (T.Q8_0, 8.5), "F16": (T.F16, 16.0)}
FULL_PRECISION = {T.F32, T.F16, T.BF16}

DISK_FULL = 64 << 20  # bytes free below which a failed write is taken for a full disk
_PROGRESS_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


@dataclass
class QuantizedFile:
    """What llama.cpp's quantizer wrote."""

    output: Path
    type: str
    embedding_type: str
    bytes: int
    seconds: float


def parse_type(name: str) -> QuantType:
    key = name.upper()
    if key not in QUANT_TYPES:
        raise InvalidOption(f"unknown quantization type {name!r}; choose one of {', '.join(QUANT_TYPES)}")
    return QUANT_TYPES[key]


def parse_tensor_type(name: str | None, option: str) -> gguf.GGMLQuantizationType | None:
    if name is None:
        return None
    key = name.upper()
    if key not in TENSOR_TYPES:
        raise InvalidOption(f"unknown {{{option}}} {name!r}; choose one of {', '.join(TENSOR_TYPES)}", [option])
    return TENSOR_TYPES[key][0]


def weight_types(path: str | os.PathLike[str]) -> dict[str, gguf.GGMLQuantizationType]:
    """Tensor name -> type, from the cached header (formats.gguf_tensors)."""
    return {name: tensor.type for name, tensor in gguf_tensors(path).items()}


def refuse_quantized(path: str | os.PathLike[str], allow_requantize: bool) -> None:
    """Quantizing quantized weights adds a second rounding error: only when asked."""
    quantized = sorted({t.name for name, t in weight_types(path).items() if t not in FULL_PRECISION and name.endswith(".weight")})
    if quantized and not allow_requantize:
        raise FoxEdgeError(
            f"{path} is already quantized ({', '.join(quantized)}); quantize the f16/f32 GGUF instead, "
            "or pass {allow_requantize} to accept the extra loss",
            ["allow_requantize"],
        )


# llama.cpp's quantizer converts each tensor to f32 and quantizes it in slabs of rows of at most this many bytes
# (its default, 8 GiB, holds the whole 256K x 2048 embedding: 2.1 GB of f32 beside its f16 copy and output, a
# 3.6 GB peak on full-size Fox-1). 64 MiB slabs give the same bytes at 1.15 GB and no loss of speed
# (benchmarks/BENCHMARKS.md).
SLAB_BYTES = 64 << 20


def _child(input_path: str, output_path: str, settings: dict, imatrix_path: str | None) -> int:
    """Runs in the child process: quantize, relaying llama.cpp's per-tensor log lines as JSON on stdout."""
    import ctypes

    import llama_cpp as C

    errors: list[str] = []

    def say(*message) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    @C.llama_log_callback
    def log(level, text, user_data):
        line = text.decode("utf-8", errors="replace")
        match = _PROGRESS_LINE.search(line)
        if match:
            say("tensor", int(match[1]), int(match[2]), match[3])
        elif "error" in line.lower() or "failed" in line.lower():
            errors.append(line.strip())

    C.llama_log_set(log, ctypes.c_void_p(0))
    params = C.llama_model_quantize_default_params()
    for key, value in settings.items():
        setattr(params, key, value)
    keep_alive = []
    if imatrix_path:
        from fox_edge.quant.imatrix import load_imatrix

        means = load_imatrix(imatrix_path).means()
        entries = (C.llama_model_imatrix_data * (len(means) + 1))()
        for i, (name, values) in enumerate(means.items()):
            array = np.ascontiguousarray(values, dtype=np.float32)
            keep_alive.append(array)
            entries[i].name = name.encode()
            entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = array.size
        entries[len(means)].name = None  # terminator
        params.imatrix = entries
    status = C.llama_model_quantize(input_path.encode(), output_path.encode(), ctypes.byref(params))
    say("done", status, errors[-1] if errors else "")
    return 0


def quantize_gguf(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    type_name: str,
    *,
    threads: int = 0,
    embedding: str | None = None,
    output_tensor: str | None = None,
    imatrix_path: str | os.PathLike[str] | None = None,
    allow_requantize: bool = False,
    slab_bytes: int = SLAB_BYTES,
    progress: Callable[[int, int, str], None] | None = None,
) -> QuantizedFile:
    """Quantize a GGUF to `type_name` with llama.cpp; `imatrix_path` is an importance matrix in llama.cpp's format.
    `slab_bytes`: the most tensor rows llama.cpp converts and quantizes at once (0: its default, 8 GiB)."""
    quant = parse_type(type_name)
    embedding_override = parse_tensor_type(embedding, "embedding")
    output_override = parse_tensor_type(output_tensor, "output_tensor")
    check_writable(output, inputs=[input_path, imatrix_path])
    if threads:
        check_threads(threads)
    refuse_quantized(input_path, allow_requantize)
    settings = {
        "ftype": int(quant.file_type),
        "nthread": threads,
        "allow_requantize": allow_requantize,
        "max_buf_size": slab_bytes,
    }
    if embedding_override is not None:
        settings["token_embedding_type"] = int(embedding_override)
    if output_override is not None:
        settings["output_tensor_type"] = int(output_override)

    started = time.monotonic()
    with atomic_output(output) as temporary:
        job = json.dumps([str(input_path), str(temporary), settings, str(imatrix_path) if imatrix_path else None])
        child = subprocess.Popen(
            [sys.executable, "-m", "fox_edge.quant.gguf", job], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            status, error = _follow(child, progress)
        except BaseException:
            child.kill()
            child.wait()
            raise
        if status != 0 or not temporary.is_file():
            # llama.cpp reports any failed write of its output stream as "basic_ios::clear: iostream error".
            disk_full = shutil.disk_usage(temporary.parent).free < DISK_FULL
            if disk_full or "iostream error" in error:
                reason = "the disk is full" if disk_full else "llama.cpp's write failed (a quota or a file size limit?)"
                raise FoxEdgeError(
                    f"cannot write {output} (quantizing {input_path} to {type_name}): {reason}; free disk space or choose another output path"
                )
            raise FoxEdgeError(f"llama.cpp could not quantize {input_path} to {type_name}{': ' + error if error else ''}")
        size = temporary.stat().st_size
        result_embedding = weight_types(temporary)["token_embd.weight"].name
    return QuantizedFile(Path(output), type_name.upper(), result_embedding, size, time.monotonic() - started)


def _follow(child: subprocess.Popen, progress) -> tuple[int, str]:
    for line in child.stdout:
        message = json.loads(line)
        if message[0] == "tensor" and progress:
            progress(message[1], message[2], message[3])
        elif message[0] == "done":
            child.wait()
            return message[1], message[2]
    child.wait()
    last = (child.stderr.read().strip().splitlines() or ["no output"])[-1]
    return -1, f"the quantizer process died (exit code {child.returncode}: {last})"


if __name__ == "__main__":
    sys.exit(_child(*json.loads(sys.argv[1])))
