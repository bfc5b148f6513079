"""What a GGUF file, an ONNX folder, a bundle or a checkpoint holds, as facts for `fox-edge info`: each with a label
and text for people, and a stable snake_case key and a plain value (numbers as numbers) for `--json`."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fox_edge.backends.onnx import read_genai_config
from fox_edge.formats import BUNDLE, CHECKPOINT, GGUF, ONNX, ONNX_MODEL, ONNX_REWRITE, identify, onnx_folder, onnx_inventory, open_gguf
from fox_edge.source import is_hub_id, read_json

SPECIAL_KEYS = ("bos", "eos", "eot", "unknown", "padding")


def _human(n: float, unit: str = "B") -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.3g} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n} {unit}"


@dataclass(frozen=True)
class Fact:
    key: str  # --json's key; facts sharing a key (one per tensor type, say) merge into one object
    label: str
    text: str
    value: object  # --json's value


def fact(key: str, label: str, text: str, value: object = None) -> Fact:
    return Fact(key, label, text, text if value is None else value)


def as_json(facts: list[Fact]) -> dict:
    merged: dict = {}
    for f in facts:
        if isinstance(f.value, dict) and isinstance(merged.get(f.key), dict):
            merged[f.key] |= f.value
        elif f.key in merged and f.key == "warnings":
            merged[f.key] += f.value
        else:
            merged[f.key] = f.value
    return merged


def describe(target: str | os.PathLike[str]) -> list[Fact]:
    """A GGUF file, an ONNX folder, a checkpoint folder or a hub id (downloaded if not cached)."""
    if not Path(target).exists() and is_hub_id(str(target)):
        return describe_checkpoint(target)
    model_format = identify(target)
    describer = {GGUF: describe_gguf, ONNX: describe_onnx, BUNDLE: describe_bundle, CHECKPOINT: describe_checkpoint}[model_format]
    return describer(Path(target))


def describe_gguf(path: Path) -> list[Fact]:
    reader = open_gguf(path)

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture", "?")
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    n_params = 0
    for t in reader.tensors:
        row = by_type[t.tensor_type.name]
        row[0] += 1
        row[1] += int(t.n_elements)
        row[2] += int(t.n_bytes)
        n_params += int(t.n_elements)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else 0
    specials = []
    for key in SPECIAL_KEYS:
        token_id = field(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            text = tokens.contents(token_id) if tokens is not None and token_id < n_tokens else "?"
            specials.append((f"{key} {token_id} {text!r}", (key, {"id": token_id, "text": text})))
    template = field("tokenizer.chat_template")
    layers, heads, kv_heads = (field(f"{arch}.{k}") for k in ("block_count", "attention.head_count", "attention.head_count_kv"))
    hidden, feed_forward = field(f"{arch}.embedding_length"), field(f"{arch}.feed_forward_length")
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    tokenizer_model, pre, space = field("tokenizer.ggml.model"), field("tokenizer.ggml.pre"), field("tokenizer.ggml.add_space_prefix")
    facts = [
        fact("file", "file", f"{path} ({_human(path.stat().st_size)})", {"path": str(path), "bytes": path.stat().st_size}),
        fact("name", "name", str(field("general.name", "-")), field("general.name")),
        fact("format", "format", "GGUF", "gguf"),
        fact("architecture", "architecture", arch),
        fact("parameters", "parameters", f"{n_params:,} ({_human(n_params, '')})", n_params),
        fact("shape", "layers / heads / kv heads", f"{layers} / {heads} / {kv_heads}",
             {"layers": layers, "heads": heads, "kv_heads": kv_heads, "hidden_size": hidden, "feed_forward_size": feed_forward}),
        fact("shape", "hidden / feed-forward", f"{hidden} / {feed_forward}", {}),
        fact("context_length", "context length", str(field(arch + ".context_length")), field(arch + ".context_length")),
        fact("tied_embeddings", "tied embeddings", "yes" if tied else "no", tied),
    ]  # fmt: skip
    facts += [
        fact("tensors", f"tensors {name}", f"{n} tensors, {_human(elements, '')} weights, {_human(size)}",
             {name: {"tensors": n, "weights": elements, "bytes": size}})
        for name, (n, elements, size) in sorted(by_type.items())
    ]  # fmt: skip
    facts += [
        fact("tokenizer", "tokenizer", f"{tokenizer_model} ({pre or '-'}), {n_tokens} tokens, add_space_prefix {'-' if space is None else space}",
             {"model": tokenizer_model, "pre": pre, "tokens": n_tokens, "add_space_prefix": space}),
        fact("special_tokens", "special tokens", ", ".join(text for text, _ in specials) or "-", dict(value for _, value in specials)),
        fact("chat_template", "chat template", f"present ({len(template)} chars)" if template else "absent", template),
        fact("license", "license", str(field("general.license", "-")), field("general.license")),
        fact("source", "source", str(field("general.source.url") or field("general.source.path") or "-"),
             field("general.source.url") or field("general.source.path")),
    ]  # fmt: skip
    return facts + accuracy_facts(path)


def describe_onnx(path: Path) -> list[Fact]:
    """An ONNX folder: its graph's operators, initializers by type, genai_config.json and tokenizer files."""
    import onnx

    from fox_edge.converters.onnx_plan import OnnxPlan

    folder = onnx_folder(path)
    genai = read_genai_config(folder)
    inventory = onnx_inventory(folder / ONNX_MODEL)
    decoder = genai["decoder"]
    meta = inventory.metadata
    ops = inventory.op_counts
    files = sorted(f.name for f in folder.iterdir() if f.is_file())
    size = sum((folder / f).stat().st_size for f in files)
    tokenizer_config = read_json(folder / "tokenizer_config.json", ONNX_REWRITE) if (folder / "tokenizer_config.json").is_file() else {}
    eos = genai.get("eos_token_id")
    opset = inventory.opset
    template = tokenizer_config.get("chat_template")
    threads = decoder.get("session_options", {}).get("intra_op_num_threads")
    plan = OnnxPlan.from_metadata(meta)
    facts = [
        fact("folder", "folder", f"{folder} ({_human(size)}: {', '.join(files)})", {"path": str(folder), "bytes": size, "files": files}),
        fact("name", "name", meta.get("general.name", "-"), meta.get("general.name")),
        fact("format", "format", f"ONNX (opset {opset}), {genai.get('type', '?')}", {"name": "onnx", "opset": opset, "model_type": genai.get("type")}),
        fact("precision", "precision", f"{plan.precision if plan else '?'}: {plan.weights if plan else '-'}",
             {"name": plan.precision if plan else None, "weights": plan.weights if plan else None}),
    ]  # fmt: skip
    if plan is not None and plan.matrices is not None and plan.embedding is not None:
        blocks, embedding = plan.matrices, plan.embedding
        facts.append(
            fact("blocks", "  blocks",
                 f"{blocks.block_size} weights, {'symmetric' if blocks.symmetric else 'asymmetric'}{' with block offsets' if plan.block_offsets else ''}, "
                 f"accuracy_level {plan.accuracy_level}, embedding {embedding.bits}-bit in blocks of {embedding.block_size}",
                 {"block_size": blocks.block_size, "symmetric": blocks.symmetric, "block_offsets": plan.block_offsets,
                  "accuracy_level": plan.accuracy_level, "embedding_bits": embedding.bits, "embedding_block_size": embedding.block_size})
        )  # fmt: skip
    facts += [
        fact("shape", "layers / heads / kv heads",
             f"{decoder['num_hidden_layers']} / {decoder['num_attention_heads']} / {decoder['num_key_value_heads']}",
             {"layers": decoder["num_hidden_layers"], "heads": decoder["num_attention_heads"], "kv_heads": decoder["num_key_value_heads"],
              "hidden_size": decoder["hidden_size"], "head_size": decoder["head_size"]}),
        fact("shape", "hidden / head size", f"{decoder['hidden_size']} / {decoder['head_size']}", {}),
        fact("context_length", "context length", str(genai.get("context_length")), genai.get("context_length")),
        fact("operators", "operators", ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda item: -item[1])), dict(ops)),
    ]  # fmt: skip
    facts += [
        fact("initializers", f"initializers {name}", f"{n}, {_human(nbytes)}", {name: {"count": n, "bytes": nbytes}})
        for name, (n, nbytes) in sorted((onnx.TensorProto.DataType.Name(t), totals) for t, totals in inventory.by_type().items())
    ]
    facts += [
        fact("special_tokens", "special tokens", f"bos {genai.get('bos_token_id')}, eos {eos}, pad {genai.get('pad_token_id')}",
             {"bos": genai.get("bos_token_id"), "eos": eos, "pad": genai.get("pad_token_id")}),
        fact("chat_template", "chat template", f"present ({len(template)} chars)" if template else "absent", template),
        fact("threads", "threads (genai_config)", str(threads or "onnxruntime-genai's default"), threads),
        fact("source", "source", meta.get("general.source", "-"), meta.get("general.source")),
    ]  # fmt: skip
    return facts + accuracy_facts(folder)


