"""What a GGUF file or a checkpoint holds, as (label, value) rows for `fox-edge info`."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from fox_edge.backends.onnx import read_genai_config
from fox_edge.errors import FoxEdgeError
from fox_edge.formats import BUNDLE, CHECKPOINT, GGUF, ONNX, ONNX_MODEL, ONNX_REWRITE, identify, onnx_folder, open_gguf
from fox_edge.source import is_hub_id, read_json

SPECIAL_KEYS = ("bos", "eos", "eot", "unknown", "padding")


def _human(n: float, unit: str = "B") -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.3g} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n} {unit}"


def describe(target: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """A GGUF file, an ONNX folder, a checkpoint folder or a hub id (downloaded if not cached)."""
    if not Path(target).exists() and is_hub_id(str(target)):
        return describe_checkpoint(target)
    model_format = identify(target)
    describer = {GGUF: describe_gguf, ONNX: describe_onnx, BUNDLE: describe_bundle, CHECKPOINT: describe_checkpoint}[model_format]
    return describer(Path(target))


def describe_gguf(path: Path) -> list[tuple[str, str]]:
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
            specials.append(f"{key} {token_id} {text!r}")
    template = field("tokenizer.chat_template")
    rows = [
        ("file", f"{path} ({_human(path.stat().st_size)})"),
        ("name", str(field("general.name", "-"))),
        ("architecture", arch),
        ("parameters", f"{n_params:,} ({_human(n_params, '')})"),
        (
            "layers / heads / kv heads",
            f"{field(arch + '.block_count')} / {field(arch + '.attention.head_count')} / {field(arch + '.attention.head_count_kv')}",
        ),
        ("hidden / feed-forward", f"{field(arch + '.embedding_length')} / {field(arch + '.feed_forward_length')}"),
        ("context length", str(field(arch + ".context_length"))),
        ("tied embeddings", "yes" if not any(t.name == "output.weight" for t in reader.tensors) else "no"),
    ]
    rows += [
        (f"tensors {name}", f"{n} tensors, {_human(elements, '')} weights, {_human(size)}")
        for name, (n, elements, size) in sorted(by_type.items())
    ]
    rows += [
        (
            "tokenizer",
            f"{field('tokenizer.ggml.model')} ({field('tokenizer.ggml.pre', '-')}), {n_tokens} tokens, add_space_prefix {field('tokenizer.ggml.add_space_prefix', '-')}",
        ),
        ("special tokens", ", ".join(specials) or "-"),
        ("chat template", f"present ({len(template)} chars)" if template else "absent"),
        ("license", str(field("general.license", "-"))),
        ("source", str(field("general.source.url") or field("general.source.path") or "-")),
    ]
    return rows + accuracy_rows(path)


def describe_onnx(path: Path) -> list[tuple[str, str]]:
    """An ONNX folder: its graph's operators, initializers by type, genai_config.json and tokenizer files."""
    import onnx

    folder = onnx_folder(path)
    genai = read_genai_config(folder)
    model_file = folder / ONNX_MODEL
    try:
        model = onnx.load(model_file, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and OSError
        raise FoxEdgeError(
            f"{model_file} is truncated or corrupt ({type(exc).__name__}); re-create the folder with `fox-edge convert --to onnx`"
        ) from None
    decoder = genai["decoder"]
    meta = {p.key: p.value for p in model.metadata_props}
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    spans = set()
    for tensor in model.graph.initializer:
        entries = {e.key: e.value for e in tensor.external_data}
        if "offset" in entries and (entries["offset"], entries.get("length")) in spans:
            continue  # a second view of bytes already counted (the embedding's scales)
        spans.add((entries.get("offset"), entries.get("length")))
        row = by_type[onnx.TensorProto.DataType.Name(tensor.data_type)]
        row[0] += 1
        row[1] += int(entries.get("length", len(tensor.raw_data)))
    ops = defaultdict(int)
    for node in model.graph.node:
        ops[node.op_type] += 1
    files = sorted(f.name for f in folder.iterdir() if f.is_file())
    size = sum((folder / f).stat().st_size for f in files)
    tokenizer_config = read_json(folder / "tokenizer_config.json", ONNX_REWRITE) if (folder / "tokenizer_config.json").is_file() else {}
    eos = genai.get("eos_token_id")
    rows = [
        ("folder", f"{folder} ({_human(size)}: {', '.join(files)})"),
        ("name", meta.get("general.name", "-")),
        ("format", f"ONNX (opset {max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}), {genai.get('type', '?')}"),
        ("precision", f"{meta.get('fox_edge.precision', '?')}: {meta.get('fox_edge.weights', '-')}"),
    ]
    if meta.get("fox_edge.block_size"):
        rows.append(
            (
                "  blocks",
                f"{meta['fox_edge.block_size']} weights, {'symmetric' if meta.get('fox_edge.symmetric') == 'true' else 'asymmetric'}, "
                f"accuracy_level {meta.get('fox_edge.accuracy_level')}, embedding {meta.get('fox_edge.embedding_bits')}-bit",
            )
        )
    rows += [
        (
            "layers / heads / kv heads",
            f"{decoder['num_hidden_layers']} / {decoder['num_attention_heads']} / {decoder['num_key_value_heads']}",
        ),
        ("hidden / head size", f"{decoder['hidden_size']} / {decoder['head_size']}"),
        ("context length", str(genai.get("context_length"))),
        ("operators", ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda item: -item[1]))),
    ]
    rows += [(f"initializers {name}", f"{n}, {_human(nbytes)}") for name, (n, nbytes) in sorted(by_type.items())]
    rows += [
        ("special tokens", f"bos {genai.get('bos_token_id')}, eos {eos}, pad {genai.get('pad_token_id')}"),
        (
            "chat template",
            f"present ({len(tokenizer_config['chat_template'])} chars)" if tokenizer_config.get("chat_template") else "absent",
        ),
        ("threads (genai_config)", str(decoder.get("session_options", {}).get("intra_op_num_threads", "onnxruntime-genai's default"))),
        ("source", meta.get("general.source", "-")),
    ]
    return rows + accuracy_rows(folder)


