"""`fox-edge check`: how much a converted or quantized model lost against its reference, with pass/fail bars.

Both models see the same token chunks through the runner interface (any backend). As in llama.cpp's
`llama-perplexity --kl-divergence`, each chunk starts with BOS and only its second half is scored, so
every scored token has at least half a chunk of context. Logits are reduced a block of rows at a time:
with a 256K vocabulary, memory stays at two chunks of logits.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fox_edge.backends.base import Runner
from fox_edge.errors import FoxEdgeError, InvalidOption
from fox_edge.files import atomic_output
from fox_edge.hooks import Progress

# Strings whose tokenization differs between unrelated tokenizers (special tokens, whitespace, bytes).
PROBE_TEXTS = ["<bos><eos><start_of_turn><|im_start|>", "  \t\n\n x", "日本語 😀 café", "1234567 + 89"]


@dataclass(frozen=True, kw_only=True)
class Bars:
    max_kld: float  # mean KL divergence, nats
    min_top1: float  # fraction of positions where both models' most likely token agree
    max_ppl_ratio: float  # candidate perplexity / reference perplexity


# Default bars per precision class. Set from measurements on SmolLM2-135M and the trained tiny Fox-1
# (benchmarks/README.md); a real 1.6B model loses less than these small ones at the same bits. Mean KL divergence
# and the perplexity ratio carry the verdict; top-1 agreement is reported, not a default bar: where the reference's
# two likeliest tokens are near-ties, a change far below what KLD notices flips the choice (SmolLM2's Q8_0: KLD
# 0.004, perplexity ratio 1.001, top-1 94.9 %). --min-top1 makes it a bar.
BARS = ("max_kld", "min_top1", "max_ppl_ratio")  # the options that set the pass/fail bars
DEFAULT_BARS = {
    "f16": Bars(max_kld=0.002, min_top1=0.0, max_ppl_ratio=1.005),
    "int8": Bars(max_kld=0.01, min_top1=0.0, max_ppl_ratio=1.02),
    "int6": Bars(max_kld=0.03, min_top1=0.0, max_ppl_ratio=1.04),
    "int5": Bars(max_kld=0.06, min_top1=0.0, max_ppl_ratio=1.07),
    "int4": Bars(max_kld=0.10, min_top1=0.0, max_ppl_ratio=1.10),
}
TOP1_MEANING = "reported, not a bar unless one is set: near-ties between the two likeliest tokens flip on tiny changes"


@dataclass(kw_only=True)
class CheckReport:
    """The accuracy report: what `fox-edge check` prints and stores beside a model."""

    candidate: str
    reference: str
    precision: str
    bars: Bars
    context: int
    chunks: int
    tokens_scored: int
    ppl_reference: float
    ppl_candidate: float
    ppl_ratio: float
    ppl_ratio_ci95: float  # half-width
    kld_mean: float
    kld_mean_ci95: float
    kld_p90: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    top1_agreement: float
    top1_agreement_ci95: float
    next_token_accuracy_reference: float
    next_token_accuracy_candidate: float
    seconds: float
    failures: list[str] = field(default_factory=list)
    stopped_early: bool = False  # over a bar beyond doubt before the end of the text (the budget search's rejections)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2)


@dataclass(kw_only=True)
class CheckSettings:
    enabled: bool = True
    text: str | Path = "builtin"  # evaluation text: a file or "builtin" (disjoint from the built-in calibration set)
    tokens: int = 4096
    context: int = 512
    max_kld: float | None = None  # None: the default bar of the candidate's precision
    min_top1: float | None = None
    max_ppl_ratio: float | None = None

    def bars_for(self, precision: str) -> Bars:
        default = DEFAULT_BARS.get(precision, Bars(max_kld=math.inf, min_top1=0.0, max_ppl_ratio=math.inf))
        return Bars(
            max_kld=self.max_kld if self.max_kld is not None else default.max_kld,
            min_top1=self.min_top1 if self.min_top1 is not None else default.min_top1,
            max_ppl_ratio=self.max_ppl_ratio if self.max_ppl_ratio is not None else default.max_ppl_ratio,
        )


def check_model(
    candidate: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    settings: CheckSettings | None = None,
    *,
    progress: Progress | None = None,
    n_threads: int | None = None,
    stop_early: bool = False,
    reference_logits: LogitsStore | None = None,
) -> CheckReport:
    """Open both models (GGUF, ONNX folder or checkpoint folder) and score the candidate on the settings' text
    (stop_early and reference_logits: see check_accuracy)."""
    from fox_edge.runner import open_runner
    from fox_edge.texts import read_text

    settings = settings or CheckSettings()
    text = read_text(settings.text, "evaluation")
    with (
        open_runner(reference, n_ctx=settings.context, n_threads=n_threads) as ref,
        open_runner(candidate, n_ctx=settings.context, n_threads=n_threads) as cand,
    ):
        bars = settings.bars_for(cand.precision_class)
        return check_accuracy(
            cand,
            ref,
            text,
            n_tokens=settings.tokens,
            context=settings.context,
            bars=bars,
            stop_early=stop_early,
            progress=progress,
            reference_logits=reference_logits,
        )


def check_tokenizers(candidate: Runner, reference: Runner, tokens_c: list[int], tokens_r: list[int]) -> None:
    if candidate.n_vocab != reference.n_vocab:
        raise FoxEdgeError(f"the candidate has {candidate.n_vocab} tokens and the reference {reference.n_vocab}: they are different models")
    for text_c, text_r, what in [(candidate.tokenize(p), reference.tokenize(p), repr(p)) for p in PROBE_TEXTS] + [
        (tokens_c, tokens_r, "the evaluation text")
    ]:
        if text_c != text_r:
            at = next((i for i, (a, b) in enumerate(zip(text_c, text_r, strict=False)) if a != b), min(len(text_c), len(text_r)))
            raise FoxEdgeError(
                f"the candidate and the reference tokenize {what} differently (from token {at}); "
                "compare models converted from the same checkpoint"
            )


def chunks_of(tokens: list[int], context: int, n_tokens: int, bos_id: int | None) -> list[list[int]]:
    per_chunk = context - context // 2 - 1
    available = len(tokens) // context
    if available == 0:
        raise FoxEdgeError(
            f"the evaluation text is {len(tokens)} tokens, shorter than one {context}-token chunk; give a longer text or a smaller {{context}}",
            ["context"],
        )
    count = min(available, max(1, math.ceil(n_tokens / per_chunk)))
    chunks = [tokens[i * context : (i + 1) * context] for i in range(count)]
    return [[bos_id, *c[1:]] for c in chunks] if bos_id is not None else chunks


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def score_chunk(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray, rows: int = 64) -> dict[str, np.ndarray]:
    """Per-position KL(reference || candidate), both NLLs of the target, and both argmaxes."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("kld", "nll_r", "nll_c", "top_r", "top_c")}
    for start in range(0, len(targets), rows):
        r = _log_softmax(reference[start : start + rows].astype(np.float64))
        c = _log_softmax(candidate[start : start + rows].astype(np.float64))
        t = targets[start : start + rows]
        index = np.arange(len(t))
        parts["kld"].append(np.maximum((np.exp(r) * (r - c)).sum(-1), 0.0))
        parts["nll_r"].append(-r[index, t])
        parts["nll_c"].append(-c[index, t])
        parts["top_r"].append(r.argmax(-1))
        parts["top_c"].append(c.argmax(-1))
    return {k: np.concatenate(v) for k, v in parts.items()}


