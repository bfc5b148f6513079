"""The ONNX Runtime backend: a folder written by `fox-edge convert --to onnx`, run by onnxruntime.

The KV cache is one preallocated buffer per layer and per K/V, bound through IO binding as both the
past input and the present output of GroupQueryAttention, which then appends in place (its shared-buffer
mode): nothing is copied or reallocated per token, and rolling back to a common prefix only lowers the
length the attention mask declares. Prompts run in batches of n_batch tokens; while generating, the graph
computes logits for the last position only (its `logits_to_keep` input).

Tokenization uses the folder's tokenizer.json through Hugging Face `tokenizers` (what transformers' fast
tokenizers run), so no PyTorch is needed to chat.
"""

from __future__ import annotations

import mmap
import platform
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from fox_edge.backends.base import ModelShape, Runner, common_prefix, stop_ids, trim_heap
from fox_edge.cpu import default_threads
from fox_edge.errors import FoxEdgeError, InvalidOption
from fox_edge.formats import (
    GATHERS,
    GENAI_CONFIG,
    LOGITS_TO_KEEP,
    ONNX,
    ONNX_METADATA_KEYS,
    ONNX_MODEL,
    ONNX_REWRITE,
    PAST_KEY,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_VALUE,
    ROTARY_CACHES,
    OnnxInitializer,
    identify,
    onnx_folder,
    onnx_graph_file,
    onnx_inventory,
)
from fox_edge.source import contained, read_json

NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
T = TypeVar("T")


def default_providers() -> list[str]:
    """CoreML on Apple Silicon Macs (onnxruntime's macOS arm64 wheel ships it), NNAPI on Android, else CPU.

    XNNPACK is only in custom or mobile builds of onnxruntime; it is used when the installed build has it.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = []
    if sys.platform == "darwin" and platform.machine() == "arm64":
        wanted.append("CoreMLExecutionProvider")
    if hasattr(sys, "getandroidapilevel"):
        wanted.append("NnapiExecutionProvider")
    wanted.append("XnnpackExecutionProvider")
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


GPU_PROVIDERS = ("CoreMLExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider", "NnapiExecutionProvider")


def device_providers(device: str) -> list[str]:
    """--device cpu: the CPU provider alone; gpu: the accelerators this onnxruntime build has (CoreML on Apple Silicon),
    with the CPU for the ops they do not take."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    accelerators = [p for p in GPU_PROVIDERS if p in ort.get_available_providers()]
    if not accelerators:
        raise InvalidOption(
            f"this onnxruntime build has no GPU provider (it has {', '.join(ort.get_available_providers())}); use {{device}} cpu",
            ["device"],
        )
    return [*accelerators, "CPUExecutionProvider"]


def piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The text bytes of a vocabulary piece: byte-level BPE maps bytes to printable characters, SentencePiece
    spells spaces U+2581 and unknown bytes <0xAB>."""
    if byte_level:
        return bytes(BYTE_DECODER.get(c, 0) for c in piece) if all(c in BYTE_DECODER for c in piece) else piece.encode()
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table (the ByteLevel pre-tokenizer's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


BYTE_DECODER = _byte_decoder()


class OnnxRunner(Runner):
    backend = "onnxruntime"

    @classmethod
    def open(cls, path: Path, *, n_ctx: int | None, n_threads: int | None, device: str, **options) -> OnnxRunner:
        if device != "auto" and "providers" not in options:
            options["providers"] = device_providers(device)
        return super().open(path, n_ctx=n_ctx, n_threads=n_threads, device=device, **options)

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name") or self.path.name

    @property
    def quant_type(self) -> str | None:
        return self.metadata.get(ONNX_METADATA_KEYS["precision"])

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        providers: list[str] | None = None,
        allow_spinning: bool = True,
    ):
        import onnxruntime as ort

        # The folder, or one model file in it (model.ort, say, where the folder holds both): open_runner has identified it.
        path = Path(path)
        self.path, model_file = onnx_folder(path), onnx_graph_file(path)
        if model_file is None:  # constructed directly, with a path that is no ONNX folder
            identify(path, (ONNX,))
        genai = read_genai_config(self.path)
        decoder = genai["decoder"]
        self.n_layers, self.n_kv_heads, self.head_size = decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]
        self.n_ctx_train = genai["context_length"]
        self.n_ctx = min(n_ctx, self.n_ctx_train) if n_ctx > 0 else self.n_ctx_train
        self.n_batch = max(1, min(n_batch, self.n_ctx))
        self.n_vocab = genai["vocab_size"]

        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads or default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the logits_to_keep initializer-input warning is by design
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        # The runner maps the weight files itself, read-only, and ONNX Runtime uses the mapping in place: the runner can
        # then drop the mapping's resident pages whenever it likes (a later read faults them back from the page cache),
        # which it could not safely do to ONNX Runtime's own mappings, unmapped and reused while it packs.
        self._weights = WeightFiles.map(model_file) if model_file.suffix == ".onnx" else WeightFiles()
        self._weights.hand_to(options)
        options.add_session_config_entry("session.prepack.enable_parallel", "1")  # packs on the intra-op threads

        def create_session() -> ort.InferenceSession:
            try:
                return ort.InferenceSession(str(model_file), options, providers=providers or default_providers())
            except Exception as exc:  # onnxruntime's Fail / InvalidGraph / NoSuchFile carry the reason
                reason = str(exc).splitlines()[0][:300]
                raise FoxEdgeError(
                    f"ONNX Runtime cannot load {model_file}: {reason}; re-run `fox-edge convert` to rewrite the folder"
                ) from None

        # Creating the session is ONNX Runtime prepacking the weights on the intra-op threads, without the GIL: this
        # thread drops the weight files' pages as fast as ONNX Runtime reads them (GB/s), which keeps the load's peak at
        # the packed copy rather than packed copy plus file. The tokenizer loads first: it holds the GIL for most of a
        # second, and the packing already keeps both cores busy.
        self._load_tokenizer(genai)
        self._session = self._weights.dropping_pages_while(create_session)
        self._weights.drop_pages()
        trim_heap()
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.n_threads = options.intra_op_num_threads
        inputs = {i.name: i for i in self._session.get_inputs()}
        self._dtype = NUMPY_TYPES[inputs[PAST_KEY.format(0)].type]
        self.shape = ModelShape(
            n_layers=self.n_layers, n_kv_heads=self.n_kv_heads, head_size=self.head_size,
            hidden_size=int(decoder.get("hidden_size") or self.head_size * decoder.get("num_attention_heads", self.n_kv_heads)),
            kv_bytes_per_element=np.dtype(self._dtype).itemsize,
        )  # fmt: skip
        if LOGITS_TO_KEEP not in {i.name for i in self._session.get_overridable_initializers()}:
            raise FoxEdgeError(
                f"{model_file} was not written by `fox-edge convert --to onnx` (it has no logits_to_keep input); convert the checkpoint again"
            )
        # IO binding finds an overridable initializer only when it is given as an OrtValue.
        self._keep = {
            all_logits: ort.OrtValue.ortvalue_from_numpy(np.array([0 if all_logits else 1], np.int64)) for all_logits in (False, True)
        }
        self._binding = self._session.io_binding()
        self._cache: list = []  # OrtValues: per layer, key then value, each (1, kv heads, n_ctx, head size)
        self._cached: list[int] = []
        self.n_evaluated = 0

    def resident_weights_bytes(self) -> int | None:
        """What ONNX Runtime holds of the weights (formats.OnnxInventory.resident_bytes); None for a folder with only an
        ORT-format file."""
        return onnx_inventory(self.path).resident_bytes() if (self.path / ONNX_MODEL).is_file() else None

    def _load_tokenizer(self, genai: dict) -> None:
        import tokenizers

        config_path = self.path / "tokenizer_config.json"
        tokenizer_config = read_json(config_path, ONNX_REWRITE) if config_path.is_file() else {}
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on missing or malformed files
            raise FoxEdgeError(
                f"cannot read {self.path / 'tokenizer.json'} ({exc}); copy the tokenizer files from the original model"
            ) from None
        self._plain_tokenizer = None  # built on first use: copying a 256K vocabulary costs a second at start-up
        # Pieces are spelled out as tokens are generated: tables of all 256K (strings and bytes) would cost 58 MB and
        # half a second of every load.
        self._byte_level = "ByteLevel" in repr(self._tokenizer.decoder)
        self._special = special = {i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special}
        self.bos_id = genai.get("bos_token_id")
        eos = genai.get("eos_token_id")
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_id = eos[0] if eos else None
        self.add_bos = bool(tokenizer_config.get("add_bos_token", False))
        self.chat_template = tokenizer_config.get("chat_template") or None
        self.stop_ids = stop_ids(eos, lambda text: token if (token := self._tokenizer.token_to_id(text)) in special else None)

    # -- vocabulary ------------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        if special:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        if self._plain_tokenizer is None:
            import tokenizers

            self._plain_tokenizer = tokenizers.Tokenizer.from_str(self._tokenizer.to_str())
            self._plain_tokenizer.encode_special_tokens = True  # "<eos>" in a text is just text
        return self._plain_tokenizer.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token: int) -> bytes:
        if token < 0 or token in self._special:
            return b""
        return piece_bytes(self._tokenizer.id_to_token(token) or "", self._byte_level)

    def token_text(self, token: int) -> str:
        if token in self._special:
            return self._tokenizer.id_to_token(token) or ""
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        if special:
            return "".join(self.token_text(t) for t in tokens)
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    # -- evaluation ------------------------------------------------------------------------------
    def _allocate_cache(self) -> None:
        import onnxruntime as ort

        shape = [1, self.n_kv_heads, self.n_ctx, self.head_size]
        self._cache = [ort.OrtValue.ortvalue_from_shape_and_type(shape, self._dtype) for _ in range(2 * self.n_layers)]
        for layer in range(self.n_layers):
            for j, (past, present) in enumerate(((PAST_KEY, PRESENT_KEY), (PAST_VALUE, PRESENT_VALUE))):
                value = self._cache[2 * layer + j]
                self._binding.bind_ortvalue_input(past.format(layer), value)
                self._binding.bind_ortvalue_output(present.format(layer), value)

    def _run(self, tokens: Sequence[int], start: int, all_logits: bool) -> np.ndarray:
        """Evaluate `tokens` at positions start.. on top of the cache's first `start` entries."""
        import onnxruntime as ort

        if not self._cache:
            self._allocate_cache()
        outputs = []
        for offset in range(0, len(tokens), self.n_batch):
            chunk = np.asarray([tokens[offset : offset + self.n_batch]], dtype=np.int64)
            end = start + offset + chunk.shape[1]
            last = end == start + len(tokens)
            self._binding.bind_cpu_input("input_ids", chunk)
            self._binding.bind_cpu_input("attention_mask", np.ones((1, end), dtype=np.int64))
            self._binding.bind_ortvalue_input(LOGITS_TO_KEEP, self._keep[all_logits])
            rows = chunk.shape[1] if all_logits else 1
            logits = ort.OrtValue.ortvalue_from_shape_and_type([1, rows, self.n_vocab], np.float32)
            self._binding.bind_ortvalue_output("logits", logits)
            # Each embedding row read maps the file around it (64 KB of fault-around, or a whole large folio of up to
            # 2 MB): 300 MB over a long chat unless dropped after each run, and 100 MB more during a long prompt's run
            # (its rows are gathered first, then the run takes seconds) unless dropped while it runs.
            if chunk.shape[1] > 1:
                self._weights.dropping_pages_while(lambda: self._session.run_with_iobinding(self._binding), gathered_only=True)
            else:
                self._session.run_with_iobinding(self._binding)
            self._weights.drop_pages(gathered_only=True)
            if all_logits or last:
                outputs.append(logits.numpy()[0])
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]

    def logits(self, tokens: Sequence[int], first: int = 0) -> np.ndarray:
        self.check_fits(len(tokens), "the chunk")
        self._cached = []
        result = self._run(tokens, 0, all_logits=True)[first:].astype(np.float32, copy=False)  # the graph computes every row
        self._cached = list(tokens)
        self.n_evaluated = len(tokens)
        return result

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        tokens = list(tokens)
        self.check_fits(len(tokens))
        common = min(common_prefix(self._cached, tokens), len(tokens) - 1)  # re-evaluate at least one token for its logits
        logits = self._run(tokens[common:], common, all_logits=False)[-1]
        self._cached = tokens
        self.n_evaluated = len(tokens) - common
        return logits.astype(np.float32, copy=False)

    def drop_cached(self, start: int, end: int) -> bool:
        """Positions [start, end) out of every layer's cache and the later ones moved down, their keys rotated back by
        end - start positions with the graph's own RoPE tables (rotate-half, as GroupQueryAttention applies them)."""
        cos_name, sin_name = ROTARY_CACHES
        if not self._cache or cos_name not in self._weights.copied or end <= start or end > len(self._cached):
            return False
        n, shift = len(self._cached), end - start
        cos = self._weights.copied[cos_name][shift].astype(np.float32)  # cos and sin of shift x frequency
        sin = self._weights.copied[sin_name][shift].astype(np.float32)
        half = self.head_size // 2
        for index, value in enumerate(self._cache):
            data = value.numpy()
            moved = data[:, :, end:n].astype(np.float32)
            if index % 2 == 0:  # a key: rotate by -shift positions
                first, second = moved[..., :half].copy(), moved[..., half:].copy()
                moved[..., :half], moved[..., half:] = first * cos + second * sin, second * cos - first * sin
            data[:, :, start : n - shift] = moved.astype(data.dtype)
            value.update_inplace(data)
        self._cached = self._cached[:start] + self._cached[end:]
        return True

    def cache_state(self) -> bytes | None:
        n = len(self._cached)
        return b"".join(np.ascontiguousarray(value.numpy()[:, :, :n]).tobytes() for value in self._cache) if self._cache and n else None

    def restore_cache_state(self, tokens: Sequence[int], state: bytes) -> bool:
        if not self._cache:
            self._allocate_cache()
        self._cached, n = [], len(tokens)
        per_value = self.n_kv_heads * n * self.head_size * np.dtype(self._dtype).itemsize
        if n > self.n_ctx or len(state) != per_value * len(self._cache):
            return False
        for index, value in enumerate(self._cache):
            data = value.numpy()
            saved = np.frombuffer(state, self._dtype, per_value // np.dtype(self._dtype).itemsize, index * per_value)
            data[:, :, :n] = saved.reshape(1, self.n_kv_heads, n, self.head_size)
            value.update_inplace(data)
        self._cached = list(tokens)
        return True

    def close(self) -> None:
        self._binding = None
        self._cache = []
        self._session = None
        self._weights.close()  # after the session, which reads them in place


GENAI_INTEGERS = ("context_length", "vocab_size", "decoder.num_hidden_layers", "decoder.num_key_value_heads", "decoder.head_size")


def read_genai_config(folder: Path) -> dict:
    """genai_config.json's "model" section, with the numbers the runner needs checked to be there and positive."""
    genai = read_json(folder / GENAI_CONFIG, ONNX_REWRITE).get("model")
    for key in GENAI_INTEGERS:
        value = genai
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FoxEdgeError(f"{folder / GENAI_CONFIG}: model.{key} is {value!r}, not a positive whole number; {ONNX_REWRITE}")
    return genai


@dataclass
class WeightFiles:
    """A model's external weight files, mapped read-only for ONNX Runtime to use in place (keyed by the location the
    graph names them by), the byte ranges of the tables read a row at a time (Gather's embedding), and copies of the
    small initializers every run reads whole (norm weights, rotary caches).

    Those copies keep runs off the mapping: a page cache of large folios (ext4 on Linux 6.x) maps a whole folio, up
    to 2 MB of the neighbouring matrices, for each 8 KB norm a run reads, 100 MB in all for full-size Fox-1."""

    maps: dict[str, mmap.mmap] = field(default_factory=dict)
    gathered: list[tuple[mmap.mmap, int, int]] = field(default_factory=list)  # (map, page-aligned start, length)
    copied: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def map(cls, model_file: Path) -> WeightFiles:
        """Maps the external weight files of `model_file`; fails with the file's name, not ONNX Runtime's internals,
        when one is missing or cut short."""
        import onnx

        ends: dict[str, int] = {}
        rows: list[tuple[str, int, int]] = []
        to_copy: list[OnnxInitializer] = []
        for tensor in onnx_inventory(model_file).initializers:
            if tensor.location is None:
                continue
            ends[tensor.location] = max(ends.get(tensor.location, 0), tensor.offset + tensor.length)
            if tensor.readers & GATHERS:
                rows.append((tensor.location, tensor.offset, tensor.length))
            elif not tensor.readers <= {"MatMulNBits"}:  # MatMulNBits' weights, scales and zero points are packed
                to_copy.append(tensor)
        weights = cls()
        for location, end in ends.items():
            data = contained(model_file.parent / location, model_file.parent.resolve())
            if not data.is_file():
                raise FoxEdgeError(
                    f"{data} is missing (the weights of {model_file.name}); copy the whole folder, or re-run `fox-edge convert --to onnx`"
                )
            if data.stat().st_size < end:
                raise FoxEdgeError(
                    f"{data} is truncated ({data.stat().st_size:,} of {end:,} bytes); copy it again or re-run `fox-edge convert --to onnx`"
                )
            with open(data, "rb") as file:
                weights.maps[location] = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        for location, offset, length in rows:
            start = offset - offset % mmap.PAGESIZE
            weights.gathered.append((weights.maps[location], start, offset + length - start))
        for tensor in to_copy:
            dtype, count = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), int(np.prod(tensor.dims, dtype=np.int64))
            copy = np.frombuffer(weights.maps[tensor.location], dtype, count, tensor.offset).reshape(tensor.dims).copy()
            weights.copied[tensor.name] = copy
        return weights

    def hand_to(self, options) -> None:
        """Has a session created with `options` read the weights from these mappings, without a copy."""
        import onnxruntime as ort

        if self.maps:
            buffers = [np.frombuffer(m, np.uint8) for m in self.maps.values()]
            options.add_external_initializers_from_files_in_memory(list(self.maps), buffers, [b.nbytes for b in buffers])
            options.add_session_config_entry("session.use_external_initializer_file_buffers_directly", "1")
        if self.copied:  # ONNX Runtime reads these in place too: they live as long as this object
            options.add_external_initializers(list(self.copied), [ort.OrtValue.ortvalue_from_numpy(a) for a in self.copied.values()])

    def drop_pages(self, gathered_only: bool = False) -> None:
        """Drops this process's resident pages of the mappings (or of the gathered tables only): lossless, since they
        are read-only views of files, and a few microseconds when little is resident. ONNX Runtime reads the matrix
        weights once, to pack them into memory of its own; what a run still reads (a few embedding rows, the norms)
        faults back from the page cache. Where madvise is missing (Windows), nothing is dropped."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        ranges = self.gathered if gathered_only else [(m, 0, len(m)) for m in self.maps.values()]
        for mapping, start, length in ranges:
            mapping.madvise(mmap.MADV_DONTNEED, start, length)

    def dropping_pages_while(self, work: Callable[[], T], gathered_only: bool = False) -> T:
        """`work()`, run on a thread of its own (ONNX Runtime releases the GIL) while this one drops pages every 5 ms."""
        with ThreadPoolExecutor(1, thread_name_prefix="fox-edge-work") as worker:
            result = worker.submit(work)
            while not result.done():
                self.drop_pages(gathered_only)
                wait([result], timeout=0.005)
            return result.result()

    def close(self) -> None:
        for mapping in self.maps.values():
            mapping.close()
        self.maps, self.gathered, self.copied = {}, [], {}