def describe_bundle(folder: Path) -> list[Fact]:
    """A bundle: its manifest (cheaply checked: schema and sizes), then the model inside it."""
    from fox_edge.manifest import read_manifest

    manifest = read_manifest(folder)
    fmt, memory, accuracy = manifest["format"], manifest["memory"], manifest["accuracy"]
    verdict = "not checked"
    if accuracy["checked"]:
        verdict = (
            f"{'PASS' if accuracy['passed'] else 'FAIL'} against {accuracy.get('reference', '?')}, mean KLD {accuracy['kld_mean']:.5f}"
        )
    files_bytes = sum(f["size"] for f in manifest["files"])
    facts = [
        fact("bundle", "bundle", f"{folder} (schema {manifest['schema_version']}, target {manifest.get('target', '-')})",
             {"path": str(folder), "schema_version": manifest["schema_version"], "target": manifest.get("target"),
              "model_path": fmt["model_path"], "format": fmt["name"], "quant_type": fmt["quant_type"], "backend": fmt["backend"],
              "files": len(manifest["files"]), "files_bytes": files_bytes, "context_default": manifest["context"]["default"],
              "context_maximum": manifest["context"]["maximum"], "memory_estimate_bytes": memory["total_bytes"],
              "memory_at_context": memory["at_context"], "stop_ids": manifest["tokenizer"]["stop_ids"], "accuracy": accuracy}),
        fact("bundle", "model file", f"{fmt['model_path']}: {fmt['name']} {fmt['quant_type']} on {fmt['backend']}", {}),
        fact("bundle", "files", f"{len(manifest['files'])} listed with size and sha256, {_human(files_bytes)}", {}),
        fact("bundle", "context", f"{manifest['context']['default']} by default, {manifest['context']['maximum']} at most", {}),
        fact("bundle", "memory estimate", f"{_human(memory['total_bytes'])} at {memory['at_context']} tokens", {}),
        fact("bundle", "stop ids", ", ".join(str(t) for t in manifest["tokenizer"]["stop_ids"]), {}),
        fact("bundle", "bundled accuracy", verdict, {}),
    ]  # fmt: skip
    return facts + describe(folder / fmt["model_path"])


