"""Multi-turn chat over any runner: the model's own template, the KV cache kept across turns."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fox_edge.backends.base import droppable_span, weights_bytes
from fox_edge.errors import InvalidOption
from fox_edge.files import atomic_output
from fox_edge.hooks import OnMessage, ignore_message
from fox_edge.runner import GenerationStats, Runner, chat_prompt, generate_tokens, stream_text
from fox_edge.sampling import SamplingParams

SAVED_CHAT_FORMAT = "fox-edge chat session 1"
FULL_AFTER_DROPPING = 0.75  # of the context, where the KV cache cannot move: the room the next turns fill before another drop


@dataclass
class ChatSession:
    runner: Runner
    params: SamplingParams = field(default_factory=SamplingParams)
    system: str | None = None
    on_message: OnMessage = ignore_message
    history: list[dict] = field(default_factory=list)  # user and assistant messages, oldest first
    last_stats: GenerationStats = field(default_factory=GenerationStats)
    # When the context fills: move the kept turns down in the KV cache where the backend can (llama.cpp), so a full chat
    # evaluates only its new message; elsewhere drop turns down to FULL_AFTER_DROPPING of the context, so the next few
    # turns fit and reuse their prefix. False: recompute after every drop (benchmarks/long_chat.py compares).
    move_cache: bool = True

    def reset(self) -> None:
        self.history.clear()

    def undo(self) -> bool:
        """Removes the last exchange: send the same text again to regenerate the reply, or another to edit it. (The
        sampling of the next reply is `params`, which may change between turns.) False when there is none."""
        if len(self.history) < 2:
            return False
        del self.history[-2:]
        return True

    def _messages(self, history: list[dict]) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def prompt_tokens(self, user_text: str) -> list[int]:
        """The whole conversation plus `user_text`, rendered; the oldest turns dropped if it would not fit."""
        reserve = min(self.params.max_tokens, self.runner.n_ctx // 4)
        history = self.history + [{"role": "user", "content": user_text}]
        tokens = chat_prompt(self.runner, self._messages(history))
        dropped, limit = 0, self.runner.n_ctx
        while len(tokens) + reserve > limit and len(history) > 1:
            history = history[2:] if len(history) > 2 else history[1:]
            dropped += 1
            tokens = chat_prompt(self.runner, self._messages(history))
            if self.move_cache and not self._can_move():
                limit = int(self.runner.n_ctx * FULL_AFTER_DROPPING)
        self.runner.check_fits(len(tokens), "this message with the chat template", room=1)
        if dropped and self.move_cache and (span := droppable_span(self.runner.cached_tokens, tokens)):
            self.runner.drop_cached(*span)
        if dropped:
            self.history = history[:-1]
            self.on_message(
                f"[context full: dropped the oldest {dropped} turn{'s' if dropped > 1 else ''} to fit {self.runner.n_ctx} tokens]"
            )
        return tokens

    def save(self, path: str | os.PathLike[str]) -> None:
        """The conversation and, where the backend can (llama.cpp), its KV cache, to `path` (a temporary name renamed
        when complete): `restore` in a later process evaluates only the next message."""
        state = self.runner.cache_state()
        header = {
            "format": SAVED_CHAT_FORMAT, "model": _model_identity(self.runner), "system": self.system, "history": self.history,
            "cached": self.runner.cached_tokens if state else [], "state_bytes": len(state or b""),
        }  # fmt: skip
        with atomic_output(Path(path)) as partial:
            with open(partial, "wb") as file:
                file.write(json.dumps(header, ensure_ascii=False).encode() + b"\n")
                file.write(state or b"")

    def restore(self, path: str | os.PathLike[str]) -> None:
        """The conversation `save` wrote with the same model, its KV cache included where it was saved."""
        path = Path(path)
        try:
            with open(path, "rb") as file:
                header = json.loads(file.readline())
                state = file.read()
            if not isinstance(header, dict) or header.get("format") != SAVED_CHAT_FORMAT:
                raise ValueError
        except (OSError, ValueError, UnicodeDecodeError):
            raise InvalidOption(f"{path} is not a chat saved by fox-edge; save one with ChatSession.save") from None
        if header.get("model") != _model_identity(self.runner):
            raise InvalidOption(f"{path} was saved with another model ({header.get('model')}); restore it with that model")
        if len(state) != header.get("state_bytes"):
            raise InvalidOption(
                f"{path} is truncated ({len(state):,} of {header.get('state_bytes'):,} bytes of cache); save the chat again"
            )
        self.system, self.history = header.get("system"), list(header.get("history", []))
        if state:
            self.runner.restore_cache_state(header.get("cached", []), state)

    def _can_move(self) -> bool:
        return type(self.runner).drop_cached is not Runner.drop_cached

    def send(self, user_text: str, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stream the assistant's reply to `user_text`; the reply joins the history when the stream ends."""
        tokens = self.prompt_tokens(user_text)
        self.last_stats = GenerationStats()
        reply: list[str] = []
        try:
            for piece in stream_text(self.runner, generate_tokens(self.runner, tokens, self.params, self.last_stats, cancel)):
                reply.append(piece)
                yield piece
        finally:  # a cancelled reply is kept as far as it got, as a chat user sees it
            self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": "".join(reply)}]


def _model_identity(runner: Runner) -> dict:
    """What a saved chat's cache belongs to: the model's name, vocabulary, shape and weights' size (a hash of a 1 GB
    file would cost seconds on every save)."""
    return {"name": runner.name, "backend": runner.backend, "n_vocab": runner.n_vocab, "layers": runner.shape.n_layers,
            "weights_bytes": weights_bytes(runner.path)}  # fmt: skip
