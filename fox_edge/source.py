"""Model sources: a local Hugging Face folder or a hub id, checked before any work starts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fox_edge.errors import FoxEdgeError
from fox_edge.spec import SUPPORTED_ARCHITECTURES, LlamaShape

# What a conversion needs from a hub repository (weights, config, tokenizer); never pickles.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "consolidated.00.pth")


@dataclass
class Checkpoint:
    """A Hugging Face checkpoint folder whose config was read and whose files were found."""

    path: Path
    name: str
    config: dict
    shape: LlamaShape
    weight_files: list[Path]
    tokenizer_model: Path | None
    tokenizer_json: Path | None
    tokenizer_config: dict = field(default_factory=dict)
    generation_config: dict = field(default_factory=dict)
    hub_id: str | None = None


def resolve(source: str | os.PathLike[str], progress: bool = True) -> tuple[Path, str | None]:
    """Return (local folder, hub id or None). A hub id is downloaded into the normal Hugging Face cache."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FoxEdgeError(
                f"{path} is a file; give a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files) or a hub id"
            )
        return path, None
    text = str(source)
    if not is_hub_id(text):
        raise FoxEdgeError(f"no such folder: {text}; give a Hugging Face checkpoint folder or a hub id like tensoropera/Fox-1-1.6B")
    return _download(text, progress), text


def is_hub_id(text: str) -> bool:
    """Whether `text` reads as a hub id (owner/name) rather than a local path."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def _download(repo_id: str, progress: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise FoxEdgeError(
            f"cannot download {repo_id}: the hub is unreachable and it is not in the Hugging Face cache; "
            "connect to the internet once, or pass a local checkpoint folder"
        ) from None
    except RepositoryNotFoundError:
        raise FoxEdgeError(f"hub repository {repo_id} does not exist or needs a login (huggingface-cli login)") from None
    except (HfHubHTTPError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FoxEdgeError(f"cannot download {repo_id}: {first_line}; check the connection or pass a local folder") from None


def read_shape(config: dict) -> LlamaShape:
    """Llama hyper-parameters from config.json, in both the transformers 4 and 5 layouts."""
    rope_theta = config.get("rope_theta")
    if rope_theta is None:  # transformers 5 nests it
        rope_theta = (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    rope_scaling = config.get("rope_scaling") or (config.get("rope_parameters") or {})
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in ("default", None):
        raise FoxEdgeError(f"RoPE scaling '{rope_type}' is not supported yet; fox-edge converts models with plain RoPE")
    try:
        n_heads = int(config["num_attention_heads"])
        return LlamaShape(
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            n_layers=int(config["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            vocab_size=int(config["vocab_size"]),
            context_length=int(config.get("max_position_embeddings", 2048)),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim"),
        )
    except KeyError as exc:
        raise FoxEdgeError(f"config.json lacks {exc.args[0]}; is this a complete Llama checkpoint?") from None


def read_json(path: Path, fix: str = "re-download the checkpoint") -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FoxEdgeError(f"{path} is not valid JSON ({exc}); {fix}") from None


def open_checkpoint(source: str | os.PathLike[str], progress: bool = True, weights: bool = True) -> Checkpoint:
    """Resolve `source`, check it is a Llama-architecture safetensors checkpoint with a tokenizer, and describe it."""
    path, hub_id = resolve(source, progress)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FoxEdgeError(f"{path} has no config.json; give a Hugging Face checkpoint folder")
    config = read_json(config_path)
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures) or config.get("model_type", "llama") != "llama":
        raise FoxEdgeError(
            f"{path} is a {'/'.join(architectures)} (model_type {config.get('model_type')!r}) checkpoint; "
            f"fox-edge converts {', '.join(SUPPORTED_ARCHITECTURES)} models such as Fox-1"
        )
    shape = read_shape(config)

    weight_files = _weight_files(path) if weights else []
    tokenizer_model = path / "tokenizer.model"
    tokenizer_json = path / "tokenizer.json"
    if not tokenizer_model.is_file() and not tokenizer_json.is_file():
        raise FoxEdgeError(f"{path} has no tokenizer (tokenizer.model or tokenizer.json); copy the tokenizer files from the original model")
    tokenizer_config_path = path / "tokenizer_config.json"
    generation_config_path = path / "generation_config.json"
    return Checkpoint(
        path=path,
        name=hub_id or path.resolve().name,
        config=config,
        shape=shape,
        weight_files=weight_files,
        tokenizer_model=tokenizer_model if tokenizer_model.is_file() else None,
        tokenizer_json=tokenizer_json if tokenizer_json.is_file() else None,
        tokenizer_config=read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {},
        generation_config=read_json(generation_config_path) if generation_config_path.is_file() else {},
        hub_id=hub_id,
    )


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FoxEdgeError(f"{path} lacks {', '.join(missing)} named in model.safetensors.index.json; re-download the checkpoint")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = [p.name for p in path.iterdir() if p.name in PICKLE_WEIGHTS or p.suffix in (".bin", ".pth", ".pt")]
    if pickles:
        raise FoxEdgeError(
            f"{path} holds pickle weights ({', '.join(sorted(pickles))}), which can run code when loaded; "
            "fox-edge reads only .safetensors: convert them with transformers' save_pretrained(safe_serialization=True)"
        )
    raise FoxEdgeError(f"{path} has no *.safetensors weights; give a complete Hugging Face checkpoint folder")
