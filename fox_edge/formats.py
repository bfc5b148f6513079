"""The model formats fox-edge reads: each one's files and how to recognise it, in one table.

A leaf module: it imports nothing from fox-edge but the error type, so a runner, `info`, `bench`,
`check`, a converter or a bundle reader learns a folder's layout here without importing a graph
builder or a runtime. `identify` is the one answer to "what kind of model is this path?".
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fox_edge.errors import DamagedModel, FoxEdgeError, ModelNotFound, UnsupportedModel

if TYPE_CHECKING:
    import gguf

GGUF_MAGIC = b"GGUF"

# The ONNX model folder, as `fox-edge convert --to onnx` writes it and onnxruntime-genai reads it.
ONNX_MODEL = "model.onnx"
ONNX_DATA = "model.onnx.data"
ORT_MODEL = "model.ort"  # the same graph in ORT format (`--ort-format`), for reduced mobile builds
GENAI_CONFIG = "genai_config.json"
# Copied beside the graph: genai's tokenizer reads tokenizer.json + tokenizer_config.json; fox-edge's
# runner reads config.json too (shape, special-id cross-checks), exactly as it reads a checkpoint.
ONNX_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "config.json",
)
# A fox-edge bundle: a folder an app embeds (fox_edge/bundle.py makes it, fox_edge/manifest.py reads it).
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_README = "README.md"

# The graph's KV-cache inputs and outputs, as onnxruntime-genai's defaults spell them.
PAST_KEY, PAST_VALUE = "past_key_values.{}.key", "past_key_values.{}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{}.key", "present.{}.value"
ONNX_REWRITE = "re-run `fox-edge convert --to onnx` to rewrite the folder"  # the fix for a damaged folder
ROTARY_CACHES = ("cos_cache", "sin_cache")  # the graph's RoPE tables, (positions, head size / 2): cos and sin of position x frequency
LOGITS_TO_KEEP = "logits_to_keep"  # fox-edge's overridable input: logits for the last N positions (0 = all)
# What an ONNX conversion records in the model's metadata_props: OnnxPlan field -> key (fox_edge/converters/onnx_plan.py
# writes and reads the plan through it; the runner reads the precision).
ONNX_METADATA_KEYS = {
    "precision": "fox_edge.precision",
    "weights": "fox_edge.weights",
    "block_size": "fox_edge.block_size",
    "accuracy_level": "fox_edge.accuracy_level",
    "symmetric": "fox_edge.symmetric",
    "embedding_bits": "fox_edge.embedding_bits",
    "embedding_block_size": "fox_edge.embedding_block_size",
    "block_offsets": "fox_edge.block_offsets",
    "block_scales": "fox_edge.block_scales",
}

# Which accuracy bars a model is held to (fox_edge/check.py), by what it is stored as: a GGUF file type fox-edge
# quantizes to or an ONNX conversion's precision. Full-precision models are held to the f16 bars; other types have none.
PRECISION_CLASSES = {
    "F32": "f16", "F16": "f16", "BF16": "f16",
    "Q8_0": "int8", "Q6_K": "int6", "Q5_K_M": "int5", "Q4_K_M": "int4", "Q4_K_S": "int4", "Q4_0": "int4", "IQ4_NL": "int4", "IQ4_XS": "int4",
    "fp32": "f16", "fp16": "f16", "int8": "int8", "int4": "int4",
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ModelFormat:
    """One kind of model and what fox-edge does with it: a new format is one entry below."""

    name: str  # what `fox-edge info --json`, a bundle's manifest and the errors call it
    description: str  # how a user would recognise it
    recognise: Callable[[Path], bool]
    opener: str | None = None  # "module:function" that opens it as a runner, imported on use (the registry stays a leaf)
    files: Callable[[Path], list[Path]] = lambda path: []  # the model's own files (what a bundle lists and copies)
    weight_files: Callable[[Path], list[Path]] = lambda path: []  # the files its weights are read from
    bundle_path: str | None = None  # where a bundle keeps a model of this format

    def open(self, path: Path, **options):
        """The model at `path` as a runner (fox_edge.runner.open_runner checks the options first)."""
        if self.opener is None:
            raise UnsupportedModel(f"fox-edge cannot run {self.description}")
        module, attribute = self.opener.split(":")
        function = importlib.import_module(module)
        for name in attribute.split("."):
            function = getattr(function, name)
        return function(Path(path), **options)

    def copy(self, source: Path, target: Path, ignore: Callable[[Path], bool] = lambda path: False) -> None:
        """The model's files at `target`, laid out as at `source` (a file for a file, a folder for a folder)."""
        root = source if source.is_dir() else source.parent
        for file in self.files(source):
            destination = target if not source.is_dir() and file == source else target / file.relative_to(root)
            if not ignore(file):
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, destination)


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def onnx_folder(path: Path) -> Path | None:
    """The model folder of an ONNX folder, or of a model.onnx / model.ort inside one; None for anything else."""
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.suffix not in (".onnx", ".ort"):
        return None
    has_graph = any((folder / name).is_file() for name in (ONNX_MODEL, ORT_MODEL))
    return folder if has_graph and (folder / GENAI_CONFIG).is_file() else None


