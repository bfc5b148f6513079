"""`fox-edge bundle`: a model an app can embed, that says what it is, proves it is intact and carries its accuracy.

A bundle is a folder: the model (`model.gguf`, or an ONNX model folder `model/`), `manifest.json` and a
README for the app's developers. The manifest (described by fox_edge/data/bundle.schema.json) lists
every file with its size and sha256, the special and stop ids, the chat template itself, generation
defaults, the default and largest context, an estimate of the memory the model needs, the accuracy
report of its check, and the versions it was made with. The fox-edge runners, `info`, `bench` and
`check` open a bundle as they open its model; the native core reads the same manifest.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fox_edge import __version__
from fox_edge.backends.base import estimate_memory, weights_bytes
from fox_edge.check import CheckSettings, load_report, sidecar_path
from fox_edge.converters.onnx import OnnxOptions
from fox_edge.errors import FoxEdgeError, InvalidOption, TemplateRefused
from fox_edge.files import atomic_output, check_writable
from fox_edge.formats import BUNDLE_MANIFEST, BUNDLE_README, CHECKPOINT, GGUF, ONNX, by_name, identify
from fox_edge.hooks import OnMessage, ignore_message
from fox_edge.manifest import SCHEMA_VERSION, Problem, file_sha256, manifest_problems, schema_problems
from fox_edge.pipeline import GgufOptions, PhaseProgress, convert
from fox_edge.runner import open_runner
from fox_edge.sampling import SamplingParams
from fox_edge.source import is_hub_id, local_folder
from fox_edge.template import template_problem

VERIFY_FULL = "at install or first launch, and after an update: every file's sha256 (seconds for a 1 GB model on a phone)"
VERIFY_EVERY_LAUNCH = "every file's size (a stat per file, instant): catches a truncated or interrupted download"
GIB = 1 << 30


@dataclass(frozen=True, kw_only=True)
class Target:
    quant: str  # the GGUF type a developer for this target would pick
    onnx_precision: str
    ort_format: bool  # ONNX: also the ORT-format model, for onnxruntime's reduced mobile builds
    context: int
    memory_budget: int  # bytes the model may need before `bundle` warns
    budget_source: str
    # How llama.cpp should load a GGUF on this target (manifest format.runtime_options; the runner and the native core
    # follow it). use_mmap None: the runner decides (read into memory when the CPU backend repacks the weights).
    gguf_loading: dict


# Measured on full-size Fox-1 Q4_K_M (benchmarks/BENCHMARKS.md, "Memory"): llama.cpp's repacked layouts feed its
# fastest CPU kernels (dotprod / i8mm on ARM), and reading the file into memory instead of mapping it keeps no
# second, mapped copy of the repacked weights resident: 1.30 GB at 2048 context instead of 1.82 GB, at the same speed.
CPU_LOADING = {"use_mmap": False, "repack": True}


TARGETS = {
    "android": Target(
        quant="Q4_K_M", onnx_precision="int4", ort_format=True, context=2048, memory_budget=3 * GIB,
        budget_source="fox-edge's choice for an 8 GB phone, whose low-memory killer ends a foreground app well before its RAM is full "
        "(Android documents no per-app limit); ExecuTorch's Llama 3.2 1B 4-bit ran in 1,921 MiB on a OnePlus 12",
        gguf_loading=CPU_LOADING,
    ),
    "ios": Target(
        quant="Q4_K_M", onnx_precision="int4", ort_format=True, context=2048, memory_budget=2 * GIB,
        budget_source="what a 4 GB iPhone grants an app without the increased-memory-limit entitlement (iPhone 12 mini: about "
        "2.1 GB from os_proc_available_memory); a 6 GB iPhone grants about 3.1 GB, about 4.2 GB with the entitlement",
        # Metal: llama.cpp wraps the mapped file in GPU-visible buffers without a copy, and nothing is repacked.
        gguf_loading={"use_mmap": True, "repack": True},
    ),
    "desktop": Target(
        quant="Q4_K_M", onnx_precision="int4", ort_format=False, context=4096, memory_budget=8 * GIB,
        budget_source="half of a 16 GB laptop",
        gguf_loading={"use_mmap": None, "repack": True},
    ),
}  # fmt: skip
BACKENDS = {"llama.cpp": GGUF, "onnx": ONNX}  # --backend -> the format it runs
BUNDLE_SOURCES = {GGUF: "copy", ONNX: "copy", CHECKPOINT: "convert"}  # what a bundle does with its source, by format


def _gguf_conversion(settings: Target, quant: str | None, precision: str | None) -> GgufOptions:
    return GgufOptions(quant=quant or settings.quant)


def _onnx_conversion(settings: Target, quant: str | None, precision: str | None) -> OnnxOptions:
    return OnnxOptions(precision=precision or settings.onnx_precision, ort_format=settings.ort_format)


# The conversion that makes each format for a target, and the loading settings its manifest carries.
CONVERSIONS = {GGUF: _gguf_conversion, ONNX: _onnx_conversion}
RUNTIME_OPTIONS = {GGUF: lambda settings: settings.gguf_loading, ONNX: lambda settings: {}}


@dataclass(kw_only=True)
class BundleResult:
    folder: Path
    manifest: dict
    warnings: list[str] = field(default_factory=list)


def make_bundle(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    target: str = "android",
    backend: str = "llama.cpp",
    quant: str | None = None,
    precision: str | None = None,
    context: int | None = None,
    chat_template: str | None = None,
    allow_failed_check: bool = False,
    check: CheckSettings | None = None,
    threads: int | None = None,
    progress: PhaseProgress | None = None,
    on_message: OnMessage = ignore_message,
) -> BundleResult:
    """Bundle `source` (a checkpoint folder or hub id: converted, quantized and checked; or a GGUF file or ONNX
    folder, with the check report stored beside it) for `target` into the new folder `output`."""
    if target not in TARGETS:
        raise InvalidOption(f"unknown {{target}} {target!r}; choose one of {', '.join(TARGETS)}", ["target"])
    if backend not in BACKENDS:
        raise InvalidOption(f"unknown {{backend}} {backend!r}; choose {' or '.join(BACKENDS)}", ["backend"])
    settings = TARGETS[target]
    hub_id = not Path(source).exists() and is_hub_id(str(source))
    kind = CHECKPOINT if hub_id else identify(source, tuple(BUNDLE_SOURCES))
    if BUNDLE_SOURCES[kind] == "copy" and (quant or precision):
        raise InvalidOption(
            f"{source} is already converted; {{quant}} and {{precision}} apply when bundling a checkpoint", ["quant", "precision"]
        )
    output = check_writable(output, folder=True, inputs=[source], source_folders=[local_folder(source)])
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        on_message(f"warning: {message}")

    def converted(folder: Path) -> tuple[Path, dict | None]:
        model_format = BACKENDS[backend]
        model = folder / model_format.bundle_path
        result = convert(
            source, model, CONVERSIONS[model_format](settings, quant, precision), chat_template=chat_template, check=check,
            threads=threads, progress=progress, on_message=on_message,
        )  # fmt: skip
        report = json.loads(result.check.to_json()) if result.check is not None else None
        sidecar_path(model).unlink(missing_ok=True)  # the manifest carries the report
        _refuse_failed(report, source, allow_failed_check)
        return model, report

    def copied(folder: Path) -> tuple[Path, dict | None]:
        report = load_report(source)
        _refuse_failed(report, source, allow_failed_check)  # before copying what would not be bundled
        model = folder / kind.bundle_path
        on_message(f"copying {source} into the bundle")
        kind.copy(Path(source), model, ignore=lambda file: file == sidecar_path(source))
        return model, report

    with atomic_output(output) as folder:
        folder.mkdir()
        model, report = {"convert": converted, "copy": copied}[BUNDLE_SOURCES[kind]](folder)
        if report is None:
            warn(f"{source} has no stored accuracy check; the manifest says so (run `fox-edge check` and bundle again to carry one)")
        source_name = str(source) if hub_id else Path(source).resolve().name  # never the user's folder layout
        manifest = _manifest(folder, model, source_name, target, settings, context, chat_template, report, allow_failed_check, warn)
        (folder / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        (folder / BUNDLE_README).write_text(_readme(manifest, settings))
        problems = schema_problems(manifest)
        if problems:  # a bundle fox-edge itself cannot verify is a bug, never a file to ship
            raise FoxEdgeError(f"the manifest fox-edge wrote does not validate: {problems[0].message}")
    return BundleResult(folder=Path(output), manifest=manifest, warnings=warnings)


def _refuse_failed(report: dict | None, source, allow_failed_check: bool) -> None:
    if report is not None and not report["passed"] and not allow_failed_check:
        raise FoxEdgeError(
            f"{source} failed its accuracy check ({'; '.join(report.get('failures', []))}); a failed model is bundled only with "
            "{allow_failed_check}, and its manifest then says so",
            ["allow_failed_check"],
        )


def _manifest(folder: Path, model: Path, source, target: str, settings: Target, context, chat_template, report, allowed, warn) -> dict:
    model_format = identify(model)
    files = model_format.files(model)
    with open_runner(model, n_ctx=context or settings.context, chat_template=chat_template) as runner:
        if not runner.chat_template:
            raise FoxEdgeError(f"{source} has no chat template, which an app needs to prompt it; pass {{chat_template}}", ["chat_template"])
        bos = runner.token_text(runner.bos_id) if runner.bos_id is not None else ""
        eos = runner.token_text(runner.eos_id) if runner.eos_id is not None else ""
        if problem := template_problem(runner.chat_template, bos, eos):
            raise TemplateRefused(f"{problem} (bundling {source})")
        memory = estimate_memory(
            weights_bytes=weights_bytes(model), shape=runner.shape, n_vocab=runner.n_vocab, n_ctx=runner.n_ctx,
            resident_weights_bytes=runner.resident_weights_bytes(),
        )  # fmt: skip
        memory["budget_bytes"] = settings.memory_budget
        if memory["total_bytes"] > settings.memory_budget:
            warn(
                f"the model needs about {memory['total_bytes'] / GIB:.2f} GiB at a {runner.n_ctx}-token context, over the "
                f"{settings.memory_budget / GIB:.0f} GiB budget for {target} ({settings.budget_source})"
            )
        precision = runner.precision_class
        defaults = SamplingParams()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model": {
                "name": runner.name or source,
                "source": source,
                "license": runner.license,
                "architecture": runner.metadata.get("general.architecture", "llama"),
            },
            "target": target,
            "format": {
                "name": model_format.name,
                "backend": runner.backend,
                "model_path": model.relative_to(folder).as_posix(),
                "precision": precision if precision in ("f16", "int8", "int6", "int5", "int4") else "f16",
                "quant_type": runner.quant_type,
                "runtime_options": {"n_threads": "performance cores", **RUNTIME_OPTIONS[model_format](settings)},
            },
            "files": [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)} for p in files],
            "tokenizer": {
                "bos_id": runner.bos_id,
                "eos_id": runner.eos_id,
                "add_bos": runner.add_bos,
                "stop_ids": sorted(runner.stop_ids),
                "vocab_size": runner.n_vocab,
            },
            "chat_template": runner.chat_template,
            "generation": {
                "temperature": defaults.temperature,
                "top_k": defaults.top_k,
                "top_p": defaults.top_p,
                "min_p": defaults.min_p,
                "repeat_penalty": defaults.repeat_penalty,
                "max_tokens": defaults.max_tokens,
            },  # fmt: skip
            "context": {"default": runner.n_ctx, "maximum": runner.n_ctx_train},
            "memory": memory,
            "accuracy": _accuracy(report, allowed),
            "verification": {"full": VERIFY_FULL, "every_launch": VERIFY_EVERY_LAUNCH},
            "made_by": {"fox_edge": __version__, **runtime_versions()},
        }
    return manifest


def _accuracy(report: dict | None, allowed: bool) -> dict:
    if report is None:
        return {"checked": False, "passed": None}
    keys = ("precision", "bars", "kld_mean", "top1_agreement", "ppl_ratio", "tokens_scored", "failures")
    accuracy = {"checked": True, "passed": report["passed"], **{k: report[k] for k in keys if k in report}}
    accuracy["reference"] = Path(report["reference"]).name
    accuracy["text"] = (
        "fox-edge's built-in evaluation text (Hamlet, Act I)" if report.get("text", "builtin") == "builtin" else report["text"]
    )
    if not report["passed"]:
        accuracy["bundled_despite_failure"] = allowed
    return accuracy


@cache
def runtime_versions() -> dict[str, str]:
    versions = {}
    for package in ("llama_cpp_python", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


GGUF_LOADING = {  # by `format.runtime_options.use_mmap`
    False: "read the file into memory (`format.runtime_options.use_mmap` false): llama.cpp repacks the weights for its CPU kernels, "
    "and a mapped file would keep its pages resident beside the repacked copy.",
    True: "map the file (`format.runtime_options.use_mmap` true).",
    None: "the runtime decides (`format.runtime_options.use_mmap` null): fox-edge reads the file into memory where llama.cpp "
    "repacks the weights for its CPU kernels, and maps it otherwise.",
}
LOADING = {GGUF: lambda options: GGUF_LOADING[options.get("use_mmap")], ONNX: lambda options: "ONNX Runtime maps the weights file."}


def _readme(manifest: dict, settings: Target) -> str:
    fmt, memory, accuracy = manifest["format"], manifest["memory"], manifest["accuracy"]
    if accuracy["checked"]:
        verdict = "PASS" if accuracy["passed"] else "FAIL (bundled with --allow-failed-check)"
        quality = (
            f"{verdict} against {accuracy['reference']}: mean KL divergence {accuracy['kld_mean']:.4f}, "
            f"top-1 agreement {accuracy['top1_agreement']:.1%}, perplexity ratio {accuracy['ppl_ratio']:.3f}"
        )
    else:
        quality = "not checked"
    return f"""# {manifest["model"]["name"]} for {manifest["target"]}

