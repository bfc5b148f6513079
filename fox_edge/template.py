"""Chat templates rendered with Jinja, as transformers renders them: never llama.cpp's built-in guess.

llama.cpp's template detection files Fox-1's Zephyr-style template under another family (FOX1.md).
"""

from __future__ import annotations

import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from fox_edge.errors import FoxEdgeError


def read_template_file(path: str | os.PathLike[str]) -> str:
    """A chat template given as a file (`--chat-template FILE`), checked to parse before any work."""
    try:
        template = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FoxEdgeError(f"cannot read the chat template {path} ({reason}); give a UTF-8 Jinja file") from None
    _compile(template, f"the chat template {path}")
    return template


@lru_cache(maxsize=8)
def _compile(template: str, origin: str = "the model's chat template"):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise FoxEdgeError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise FoxEdgeError(f"{origin} does not parse ({exc}); pass another with --chat-template FILE") from None


def render(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True) -> str:
    return _compile(template).render(
        messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt
    )
