"""A long chat at a full context: time to first token per turn, with the KV cache moved when the oldest turns are
dropped (fox-edge's default since issue 25) and recomputed after every drop (before). Writes benchmarks/LONG_CHAT.md.

    .venv/bin/python benchmarks/long_chat.py [--turns 30] [--ctx 2048] [--model GGUF]

Default model: SmolLM2-135M-Instruct f16 (the demo's GGUF), through fox-edge's Python llama.cpp runner (ChatSession,
move_cache on and off) and through the native core (fox_edge_chat, moving always on). Each turn is a different
~100-token message and a greedy reply of up to 64 tokens; the context fills after about ten turns, and from then on
every turn drops the oldest. Time to first token = the prompt's evaluation (what a user waits for before the first
piece; sampling the first token adds well under a millisecond).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import machine  # noqa: E402

from fox_edge.bundle import make_bundle  # noqa: E402
from fox_edge.chat import ChatSession  # noqa: E402
from fox_edge.downloads import cache_dir  # noqa: E402
from fox_edge.runner import open_runner  # noqa: E402
from fox_edge.sampling import SamplingParams  # noqa: E402
from fox_edge.testing.native import build_core  # noqa: E402

TOPICS = ["the castle", "the fox", "the river", "the mill", "the market", "the old bridge", "the forest", "the winter"]
MAX_TOKENS = 64


def message(turn: int) -> str:
    topic = TOPICS[turn % len(TOPICS)]
    return (
        f"Turn {turn}. Tell me more about {topic}: who lives there, what they do in the morning and in the evening, "
        f"what they fear, what they hope for, how {topic} changed over the years, and what a traveller arriving "
        f"there for the first time would notice before anything else. Answer in a few sentences."
    )


def python_turns(model: Path, turns: int, n_ctx: int, move: bool) -> list[tuple[int, int, float]]:
    """(prompt tokens, evaluated, seconds) per turn, through ChatSession."""
    with open_runner(model, n_ctx=n_ctx) as runner:
        session = ChatSession(runner, SamplingParams.greedy(MAX_TOKENS), system="You are a storyteller.", move_cache=move)
        rows = []
        for turn in range(turns):
            "".join(session.send(message(turn)))
            stats = session.last_stats
            rows.append((stats.prompt_tokens, stats.prompt_evaluated, stats.prompt_seconds))
        return rows


STATS_LINE = re.compile(r"prompt: (\d+) tokens \((\d+) evaluated\) at ([\d.]+) tok/s")


def native_turns(model: Path, turns: int, n_ctx: int, work: Path) -> list[tuple[int, int, float]]:
    """The same conversation through the native core's terminal chat, one message per line."""
    bundle = make_bundle(model, work / "bundle").folder
    chat = build_core() / "fox_edge_chat"
    lines = "".join(message(turn) + "\n" for turn in range(turns))
    result = subprocess.run(
        [str(chat), str(bundle), "-c", str(n_ctx), "-n", str(MAX_TOKENS), "--temp", "0", "--repeat-penalty", "1"],
        input=lines, capture_output=True, text=True, timeout=3600, check=True,
    )  # fmt: skip
    rows = []
    for found in STATS_LINE.finditer(result.stderr):
        total, evaluated, rate = int(found[1]), int(found[2]), float(found[3])
        rows.append((total, evaluated, evaluated / rate if rate else 0.0))
    return rows


RESUME_TOKENS = 1500  # the conversation resumed: about this many tokens of history
NEXT_MESSAGE = "And then?"  # the message after resuming: short, so the first token times the resuming itself


def python_resume(model: Path, n_ctx: int, work: Path) -> dict[str, float]:
    """A ~1,500-token conversation saved, then its next message in a new runner: restored (history and KV cache) against
    the history re-processed. Seconds to the first token, the runner's loading and first use excluded (a mapped file's
    pages fault in on the first evaluation, whatever comes first)."""
    saved = work / "python.chat"
    with open_runner(model, n_ctx=n_ctx) as runner:
        session = ChatSession(runner, SamplingParams.greedy(MAX_TOKENS), system="You are a storyteller.")
        turn = 0
        while not session.history or session.last_stats.prompt_tokens + session.last_stats.generated_tokens < RESUME_TOKENS:
            "".join(session.send(message(turn)))
            turn += 1
        session.save(saved)
        history, tokens = session.history, session.last_stats.prompt_tokens + session.last_stats.generated_tokens
    result = {"history_tokens": tokens, "file_mb": saved.stat().st_size / 1e6}
    for way in ("restored", "re-processed"):
        with open_runner(model, n_ctx=n_ctx) as runner:
            "".join(ChatSession(runner, SamplingParams.greedy(1)).send("Hi"))  # the weights' pages in, as in an app that has answered once
            session = ChatSession(runner, SamplingParams.greedy(1), system="You are a storyteller.")
            started = time.perf_counter()
            if way == "restored":
                session.restore(saved)
                result["restore only"] = time.perf_counter() - started
            else:
                session.history = list(history)
            "".join(session.send(NEXT_MESSAGE))
            result[way] = time.perf_counter() - started
            result[f"{way} evaluated"] = session.last_stats.prompt_evaluated
    return result


RESTORED_LINE = re.compile(r"restored \d+ messages from .* in ([\d.]+) ms")