def describe_bundle(folder: Path) -> list[tuple[str, str]]:
    """A bundle: its manifest (cheaply checked: schema and sizes), then the model inside it."""
    from fox_edge.manifest import read_manifest

    manifest = read_manifest(folder)
    fmt, memory, accuracy = manifest["format"], manifest["memory"], manifest["accuracy"]
    verdict = "not checked"
    if accuracy["checked"]:
        verdict = (
            f"{'PASS' if accuracy['passed'] else 'FAIL'} against {accuracy.get('reference', '?')}, mean KLD {accuracy['kld_mean']:.5f}"
        )
    rows = [
        ("bundle", f"{folder} (schema {manifest['schema_version']}, target {manifest.get('target', '-')})"),
        ("model file", f"{fmt['model_path']}: {fmt['name']} {fmt['quant_type']} on {fmt['backend']}"),
        ("files", f"{len(manifest['files'])} listed with size and sha256, {_human(sum(f['size'] for f in manifest['files']))}"),
        ("context", f"{manifest['context']['default']} by default, {manifest['context']['maximum']} at most"),
        ("memory estimate", f"{_human(memory['total_bytes'])} at {memory['at_context']} tokens"),
        ("stop ids", ", ".join(str(t) for t in manifest["tokenizer"]["stop_ids"])),
        ("bundled accuracy", verdict),
    ]
    return rows + describe(folder / fmt["model_path"])


def accuracy_rows(model: Path) -> list[tuple[str, str]]:
    """The stored `fox-edge check` report of a model, if any."""
    from fox_edge.check import load_report, sidecar_path

    report = load_report(model)
    if report is None:
        return [("accuracy check", "none stored (run `fox-edge check` or `fox-edge quantize`)")]
    verdict = "PASS" if report["passed"] else "FAIL"
    return [
        (
            "accuracy check",
            f"{verdict} ({report['precision']} bars) against {Path(report['reference']).name} on {report['tokens_scored']} tokens",
        ),
        ("  mean KLD / top-1 / PPL ratio", f"{report['kld_mean']:.5f} / {report['top1_agreement']:.2%} / {report['ppl_ratio']:.4f}"),
        ("  report", str(sidecar_path(model))),
    ]


def describe_checkpoint(source: str | os.PathLike[str]) -> list[tuple[str, str]]:
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
    rows = [
        ("checkpoint", str(checkpoint.path)),
        ("architecture", ", ".join(checkpoint.config.get("architectures", []))),
        ("parameters", f"{n_params:,} ({_human(n_params, '')}), stored as {'/'.join(dtypes)} in {len(checkpoint.weight_files)} file(s)"),
        ("layers / heads / kv heads", f"{shape.n_layers} / {shape.n_heads} / {shape.n_kv_heads} (head_dim {shape.head_size})"),
        ("hidden / feed-forward", f"{shape.hidden_size} / {shape.intermediate_size}"),
        ("context length", str(shape.context_length)),
        ("tied embeddings", "yes" if shape.tie_word_embeddings else "no"),
        ("tokenizer", f"{vocab.model} from {vocab.source}, {len(vocab.tokens)} tokens, add_space_prefix {vocab.add_space_prefix}"),
        ("special tokens", ", ".join(f"{k} {v} {vocab.tokens[v]!r}" for k, v in vocab.special_ids.items())),
        ("chat template", "present" if vocab.chat_template_source == "checkpoint" else vocab.chat_template_source),
    ]
    rows += [("warning", w.removeprefix("warning: ")) for w in warnings]
    return rows