def onnx_graph_file(path: Path) -> Path | None:
    """The graph a runner loads from an ONNX folder: the model.onnx / model.ort it names, else model.onnx, else model.ort."""
    folder = onnx_folder(path)
    if folder is None:
        return None
    if path.is_file():
        return path
    return next((folder / name for name in (ONNX_MODEL, ORT_MODEL) if (folder / name).is_file()), None)


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / BUNDLE_MANIFEST).is_file()


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def _onnx_files(path: Path) -> list[Path]:
    folder = onnx_folder(path)
    return _folder_files(folder) if folder else []


def _onnx_weight_files(path: Path) -> list[Path]:
    """The graph and its external data (an ORT flatbuffer beside them holds the same weights again)."""
    folder = onnx_folder(path)
    return [f for f in (folder / ONNX_MODEL, folder / ONNX_DATA) if f.is_file()] if folder else []


GGUF = ModelFormat(
    name="gguf", description="a GGUF file", recognise=is_gguf, opener="fox_edge.backends.llamacpp:LlamaCppRunner.open",
    files=lambda path: [path], weight_files=lambda path: [path], bundle_path="model.gguf",
)  # fmt: skip
ONNX = ModelFormat(
    name="onnx", description="an ONNX model folder", recognise=lambda path: onnx_folder(path) is not None,
    opener="fox_edge.backends.onnx:OnnxRunner.open", files=_onnx_files, weight_files=_onnx_weight_files, bundle_path="model",
)  # fmt: skip
BUNDLE = ModelFormat(
    name="bundle", description="a fox-edge bundle", recognise=is_bundle, opener="fox_edge.runner:open_bundle", files=_folder_files
)  # fmt: skip
# The source of every conversion; runners open it too, on PyTorch, as the accuracy check's reference.
CHECKPOINT = ModelFormat(
    name="checkpoint", description="a Hugging Face checkpoint folder", recognise=is_checkpoint, opener="fox_edge.backends.torch:TorchRunner.open",
    files=_folder_files, weight_files=lambda path: sorted(path.glob("*.safetensors")),
)  # fmt: skip
# What fox-edge writes and runs, in the order they are tried (an ONNX folder holds a config.json too, so
# the checkpoint comes last).
MODEL_FORMATS = (GGUF, ONNX, BUNDLE)
FORMATS = (*MODEL_FORMATS, CHECKPOINT)


def by_name(name: str) -> ModelFormat:
    """The format a manifest or `info --json` calls `name`."""
    return next(f for f in FORMATS if f.name == name)