# The budget search's early rejection: a candidate whose bound at this many standard errors is already past a bar
# (99.9 %, two-sided) after at least EARLY_CHUNKS chunks fails the full text too, beyond reasonable doubt.
EARLY_Z = 3.29
EARLY_CHUNKS = 2


def check_accuracy(
    candidate: Runner,
    reference: Runner,
    text: str,
    *,
    n_tokens: int = 4096,
    context: int = 512,
    bars: Bars | None = None,
    stop_early: bool = False,
    progress: Progress | None = None,
    reference_logits: LogitsStore | None = None,
) -> CheckReport:
    """Score `candidate` against `reference` on `text`. stop_early: stop at the first chunk after which the candidate
    is over a bar beyond doubt (EARLY_Z standard errors past it); the report says so and covers the chunks scored.
    reference_logits: where the reference's logits of each chunk are kept once computed, for the next check against
    the same reference."""
    started = time.monotonic()
    precision = candidate.precision_class
    if bars is None:
        if precision not in DEFAULT_BARS:
            raise InvalidOption(f"there are no default bars for {precision}; give {{max_kld}}, {{min_top1}} and {{max_ppl_ratio}}", BARS)
        bars = DEFAULT_BARS[precision]
    context = min(context, candidate.n_ctx, reference.n_ctx)
    tokens_c, tokens_r = candidate.tokenize(text), reference.tokenize(text)
    check_tokenizers(candidate, reference, tokens_c, tokens_r)
    chunks = chunks_of(tokens_c, context, n_tokens, candidate.bos_id if candidate.add_bos else None)

    first = context // 2
    scores: dict[str, list[np.ndarray]] = {}
    for done, chunk in enumerate(chunks, 1):
        targets = np.asarray(chunk[first + 1 :])

        def run_reference(chunk=chunk):
            return reference.logits(chunk, first)[:-1]

        logits_r = reference_logits.get((first, *chunk), run_reference) if reference_logits else run_reference()
        logits_c = candidate.logits(chunk, first)[:-1]
        for key, values in score_chunk(logits_r, logits_c, targets).items():
            scores.setdefault(key, []).append(values)
        scores.setdefault("targets", []).append(targets)
        if progress:
            progress(done, len(chunks), f"chunk {done}/{len(chunks)}")
        if stop_early and EARLY_CHUNKS <= done < len(chunks) and over_beyond_doubt(scores, bars):
            break
    report = summarize(scores, bars, precision=precision, candidate=candidate, reference=reference, context=context)
    report.stopped_early = report.chunks < len(chunks)
    report.seconds = time.monotonic() - started  # the whole check: tokenizing, both models and the scoring
    return report


