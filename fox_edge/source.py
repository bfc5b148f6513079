"""Model sources: a local Hugging Face folder or a hub id, checked before any work starts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fox_edge.errors import DamagedModel, FoxEdgeError, ModelNotFound, UnsupportedModel
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
        raise ModelNotFound(f"no such folder: {text}; give a Hugging Face checkpoint folder or a hub id like tensoropera/Fox-1-1.6B")
    return _download(text, progress), text


def local_folder(source: str | os.PathLike[str]) -> Path | None:
    """The folder `source` names on this machine, or None for a hub id (its snapshot lives in the hub cache)."""
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def is_hub_id(text: str) -> bool:
    """Whether `text` reads as a hub id (owner/name) rather than a local path: `models/fox1.gguf` is a missing file."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.lower().endswith(FILE_SUFFIXES)


FILE_SUFFIXES = (".gguf", ".onnx", ".ort", ".json", ".safetensors", ".bin", ".txt", ".jsonl")


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
        raise ModelNotFound(f"hub repository {repo_id} does not exist or needs a login (huggingface-cli login)") from None
    except (HfHubHTTPError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FoxEdgeError(f"cannot download {repo_id}: {first_line}; check the connection or pass a local folder") from None


# config.json's integers: (key, highest accepted). The ceilings are far above any real Llama model and keep one
# absurd number (a vocab_size of 10**12, say) from allocating the machine away before anything is read.
CONFIG_INTEGERS = {
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1 << 10,
    "num_attention_heads": 1 << 10,
    "num_key_value_heads": 1 << 10,
    "vocab_size": 1 << 21,
    "max_position_embeddings": 1 << 21,
    "head_dim": 1 << 12,
}
FIX_CONFIG = "fix config.json or re-download the checkpoint"


def _config_int(config: dict, key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise DamagedModel(f"config.json lacks {key}; is this a complete Llama checkpoint?")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise DamagedModel(f"config.json: {key} is {value!r}, not a whole number; {FIX_CONFIG}")
    if not 1 <= value <= CONFIG_INTEGERS[key]:
        raise DamagedModel(f"config.json: {key} is {value}, outside 1..{CONFIG_INTEGERS[key]:,}; {FIX_CONFIG}")
    return int(value)


def _config_float(config: dict, key: str, value, highest: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= highest:
        raise DamagedModel(f"config.json: {key} is {value!r}, not a number in (0, {highest:g}]; {FIX_CONFIG}")
    return float(value)


def read_shape(config: dict) -> LlamaShape:
    """Llama hyper-parameters from config.json (transformers 4 and 5 layouts), typed and ranged, or one clear error."""
    rope_theta = config.get("rope_theta")
    if rope_theta is None:  # transformers 5 nests it
        rope_theta = (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    rope_scaling = config.get("rope_scaling") or (config.get("rope_parameters") or {})
    if not isinstance(rope_scaling, dict):
        raise DamagedModel(f"config.json: rope_scaling is {rope_scaling!r}, not an object; {FIX_CONFIG}")
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in ("default", None):
        raise UnsupportedModel(f"RoPE scaling '{rope_type}' is not supported yet; fox-edge converts models with plain RoPE")
    n_heads = _config_int(config, "num_attention_heads")
    n_kv_heads = _config_int(config, "num_key_value_heads", n_heads)
    hidden_size = _config_int(config, "hidden_size")
    head_dim = _config_int(config, "head_dim") if config.get("head_dim") is not None else None
    if n_heads % n_kv_heads:
        raise DamagedModel(f"config.json: {n_heads} attention heads are not a multiple of {n_kv_heads} key/value heads; {FIX_CONFIG}")
    if head_dim is None and hidden_size % n_heads:
        raise DamagedModel(f"config.json: hidden_size {hidden_size} is not a multiple of {n_heads} attention heads; {FIX_CONFIG}")
    shape = LlamaShape(
        hidden_size=hidden_size,
        intermediate_size=_config_int(config, "intermediate_size"),
        n_layers=_config_int(config, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=_config_int(config, "vocab_size"),
        context_length=_config_int(config, "max_position_embeddings", 2048),
        rope_theta=_config_float(config, "rope_theta", rope_theta, 1e12),
        rms_norm_eps=_config_float(config, "rms_norm_eps", config.get("rms_norm_eps", 1e-6), 1.0),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=head_dim,
    )
    if shape.head_size % 2:
        raise DamagedModel(f"config.json: the head size {shape.head_size} is odd; rotary embeddings need an even one; {FIX_CONFIG}")
    return shape


def read_json(path: Path, fix: str = "re-download the checkpoint") -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FoxEdgeError(f"{path} is not valid JSON ({str(exc)[:200]}); {fix}") from None
    if not isinstance(data, dict):
        raise FoxEdgeError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def open_checkpoint(source: str | os.PathLike[str], progress: bool = True, weights: bool = True) -> Checkpoint:
    """Resolve `source`, check it is a Llama-architecture safetensors checkpoint with a tokenizer, and describe it."""
    path, hub_id = resolve(source, progress)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FoxEdgeError(f"{path} has no config.json; give a Hugging Face checkpoint folder")
    # Everything read must lie inside the checkpoint: the folder itself, or for a hub snapshot (whose files link
    # into the repository's blob store) the repository's cache folder.
    root = path.resolve().parents[1] if hub_id else path.resolve()
    for file in (
        config_path,
        path / "tokenizer.model",
        path / "tokenizer.json",
        path / "tokenizer_config.json",
        path / "generation_config.json",
    ):
        if file.exists() or file.is_symlink():
            contained(file, root)
    config = read_json(config_path)
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    architectures = [str(a) for a in architectures] if isinstance(architectures, list) else [str(architectures)]
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures) or config.get("model_type", "llama") != "llama":
        raise UnsupportedModel(
            f"{path} is a {'/'.join(architectures)} (model_type {config.get('model_type')!r}) checkpoint; "
            f"fox-edge converts {', '.join(SUPPORTED_ARCHITECTURES)} models such as Fox-1"
        )
    shape = read_shape(config)

    weight_files = [contained(f, root) for f in _weight_files(path)] if weights else []
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


def contained(file: Path, root: Path) -> Path:
    """`file` if it (links resolved) lies inside `root`; a model never makes fox-edge read outside its own folder."""
    if not file.resolve().is_relative_to(root):
        raise FoxEdgeError(f"{file} leads outside the model folder {root} (to {file.resolve()}); copy the file into the folder itself")
    return file


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(n, str) for n in weight_map.values()):
            raise FoxEdgeError(f"{index} has no weight_map of file names; re-download the checkpoint")
        names = sorted(set(weight_map.values()))
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