def identify(path: str | os.PathLike[str], accepted: tuple[ModelFormat, ...] = FORMATS) -> ModelFormat:
    """The format of `path` among `accepted`, or the one error every command gives for a path it cannot take."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"no such file or folder: {path}; convert a checkpoint with `fox-edge convert SOURCE -o MODEL`")
    for model_format in accepted:
        if model_format.recognise(path):
            return model_format
    kinds = [f.description for f in accepted if f is not CHECKPOINT]
    neither = kinds[0] if len(kinds) == 1 else f"neither {', '.join(kinds[:-1])} nor {kinds[-1]}"  # "neither a, b nor c"
    raise UnsupportedModel(f"{path} is {'not ' if len(kinds) == 1 else ''}{neither}; convert a checkpoint with `fox-edge convert`")


@dataclass(frozen=True)
class GgufTensor:
    type: gguf.GGMLQuantizationType
    n_elements: int
    n_bytes: int
    n_dims: int


def gguf_tensors(path: str | os.PathLike[str]) -> dict[str, GgufTensor]:
    """Tensor name -> type and size, from a GGUF header, read by ggml's own GGUF parser (see _ggml_gguf)."""
    file = Path(path).resolve()
    stat = file.stat()
    return _gguf_tensors(file, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _gguf_tensors(file: Path, mtime_ns: int, size: int) -> dict[str, GgufTensor]:
    import gguf

    lib = _ggml_gguf()
    captured: list[str] = []
    capture = _LOG_CALLBACK(lambda level, text, user_data: captured.append(text.decode("utf-8", errors="replace")))
    previous, previous_data = ctypes.c_void_p(), ctypes.c_void_p()
    lib.ggml_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
    lib.ggml_log_set(capture, None)  # ggml's reasons go into the one-line error, not onto stderr
    try:
        context = lib.gguf_init_from_file(os.fsencode(file), _GgufInitParams(True, None))
    finally:
        lib.ggml_log_set(previous, previous_data)
    if not context:
        reason = "; ".join(line.strip() for line in captured if line.strip()) or "not a GGUF header"
        raise DamagedModel(f"{file} is truncated or not a GGUF file ({reason}); re-create it with `fox-edge convert`")
    try:
        tensors, end = {}, 0
        for i in range(lib.gguf_get_n_tensors(context)):
            shape = lib.gguf_get_tensor_ne(context, i)[:4]
            n_bytes = lib.gguf_get_tensor_size(context, i)
            end = max(end, lib.gguf_get_tensor_offset(context, i) + n_bytes)
            tensors[lib.gguf_get_tensor_name(context, i).decode()] = GgufTensor(
                type=gguf.GGMLQuantizationType(lib.gguf_get_tensor_type(context, i)),
                n_elements=shape[0] * shape[1] * shape[2] * shape[3],
                n_bytes=n_bytes,
                n_dims=max((d + 1 for d, n in enumerate(shape) if n > 1), default=1),
            )
        if tensors and lib.gguf_get_data_offset(context) + end > size:
            raise DamagedModel(
                f"{file} is truncated: its tensors end at byte {lib.gguf_get_data_offset(context) + end:,} but the file has "
                f"{size:,}; re-create it with `fox-edge convert`"
            )
        return tensors
    finally:
        lib.gguf_free(context)


class _GgufInitParams(ctypes.Structure):  # ggml's struct gguf_init_params
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)  # ggml_log_callback


@functools.cache
def _ggml_gguf():
    """ggml's GGUF parser from llama-cpp-python's libggml-base, bound with ctypes: it reads Fox-1's header (256K
    vocabulary strings included) in 40 ms, where gguf-py's reader takes 10 s, so a runner can look at the tensor
    types before it loads a model."""
    import importlib.util
    import sys

    spec = importlib.util.find_spec("llama_cpp")
    name = {"darwin": "libggml-base.dylib", "win32": "ggml-base.dll"}.get(sys.platform, "libggml-base.so")
    lib = ctypes.CDLL(str(Path(spec.origin).parent / "lib" / name))
    handle, index, size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    signatures = {
        "gguf_init_from_file": ([ctypes.c_char_p, _GgufInitParams], handle),
        "gguf_free": ([handle], None),
        "gguf_get_n_tensors": ([handle], index),
        "gguf_get_tensor_name": ([handle, index], ctypes.c_char_p),
        "gguf_get_tensor_type": ([handle, index], ctypes.c_int),
        "gguf_get_tensor_ne": ([handle, index], ctypes.POINTER(ctypes.c_int64)),
        "gguf_get_tensor_size": ([handle, index], size),
        "gguf_get_tensor_offset": ([handle, index], size),
        "gguf_get_data_offset": ([handle], size),
        "ggml_log_get": ([ctypes.POINTER(handle), ctypes.POINTER(handle)], None),
        "ggml_log_set": ([handle, handle], None),
    }
    for function, (arguments, result) in signatures.items():
        getattr(lib, function).argtypes = arguments
        getattr(lib, function).restype = result
    return lib


GATHERS = frozenset({"Gather", "GatherBlockQuantized"})  # ops that read a table a row at a time


