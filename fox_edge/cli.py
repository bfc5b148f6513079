"""The `fox-edge` command line: a thin typer layer over functions you can import."""

from __future__ import annotations

import json
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fox_edge.errors import FoxEdgeError
from fox_edge.sampling import SamplingParams

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fox-1 to GGUF, quantized, checked and run on your own devices.")


def _say(message: str) -> None:
    typer.echo(message, err=True)


@contextmanager
def _errors():
    """Bad input ends in one line on stderr and a non-zero exit; Ctrl-C in exit code 130."""
    try:
        yield
    except FoxEdgeError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _say("interrupted: nothing was written")
        raise typer.Exit(130) from None


@contextmanager
def _progress_bar(description: str, in_bytes: bool = True):
    """A progress bar on stderr: done / total (bytes, or steps such as tensors and chunks), rate, time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeRemainingColumn(),
        TextColumn("{task.fields[tensor]}"),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=None, tensor="")

        def update(done: int, total: int, tensor: str) -> None:
            bar.update(task, completed=done, total=total, tensor=tensor)

        yield update


Calibration = Annotated[
    str | None,
    typer.Option("--calibration", help="calibration text (.txt or .jsonl with a text field) or 'builtin': compute an importance matrix"),
]
NoCheck = Annotated[bool, typer.Option("--no-check", help="skip the accuracy check after quantizing")]
Threads = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: all cores this process may use)")]
CtxSize = Annotated[int, typer.Option("--ctx-size", "-c", help="context length in tokens (capped at the model's)")]


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="Hugging Face checkpoint folder or hub id")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output file (GGUF) or folder (ONNX)")],
    to: Annotated[str, typer.Option("--to", help="target format: gguf or onnx")] = "gguf",
    dtype: Annotated[str, typer.Option("--dtype", help="GGUF: f16, bf16 or f32")] = "f16",
    vocab_only: Annotated[bool, typer.Option("--vocab-only", help="GGUF: write only the tokenizer (no weights needed)")] = False,
    quant: Annotated[
        str | None, typer.Option("--quant", "-q", help="GGUF: also quantize to this type (see `quantize --help`); no f16 file is left")
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="ONNX: fp32, fp16, int8 or int4 (weight-only, block-wise)")] = "int4",
    block_size: Annotated[int, typer.Option("--block-size", help="ONNX int8/int4: weights per quantization block")] = 32,
    accuracy_level: Annotated[
        int, typer.Option("--accuracy-level", help="ONNX int8/int4: MatMulNBits compute type, 0 (float) to 4 (int8, fastest on CPU)")
    ] = 4,
    asymmetric: Annotated[
        bool, typer.Option("--asymmetric", help="ONNX int8/int4: min/max blocks with a zero point (default symmetric)")
    ] = False,
    embedding_bits: Annotated[
        int | None,
        typer.Option("--embedding-bits", help="ONNX int4: 8 keeps the tied embedding / lm_head at 8 bits (more accurate, larger)"),
    ] = None,
    exporter: Annotated[
        str, typer.Option("--exporter", help="ONNX: fox-edge (fused ONNX Runtime ops) or optimum (standard ops, its own environment)")
    ] = "fox-edge",
    ort_format: Annotated[
        bool, typer.Option("--ort-format", help="ONNX: also write model.ort and its operator config for mobile builds")
    ] = False,
    calibration: Calibration = None,
    no_check: NoCheck = False,
    threads: Threads = None,
):
    """Convert a checkpoint to GGUF or ONNX, streaming tensor by tensor; quantized outputs are checked against the original."""
    with _errors():
        if to == "onnx":
            from fox_edge.converters.onnx import OnnxOptions

            if quant or vocab_only or calibration:
                raise FoxEdgeError("--quant, --vocab-only and --calibration are GGUF options; for ONNX use --precision int8 or int4")
            options = OnnxOptions(precision, block_size, accuracy_level, threads or 0, embedding_bits, not asymmetric)
            if exporter == "optimum":
                from fox_edge.converters.optimum import convert_with_optimum

                result = convert_with_optimum(source, output, options, report=_say)
                _say(
                    f"wrote {result.output}: {result.precision} (optimum-onnx graph) in {result.seconds:.1f} s; runs in ONNX Runtime, not in fox-edge's runner"
                )
                return
            if exporter != "fox-edge":
                raise FoxEdgeError(f"unknown --exporter {exporter!r}; choose fox-edge or optimum")
            _convert_onnx(source, output, options, ort_format, not no_check, threads)
            return
        if to != "gguf":
            raise FoxEdgeError(f"unknown --to {to!r}; fox-edge converts to: gguf, onnx")
        from fox_edge.converters.gguf import convert_to_gguf

        if quant:
            import os

            from fox_edge.files import check_writable
            from fox_edge.quant.gguf import parse_type

            parse_type(quant)
            check_writable(output)
            intermediate = output.with_name(f".{output.name}.f16-{os.getpid()}.gguf")
        try:
            with _progress_bar("converting") as progress:
                result = convert_to_gguf(
                    source, intermediate if quant else output, dtype, progress=progress, report=_say, vocab_only=vocab_only
                )
            _say(
                f"wrote {result.output}: {result.n_tensors} tensors, {result.n_bytes / 1e6:.1f} MB in {result.seconds:.1f} s "
                f"(tokenizer from {result.vocab_source}, chat template: {result.chat_template})"
            )
            if quant:
                from fox_edge.quantize import CheckSettings

                _quantize(
                    intermediate, output, quant, threads or 0, None, None, calibration, None, False, CheckSettings(enabled=not no_check)
                )
        finally:
            if quant:
                intermediate.unlink(missing_ok=True)


def _convert_onnx(source: str, output: Path, options, ort_format: bool, check: bool, threads: int | None) -> None:
    import importlib.util

    from fox_edge.check import CheckSettings, check_model, format_report, save_report
    from fox_edge.converters.onnx import convert_to_onnx
    from fox_edge.source import resolve

    with _progress_bar("converting") as progress:
        result = convert_to_onnx(source, output, options, progress=progress, report=_say, ort_format=ort_format)
    _say(
        f"wrote {result.output}: {result.precision}, {result.n_initializers} initializers, {result.n_bytes / 1e6:.1f} MB of weights "
        f"in {result.seconds:.1f} s (tokenizer from {result.vocab_source}, chat template: {result.chat_template})"
        + (f"; ORT format: {result.ort_model}" if result.ort_model else "")
    )
    if not check or options.precision not in ("int8", "int4"):
        return
    if importlib.util.find_spec("torch") is None:
        _say(f"not checked: the reference needs PyTorch (pip install 'fox-edge[torch]'), then `fox-edge check {output} -r {source}`")
        return
    settings = CheckSettings()
    _say(f"checking {output.name} against {source} (PyTorch) on {settings.tokens} tokens")
    with _progress_bar("checking", in_bytes=False) as progress:
        report = check_model(output, resolve(source, progress=False)[0], settings, progress, threads)
    save_report(report, output)
    typer.echo(format_report(report))
    if not report.passed:
        _say(f"error: {output} fails its accuracy check (the model and its report are kept; see above)")
        raise typer.Exit(1)


@app.command()
def info(
    target: Annotated[str, typer.Argument(help="GGUF file, checkpoint folder or hub id")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """Architecture, parameters, tensor types and sizes, tokenizer, special ids, context, chat template."""
    with _errors():
        from fox_edge.info import describe

        rows = describe(target)
        if as_json:
            typer.echo(json.dumps(dict(rows), indent=2))
            return
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            typer.echo(f"{label:<{width}}  {value}")


def _quantize(input_path, output, type_name, threads, embedding, output_type, calibration, imatrix, allow_requantize, check) -> None:
    from fox_edge.check import format_report
    from fox_edge.quantize import quantize

    with _progress_bar("quantizing", in_bytes=False) as progress:
        outcome = quantize(
            input_path,
            output,
            type_name,
            threads,
            embedding,
            output_type,
            calibration,
            imatrix,
            allow_requantize,
            check,
            report=_say,
            progress=lambda done, total, what: progress(done, total, what),
        )
    if outcome.check is not None:
        typer.echo(format_report(outcome.check))
        if not outcome.check.passed:
            _say(f"error: {output} fails its accuracy check (the file and its report are kept; see above)")
            raise typer.Exit(1)


MaxKld = Annotated[float | None, typer.Option("--max-kld", help="bar / budget: highest mean KL divergence")]
MinTop1 = Annotated[float | None, typer.Option("--min-top1", help="bar / budget: lowest top-1 agreement (0-1)")]
MaxPplRatio = Annotated[float | None, typer.Option("--max-ppl-ratio", help="bar / budget: highest perplexity ratio")]
CheckTokens = Annotated[int, typer.Option("--check-tokens", help="tokens scored by the accuracy check")]
EvalData = Annotated[str, typer.Option("--data", help="evaluation text (.txt, .jsonl) or 'builtin'")]


@app.command(name="quantize")
def quantize_command(
    model: Annotated[Path, typer.Argument(help="f16/bf16/f32 GGUF file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output file")],
    type_name: Annotated[
        str | None, typer.Option("--type", help="Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q4_0, IQ4_NL or IQ4_XS; omit with a budget")
    ] = None,
    embedding_type: Annotated[
        str | None, typer.Option("--embedding-type", help="token-embedding (= tied output) type: Q4_K, Q5_K, Q6_K, Q8_0, F16")
    ] = None,
    output_type: Annotated[str | None, typer.Option("--output-type", help="output tensor type (untied models)")] = None,
    calibration: Calibration = None,
    imatrix: Annotated[
        Path | None, typer.Option("--imatrix", help="importance matrix file: saved here with --calibration, else read from here")
    ] = None,
    allow_requantize: Annotated[bool, typer.Option("--allow-requantize", help="accept an already quantized input")] = False,
    no_check: NoCheck = False,
    check_tokens: CheckTokens = 4096,
    data: EvalData = "builtin",
    max_kld: MaxKld = None,
    min_top1: MinTop1 = None,
    max_ppl_ratio: MaxPplRatio = None,
    threads: Threads = None,
):
    """Quantize with llama.cpp, then check against the input (unless --no-check). Without --type: the smallest type that meets --max-kld / --min-top1."""
    with _errors():
        from fox_edge.quantize import BudgetNotMet, CheckSettings, quantize_to_budget

        check = CheckSettings(not no_check, data, check_tokens, 512, max_kld, min_top1, max_ppl_ratio)
        if type_name:
            _quantize(model, output, type_name, threads or 0, embedding_type, output_type, calibration, imatrix, allow_requantize, check)
            return
        try:
            with _progress_bar("searching", in_bytes=False) as progress:
                outcome = quantize_to_budget(
                    model, output, check, threads=threads or 0, calibration=calibration, imatrix=imatrix, report=_say, progress=progress
                )
        except BudgetNotMet as exc:
            _print_tried(exc.tried)
            raise
        _print_tried(outcome.tried)
        _say(
            f"kept {output}: {outcome.result.type} with token embedding {outcome.result.embedding_type}, {outcome.result.bytes / 1e6:.1f} MB"
        )


def _print_tried(rows: list[dict]) -> None:
    typer.echo(f"{'type':<8} {'embedding':<10} {'MB':>8} {'mean KLD':>10} {'top-1':>7} {'PPL ratio':>9}  result")
    for row in rows:
        typer.echo(
            f"{row['type']:<8} {row['embedding']:<10} {row['mb']:>8.1f} {row['kld']:>10.5f} {row['top1']:>7.2%} {row['ppl_ratio']:>9.4f}  "
            f"{'meets the budget' if row['passed'] else 'over'}"
        )


@app.command(name="check")
def check_command(
    candidate: Annotated[Path, typer.Argument(help="the model to check: GGUF file or ONNX folder")],
    reference: Annotated[
        Path,
        typer.Option(
            "--reference", "-r", help="full-precision reference: Hugging Face checkpoint folder (PyTorch), f16/f32 GGUF or fp32 ONNX folder"
        ),
    ],
    data: EvalData = "builtin",
    tokens: Annotated[int, typer.Option("--tokens", help="tokens to score")] = 4096,
    ctx: Annotated[int, typer.Option("--ctx", help="chunk length; the second half of each chunk is scored")] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON report")] = False,
    save: Annotated[bool, typer.Option("--save", help="store the report beside the candidate (CANDIDATE.check.json)")] = False,
    max_kld: MaxKld = None,
    min_top1: MinTop1 = None,
    max_ppl_ratio: MaxPplRatio = None,
    threads: Threads = None,
):
    """Perplexity, KL divergence and top-1 agreement of CANDIDATE against REFERENCE, with pass/fail bars."""
    with _errors():
        from fox_edge.check import CheckSettings, check_model, format_report, save_report

        settings = CheckSettings(True, data, tokens, ctx, max_kld, min_top1, max_ppl_ratio)
        with _progress_bar("checking", in_bytes=False) as progress:
            report = check_model(candidate, reference, settings, progress, threads)
        if save:
            save_report(report, candidate)
        typer.echo(report.to_json() if as_json else format_report(report))
        if not report.passed:
            raise typer.Exit(1)


def _sampling(temperature: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float, seed: int | None, max_tokens: int):
    return SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed, max_tokens=max_tokens)


SAMPLING = SamplingParams()  # the defaults, defined once in fox_edge/sampling.py
Temperature = Annotated[float, typer.Option(help="0 for greedy")]
TopK = Annotated[int, typer.Option(help="0 for off")]
TopP = Annotated[float, typer.Option(help="1 for off")]
MinP = Annotated[float, typer.Option(help="0 for off")]
RepeatPenalty = Annotated[float, typer.Option(help="1 for off")]
Seed = Annotated[int | None, typer.Option(help="random seed (default: random)")]


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="GGUF file")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="prompt text ('-' reads stdin)")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 256,
    chat: Annotated[bool, typer.Option("--chat", help="wrap the prompt in the model's chat template")] = False,
    temperature: Temperature = SAMPLING.temperature,
    top_k: TopK = SAMPLING.top_k,
    top_p: TopP = SAMPLING.top_p,
    min_p: MinP = SAMPLING.min_p,
    repeat_penalty: RepeatPenalty = SAMPLING.repeat_penalty,
    seed: Seed = None,
    ctx_size: CtxSize = 4096,
    threads: Threads = None,
):
    """Generate from a prompt: only the generated text goes to stdout (for scripts)."""
    with _errors():
        from fox_edge.runner import chat_prompt, generate_tokens, open_runner, stream_text, text_prompt

        text = sys.stdin.read() if prompt == "-" else prompt
        runner = open_runner(model, n_ctx=ctx_size, n_threads=threads)
        tokens = chat_prompt(runner, [{"role": "user", "content": text}]) if chat else text_prompt(runner, text)
        params = _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)
        for piece in stream_text(runner, generate_tokens(runner, tokens, params)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


@app.command(name="chat")
def chat_command(
    model: Annotated[Path, typer.Argument(help="GGUF file")],
    system: Annotated[str | None, typer.Option("--system", "-s", help="system prompt")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="longest reply")] = 512,
    temperature: Temperature = SAMPLING.temperature,
    top_k: TopK = SAMPLING.top_k,
    top_p: TopP = SAMPLING.top_p,
    min_p: MinP = SAMPLING.min_p,
    repeat_penalty: RepeatPenalty = SAMPLING.repeat_penalty,
    seed: Seed = None,
    ctx_size: CtxSize = 4096,
    threads: Threads = None,
):
    """Chat in the terminal. /reset starts over, /exit quits; end a line with \\ to continue it, or wrap a block in \"\"\"."""
    with _errors():
        from fox_edge.chat import ChatSession
        from fox_edge.runner import open_runner

        runner = open_runner(model, n_ctx=ctx_size, n_threads=threads)
        session = ChatSession(runner, _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens), system, report=_say)
        _say(
            f"{runner.metadata.get('general.name', model.name)} on {runner.backend}, {runner.n_ctx}-token context. "
            "/reset starts over, /exit quits, Ctrl-C stops a reply."
        )
        while True:
            text = _read_message()
            if text is None or text.strip() == "/exit":
                return
            if text.strip() == "/reset":
                session.reset()
                _say("[conversation reset]")
                continue
            if not text.strip():
                continue
            cancel = threading.Event()
            try:
                for piece in session.send(text, cancel):
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                cancel.set()
                _say("\n[reply stopped]")
            except FoxEdgeError as exc:
                _say(f"error: {exc}")
                continue
            stats = session.last_stats
            sys.stdout.write("\n")
            _say(
                f"[{stats.generated_tokens} tokens, {stats.tokens_per_second:.1f} tok/s; prompt {stats.prompt_evaluated} new of "
                f"{stats.prompt_tokens} tokens at {stats.prompt_tokens_per_second:.0f} tok/s]"
            )