def native_resume(model: Path, n_ctx: int, work: Path) -> dict[str, float]:
    """The same through the native core's terminal chat: the conversation saved after every reply (--resume), then the
    next message in a new process."""
    bundle = work / "bundle" if (work / "bundle").is_dir() else make_bundle(model, work / "bundle").folder
    chat, saved = build_core() / "fox_edge_chat", work / "native.chat"
    command = [
        str(chat),
        str(bundle),
        "-c",
        str(n_ctx),
        "-n",
        str(MAX_TOKENS),
        "--temp",
        "0",
        "--repeat-penalty",
        "1",
        "--resume",
        str(saved),
    ]
    turn, total = 0, 0
    while total < RESUME_TOKENS:
        result = subprocess.run(command, input=message(turn) + "\n", capture_output=True, text=True, timeout=600, check=True)
        found = STATS_LINE.search(result.stderr)
        total = int(found[1]) + MAX_TOKENS
        turn += 1
    result = subprocess.run(
        [*command[:5], "1", *command[6:]], input=NEXT_MESSAGE + "\n", capture_output=True, text=True, timeout=600, check=True
    )
    found, restored = STATS_LINE.search(result.stderr), RESTORED_LINE.search(result.stderr)
    evaluated, rate = int(found[2]), float(found[3])
    return {
        "history_tokens": int(found[1]),
        "restore_ms": float(restored[1]),
        "evaluated": evaluated,
        "ttft_s": float(restored[1]) / 1000 + evaluated / rate,
    }


def table(runs: dict[str, list[tuple[int, int, float]]], turns: int) -> list[str]:
    names = list(runs)
    lines = ["| turn | " + " | ".join(f"{n}: prompt / evaluated / TTFT ms" for n in names) + " |", "|---|" + "---|" * len(names)]
    for turn in range(turns):
        cells = [f"{runs[n][turn][0]} / {runs[n][turn][1]} / {runs[n][turn][2] * 1000:.0f}" if turn < len(runs[n]) else "-" for n in names]
        lines.append(f"| {turn + 1} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--model", type=Path, default=cache_dir() / "demo" / "SmolLM2-135M-Instruct.f16.gguf")
    parser.add_argument("--resume-only", action="store_true", help="only the resuming part (prints it; LONG_CHAT.md is left alone)")
    args = parser.parse_args()
    if args.resume_only:
        with tempfile.TemporaryDirectory() as work:
            print(python_resume(args.model, args.ctx, Path(work)), native_resume(args.model, args.ctx, Path(work)))
        return
    runs = {
        "Python, recomputed after a drop (before)": python_turns(args.model, args.turns, args.ctx, move=False),
        "Python, cache moved (after)": python_turns(args.model, args.turns, args.ctx, move=True),
    }
    with tempfile.TemporaryDirectory() as work:
        runs["native core, cache moved"] = native_turns(args.model, args.turns, args.ctx, Path(work))
        resumed = python_resume(args.model, args.ctx, Path(work))
        native = native_resume(args.model, args.ctx, Path(work))
    full = {name: [row for row in rows[10:]] for name, rows in runs.items()}  # from turn 11: the context is full
    summary = [
        f"- {name}: turns 11-{args.turns}, median TTFT {statistics.median(r[2] for r in rows) * 1000:.0f} ms, "
        f"median evaluated {statistics.median(r[1] for r in rows):.0f} of {statistics.median(r[0] for r in rows):.0f} tokens"
        for name, rows in full.items()
        if rows
    ]
    info = machine()
    text = "\n".join(
        [
            "# A long chat at a full context",
            "",
            f"{date.today()}, {args.model.name}, {args.ctx}-token context, {args.turns} turns, replies of up to {MAX_TOKENS} tokens (greedy).",
            f"Machine: {info['cpu']}, {info['memory']}; {info['system']}; {info['versions']}.",
            'Written by `benchmarks/long_chat.py`; what it means: benchmarks/README.md, "A long chat".',
            "",
            *summary,
            "",
            *table(runs, args.turns),
            "",
            f"## Resuming a {resumed['history_tokens']}-token conversation in a new process",
            "",
            f'The next message is "{NEXT_MESSAGE}"; time to its first token, the model\'s loading excluded.',
            "",
            f"- Python (ChatSession.save / restore, {resumed['file_mb']:.0f} MB file): first token {resumed['restored'] * 1000:.0f} ms restored "
            f"({resumed['restored evaluated']} tokens evaluated) against {resumed['re-processed'] * 1000:.0f} ms re-processing the history "
            f"({resumed['re-processed evaluated']} evaluated): {resumed['re-processed'] / resumed['restored']:.1f}x. The restoring itself "
            f"took {resumed['restore only'] * 1000:.0f} ms; the rest, the same on both sides, is evaluating the new message at a "
            f"{resumed['history_tokens']}-token position.",
            f"- native core (fox_chat_save / fox_chat_load, {native['history_tokens']} tokens): restored in {native['restore_ms']:.0f} ms, "
            f"first token after {native['ttft_s'] * 1000:.0f} ms ({native['evaluated']} tokens evaluated: the new message, at a "
            f"{native['history_tokens']}-token position).",
            "",
        ]
    )
    (HERE / "LONG_CHAT.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
