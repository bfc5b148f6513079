"""What every backend is: the runner interface, and the parts of it that are the same for all of them.

A backend only loads a model, tokenizes, and evaluates tokens into logits while keeping its KV cache;
prompt formatting, sampling, stopping, streaming text and cancelling live in fox_edge/runner.py.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fox_edge.errors import ContextOverflow, InvalidOption
from fox_edge.formats import PRECISION_CLASSES, identify
from fox_edge.spec import END_OF_TURN_TOKENS


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """What the memory a model needs depends on, besides its weights."""

    n_layers: int
    n_kv_heads: int
    head_size: int
    hidden_size: int
    kv_bytes_per_element: float  # of the KV cache as this runner keeps it (f16: 2)


def trim_heap() -> None:
    """Hands the C heap's free pages back to the system (glibc's malloc_trim). Loading frees much of what it allocates
    (the tokenizer's parsed JSON, ONNX Runtime's packing buffers) and glibc would keep ~40 MB of it resident. Elsewhere
    (musl, macOS, Windows) a no-op."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError, TypeError):
        pass


def weights_bytes(model: Path) -> int:
    """The bytes of a model's weight files (formats.ModelFormat.weight_files)."""
    return sum(file.stat().st_size for file in identify(model).weight_files(Path(model)))


def estimate_memory(
    *, weights_bytes: int, shape: ModelShape, n_vocab: int, n_ctx: int, n_batch: int = 512, resident_weights_bytes: int | None = None
) -> dict:
    """What a chat at `n_ctx` needs: the weights as the runtime holds them (`resident_weights_bytes`, when it packs
    them into a layout of its own; else the files, mapped or read, all resident once read), the KV cache, and the
    compute buffers of a batch of prompt tokens."""
    kv = int(2 * shape.n_layers * shape.n_kv_heads * shape.head_size * n_ctx * shape.kv_bytes_per_element)
    compute = n_batch * 16 * shape.hidden_size * 4 + 2 * n_vocab * 4
    resident = weights_bytes if resident_weights_bytes is None else resident_weights_bytes
    return {
        "total_bytes": resident + kv + compute,
        "weights_bytes": weights_bytes,
        "resident_weights_bytes": resident,
        "kv_cache_bytes": kv,
        "compute_bytes": compute,
        "at_context": n_ctx,
        "method": (
            "weights: as the runtime holds them (ONNX Runtime: its packed copy of the block-quantized matrices, an f32 scale "
            "and block sum per block; llama.cpp: the weight files, resident once read, mapped or read into memory); KV cache: "
            "2 (K and V) x layers x kv heads x head size x context x bytes per element (f16: 2); compute: a 512-token prompt "
            "batch's activations (512 x 16 x hidden size x 4 bytes) plus two rows of logits"
        ),
    }


DEFAULT_CONTEXT = 4096  # tokens, when neither the caller nor a bundle says (capped at the model's own)
LLAMA_CPP_OPTIONS = ("flash_attention", "kv_type", "gpu_layers", "use_mmap", "repack", "n_ubatch")  # only llama.cpp takes these


