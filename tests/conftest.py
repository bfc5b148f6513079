"""Shared fixtures: the tiny Fox-1-structured checkpoint, its GGUF conversions and the PyTorch reference.

Assets come from the package registries through fox_edge.testing.assets and are cached under FOX_EDGE_CACHE
(default ~/.cache/fox-edge); everything built from them goes to pytest's temporary folders.
"""

from __future__ import annotations

import numpy as np
import pytest

from fox_edge.assets import smollm2_checkpoint
from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.testing import assets


@pytest.fixture(scope="session")
def botchan() -> str:
    return assets.botchan_text()


@pytest.fixture(scope="session")
def tiny_fox1(tmp_path_factory, botchan):
    from fox_edge.testing.synthetic import build_tiny_fox1

    return build_tiny_fox1(tmp_path_factory.mktemp("tiny") / "tiny-fox1", botchan)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_fox1):
    """dtype -> the tiny checkpoint converted to GGUF."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    return {dtype: convert_to_gguf(tiny_fox1, folder / f"tiny.{dtype}.gguf", dtype).output for dtype in ("f32", "f16", "bf16")}


class TorchReference:
    """The Hugging Face model in float32: the independent reference for logits and greedy text."""

    def __init__(self, folder):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def logits(self, tokens: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor([tokens])).logits[0].float().numpy()

    def greedy(self, tokens: list[int], n: int) -> list[int]:
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([tokens]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, len(tokens) :].tolist()


@pytest.fixture(scope="session")
def tiny_reference(tiny_fox1):
    return TorchReference(tiny_fox1)


@pytest.fixture(scope="session")
def smollm2():
    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory, smollm2):
    return convert_to_gguf(smollm2, tmp_path_factory.mktemp("smollm2") / "smollm2.f32.gguf", "f32").output


@pytest.fixture(scope="session")
def trained_tiny_fox1():
    return assets.trained_tiny_fox1()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_gguf, tmp_path_factory):
    from fox_edge.bundle import make_bundle

    return make_bundle(tiny_gguf["f16"], tmp_path_factory.mktemp("native") / "tiny-bundle").folder


@pytest.fixture(scope="session")
def scripted_bundle(tiny_fox1, tmp_path_factory):
    """A bundle whose greedy reply is SCRIPTED_REPLY, one byte per token outside ASCII (cut mid-character)."""
    from fox_edge.bundle import make_bundle
    from fox_edge.chat import ChatSession
    from fox_edge.runner import open_runner
    from fox_edge.sampling import SamplingParams
    from fox_edge.testing.native import SCRIPTED_REPLY
    from fox_edge.testing.synthetic import build_scripted_model

    folder = tmp_path_factory.mktemp("scripted")
    gguf = convert_to_gguf(build_scripted_model(folder / "checkpoint", tiny_fox1, SCRIPTED_REPLY), folder / "scripted.gguf").output
    bundle = make_bundle(gguf, folder / "scripted-bundle").folder
    with open_runner(bundle) as runner:  # the Python runner says it too: the model is what the tests assume
        assert "".join(ChatSession(runner, SamplingParams.greedy(max_tokens=40)).send("Hi")) == SCRIPTED_REPLY
    return bundle