class LogitsStore:
    """Logits by the tokens they were computed for, kept in a scratch file: a budget search runs its reference once
    for all its candidates instead of once per candidate. A file, not memory: with Fox-1's 256K vocabulary a
    512-token chunk's scored rows are 260 MB of float32. Removed on exit."""

    def __init__(self, path: Path):
        self.path = path
        self.spans: dict[tuple[int, ...], tuple[int, tuple[int, ...], np.dtype]] = {}

    def get(self, key: tuple[int, ...], compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self.spans:
            logits = np.ascontiguousarray(compute())
            with self.path.open("ab") as file:
                self.spans[key] = (file.tell(), logits.shape, logits.dtype)
                file.write(logits.tobytes())
            return logits
        offset, shape, dtype = self.spans[key]
        return np.fromfile(self.path, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)

    def __enter__(self) -> LogitsStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.path.unlink(missing_ok=True)


def over_beyond_doubt(scores: dict[str, list[np.ndarray]], bars: Bars) -> bool:
    """Whether the chunks so far put the candidate past a bar by EARLY_Z standard errors, each measured both per
    token and per chunk (the larger: neighbouring tokens' errors are correlated)."""

    def bound(per_chunk: list[np.ndarray], sign: int) -> float:
        values = np.concatenate(per_chunk)
        chunk_means = np.array([c.mean() for c in per_chunk])
        error = max(values.std() / math.sqrt(len(values)), chunk_means.std(ddof=1) / math.sqrt(len(chunk_means)))
        return float(values.mean() - sign * EARLY_Z * error)

    agree = [(r == c).astype(np.float64) for r, c in zip(scores["top_r"], scores["top_c"], strict=True)]
    log_ratio = [c - r for r, c in zip(scores["nll_r"], scores["nll_c"], strict=True)]
    return (
        bound(scores["kld"], +1) > bars.max_kld
        or math.exp(bound(log_ratio, +1)) > bars.max_ppl_ratio
        or (bars.min_top1 > 0 and bound(agree, -1) < bars.min_top1)
    )


def summarize(
    scores: dict[str, list[np.ndarray]], bars: Bars, *, precision: str, candidate: Runner, reference: Runner, context: int
) -> CheckReport:
    """The report of the scored chunks: statistics, confidence intervals and the verdict against `bars`."""
    s = {k: np.concatenate(v) for k, v in scores.items()}
    n = len(s["kld"])
    agree = (s["top_r"] == s["top_c"]).astype(np.float64)
    log_ratio = s["nll_c"] - s["nll_r"]
    ratio = float(np.exp(log_ratio.mean()))
    report = CheckReport(
        candidate=str(candidate.path),
        reference=str(reference.path),
        precision=precision,
        bars=bars,
        context=context,
        chunks=len(scores["kld"]),
        tokens_scored=n,
        ppl_reference=float(np.exp(s["nll_r"].mean())),
        ppl_candidate=float(np.exp(s["nll_c"].mean())),
        ppl_ratio=ratio,
        ppl_ratio_ci95=float(ratio * 1.96 * log_ratio.std() / math.sqrt(n)),
        kld_mean=float(s["kld"].mean()),
        kld_mean_ci95=float(1.96 * s["kld"].std() / math.sqrt(n)),
        kld_p90=float(np.percentile(s["kld"], 90)),
        kld_p99=float(np.percentile(s["kld"], 99)),
        kld_p999=float(np.percentile(s["kld"], 99.9)),
        kld_max=float(s["kld"].max()),
        top1_agreement=float(agree.mean()),
        top1_agreement_ci95=float(1.96 * math.sqrt(agree.mean() * (1 - agree.mean()) / n)),
        next_token_accuracy_reference=float((s["top_r"] == s["targets"]).mean()),
        next_token_accuracy_candidate=float((s["top_c"] == s["targets"]).mean()),
        seconds=0.0,
    )
    if report.kld_mean > bars.max_kld:
        report.failures.append(f"mean KLD {report.kld_mean:.4f} > {bars.max_kld}")
    if bars.min_top1 > 0 and report.top1_agreement < bars.min_top1:
        report.failures.append(f"top-1 agreement {report.top1_agreement:.2%} < {bars.min_top1:.0%}")
    if report.ppl_ratio > bars.max_ppl_ratio:
        report.failures.append(f"perplexity ratio {report.ppl_ratio:.4f} > {bars.max_ppl_ratio}")
    return report


def format_report(report: CheckReport) -> str:
    b = report.bars
    rows = [
        ("candidate", report.candidate),
        ("reference", report.reference),
        (
            "scored",
            f"{report.tokens_scored} tokens in {report.chunks} chunks of {report.context} (second half of each)"
            + (", stopped early: over a bar beyond doubt" if report.stopped_early else ""),
        ),
        ("perplexity", f"reference {report.ppl_reference:.4f}, candidate {report.ppl_candidate:.4f}"),
        ("perplexity ratio", f"{report.ppl_ratio:.4f} ± {report.ppl_ratio_ci95:.4f}   (bar ≤ {b.max_ppl_ratio})"),
        ("mean KLD", f"{report.kld_mean:.5f} ± {report.kld_mean_ci95:.5f}   (bar ≤ {b.max_kld})"),
        ("KLD p90 / p99 / p99.9 / max", f"{report.kld_p90:.5f} / {report.kld_p99:.5f} / {report.kld_p999:.5f} / {report.kld_max:.5f}"),
        (
            "top-1 agreement",
            f"{report.top1_agreement:.2%} ± {report.top1_agreement_ci95:.2%}   "
            + (f"(bar ≥ {b.min_top1:.0%})" if b.min_top1 > 0 else f"({TOP1_MEANING})"),
        ),
        (
            "next-token accuracy",
            f"reference {report.next_token_accuracy_reference:.2%}, candidate {report.next_token_accuracy_candidate:.2%}",
        ),
        (
            "result",
            f"PASS ({report.precision} bars)" if report.passed else f"FAIL ({report.precision} bars): " + "; ".join(report.failures),
        ),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def sidecar_path(model: str | os.PathLike[str]) -> Path:
    """Where a model's check report is stored: `MODEL.gguf.check.json` beside a file, `check.json` inside an ONNX folder."""
    return Path(model) / "check.json" if Path(model).is_dir() else Path(f"{model}.check.json")


def save_report(report: CheckReport, model: str | os.PathLike[str]) -> Path:
    with atomic_output(sidecar_path(model)) as temporary:
        temporary.write_text(report.to_json())
    return sidecar_path(model)


def load_report(model: str | os.PathLike[str]) -> dict | None:
    path = sidecar_path(model)
    return json.loads(path.read_text()) if path.is_file() else None