def accuracy_facts(model: Path) -> list[Fact]:
    """The stored `fox-edge check` report of a model, if any."""
    from fox_edge.check import load_report, sidecar_path

    report = load_report(model)
    if report is None:
        return [fact("accuracy_check", "accuracy check", "none stored (run `fox-edge check` or `fox-edge quantize`)", None)]
    verdict = "PASS" if report["passed"] else "FAIL"
    value = {k: report[k] for k in ("passed", "precision", "reference", "tokens_scored", "kld_mean", "top1_agreement", "ppl_ratio")}
    return [
        fact("accuracy_check", "accuracy check",
             f"{verdict} ({report['precision']} bars) against {Path(report['reference']).name} on {report['tokens_scored']} tokens",
             value | {"report": str(sidecar_path(model))}),
        fact("accuracy_check", "  mean KLD / top-1 / PPL ratio",
             f"{report['kld_mean']:.5f} / {report['top1_agreement']:.2%} / {report['ppl_ratio']:.4f}", {}),
        fact("accuracy_check", "  report", str(sidecar_path(model)), {}),
    ]  # fmt: skip


def describe_checkpoint(source: str | os.PathLike[str]) -> list[Fact]:
    from fox_edge.source import open_checkpoint
    from fox_edge.tokenizer import read_vocab
    from fox_edge.weights import SafetensorsWeights

    checkpoint = open_checkpoint(source)
    warnings: list[str] = []
    vocab = read_vocab(checkpoint, warnings.append)
    weights = SafetensorsWeights(checkpoint.weight_files)
    n_params = sum(ref.n_elements for ref in weights.refs.values())
    dtypes = sorted({ref.dtype for ref in weights.refs.values()})
    shape = checkpoint.shape
    facts = [
        fact("checkpoint", "checkpoint", str(checkpoint.path)),
        fact("architecture", "architecture", ", ".join(checkpoint.config.get("architectures", [])), checkpoint.config.get("architectures", [])),
        fact("parameters", "parameters", f"{n_params:,} ({_human(n_params, '')}), stored as {'/'.join(dtypes)} in {len(checkpoint.weight_files)} file(s)", n_params),
        fact("shape", "layers / heads / kv heads", f"{shape.n_layers} / {shape.n_heads} / {shape.n_kv_heads} (head_dim {shape.head_size})",
             {"layers": shape.n_layers, "heads": shape.n_heads, "kv_heads": shape.n_kv_heads, "head_size": shape.head_size,
              "hidden_size": shape.hidden_size, "feed_forward_size": shape.intermediate_size}),
        fact("shape", "hidden / feed-forward", f"{shape.hidden_size} / {shape.intermediate_size}", {}),
        fact("context_length", "context length", str(shape.context_length), shape.context_length),
        fact("tied_embeddings", "tied embeddings", "yes" if shape.tie_word_embeddings else "no", bool(shape.tie_word_embeddings)),
        fact("tokenizer", "tokenizer", f"{vocab.model} from {vocab.source}, {len(vocab.tokens)} tokens, add_space_prefix {vocab.add_space_prefix}",
             {"model": vocab.model, "source": vocab.source, "tokens": len(vocab.tokens), "add_space_prefix": vocab.add_space_prefix}),
        fact("special_tokens", "special tokens", ", ".join(f"{k} {v} {vocab.tokens[v]!r}" for k, v in vocab.special_ids.items()),
             {k: {"id": v, "text": vocab.tokens[v]} for k, v in vocab.special_ids.items()}),
        fact("chat_template", "chat template", "present" if vocab.chat_template_source == "checkpoint" else vocab.chat_template_source),
    ]  # fmt: skip
    facts += [fact("warnings", "warning", w.removeprefix("warning: "), [w.removeprefix("warning: ")]) for w in warnings]
    return facts
