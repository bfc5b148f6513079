"""The llama.cpp backend: a thin layer over llama-cpp-python's C API bindings.

It uses the low-level API rather than `llama_cpp.Llama` so that logits are computed only where asked
(a 256K vocabulary makes all-position logits cost 1 MB per token) and the KV cache is kept and trimmed
by us across chat turns.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import llama_cpp as C
import numpy as np

from fox_edge.backends.base import ModelShape, Runner, common_prefix, stop_ids
from fox_edge.cpu import default_threads
from fox_edge.errors import FoxEdgeError, InvalidOption, ModelError
from fox_edge.formats import gguf_tensors

# The weight types llama.cpp's CPU backend may copy into its interleaved layouts for faster kernels
# (ggml-cpu/repack.cpp; which ones it does depends on the CPU). A mapped file's pages of a repacked tensor stay
# resident beside the copy: full-size Fox-1 Q4_K_M peaks at 1.82 GB mapped, 1.30 GB read into memory, at the same
# speed (benchmarks/BENCHMARKS.md). So a file holding any of them is read, not mapped, unless asked otherwise.
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "Q2_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0"})

# KV cache element types (ggml type numbers). f16 is llama.cpp's default; f32 makes it exact for tests.
KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
KV_BYTES = {"f32": 4, "f16": 2, "q8_0": 34 / 32}  # bytes per element (q8_0: 32 values in 34 bytes)

_log_lines: list[str] = []
_verbose = bool(os.environ.get("FOX_EDGE_VERBOSE"))


@C.llama_log_callback
def _log(level: int, text: bytes, user_data) -> None:
    line = text.decode("utf-8", errors="replace")
    if _verbose:
        sys.stderr.write(line)
    _log_lines.append(line)
    del _log_lines[:-400]  # a load writes a few hundred lines (one per repacked tensor)


C.llama_log_set(_log, ctypes.c_void_p(0))
C.llama_backend_init()


def _load_backend_modules() -> None:
    """A llama.cpp built with GGML_BACKEND_DL (ggml's CPU backend as one module per CPU feature level, as Android
    ships it; the ARM64 stage's build) registers no backend by itself: load the modules beside its libraries, the best
    one for this CPU first, as llama.cpp's own tools do. A usual build has its CPU backend registered already."""
    library = C.llama_cpp._lib  # libllama; dlsym finds ggml's functions through its dependencies
    library.ggml_backend_reg_count.restype = ctypes.c_size_t
    if library.ggml_backend_reg_count() == 0:
        library.ggml_backend_load_all_from_path(str(C.llama_cpp._base_path).encode())


_load_backend_modules()


def _extra_buffer_types() -> list[str]:
    """The CPU backend's extra weight buffer types (CPU_REPACK, AMX, ...): where use_extra_bufts lets llama.cpp put
    weights. ggml's proc-address lookup is how its own tools find them."""
    library = C.llama_cpp._lib
    for name, restype, argtypes in (
        ("ggml_backend_dev_by_type", ctypes.c_void_p, [ctypes.c_int]),
        ("ggml_backend_dev_backend_reg", ctypes.c_void_p, [ctypes.c_void_p]),
        ("ggml_backend_reg_get_proc_address", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        ("ggml_backend_buft_name", ctypes.c_char_p, [ctypes.c_void_p]),
    ):
        getattr(library, name).restype, getattr(library, name).argtypes = restype, argtypes
    device = library.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    address = device and library.ggml_backend_reg_get_proc_address(
        library.ggml_backend_dev_backend_reg(device), b"ggml_backend_dev_get_extra_bufts"
    )
    if not address:
        return []
    buffer_types = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(device)
    names = []
    while buffer_types and buffer_types[len(names)]:
        names.append(library.ggml_backend_buft_name(buffer_types[len(names)]).decode())
    return names


# llama.cpp's AMX kernels (a native build on an Intel CPU with AMX: Sapphire Rapids and later) crash the process in
# the first matrix product of any type they take (Q4_0 to Q8_0, the k-quants, IQ4_XS), seen on this project's Xeon
# CI machine with llama-cpp-python 0.3.36 and reported upstream (ggml-org/llama.cpp#20824, open). Where that buffer
# type exists, no weight goes to an extra buffer type: the plain CPU kernels, a little slower, never crash.
EXTRA_BUFFERS_CRASH = "AMX" in _extra_buffer_types()


def _may_repack(path: Path) -> bool:
    return any(tensor.type.name in REPACKED_TYPES for tensor in gguf_tensors(path).values())


def default_gpu_layers() -> int:
    """All layers on Metal on Apple Silicon when this llama.cpp build has GPU offload; CPU elsewhere."""
    on_apple_silicon = sys.platform == "darwin" and platform.machine() == "arm64"
    return -1 if on_apple_silicon and C.llama_supports_gpu_offload() else 0


def device_gpu_layers(device: str) -> int:
    """--device cpu: no layer on the GPU; gpu: all of them, if this llama.cpp build has a GPU backend (Metal on a Mac)."""
    if device == "gpu" and not C.llama_supports_gpu_offload():
        raise InvalidOption(
            "this llama.cpp build has no GPU backend (on a Mac, llama-cpp-python builds with Metal); use {device} cpu", ["device"]
        )
    return -1 if device == "gpu" else 0


class LlamaCppRunner(Runner):
    backend = "llama.cpp"
    foreign_options = ()

    @classmethod
    def open(cls, path: Path, *, n_ctx: int | None, n_threads: int | None, device: str, **options) -> LlamaCppRunner:
        if device != "auto" and "gpu_layers" not in options:
            options["gpu_layers"] = device_gpu_layers(device)
        return super().open(path, n_ctx=n_ctx, n_threads=n_threads, device=device, **options)

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        gpu_layers: int | None = None,
        vocab_only: bool = False,
        kv_type: str = "f16",
        flash_attention: bool | None = None,
        use_mmap: bool | None = None,
        repack: bool = True,
        n_ubatch: int | None = None,
    ):
        self.path = Path(path)
        model_params = C.llama_model_default_params()
        # repack: llama.cpp copies Q4_0/Q4_K/IQ4_NL weights into an interleaved layout for its faster CPU kernels
        # (anonymous memory; with mmap the file's pages stay resident beside the copy).
        repack = repack and not EXTRA_BUFFERS_CRASH
        model_params.use_extra_bufts = repack
        model_params.n_gpu_layers = default_gpu_layers() if gpu_layers is None else gpu_layers
        model_params.vocab_only = vocab_only
        if use_mmap is None:
            use_mmap = vocab_only or not (repack and model_params.n_gpu_layers == 0 and _may_repack(self.path))
        self.use_mmap = use_mmap
        if not use_mmap:  # read the file into memory; llama.cpp's default (auto) maps it. load_mode replaced use_mmap
            model_params.load_mode = C.LLAMA_LOAD_MODE_NONE
        _log_lines.clear()
        self._model = C.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self._model:
            reason = load_failure(_log_lines)
            gguf_tensors(self.path)  # a truncated or corrupt file: DamagedModel, saying which (read anyway where repack is off)
            if not vocab_only and _has_no_weights(self.path):
                raise FoxEdgeError(
                    f"{self.path} holds only a vocabulary (written with --vocab-only); convert the model without it to run it"
                )
            raise ModelError(
                f"llama.cpp cannot load {self.path}{': ' + reason if reason else ''}; the file is truncated, corrupt or of an "
                "architecture this llama.cpp does not know: re-create it with `fox-edge convert`"
            )
        self._vocab = C.llama_model_get_vocab(self._model)
        self.n_vocab = C.llama_vocab_n_tokens(self._vocab)
        self.metadata = self._read_metadata()
        self.bos_id = _token_or_none(C.llama_vocab_bos(self._vocab))
        self.eos_id = _token_or_none(C.llama_vocab_eos(self._vocab))
        self.add_bos = bool(C.llama_vocab_get_add_bos(self._vocab))
        self.chat_template = self.metadata.get("tokenizer.chat_template") or None
        self.n_ctx_train = C.llama_model_n_ctx_train(self._model)
        self.stop_ids = stop_ids([self.eos_id, _token_or_none(C.llama_vocab_eot(self._vocab))], self._control_token)
        self.n_evaluated = 0
        self._ctx = None
        self.n_ctx = 0
        if vocab_only:
            return
        n_heads = C.llama_model_n_head(self._model)  # per-layer figures: not loaded for a vocabulary only
        architecture = self.metadata.get("general.architecture", "llama")
        self.shape = ModelShape(
            n_layers=C.llama_model_n_layer(self._model),
            n_kv_heads=C.llama_model_n_head_kv(self._model),
            head_size=int(self.metadata.get(f"{architecture}.attention.key_length", C.llama_model_n_embd(self._model) // max(1, n_heads))),
            hidden_size=C.llama_model_n_embd(self._model),
            kv_bytes_per_element=KV_BYTES.get(kv_type, 2),
        )

        n_train = self.n_ctx_train
        self.n_ctx = min(n_ctx, n_train) if n_ctx > 0 else n_train
        self.n_batch = min(n_batch, self.n_ctx)
        ctx_params = C.llama_context_default_params()
        ctx_params.n_ctx = self.n_ctx
        ctx_params.n_batch = self.n_batch
        # n_ubatch: the tokens computed at once; the compute buffer (256K-wide logits for Fox-1) grows with it.
        ctx_params.n_ubatch = min(n_ubatch, self.n_batch) if n_ubatch else self.n_batch
        ctx_params.n_threads = ctx_params.n_threads_batch = n_threads or default_threads()
        ctx_params.no_perf = True
        if kv_type not in KV_TYPES:
            raise InvalidOption(f"unknown KV cache type {kv_type!r}; choose one of {', '.join(KV_TYPES)}")
        ctx_params.type_k = ctx_params.type_v = KV_TYPES[kv_type]
        # None: llama.cpp decides (on CPU it uses flash attention, which rounds K and V to f16 on the way).
        ctx_params.flash_attn_type = {None: -1, False: 0, True: 1}[flash_attention]
        self._ctx = C.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            raise FoxEdgeError(f"llama.cpp cannot create a {self.n_ctx}-token context for {self.path}; lower {{n_ctx}}", ["n_ctx"])
        self._memory = C.llama_get_memory(self._ctx)
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self._cached: list[int] = []  # the tokens whose keys and values the KV cache holds, in order

    # -- vocabulary ------------------------------------------------------------------------------
    @property
    def quant_type(self) -> str | None:
        import gguf

        file_type = self.metadata.get("general.file_type")
        return None if file_type is None else gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")

    def _read_metadata(self) -> dict[str, str]:
        metadata = {}
        buffer = ctypes.create_string_buffer(1 << 16)
        for i in range(C.llama_model_meta_count(self._model)):
            C.llama_model_meta_key_by_index(self._model, i, buffer, len(buffer))
            key = buffer.value.decode("utf-8", errors="replace")
            if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
                continue  # arrays: the vocabulary API reads them
            size = C.llama_model_meta_val_str_by_index(self._model, i, buffer, len(buffer))
            if size >= len(buffer):
                big = ctypes.create_string_buffer(size + 1)
                C.llama_model_meta_val_str_by_index(self._model, i, big, len(big))
                metadata[key] = big.value.decode("utf-8", errors="replace")
            else:
                metadata[key] = buffer.value.decode("utf-8", errors="replace")
        return metadata

    def _control_token(self, text: str) -> int | None:
        ids = self.tokenize(text, special=True)
        return ids[0] if len(ids) == 1 and C.llama_vocab_is_control(self._vocab, ids[0]) else None

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (C.llama_token * capacity)()
        n = C.llama_tokenize(self._vocab, data, len(data), tokens, capacity, False, special)
        if n < 0:
            capacity = -n
            tokens = (C.llama_token * capacity)()
            n = C.llama_tokenize(self._vocab, data, len(data), tokens, capacity, False, special)
        return list(tokens[:n])

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:n]

    def token_bytes(self, token: int) -> bytes:
        return self._piece(token, special=False)

    def token_text(self, token: int) -> str:
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        array = (C.llama_token * len(tokens))(*tokens)
        capacity = 4 * len(tokens) + 16
        buffer = ctypes.create_string_buffer(capacity)
        n = C.llama_detokenize(self._vocab, array, len(tokens), buffer, capacity, False, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = C.llama_detokenize(self._vocab, array, len(tokens), buffer, -n, False, special)
        return buffer.raw[:n].decode("utf-8", errors="replace")

    # -- evaluation ------------------------------------------------------------------------------
    def _require_context(self) -> None:
        if self._ctx is None:
            raise FoxEdgeError(f"{self.path} was opened for its vocabulary only")

    def _decode(self, tokens: Sequence[int], start: int, all_logits: bool, first: int = 0) -> np.ndarray | None:
        """Evaluate `tokens` at positions start.. in batches; return logits of every token from tokens[first] on,
        or of the last."""
        outputs = []
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            last_chunk = offset + len(chunk) == len(tokens)
            batch = self._batch
            batch.n_tokens = len(chunk)
            wanted = [(all_logits and offset + i >= first) or (last_chunk and i == len(chunk) - 1) for i in range(len(chunk))]
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = wanted[i]
            status = C.llama_decode(self._ctx, batch)
            if status != 0:
                raise FoxEdgeError(
                    f"llama.cpp failed to evaluate the prompt (status {status}); the context may be full: lower {{max_tokens}} or raise {{n_ctx}}",
                    ["max_tokens", "n_ctx"],
                )
            n_out = sum(wanted)
            if n_out:
                pointer = C.llama_get_logits(self._ctx)
                outputs.append(np.ctypeslib.as_array(pointer, shape=(n_out, self.n_vocab)).copy())
        return np.concatenate(outputs) if outputs else None

    def logits(self, tokens: Sequence[int], first: int = 0) -> np.ndarray:
        self._require_context()
        self.check_fits(len(tokens), "the chunk")
        C.llama_memory_clear(self._memory, True)
        self._cached = []
        result = self._decode(list(tokens), 0, all_logits=True, first=first)
        self._cached = list(tokens)
        return result

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        self._require_context()
        tokens = list(tokens)
        if not tokens:
            raise FoxEdgeError("nothing to evaluate: the prompt is empty")
        self.check_fits(len(tokens))
        common = min(common_prefix(self._cached, tokens), len(tokens) - 1)  # the last token is always evaluated: its logits are the answer
        if not C.llama_memory_seq_rm(self._memory, 0, common, -1):
            C.llama_memory_clear(self._memory, True)
            common = 0
        self._cached = tokens[:common]
        logits = self._decode(tokens[common:], common, all_logits=False)
        self._cached = tokens
        self.n_evaluated = len(tokens) - common
        return logits[-1]

    def drop_cached(self, start: int, end: int) -> bool:
        """llama.cpp's own KV shift: the positions removed, the later keys re-rotated to their new positions."""
        self._require_context()
        if not _lib_can_shift(self._memory) or not C.llama_memory_seq_rm(self._memory, 0, start, end):
            return False
        C.llama_memory_seq_add(self._memory, 0, end, -1, start - end)
        self._cached = self._cached[:start] + self._cached[end:]
        return True

    def cache_state(self) -> bytes | None:
        self._require_context()
        buffer = (ctypes.c_uint8 * C.llama_state_seq_get_size(self._ctx, 0))()
        return bytes(buffer[: C.llama_state_seq_get_data(self._ctx, buffer, len(buffer), 0)])

    def restore_cache_state(self, tokens: Sequence[int], state: bytes) -> bool:
        self._require_context()
        C.llama_memory_clear(self._memory, True)
        self._cached = []
        if len(tokens) > self.n_ctx or not state:
            return False
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if C.llama_state_seq_set_data(self._ctx, buffer, len(state), 0) == 0:
            C.llama_memory_clear(self._memory, True)
            return False
        self._cached = list(tokens)
        return True

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            C.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        self.close()


def _lib_can_shift(memory) -> bool:
    """llama_memory_can_shift, which llama-cpp-python does not bind."""
    function = C.llama_cpp._lib.llama_memory_can_shift
    function.argtypes, function.restype = [ctypes.c_void_p], ctypes.c_bool
    return bool(function(memory))


def load_failure(log: list[str]) -> str:
    """llama.cpp's own reason for refusing a model: its "error loading model: ..." line, not the generic
    "failed to load model" it logs after it."""
    lines = [line.strip() for line in log]
    for line in reversed(lines):
        if "error loading model:" in line:
            return line.split("error loading model:", 1)[1].strip()
    return next((line for line in reversed(lines) if "error" in line.lower() or "failed" in line.lower()), "")


def _has_no_weights(path: Path) -> bool:
    try:
        return not gguf_tensors(path)
    except FoxEdgeError:
        return False


def _token_or_none(token: int) -> int | None:
    return None if token < 0 else int(token)