def _read_message() -> str | None:
    """One user message: a line, lines joined by a trailing backslash, or a block between \"\"\" lines. None at end of input."""
    lines: list[str] = []
    block = False
    prompt = "> "
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return "\n".join(lines) if lines else None
        if line.strip() == '"""':
            if block:
                return "\n".join(lines)
            block, prompt = True, ". "
            continue
        if block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
            prompt = ". "
        else:
            lines.append(line)
            return "\n".join(lines)


@app.command(name="bench")
def bench_command(
    models: Annotated[list[Path], typer.Argument(help="GGUF files or ONNX folders (several are interleaved A B A B)")],
    prompt_lengths: Annotated[str, typer.Option("--prompt-lengths", help="comma-separated prompt lengths in tokens")] = "128,512",
    generate: Annotated[int, typer.Option("--generate", "-n", help="tokens to generate per run")] = 64,
    repeats: Annotated[int, typer.Option("--repeats", "-r", help="runs per model, each in a fresh process")] = 3,
    ctx_size: CtxSize = 2048,
    threads: Threads = None,
    flash_attention: Annotated[str, typer.Option("--flash-attention", help="GGUF: auto, on or off")] = "auto",
    kv_type: Annotated[str | None, typer.Option("--kv-type", help="GGUF KV cache type: f16 (default), f32 or q8_0")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="prompt tokens per forward pass (default 512)")] = None,
    no_mmap: Annotated[bool, typer.Option("--no-mmap", help="GGUF: read the file into memory instead of mapping it")] = False,
    roofline: Annotated[
        bool, typer.Option("--roofline", help="measure memory read bandwidth each round; show generation as a fraction of its roofline")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """Load time, prompt and generation speed, time to first token and peak RSS: medians and spread of interleaved runs."""
    with _errors():
        from dataclasses import asdict

        from fox_edge.bench import BenchSettings, bench, format_table

        try:
            lengths = tuple(int(n) for n in prompt_lengths.split(","))
        except ValueError:
            raise FoxEdgeError(f"--prompt-lengths takes comma-separated numbers, not {prompt_lengths!r}") from None
        if flash_attention not in ("auto", "on", "off"):
            raise FoxEdgeError(f"--flash-attention takes auto, on or off, not {flash_attention!r}")
        if batch_size is not None and batch_size < 1:
            raise FoxEdgeError(f"--batch-size must be at least 1, not {batch_size}")
        settings = BenchSettings(
            lengths,
            generate,
            repeats,
            threads,
            ctx_size,
            {"auto": None, "on": True, "off": False}[flash_attention],
            kv_type,
            batch_size,
            False if no_mmap else None,
            roofline,
        )
        with _progress_bar("benchmarking", in_bytes=False) as progress:
            results = bench([str(m) for m in models], settings, progress)
        typer.echo(json.dumps([asdict(r) for r in results], indent=2) if as_json else format_table(results, settings))


@app.command()
def demo(
    model: Annotated[
        str | None, typer.Option("--model", help="hub id or checkpoint folder (default: the offline SmolLM2 stand-in)")
    ] = None,
):
    """A real model through convert -> GGUF -> chat answer, step by step."""
    with _errors():
        from fox_edge.demo import run_demo

        def write(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        with _progress_bar("    converting") as progress:
            run_demo(model, typer.echo, write, progress)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
