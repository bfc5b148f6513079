"""Chat templates rendered with Jinja, as transformers renders them: never llama.cpp's built-in guess.

llama.cpp's template detection files Fox-1's Zephyr-style template under another family (FOX1.md).
A template comes with the model, so it is untrusted: it renders in Jinja's immutable sandbox (no
attribute of Python objects, no file), within a time budget and an output budget, so a hostile one
ends in an error instead of a hang or an exhausted machine.
"""

from __future__ import annotations

import operator
import os
import sys
import time
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from fox_edge.errors import FoxEdgeError, TemplateRefused

RENDER_SECONDS = 2.0  # a real template renders a long conversation in milliseconds
RENDER_CHARS = 4 << 20  # far more text than any context holds
# What convert renders to see that a template works (with a system turn, then without: some templates refuse one).
SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are concise."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. How can I help?"},
    {"role": "user", "content": "What is the capital of France?"},
]


def read_template_file(path: str | os.PathLike[str]) -> str:
    """A chat template given as a file (`--chat-template FILE`), checked to parse before any work."""
    try:
        template = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FoxEdgeError(f"cannot read the chat template {path} ({reason}); give a UTF-8 Jinja file") from None
    _compile(template, f"the chat template {path}")
    return template


def _bounded_binop(environment, operator_name: str, left, right):
    """`*` and `**` are where one expression can build a gigantic string or number: refuse those before computing."""
    if operator_name == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, str | list | tuple) and isinstance(count, int) and len(sequence) * count > RENDER_CHARS:
                raise TemplateRefused(f"the chat template builds a value of over {RENDER_CHARS:,} characters")
        return left * right
    if isinstance(left, int) and isinstance(right, int) and abs(right) > 1024:
        raise TemplateRefused("the chat template raises a number to a huge power")
    return operator.pow(left, right)


@lru_cache(maxsize=8)
def _compile(template: str, origin: str = "the model's chat template"):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator_name, left, right):
            return _bounded_binop(self, operator_name, left, right)

    def raise_exception(message: str):
        raise FoxEdgeError(f"chat template: {message}")

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    if not isinstance(template, str):
        raise TemplateRefused(f"{origin} is a {type(template).__name__}, not text")
    try:
        return env.from_string(template)
    except (TemplateError, RecursionError, MemoryError) as exc:
        raise TemplateRefused(f"{origin} does not parse ({str(exc)[:200]})") from None


def render(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The conversation as the template writes it, or one error when it fails, runs over RENDER_SECONDS or writes
    more than RENDER_CHARS."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    compiled = _compile(template)
    deadline = time.monotonic() + RENDER_SECONDS

    def watch(frame, event, arg):  # a line tracer, only while rendering: loops that write nothing are timed too
        if time.monotonic() > deadline:
            raise TemplateRefused(f"the chat template ran over {RENDER_SECONDS:g} s")
        return watch

    parts, size = [], 0
    previous = sys.gettrace()
    sys.settrace(watch)
    try:
        for part in compiled.generate(
            messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt
        ):
            size += len(part)
            if size > RENDER_CHARS:
                raise TemplateRefused(f"the chat template wrote over {RENDER_CHARS:,} characters")
            parts.append(part)
    except (SecurityError, TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise TemplateRefused(f"the chat template failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    finally:
        sys.settrace(previous)
    return "".join(parts)


def template_problem(template: str, bos_token: str = "", eos_token: str = "") -> str | None:
    """Why `template` cannot render a sample conversation (with a system turn or without), or None if it can."""
    try:
        _compile(template)
    except TemplateRefused as exc:
        return exc.problem
    problem = None
    for messages in (SAMPLE_CONVERSATION, SAMPLE_CONVERSATION[1:]):
        try:
            render(template, messages, bos_token, eos_token)
            return None
        except FoxEdgeError as exc:  # refused, or the template's own raise_exception
            problem = problem or (exc.problem if isinstance(exc, TemplateRefused) else str(exc))
    return problem
