"""Does `fox-edge check` agree with llama.cpp's own `llama-perplexity --kl-divergence`? (not in CI)

    .venv/bin/python benchmarks/perplexity_agreement.py [--types Q8_0,Q4_K_M] [--model HF_FOLDER]

Builds llama-perplexity from the llama.cpp sources vendored in the installed llama-cpp-python's source
archive (cached; about 5 minutes on 2 cores), converts the model (default: SmolLM2-135M-Instruct, the
offline stand-in) to f16 GGUF, quantizes it, and runs both tools on the same files and text (fox-edge's
built-in evaluation text), all chunks. Prints a Markdown table of both tools' figures and their ratio.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fox_edge.check import Bars, check_accuracy
from fox_edge.converters.gguf import convert_to_gguf
from fox_edge.downloads import smollm2_checkpoint
from fox_edge.quantize import quantize
from fox_edge.runner import open_runner
from fox_edge.testing import suite_assets
from fox_edge.texts import builtin_text

CONTEXT = 512


def build_llama_perplexity() -> Path:
    tree = suite_assets.llama_cpp_source()
    build = tree / "build-perplexity"
    binary = build / "bin" / "llama-perplexity"
    if not binary.is_file():
        subprocess.run(
            [
                "cmake",
                "-S",
                str(tree),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_SERVER=OFF",
                "-DGGML_NATIVE=ON",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-perplexity", "-j", "2"], check=True, capture_output=True)
    return binary


def llama_perplexity(binary: Path, model: Path, text_file: Path, base: Path, first: bool) -> dict[str, float]:
    command = [
        str(binary),
        "-m",
        str(model),
        "-f",
        str(text_file),
        "-c",
        str(CONTEXT),
        "-b",
        str(CONTEXT),
        "--kl-divergence-base",
        str(base),
    ]
    if not first:
        command.append("--kl-divergence")
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    log = out.stdout + out.stderr
    if first:
        return {"ppl": float(re.search(r"Final estimate: PPL = ([\d.]+)", log)[1])}
    grab = lambda label: float(re.search(rf"{label}\s*:?\s*([\d.]+)", log)[1])  # noqa: E731
    return {
        "ppl_ref": grab(r"Mean PPL\(base\)"),
        "ppl": grab(r"Mean PPL\(Q\)"),
        "kld": grab("Mean    KLD"),
        "top1": grab("Same top p:") / 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default="Q8_0,Q6_K,Q4_K_M")
    parser.add_argument("--model", default=None, help="Hugging Face folder (default: SmolLM2-135M-Instruct)")
    args = parser.parse_args()

    binary = build_llama_perplexity()
    source = args.model or smollm2_checkpoint()
    with tempfile.TemporaryDirectory(dir=suite_assets.cache_dir()) as scratch:
        work = Path(scratch)
        reference = convert_to_gguf(source, work / "f16.gguf", "f16").output
        text_file = work / "evaluation.txt"
        text_file.write_text(builtin_text("evaluation"))
        base = work / "base.kld"
        llama_perplexity(binary, reference, text_file, base, first=True)
        print(f"model: {source}; text: fox-edge's built-in evaluation text; context {CONTEXT}, all chunks\n")
        print("| type | tool | PPL(ref) | PPL(candidate) | mean KLD | top-1 agreement |")
        print("|---|---|---|---|---|---|")
        for type_name in args.types.split(","):
            candidate = quantize(reference, work / f"{type_name}.gguf", type_name).file.output
            theirs = llama_perplexity(binary, candidate, text_file, base, first=False)
            with open_runner(reference, n_ctx=CONTEXT) as ref, open_runner(candidate, n_ctx=CONTEXT) as cand:
                ours = check_accuracy(
                    cand,
                    ref,
                    builtin_text("evaluation"),
                    n_tokens=10**9,
                    context=CONTEXT,
                    bars=Bars(max_kld=10, min_top1=0, max_ppl_ratio=10),
                )
            print(
                f"| {type_name} | llama-perplexity | {theirs['ppl_ref']:.4f} | {theirs['ppl']:.4f} | {theirs['kld']:.5f} | {theirs['top1']:.2%} |"
            )
            print(
                f"| {type_name} | fox-edge check | {ours.ppl_reference:.4f} | {ours.ppl_candidate:.4f} | {ours.kld_mean:.5f} | {ours.top1_agreement:.2%} |"
            )
            print(
                f"| {type_name} | ratio | {ours.ppl_reference / theirs['ppl_ref']:.3f} | {ours.ppl_candidate / theirs['ppl']:.3f} | "
                f"{ours.kld_mean / theirs['kld']:.3f} | {ours.top1_agreement / theirs['top1']:.3f} |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
