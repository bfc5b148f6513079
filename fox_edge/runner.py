"""The runner interface every backend implements, and what is built once on top of it.

A backend only loads a model, tokenizes, and evaluates tokens into logits while keeping its KV cache;
prompt formatting, sampling, stopping, streaming text and cancelling live here, shared by all.
"""

from __future__ import annotations

import codecs
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fox_edge.errors import FoxEdgeError
from fox_edge.sampling import Sampler, SamplingParams
from fox_edge.template import render


class Runner(Protocol):
    backend: str
    path: Path
    n_ctx: int  # the context this runner was opened with
    n_vocab: int
    bos_id: int | None
    eos_id: int | None
    stop_ids: frozenset[int]  # eos and end-of-turn tokens
    add_bos: bool
    chat_template: str | None
    metadata: dict[str, str]
    n_evaluated: int  # tokens the last prefill() actually computed (the rest came from the KV cache)

    def tokenize(self, text: str, special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str: ...

    def token_bytes(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        ...

    def token_text(self, token: int) -> str:
        """The token's own spelling, special tokens included (for templates and reports)."""
        ...

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (len(tokens), n_vocab), float32, for a chunk evaluated from position 0 with a fresh cache."""
        ...

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Make the KV cache hold exactly `tokens`, reusing its longest common prefix; return the last position's logits."""
        ...

    def close(self) -> None: ...


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_evaluated: int = 0  # prompt tokens computed; the rest were reused from the KV cache
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    stop_reason: str = ""  # "stop", "length", "context" or "cancelled"
    tokens: list[int] = field(default_factory=list)

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_evaluated / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0


def generate_tokens(
    runner: Runner,
    prompt: Sequence[int],
    params: SamplingParams,
    stats: GenerationStats | None = None,
    cancel: threading.Event | None = None,
    stop_ids: frozenset[int] | None = None,
) -> Iterator[int]:
    """Stream sampled token ids after `prompt`; stops on eos / end-of-turn, max_tokens, a full context or `cancel`."""
    stats = stats if stats is not None else GenerationStats()
    stop_ids = runner.stop_ids if stop_ids is None else stop_ids
    if len(prompt) >= runner.n_ctx:
        raise FoxEdgeError(
            f"the prompt is {len(prompt)} tokens, longer than the {runner.n_ctx}-token context; shorten it or raise --ctx-size"
        )
    started = time.perf_counter()
    logits = runner.prefill(prompt)
    stats.prompt_tokens, stats.prompt_evaluated = len(prompt), runner.n_evaluated
    stats.prompt_seconds = time.perf_counter() - started
    sampler, history = Sampler(params), list(prompt)
    started = time.perf_counter()
    try:
        while True:
            if cancel is not None and cancel.is_set():
                stats.stop_reason = "cancelled"
                return
            token = sampler(logits, history)
            if token in stop_ids:
                stats.stop_reason = "stop"
                return
            history.append(token)
            stats.tokens.append(token)
            stats.generated_tokens += 1
            yield token
            if stats.generated_tokens >= params.max_tokens:
                stats.stop_reason = "length"
                return
            if len(history) >= runner.n_ctx:
                stats.stop_reason = "context"
                return
            logits = runner.prefill(history)
    finally:
        stats.generate_seconds = time.perf_counter() - started


def stream_text(runner: Runner, tokens: Iterator[int]) -> Iterator[str]:
    """Turn a token stream into text pieces, holding back bytes until they complete a UTF-8 character."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        piece = decoder.decode(runner.token_bytes(token))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def chat_prompt(runner: Runner, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Render `messages` with the model's own chat template and tokenize them (special tokens parsed)."""
    if not runner.chat_template:
        raise FoxEdgeError(f"{runner.path} has no chat template; use `fox-edge generate` for plain text, or pass --chat-template FILE")
    bos = runner.token_text(runner.bos_id) if runner.bos_id is not None else ""
    eos = runner.token_text(runner.eos_id) if runner.eos_id is not None else ""
    text = render(runner.chat_template, messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt)
    return text_prompt(runner, text)


def text_prompt(runner: Runner, text: str) -> list[int]:
    """Tokenize `text` (special tokens parsed) behind the model's BOS, unless the text already starts with it (as llama.cpp's server does)."""
    tokens = runner.tokenize(text, special=True)
    if runner.add_bos and runner.bos_id is not None and (not tokens or tokens[0] != runner.bos_id):
        tokens.insert(0, runner.bos_id)
    return tokens


def open_runner(model: str | Path, n_ctx: int = 4096, n_threads: int | None = None, **options) -> Runner:
    """A GGUF file runs on llama.cpp, an ONNX folder on ONNX Runtime, a Hugging Face checkpoint folder on PyTorch (the slow reference for `check`)."""
    path = Path(model)
    if not path.exists():
        raise FoxEdgeError(f"no such model: {path}; convert one with `fox-edge convert SOURCE --to gguf -o MODEL.gguf`")
    if path.is_file() and _magic(path) == b"GGUF":
        from fox_edge.backends.llamacpp import LlamaCppRunner

        return LlamaCppRunner(path, n_ctx=n_ctx, n_threads=n_threads, **options)
    if is_onnx_model(path if path.is_dir() else path.parent) and (path.is_dir() or path.suffix in (".onnx", ".ort")):
        from fox_edge.backends.onnx import OnnxRunner

        if llama_only := sorted(set(options) & {"flash_attention", "kv_type", "gpu_layers", "use_mmap"}):
            raise FoxEdgeError(f"{', '.join(llama_only)} apply to GGUF models (llama.cpp), not to the ONNX model {path}")
        return OnnxRunner(path, n_ctx=n_ctx, n_threads=n_threads, **options)
    if path.is_dir() and (path / "config.json").is_file():
        from fox_edge.backends.torch import TorchRunner

        return TorchRunner(path, n_ctx=n_ctx, n_threads=n_threads)
    raise FoxEdgeError(f"{path} is neither a GGUF file nor an ONNX model folder; convert a checkpoint with `fox-edge convert`")


def default_threads() -> int:
    """The CPUs this process may run on (both runners' default thread count; see benchmarks/README.md)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def common_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens a KV cache holding `cached` can keep for `tokens`."""
    n = 0
    for old, new in zip(cached, tokens, strict=False):
        if old != new:
            break
        n += 1
    return n


def is_onnx_model(path: Path) -> bool:
    """A folder written by `fox-edge convert --to onnx` (or any onnxruntime-genai model folder)."""
    return (path / "genai_config.json").is_file() and any((path / f).is_file() for f in ("model.onnx", "model.ort"))


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)
