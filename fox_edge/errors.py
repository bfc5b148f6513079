"""fox-edge's exceptions: a small hierarchy under FoxEdgeError, so a program can tell a prompt that does not fit from
an unknown option value or a damaged model (a server answers 400, 422 or 500 for them), while the CLI prints any of
them as the same one line. An interruption stays a KeyboardInterrupt; one that leaves a model written but unchecked
is an `Unchecked`, which says so.

A message names the problem and the fix in the library's words. Where it names an option, the message holds the
option's parameter name in braces (`{n_ctx}`) and the exception lists it in `options`: str() shows the parameter
name, the CLI the flag (fox_edge/cli/common.py: FLAGS), so `OnnxOptions(block_size=20)` is told about
`block_size` and `fox-edge convert --block-size 20` about `--block-size`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence


class FoxEdgeError(Exception):
    """One line naming the problem and the fix."""

    def __init__(self, message: str, options: Sequence[str] = ()):
        self.template, self.options = message, tuple(options)
        super().__init__(self.render(lambda option: option))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each option it names written as `name(option)` (its flag, say)."""
        message = self.template
        for option in self.options:
            message = message.replace(f"{{{option}}}", name(option))
        return message


class InvalidOption(FoxEdgeError, ValueError):
    """An option's value is not one fox-edge accepts, or options that do not go together."""


class ModelError(FoxEdgeError):
    """The model (a checkpoint, a GGUF file, an ONNX folder, a bundle) cannot be used as it is."""


class ModelNotFound(ModelError):
    """No model at that path or hub id."""


class UnsupportedModel(ModelError):
    """A well-formed model that fox-edge does not convert or run (another architecture, a RoPE scaling, a tokenizer kind)."""


class DamagedModel(ModelError):
    """A model whose files are truncated, corrupt or inconsistent with each other: re-download or re-create it."""


class TemplateRefused(FoxEdgeError):
    """A chat template fox-edge will not render: it does not parse, fails, or runs too long or writes too much.
    `problem` says why, without the fix (a warning about a model's own template words its own)."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(f"{problem}; pass another with {{chat_template}}", ["chat_template"])


class ContextOverflow(FoxEdgeError, ValueError):
    """Input longer than the context the model was opened with."""


class OutputError(FoxEdgeError):
    """An output path that cannot be written (it would overwrite an input, exists, or its folder is missing)."""


class Unchecked(KeyboardInterrupt):
    """Interrupted (Ctrl-C, or SIGTERM in the CLI) while checking a model already written: it is on disk, unchecked.
    `interrupt` is the interruption itself, so a caller can still tell a signal from a keypress."""

    def __init__(self, model: str | os.PathLike[str], reference: str | os.PathLike[str], interrupt: KeyboardInterrupt):
        self.model, self.reference, self.interrupt = str(model), str(reference), interrupt
        super().__init__(f"{model} was written but not checked against {reference}")