@dataclass(frozen=True)
class OnnxInitializer:
    name: str
    data_type: int  # onnx.TensorProto.DataType
    dims: tuple[int, ...]
    location: str | None  # the external data file, None when stored inside the graph
    offset: int
    length: int
    readers: frozenset[str]  # the op types of the nodes that read it

    @property
    def extent(self) -> tuple[str, int, int]:
        """Where its bytes are: two initializers with one extent are views of the same bytes."""
        return (self.location, self.offset, self.length) if self.location else (self.name, 0, self.length)

    @property
    def gathered_only(self) -> bool:
        return self.readers <= GATHERS


@dataclass(frozen=True)
class PackedMatmul:  # a MatMulNBits node: ONNX Runtime packs its weights into memory of its own
    n: int
    k: int
    bits: int
    block_size: int


@dataclass(frozen=True)
class OnnxInventory:
    """One reading of an ONNX graph without its weights: what the runner maps, `bench` counts, `info` shows and the
    memory estimate adds up."""

    graph: Path
    initializers: tuple[OnnxInitializer, ...]
    packed_matmuls: tuple[PackedMatmul, ...]
    op_counts: dict[str, int]
    metadata: dict[str, str]
    opset: int

    def bytes_read_per_token(self) -> int:
        """Every initializer a decoding step reads whole, each extent once; a table only gathered from is read a row
        at a time (counted as nothing)."""
        return sum(length for _, _, length in {t.extent for t in self.initializers if not t.gathered_only})

    def resident_bytes(self) -> int:
        """ONNX Runtime's packed copy of the MatMulNBits weights (MLAS's int8-compute layout: the codes plus an f32
        scale and an f32 block sum per block, 1.3x a 4-bit file's blocks) and every other initializer but those only
        gathered from (their pages are dropped after loading)."""
        packed = sum(m.n * -(-m.k // m.block_size) * (m.block_size * m.bits // 8 + 8) for m in self.packed_matmuls)
        quantized = {"MatMulNBits", "GatherBlockQuantized"}
        return packed + sum(t.length for t in self.initializers if not t.readers <= quantized)

    def by_type(self) -> dict[int, tuple[int, int]]:
        """data type -> (initializers, bytes), each extent counted once."""
        totals: dict[int, tuple[int, int]] = {}
        seen = set()
        for tensor in self.initializers:
            if tensor.extent in seen:
                continue
            seen.add(tensor.extent)
            count, nbytes = totals.get(tensor.data_type, (0, 0))
            totals[tensor.data_type] = (count + 1, nbytes + tensor.length)
        return totals


def onnx_inventory(path: str | os.PathLike[str]) -> OnnxInventory:
    """The inventory of an ONNX folder's model.onnx (or of the model.onnx given), read once per version of the file."""
    graph = Path(path)
    graph = graph if graph.is_file() else Path(onnx_folder(graph) or graph) / ONNX_MODEL
    stat = graph.stat()
    return _onnx_inventory(graph.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _onnx_inventory(graph: Path, mtime_ns: int, size: int) -> OnnxInventory:
    import onnx

    try:
        model = onnx.load(graph, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and OSError
        raise DamagedModel(f"{graph} is truncated or corrupt ({type(exc).__name__}); {ONNX_REWRITE}") from None
    readers: dict[str, set[str]] = {}
    op_counts: dict[str, int] = {}
    packed = []
    for node in model.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
        if node.op_type == "MatMulNBits":
            a = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
            packed.append(PackedMatmul(n=a["N"], k=a["K"], bits=a["bits"], block_size=a["block_size"]))
    initializers = []
    for tensor in model.graph.initializer:
        entries = {e.key: e.value for e in tensor.external_data}
        initializers.append(
            OnnxInitializer(
                name=tensor.name, data_type=tensor.data_type, dims=tuple(tensor.dims), location=entries.get("location"),
                offset=int(entries.get("offset", 0)), length=int(entries.get("length", len(tensor.raw_data))),
                readers=frozenset(readers.get(tensor.name, ())),
            )
        )  # fmt: skip
    return OnnxInventory(
        graph=graph, initializers=tuple(initializers), packed_matmuls=tuple(packed), op_counts=op_counts,
        metadata={p.key: p.value for p in model.metadata_props},
        opset=max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    )  # fmt: skip


def open_gguf(path: str | os.PathLike[str]):
    """gguf's reader over a file, its many ways of failing on a damaged file turned into one clear error."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # ValueError, struct errors, IndexError, numpy errors on damaged files
        raise FoxEdgeError(
            f"{path} is truncated or not a GGUF file ({type(exc).__name__}: {exc}); re-create it with `fox-edge convert`"
        ) from None
