"""Running a model, whatever its backend: opening it, prompts, generation, streaming text and cancelling.

The backends (fox_edge/backends/) only load a model, tokenize, and evaluate tokens into logits while
keeping their KV cache; everything here is built once on top of their common interface (backends/base.py).
"""

from __future__ import annotations

import codecs
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fox_edge.backends.base import DEFAULT_CONTEXT, Runner
from fox_edge.cpu import check_threads
from fox_edge.errors import FoxEdgeError, InvalidOption
from fox_edge.formats import identify
from fox_edge.sampling import Sampler, SamplingParams
from fox_edge.template import render

__all__ = [
    "DEFAULT_CONTEXT",
    "Runner",
    "GenerationStats",
    "open_runner",
    "sampling_params",
    "generate_tokens",
    "stream_text",
    "chat_prompt",
    "text_prompt",
]


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
    runner.check_fits(len(prompt), room=1)
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
    """`messages` rendered with the model's own chat template and tokenized: the template's markup may hold special
    tokens, the messages' text never does (a user who types `<eos>` or `<|assistant|>` writes text, not a turn)."""
    if not runner.chat_template:
        raise FoxEdgeError(
            f"{runner.path} has no chat template; use `fox-edge generate` for plain text, or pass {{chat_template}}", ["chat_template"]
        )
    bos = runner.token_text(runner.bos_id) if runner.bos_id is not None else ""
    eos = runner.token_text(runner.eos_id) if runner.eos_id is not None else ""

    def rendered(messages: list[dict]) -> str:
        return render(runner.chat_template, messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt)

    if not any(_spells_a_control_token(runner, m.get("content")) for m in messages):
        return text_prompt(runner, rendered(messages))  # the usual case: tokenized whole, as Hugging Face and llama.cpp do
    # Some message spells a control token: render placeholders in its place and tokenize each message's text as text.
    marked = [{**m, "content": f"{PLACEHOLDER_OPEN}{i}{PLACEHOLDER_CLOSE}"} for i, m in enumerate(messages)]
    pieces = PLACEHOLDER.split(rendered(marked))  # markup, index, markup, index, ..., markup
    tokens = []
    for i, piece in enumerate(pieces):
        tokens += runner.tokenize(piece, special=True) if i % 2 == 0 else runner.tokenize(messages[int(piece)]["content"], special=False)
    return _with_bos(runner, tokens)


# Stand-ins for message text while a template renders (private-use characters: no template writes them).
PLACEHOLDER_OPEN, PLACEHOLDER_CLOSE = "\ue000", "\ue001"
PLACEHOLDER = re.compile(f"{PLACEHOLDER_OPEN}(\\d+){PLACEHOLDER_CLOSE}")


def _spells_a_control_token(runner: Runner, content) -> bool:
    return isinstance(content, str) and any(not runner.token_bytes(t) for t in runner.tokenize(content, special=True))


def text_prompt(runner: Runner, text: str) -> list[int]:
    """Tokenize `text` (special tokens parsed) behind the model's BOS, unless the text already starts with it (as llama.cpp's server does)."""
    return _with_bos(runner, runner.tokenize(text, special=True))


def _with_bos(runner: Runner, tokens: list[int]) -> list[int]:
    if runner.add_bos and runner.bos_id is not None and (not tokens or tokens[0] != runner.bos_id):
        tokens.insert(0, runner.bos_id)
    return tokens


MIN_CONTEXT = 16  # tokens: below this no chat template and reply fit
DEVICES = ("auto", "cpu", "gpu")


def open_runner(
    model: str | os.PathLike[str],
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    chat_template: str | None = None,
    device: str = "auto",
    **options,
) -> Runner:
    """A GGUF file runs on llama.cpp, an ONNX folder on ONNX Runtime, a bundle on its model's runtime with its manifest's
    template, stop ids and generation defaults, and a Hugging Face checkpoint folder on PyTorch (the slow reference for
    `check`). `n_ctx` None: the bundle's default context, else DEFAULT_CONTEXT. `chat_template` replaces the model's own.
    `device`: auto (Metal / CoreML on Apple Silicon when present, else the CPU), cpu, or gpu. `options` go to the backend."""
    model_format = identify(model)
    if n_ctx is not None and n_ctx < MIN_CONTEXT and n_ctx != 0:  # 0: the model's own context length
        raise InvalidOption(f"{{n_ctx}} {n_ctx} is below {MIN_CONTEXT} tokens; give a larger context", ["n_ctx"])
    if device not in DEVICES:
        raise InvalidOption(f"unknown {{device}} {device!r}; choose one of {', '.join(DEVICES)}", ["device"])
    runner: Runner = model_format.open(Path(model), n_ctx=n_ctx, n_threads=check_threads(n_threads), device=device, **options)
    if chat_template is not None:
        runner.chat_template = chat_template
    return runner


def open_bundle(folder: Path, *, n_ctx: int | None, n_threads: int | None, device: str, **options) -> Runner:
    """A bundle's model with its manifest's context, template, stop ids, generation defaults and loading settings."""
    from fox_edge.manifest import read_manifest

    manifest = read_manifest(folder)
    # The target's loading settings (bundle.Target.gguf_loading) unless the caller chose otherwise.
    loading = {k: v for k, v in manifest["format"].get("runtime_options", {}).items() if k in ("use_mmap", "repack") and v is not None}
    runner = open_runner(
        folder / manifest["format"]["model_path"], n_ctx=manifest["context"]["default"] if n_ctx is None else n_ctx,
        n_threads=n_threads, chat_template=manifest["chat_template"], device=device, **{**loading, **options},
    )  # fmt: skip
    runner.stop_ids = frozenset(manifest["tokenizer"]["stop_ids"])
    runner.generation_defaults = dict(manifest["generation"])
    return runner


def sampling_params(runner: Runner, defaults: dict | None = None, **chosen) -> SamplingParams:
    """Sampling for `runner`: what the caller chose (None: not chosen), else the model's own defaults (a bundle's),
    else `defaults` (a command's), else SamplingParams'."""
    values = {**(defaults or {}), **runner.generation_defaults, **{k: v for k, v in chosen.items() if v is not None}}
    return SamplingParams(**values)