Made by fox-edge {manifest["made_by"]["fox_edge"]} from {manifest["model"]["source"]} (license: {manifest["model"]["license"]}).

- Model: `{fmt["model_path"]}`, {fmt["name"]} ({fmt["quant_type"]}), run by {fmt["backend"]}.
- Memory: about {memory["total_bytes"] / GIB:.2f} GiB at a {memory["at_context"]}-token context
  (weights {memory["weights_bytes"] / GIB:.2f} GiB, KV cache {memory["kv_cache_bytes"] / GIB:.2f} GiB); the budget for
  {manifest["target"]} is {settings.memory_budget / GIB:.0f} GiB ({settings.budget_source}).
- Accuracy: {quality}.
- Loading: {LOADING[by_name(fmt["name"])](fmt["runtime_options"])}
- Prompting: render `chat_template` (Jinja) from `manifest.json` with the conversation; stop on any of `tokenizer.stop_ids`;
  sampling defaults in `generation`.

Verifying: {VERIFY_FULL}; on every launch: {VERIFY_EVERY_LAUNCH}. `fox-edge bundle verify DIR` does both and loads the model.
"""


# --- verifying -------------------------------------------------------------------------------------


def verify_bundle(folder: str | os.PathLike[str]) -> list[Problem]:
    """Every problem of a bundle, one each: the manifest against the schema, every file's size and sha256, files the
    manifest does not list (warnings), the chat template, and, only when all that passed, that the model loads."""
    manifest, problems = manifest_problems(folder)
    if manifest is None or any(p.level == "error" for p in problems):
        return problems
    try:
        with open_runner(folder, n_ctx=manifest["context"]["default"]) as runner:
            if runner.n_vocab != manifest["tokenizer"]["vocab_size"]:
                problems.append(
                    Problem("error", f"the model has {runner.n_vocab} tokens, the manifest says {manifest['tokenizer']['vocab_size']}")
                )
    except FoxEdgeError as exc:
        problems.append(Problem("error", f"the model does not load: {exc}"))
    return problems
