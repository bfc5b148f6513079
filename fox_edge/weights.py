"""Memory-mapped, lazy reading of safetensors files, bf16 included.

`safetensors.numpy` cannot return bf16 and `safe_open(framework="pt")` needs torch, which fox-edge keeps
optional; the format is a JSON header over raw little-endian arrays, so numpy.memmap reads it directly.
Nothing is loaded until a tensor is asked for, and then only that tensor's pages.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fox_edge.errors import DamagedModel
from fox_edge.spec import LlamaShape, llama_tensors

# safetensors dtype -> numpy storage dtype; BF16 is stored as uint16 and widened by `to_float32`.
STORAGE_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
# What a checkpoint's weights may be stored as: an integer or boolean tensor is no Llama weight.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorRef:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offsets in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def read_header(file: Path) -> list[TensorRef]:
    """Parse a safetensors header and check that every tensor lies inside the file."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DamagedModel(f"{file} is truncated ({size} bytes): re-download or re-save the checkpoint")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100_000_000):
            raise DamagedModel(f"{file} is truncated or not a safetensors file (header of {header_len} bytes); re-download it")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DamagedModel(f"{file} has a corrupt safetensors header; re-download it") from None
    if not isinstance(header, dict):
        raise DamagedModel(f"{file} has a corrupt safetensors header; re-download it")
    data_start = 8 + header_len
    refs = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(n) for n in info["shape"]), info["data_offsets"]
            if not all(isinstance(n, int) and n >= 0 for n in (begin, end, *shape)) or begin > end:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise DamagedModel(f"{file}: the header entry of tensor {name} is malformed; re-download the checkpoint") from None
        if dtype not in FLOAT_DTYPES:
            raise DamagedModel(
                f"{file}: tensor {name} is {dtype}; a checkpoint's weights are {', '.join(FLOAT_DTYPES)}: re-save it in float"
            )
        ref = TensorRef(name, dtype, shape, file, data_start + begin, data_start + end)
        itemsize = np.dtype(STORAGE_DTYPES[ref.dtype]).itemsize
        if ref.nbytes != ref.n_elements * itemsize:
            raise DamagedModel(f"{file}: tensor {name} has {ref.nbytes} bytes for shape {ref.shape}; the file is corrupt, re-download it")
        if ref.end > size:
            raise DamagedModel(f"{file} is truncated: tensor {name} ends at byte {ref.end} but the file has {size}; re-download it")
        refs.append(ref)
    # The data buffer is laid out tensor after tensor: overlapping spans would make two weights share bytes.
    position = data_start
    for ref in sorted(refs, key=lambda r: (r.start, r.end)):
        if ref.start != position:
            problem = "overlaps the tensor before it" if ref.start < position else "leaves a gap before it"
            raise DamagedModel(f"{file}: tensor {ref.name} {problem} (byte {ref.start}); the file is corrupt, re-download it")
        position = ref.end
    return refs


class SafetensorsWeights:
    """All tensors of a checkpoint's safetensors files, by name, read lazily through memory maps."""

    def __init__(self, files: list[Path]):
        self.refs: dict[str, TensorRef] = {}
        for file in files:
            for ref in read_header(file):
                self.refs[ref.name] = ref
        self._maps: dict[Path, mmap.mmap] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.refs

    def __iter__(self) -> Iterator[str]:
        return iter(self.refs)

    def _map(self, file: Path) -> mmap.mmap:
        if file not in self._maps:
            with file.open("rb") as f:
                self._maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[file]

    def _view(self, ref: TensorRef, first_row: int = 0, n_rows: int | None = None) -> np.ndarray:
        storage = np.dtype(STORAGE_DTYPES[ref.dtype])
        row_elements = int(np.prod(ref.shape[1:], dtype=np.int64)) if len(ref.shape) > 1 else 1
        n_rows = (ref.shape[0] if ref.shape else 1) - first_row if n_rows is None else n_rows
        offset = ref.start + first_row * row_elements * storage.itemsize
        array = np.frombuffer(self._map(ref.file), dtype=storage, count=n_rows * row_elements, offset=offset)
        return array.reshape((n_rows, *ref.shape[1:]) if ref.shape else ())

    def _release(self, ref: TensorRef, start: int, end: int) -> None:
        """Drop the pages just read from this process: they stay in the page cache, not in our RSS."""
        start -= start % mmap.PAGESIZE
        self._map(ref.file).madvise(mmap.MADV_DONTNEED, start, end - start)

    def raw(self, name: str) -> np.ndarray:
        """A copy of the stored array (bf16 as uint16 bits)."""
        ref = self.refs[name]
        array = self._view(ref).copy()
        self._release(ref, ref.start, ref.end)
        return array

    def float32(self, name: str) -> np.ndarray:
        return to_float32(self.raw(name), self.refs[name].dtype)

    def float32_rows(self, name: str, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """The tensor as float32, a block of rows at a time, so a 1 GB embedding never sits in memory whole."""
        ref = self.refs[name]
        n_rows = ref.shape[0] if ref.shape else 1
        row_bytes = max(1, ref.nbytes // max(1, n_rows))
        step = max(1, max_bytes // (row_bytes * 2))
        for first in range(0, n_rows, step):
            count = min(step, n_rows - first)
            block = to_float32(self._view(ref, first, count), ref.dtype)
            self._release(ref, ref.start + first * row_bytes, ref.start + (first + count) * row_bytes)
            yield block

    def close(self) -> None:
        for mapping in self._maps.values():
            try:
                mapping.close()
            except BufferError:  # an array still views it (an interrupted conversion): closed when that array goes
                pass
        self._maps.clear()


def check_llama_tensors(weights: SafetensorsWeights, shape: LlamaShape) -> None:
    """Every tensor a Llama model needs is there, in the shape config.json implies: checked by both converters before
    anything is written, so a checkpoint whose files and config disagree never becomes an unloadable model."""
    expected = llama_tensors(shape, lm_head=not shape.tie_word_embeddings or "lm_head.weight" in weights)
    for name, (dims, _) in expected.items():
        if name not in weights:
            raise DamagedModel(f"the checkpoint lacks tensor {name}; it is not a complete Llama checkpoint: re-download it")
        if tuple(weights.refs[name].shape) != dims:
            raise DamagedModel(
                f"tensor {name} is {list(weights.refs[name].shape)}, config.json implies {list(dims)}; the checkpoint and its config disagree"
            )


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return np.array(array, dtype=np.float32)


def to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str] | None = None) -> None:
    """Write {name: (safetensors dtype, array)} (BF16 given as uint16 bits), one tensor at a time."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (dtype, array) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, array in tensors.values():
            np.ascontiguousarray(array).tofile(f)