class Runner:
    """One model opened for inference. Backends set these attributes and implement the methods below."""

    backend: str
    path: Path
    n_ctx: int  # the context this runner was opened with
    n_ctx_train: int  # the longest context the model was made for
    shape: ModelShape
    generation_defaults: dict = {}  # sampling defaults the model comes with (a bundle's), under the caller's own
    n_vocab: int
    bos_id: int | None
    eos_id: int | None
    stop_ids: frozenset[int]  # eos and end-of-turn tokens (see stop_ids below)
    add_bos: bool
    chat_template: str | None
    metadata: dict[str, str]
    n_evaluated: int = 0  # tokens the last prefill() actually computed (the rest came from the KV cache)

    foreign_options: tuple[str, ...] = LLAMA_CPP_OPTIONS  # options of another backend, refused by name

    @classmethod
    def open(cls, path: Path, *, n_ctx: int | None, n_threads: int | None, device: str, **options) -> Runner:
        """The runner for `path` on `device` (auto, cpu or gpu: each backend says what that means) at `n_ctx` tokens
        (None: DEFAULT_CONTEXT, capped at the model's own); `options` are the backend's own."""
        if foreign := sorted(set(options) & set(cls.foreign_options)):
            raise InvalidOption(
                f"llama.cpp's {', '.join(foreign)} {'applies' if len(foreign) == 1 else 'apply'} only to GGUF models, not to {path}; "
                f"drop {', '.join('{' + o + '}' for o in foreign)}",
                foreign,
            )
        return cls(path, n_ctx=DEFAULT_CONTEXT if n_ctx is None else n_ctx, n_threads=n_threads, **options)

    @property
    def name(self) -> str | None:
        """The model's name, as its file records it."""
        return self.metadata.get("general.name")

    @property
    def license(self) -> str | None:
        return self.metadata.get("general.license")

    @property
    def quant_type(self) -> str | None:
        """What the weights are stored as: a GGUF file type (Q4_K_M, F16, ...), an ONNX conversion's precision (int4,
        fp32, ...), or None where the model does not say (a checkpoint, a folder fox-edge did not convert)."""
        return None

    @property
    def precision_class(self) -> str:
        """Which accuracy bars apply (formats.PRECISION_CLASSES): full precision when the model does not say."""
        return PRECISION_CLASSES.get(self.quant_type, self.quant_type) if self.quant_type else "f16"

    def resident_weights_bytes(self) -> int | None:
        """The weights' bytes as the runtime holds them, where that differs from the files (None: the files)."""
        return None

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        raise NotImplementedError

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        raise NotImplementedError

    def token_text(self, token: int) -> str:
        """The token's own spelling, special tokens included (for templates and reports)."""
        raise NotImplementedError

    def logits(self, tokens: Sequence[int], first: int = 0) -> np.ndarray:
        """Logits (len(tokens) - first, n_vocab), float32, of positions first.. of a chunk evaluated from position 0
        with a fresh cache (the accuracy check scores a chunk's second half: the rest of the output layer is skipped)."""
        raise NotImplementedError

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Make the KV cache hold exactly `tokens`, reusing its longest common prefix; return the last position's logits."""
        raise NotImplementedError

    def drop_cached(self, start: int, end: int) -> bool:
        """Removes positions [start, end) from the KV cache and moves the later ones down (a chat dropping its oldest
        turns keeps the rest cached); False where the backend cannot, and the next prefill recomputes from `start`."""
        return False

    def cache_state(self) -> bytes | None:
        """The KV cache of `cached_tokens`, as bytes `restore_cache_state` takes back; None where the backend cannot."""
        return None

    def restore_cache_state(self, tokens: Sequence[int], state: bytes) -> bool:
        """The KV cache as `cache_state` gave it for `tokens`; False (and an empty cache) where the backend cannot."""
        return False

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose keys and values the KV cache holds, in order."""
        return list(getattr(self, "_cached", []))

    def close(self) -> None:
        raise NotImplementedError

    def check_fits(self, n_tokens: int, what: str = "the prompt", room: int = 0) -> None:
        """The one "does not fit the context" check: `n_tokens` plus `room` (tokens still to come) must fit n_ctx."""
        if n_tokens + room > self.n_ctx:
            allows = " allows with room for a reply" if n_tokens <= self.n_ctx else ""
            raise ContextOverflow(
                f"{what} is {n_tokens} tokens, longer than the {self.n_ctx}-token context{allows}; shorten it or raise {{n_ctx}}", ["n_ctx"]
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_ids(eos_ids: Iterable[int | None], special_id: Callable[[str], int | None]) -> frozenset[int]:
    """What ends a reply, the same way for every backend: the eos ids, and each end-of-turn token of the chat
    formats we know (spec.END_OF_TURN_TOKENS) that the vocabulary holds as a special token.

    `special_id(text)` is the id of `text` when the vocabulary has it as one special (control) token, else None.
    """
    stops = {t for t in eos_ids if t is not None}
    stops |= {t for t in map(special_id, END_OF_TURN_TOKENS) if t is not None}
    return frozenset(stops)


MIN_MOVED_RUN = 8  # tokens: a shorter match after a gap is not worth moving the cache for


def droppable_span(cached: Sequence[int], tokens: Sequence[int]) -> tuple[int, int] | None:
    """The cached positions [start, end) to drop so that what follows them, moved down, continues `tokens` past their
    common prefix by at least MIN_MOVED_RUN tokens (a chat whose oldest turns were dropped); None when nothing does."""
    start = common_prefix(cached, tokens)
    if start + MIN_MOVED_RUN > len(tokens):
        return None
    for end in range(start + 1, len(cached) - MIN_MOVED_RUN + 1):
        if cached[end] == tokens[start] and common_prefix(cached[end : end + MIN_MOVED_RUN], tokens[start:]) == MIN_MOVED_RUN:
            return start, end
    return None


def common_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens a KV cache holding `cached` can keep for `tokens`."""
    n = 0
    for old, new in zip(cached, tokens, strict=False):
        if old != new:
            break
        n += 1
    return n
