"""What a user would run instead of fox-edge, measured the way `fox-edge bench` measures its own runners.

    python benchmarks/peers.py ENGINE MODEL SETTINGS_JSON   (one child process of benchmarks/harness.py)

ENGINE is one of PEERS: raw llama-cpp-python (`llama_cpp.Llama`) on a GGUF file, onnxruntime-genai on an
ONNX folder, or transformers + PyTorch `generate` on a Hugging Face folder (`torch-bf16`, `torch-fp32`).
Each loads the model, warms up, then runs fox_edge.bench.measure_protocol: the same prompts, the same
greedy generation, the same clock points. Prints one JSON line.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from fox_edge.bench import BenchSettings, measure_protocol, measured_child
from fox_edge.cpu import default_threads
from fox_edge.texts import builtin_text


def llama_cpp_python(model: Path, settings: BenchSettings) -> dict:
    """`llama_cpp.Llama` with fox-edge's settings: context, threads, batch, and flash attention on (what
    fox-edge's default, llama.cpp's auto, chooses on CPU), so the difference is the runner's own overhead."""
    started = time.perf_counter()
    import llama_cpp.llama_cpp as bindings
    from llama_cpp import Llama

    from fox_edge.backends.llamacpp import EXTRA_BUFFERS_CRASH

    if EXTRA_BUFFERS_CRASH:  # Llama has no option for it: on an AMX machine its weights load as fox-edge's do
        defaults = bindings.llama_model_default_params

        def without_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = without_extra_buffers
    threads = settings.threads or default_threads()
    llm = Llama(str(model), n_ctx=settings.n_ctx, n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
    load = time.perf_counter() - started
    tokens = llm.tokenize(builtin_text("evaluation").encode() * 4, add_bos=False)
    llm.eval(tokens[:32])

    def prefill(prompt: list[int]) -> None:
        llm.reset()
        llm.eval(prompt)

    def generate(prompt: list[int]) -> Iterator[int]:
        return llm.generate(prompt, temp=0.0)  # temp 0: llama.cpp's greedy sampler

    return {"load_s": load, "backend": "llama-cpp-python", **measure_protocol(settings, tokens, prefill, generate)}


def onnxruntime_genai(folder: Path, settings: BenchSettings) -> dict:
    """onnxruntime-genai with intra_op_num_threads set to the thread count (its own default runs at about
    single-core speed on this machine, FOX1.md), greedy search, no early stop."""
    started = time.perf_counter()
    import onnxruntime_genai as og

    threads = settings.threads or default_threads()
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    load = time.perf_counter() - started
    tokens = og.Tokenizer(model).encode(builtin_text("evaluation") * 4).tolist()

    def generator(prompt: list[int]):
        length = len(prompt) + settings.generate_tokens + 2
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        g = og.Generator(model, params)
        g.append_tokens(prompt)
        return g

    def generate(prompt: list[int]) -> Iterator[int]:
        g = generator(prompt)
        while True:
            g.generate_next_token()
            yield int(g.get_next_tokens()[0])

    generator(tokens[:32])
    return {"load_s": load, "backend": "onnxruntime-genai", **measure_protocol(settings, tokens, generator, generate)}


def transformers_generate(folder: Path, settings: BenchSettings, dtype_name: str) -> dict:
    """transformers' `generate` (greedy, KV cache) on PyTorch's CPU kernels, in the given dtype."""
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    threads = settings.threads or default_threads()
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype_name)).eval()
    load = time.perf_counter() - started
    tokens = AutoTokenizer.from_pretrained(folder)(builtin_text("evaluation") * 4, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def prefill(prompt: list[int]) -> None:
        model(torch.tensor([prompt]), logits_to_keep=1)  # as generate's first step computes it

    class Stream(BaseStreamer):
        def __init__(self) -> None:
            self.tokens: queue.Queue = queue.Queue()
            self.prompt_seen = False

        def put(self, value) -> None:
            if self.prompt_seen:  # the first call carries the prompt
                self.tokens.put(int(value.reshape(-1)[0]))
            self.prompt_seen = True

        def end(self) -> None:
            self.tokens.put(None)

    def generate(prompt: list[int]) -> Iterator[int]:
        stream, n = Stream(), settings.generate_tokens + 1
        kwargs = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "streamer": stream}
        worker = threading.Thread(target=model.generate, args=(torch.tensor([prompt]),), kwargs=kwargs, daemon=True)
        worker.start()
        try:
            while (token := stream.tokens.get()) is not None:
                yield token
        finally:
            worker.join()  # a thread still running at exit aborts the process

    prefill(tokens[:32])
    return {"load_s": load, "backend": f"PyTorch {dtype_name}", **measure_protocol(settings, tokens, prefill, generate)}


PEERS = {
    "llama-cpp-python": llama_cpp_python,
    "onnxruntime-genai": onnxruntime_genai,
    "torch-bf16": lambda model, settings: transformers_generate(model, settings, "bfloat16"),
    "torch-fp32": lambda model, settings: transformers_generate(model, settings, "float32"),
}


if __name__ == "__main__":
    engine, model_path, settings_json = sys.argv[1:4]
    print(json.dumps(measured_child(lambda: PEERS[engine](Path(model_path), BenchSettings.from_json(settings_json)))))
