"""The PyTorch backend: a Hugging Face checkpoint run by transformers, the accuracy checker's reference.

Slow and memory-hungry by design (float32, no KV cache): it is the independent ground truth that
converted and quantized models are measured against, not a way to chat.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fox_edge.backends.base import ModelShape, Runner, stop_ids
from fox_edge.cpu import default_threads
from fox_edge.errors import FoxEdgeError, InvalidOption


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars off (the library prints only through fox-edge's hooks), as they were after."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


class TorchRunner(Runner):
    backend = "pytorch"

    @classmethod
    def open(cls, path: Path, *, n_ctx: int | None, n_threads: int | None, device: str, **options) -> TorchRunner:
        if device == "gpu":
            raise InvalidOption("the PyTorch reference runs on the CPU here; drop {device} gpu", ["device"])
        return super().open(path, n_ctx=n_ctx, n_threads=n_threads, device=device, **options)

    @property
    def name(self) -> str | None:
        return self._name

    def __init__(self, source: str | Path, n_ctx: int = 4096, n_threads: int | None = None, dtype: str = "float32"):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise FoxEdgeError(
                "a checkpoint reference needs PyTorch: pip install 'fox-edge[torch]', or use an f16 GGUF as --reference"
            ) from None
        from fox_edge.source import open_checkpoint

        checkpoint = open_checkpoint(source)
        self.path = checkpoint.path
        self._torch = torch
        torch.set_num_threads(n_threads or default_threads())  # PyTorch's own default ignores the CPU affinity
        with _quiet_transformers():  # its "Loading weights" bar would land in the middle of fox-edge's own output
            self.tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
            self.model = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=getattr(torch, dtype)).eval()
        self.n_ctx_train = checkpoint.shape.context_length
        self.n_ctx = min(n_ctx, self.n_ctx_train) if n_ctx > 0 else self.n_ctx_train
        shape = checkpoint.shape
        self.shape = ModelShape(
            n_layers=shape.n_layers,
            n_kv_heads=shape.n_kv_heads,
            head_size=shape.head_size,
            hidden_size=shape.hidden_size,
            kv_bytes_per_element=4,
        )
        self.n_vocab = checkpoint.shape.vocab_size
        self.bos_id = self.tokenizer.bos_token_id
        self.eos_id = self.tokenizer.eos_token_id
        self.add_bos = bool(checkpoint.tokenizer_config.get("add_bos_token", False))
        special = {token.content: i for i, token in self.tokenizer.added_tokens_decoder.items() if token.special}
        self.stop_ids = stop_ids([self.eos_id], special.get)
        self.chat_template = self.tokenizer.chat_template
        self.metadata = {}
        self._name = checkpoint.name
        self.n_evaluated = 0

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special).input_ids)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=not special)

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.decode([token], skip_special_tokens=True).encode("utf-8")

    def token_text(self, token: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token)

    def logits(self, tokens: Sequence[int], first: int = 0) -> np.ndarray:
        self.check_fits(len(tokens), "the chunk")
        with self._torch.no_grad():  # logits_to_keep: the last n positions (0: all)
            output = self.model(self._torch.tensor([list(tokens)]), logits_to_keep=len(tokens) - first if first else 0)
            return output.logits[0].float().numpy()

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        self.check_fits(len(tokens))
        self.n_evaluated = len(tokens)
        return self.logits(tokens)[-1]

    def close(self) -> None:
        self.model = None
