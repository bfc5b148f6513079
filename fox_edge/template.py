"""Chat templates rendered with Jinja, as transformers renders them: never llama.cpp's built-in guess.

llama.cpp's template detection files Fox-1's Zephyr-style template under another family (FOX1.md).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from fox_edge.errors import FoxEdgeError


@lru_cache(maxsize=8)
def _compile(template: str):
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
        raise FoxEdgeError(f"the model's chat template does not parse ({exc}); pass another with --chat-template") from None


def render(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True) -> str:
    return _compile(template).render(
        messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt
    )
