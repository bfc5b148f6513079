"""Token sampling shared by every backend, so llama.cpp and ONNX Runtime choose tokens identically.

The order follows llama.cpp's default chain: repetition penalty, top-k, top-p, min-p, temperature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fox_edge.errors import InvalidOption


@dataclass(kw_only=True)
class SamplingParams:
    temperature: float = 0.7  # 0: greedy
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1: off
    min_p: float = 0.05  # 0: off
    repeat_penalty: float = 1.0  # 1: off, as llama.cpp's default (1.1 made temperature 0 no longer greedy)
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 512

    def __post_init__(self) -> None:
        """Nonsense is refused here, where every caller passes (the CLI's flags and library users alike)."""
        checks = (
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "a number >= 0 (0 is greedy)"),
            ("top_k", self.top_k >= 0, "a whole number >= 0 (0 is off)"),
            ("top_p", 0 < self.top_p <= 1, "a number in (0, 1] (1 is off)"),
            ("min_p", 0 <= self.min_p <= 1, "a number in [0, 1] (0 is off)"),
            ("repeat_penalty", math.isfinite(self.repeat_penalty) and self.repeat_penalty > 0, "a number > 0 (1 is off)"),
            ("repeat_last_n", self.repeat_last_n >= 0, "a whole number >= 0"),
            ("seed", self.seed is None or 0 <= self.seed < 2**63, "a whole number >= 0 (omit it for a random seed)"),
            ("max_tokens", self.max_tokens >= 1, "a whole number >= 1"),
        )
        for name, valid, wanted in checks:
            if not valid:
                raise InvalidOption(f"{{{name}}} is {getattr(self, name)}; it takes {wanted}", [name])

    @classmethod
    def greedy(cls, max_tokens: int = 512) -> SamplingParams:
        return cls(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens)


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.params
        logits = np.array(logits, dtype=np.float32)
        if p.repeat_penalty != 1.0 and p.repeat_last_n and history:
            recent = np.unique(np.asarray(history[-p.repeat_last_n :], dtype=np.int64))
            values = logits[recent]
            logits[recent] = np.where(values > 0, values / p.repeat_penalty, values * p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(logits))

        candidates = np.arange(logits.size)
        if 0 < p.top_k < logits.size:
            candidates = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
        values = logits[candidates]
        order = np.argsort(-values, kind="stable")
        candidates, values = candidates[order], values[order]

        probs = np.exp(values - values[0])
        probs /= probs.sum()
        keep = candidates.size
        if p.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p) + 1))
        if p.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
        candidates, values = candidates[:keep], values[:keep]

        scaled = (values - values[0]) / p.temperature
        weights = np.exp(scaled)
        return int(candidates[self.rng.choice(candidates.size, p=weights / weights.sum())])
