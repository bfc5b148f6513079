"""A checkpoint's tokenizer, read from its files into the form llama.cpp's GGUF vocabulary takes.

Two tokenizer families are handled, each from the file that defines it best:
- SentencePiece ("llama" in GGUF), from tokenizer.model, or from tokenizer.json when it is a BPE model with
  byte fallback (the Hugging Face form of a SentencePiece BPE model: Gemma's, hence Fox-1's, ships both);
- byte-level BPE ("gpt2" in GGUF), from tokenizer.json.
Special ids come from the tokenizer files; config.json disagreeing is reported, never silently followed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from fox_edge.errors import DamagedModel, FoxEdgeError
from fox_edge.hooks import OnMessage, ignore_message
from fox_edge.source import Checkpoint
from fox_edge.spec import END_OF_TURN_TOKENS, FOX1_CHAT_TEMPLATE, is_fox1_vocab
from fox_edge.template import template_problem

# GGUF / SentencePiece token types (the numbers are the same in both).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# Byte-level BPE pre-tokenizers: tokenizer.json's steps (as _bpe_pre_tokenizer spells them) <-> llama.cpp's name.
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BPE_PRE_TOKENIZERS = {
    "ByteLevel": ("gpt2", {**BYTE_LEVEL}),
    "Digits(individual)+ByteLevel": (
        "smollm",
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
    ),
}


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    scores: list[float]
    types: list[int]
    source: str  # the file it was read from
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    end_of_turn_ids: list[int] = field(default_factory=list)
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    add_bos: bool = True
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None
    chat_template_source: str = "none"  # "checkpoint", "fox-1 fallback" or "none"


def read_vocab(checkpoint: Checkpoint, on_message: OnMessage = ignore_message, *, chat_template: str | None = None) -> Vocab:
    """The checkpoint's vocabulary, special ids and chat template (`chat_template`, when given, replaces the checkpoint's)."""
    if checkpoint.tokenizer_model is not None:
        vocab = _from_sentencepiece(checkpoint, on_message)
    else:
        vocab = _from_tokenizer_json(checkpoint, on_message)
    _apply_added_tokens(vocab, checkpoint.tokenizer_config, checkpoint.shape.vocab_size)
    _pad_to(vocab, checkpoint.shape.vocab_size)
    _resolve_special_ids(vocab, checkpoint, on_message)
    _resolve_chat_template(vocab, checkpoint, on_message, chat_template)
    if vocab.chat_template is not None:
        bos, eos = (vocab.tokens[vocab.special_ids[k]] if k in vocab.special_ids else "" for k in ("bos", "eos"))
        if problem := template_problem(vocab.chat_template, bos, eos):
            on_message(f"warning: {problem}; it is written into the model as it is, and chat refuses it until replaced")
    if vocab.model == "llama":
        # llama.cpp matches user-defined tokens against the raw text, before it maps spaces to U+2581, and
        # prints them verbatim. Hugging Face reaches Gemma's U+2581-run tokens (spaces) through merges and
        # decodes them to spaces: as normal tokens they behave the same in llama.cpp, for any run length.
        vocab.types = [NORMAL if t == USER_DEFINED and "\u2581" in vocab.tokens[i] else t for i, t in enumerate(vocab.types)]
    return vocab


def _from_sentencepiece(checkpoint: Checkpoint, on_message: OnMessage) -> Vocab:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(checkpoint.tokenizer_model.read_bytes())
    except Exception:  # protobuf's DecodeError
        raise DamagedModel(f"{checkpoint.tokenizer_model} is not a SentencePiece model; re-download it") from None
    if not proto.pieces:
        raise DamagedModel(f"{checkpoint.tokenizer_model} holds no pieces; re-download it")
    normalizer = proto.normalizer_spec
    if normalizer.name not in ("identity", "") or normalizer.precompiled_charsmap:
        on_message(
            f"warning: the SentencePiece normalizer is '{normalizer.name}', which llama.cpp does not apply: "
            "texts it would change (e.g. tabs, newlines, full-width characters) will tokenize differently"
        )
    if not proto.trainer_spec.byte_fallback:
        on_message("warning: the SentencePiece model has no byte fallback: characters outside its vocabulary become <unk>")
    spec = proto.trainer_spec
    vocab = Vocab(
        model="llama",
        tokens=[p.piece for p in proto.pieces],
        scores=[p.score for p in proto.pieces],
        types=[p.type for p in proto.pieces],
        source="tokenizer.model",
        add_space_prefix=bool(normalizer.add_dummy_prefix),
    )
    for key, index in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id), ("pad", spec.pad_id)):
        if 0 <= index < len(vocab.tokens):
            vocab.special_ids[key] = index
    return vocab


def _from_tokenizer_json(checkpoint: Checkpoint, on_message: OnMessage) -> Vocab:
    path = checkpoint.tokenizer_json
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        model_type, token_ids = model["type"], model["vocab"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise DamagedModel(f"{path} is not a Hugging Face tokenizers file; re-download it") from None
    if not isinstance(token_ids, dict) or not token_ids:
        raise DamagedModel(f"{path} has an empty vocabulary; re-download the tokenizer files")
    vocab_size = checkpoint.shape.vocab_size
    for token_id in token_ids.values():
        _check_id(token_id, vocab_size, path.name)
    if model_type != "BPE":
        raise FoxEdgeError(
            f"{path} is a {model_type} tokenizer; fox-edge reads BPE tokenizer.json files or a SentencePiece tokenizer.model: add tokenizer.model"
        )
    try:
        added = {_check_id(t["id"], vocab_size, path.name): t for t in data.get("added_tokens", [])}
    except (KeyError, TypeError):
        raise DamagedModel(f"{path}: an added token lacks its id or content; re-download it") from None
    size = max([*token_ids.values(), *added.keys()]) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for text, index in token_ids.items():
        tokens[index] = text
    for index, token in added.items():
        tokens[index] = token["content"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    types = [UNUSED if t.startswith("[PAD") and i not in token_ids.values() else NORMAL for i, t in enumerate(tokens)]
    for index, token in added.items():
        types[index] = CONTROL if token.get("special") else USER_DEFINED
    unk = model.get("unk_token")

    if model.get("byte_fallback"):
        # SentencePiece BPE merges the adjacent pair whose result scores highest; tokenizers applies
        # merges by rank. A token's score is minus the rank of the first merge that makes it, so both
        # choose the same merge. Tokens no merge makes (characters, bytes, added tokens) are never a
        # merge result in tokenizers; they get scores below every merge.
        rank = {}
        for position, merge in enumerate(merges):
            left, right = merge.split(" ", 1)
            rank.setdefault(left + right, position)
        floor = -float(len(merges))
        scores = [-float(rank[t]) if t in rank else floor - i for i, t in enumerate(tokens)]
        for index, token in enumerate(tokens):
            if BYTE_PIECE.fullmatch(token) and types[index] == NORMAL:
                types[index] = BYTE
            elif token == unk:
                types[index] = UNKNOWN
        _check_spm_normalizer(data, path, on_message)
        return Vocab(
            model="llama",
            tokens=tokens,
            scores=scores,
            types=types,
            source="tokenizer.json",
            add_space_prefix=_prepends_space(data),
            add_bos=_post_processor_adds(data, "bos", checkpoint),
        )

    pre = _bpe_pre_tokenizer(data.get("pre_tokenizer"))
    if pre is None:
        raise FoxEdgeError(
            f"{path}: its pre-tokenizer ({json.dumps(data.get('pre_tokenizer'))[:120]}) has no llama.cpp equivalent fox-edge knows; "
            "add it to BPE_PRE_TOKENIZERS in fox_edge/tokenizer.py"
        )
    return Vocab(
        model="gpt2",
        tokens=tokens,
        scores=[0.0] * len(tokens),
        types=types,
        source="tokenizer.json",
        merges=merges,
        pre=pre,
        add_bos=bool(checkpoint.tokenizer_config.get("add_bos_token", False)),
    )


def _check_spm_normalizer(data: dict, path, on_message: OnMessage) -> None:
    """llama.cpp replaces spaces with U+2581 and may prepend one; any other normalization it does not do."""
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    for step in steps:
        if step and step.get("type") not in ("Replace", "Prepend"):
            on_message(
                f"warning: {path} normalizes text with {step.get('type')}, which llama.cpp does not: some texts will tokenize differently"
            )


def _prepends_space(data: dict) -> bool:
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    if any(step.get("type") == "Prepend" for step in steps if step):
        return True
    pre = data.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in pres:
        if step and step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never") != "never"
    return False


def _post_processor_adds(data: dict, which: str, checkpoint: Checkpoint) -> bool:
    key = f"add_{which}_token"
    if key in checkpoint.tokenizer_config:
        return bool(checkpoint.tokenizer_config[key])
    post = data.get("post_processor") or {}
    return bool(post.get("type") == "TemplateProcessing" and any("SpecialToken" in step for step in post.get("single", [])[:1]))


def _bpe_pre_tokenizer(pre: dict | None) -> str | None:
    if not pre:
        return None
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    names = []
    for step in steps:
        kind = step.get("type")
        if kind == "Digits":
            names.append("Digits(individual)" if step.get("individual_digits") else "Digits")
        elif kind == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space", False):
            names.append("ByteLevel")
        else:
            return None
    known = BPE_PRE_TOKENIZERS.get("+".join(names))
    return known[0] if known else None


def _check_id(token_id, vocab_size: int, where: str) -> int:
    """A token id from a tokenizer file: a whole number inside the model's vocabulary (config.json's vocab_size)."""
    if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
        raise FoxEdgeError(
            f"{where}: token id {token_id!r} is outside the model's vocabulary of {vocab_size}; the tokenizer belongs to another model"
        )
    return token_id


def _apply_added_tokens(vocab: Vocab, tokenizer_config: dict, size: int) -> None:
    """tokenizer_config.json's added_tokens_decoder marks which tokens are special (control) and which are user-defined."""
    for key, token in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        try:
            index, content = _check_id(int(key), size, "tokenizer_config.json"), str(token["content"])
        except (KeyError, TypeError, ValueError):
            raise DamagedModel(f"tokenizer_config.json: added token {key!r} is malformed; re-download it") from None
        if index >= len(vocab.tokens):
            vocab.tokens.extend(f"[PAD{i}]" for i in range(len(vocab.tokens), index + 1))
            vocab.scores.extend([0.0] * (index + 1 - len(vocab.scores)))
            vocab.types.extend([UNUSED] * (index + 1 - len(vocab.types)))
        elif vocab.tokens[index] != content and vocab.types[index] != UNUSED:
            continue  # a stale entry naming another token; the tokenizer model wins
        vocab.tokens[index] = content
        if vocab.types[index] not in (BYTE, UNKNOWN):
            vocab.types[index] = CONTROL if token.get("special") else USER_DEFINED


def _pad_to(vocab: Vocab, size: int) -> None:
    """The embedding may have more rows than the tokenizer has tokens; llama.cpp needs one token per row."""
    if len(vocab.tokens) > size:
        raise FoxEdgeError(
            f"the tokenizer has {len(vocab.tokens)} tokens but the model's vocab_size is {size}; the tokenizer belongs to another model"
        )
    for i in range(len(vocab.tokens), size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(-1000.0)
        vocab.types.append(UNUSED)


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _resolve_special_ids(vocab: Vocab, checkpoint: Checkpoint, on_message: OnMessage) -> None:
    index = {t: i for i, t in enumerate(vocab.tokens) if vocab.types[i] != UNUSED}
    config = checkpoint.tokenizer_config
    for key in ("bos", "eos", "unk", "pad"):
        text = _token_text(config.get(f"{key}_token"))
        if text is not None and text in index:
            vocab.special_ids[key] = index[text]
    if "add_eos_token" in config:
        vocab.add_eos = bool(config["add_eos_token"])
    if vocab.model == "llama" and "add_bos_token" in config:
        vocab.add_bos = bool(config["add_bos_token"])
    vocab.end_of_turn_ids = [index[t] for t in END_OF_TURN_TOKENS if t in index]
    if vocab.end_of_turn_ids:
        vocab.special_ids["eot"] = vocab.end_of_turn_ids[0]

    for key in ("bos", "eos"):
        ours = vocab.special_ids.get(key)
        claims: dict[int, list[str]] = {}
        for file, settings in (("config.json", checkpoint.config), ("generation_config.json", checkpoint.generation_config)):
            theirs = settings.get(f"{key}_token_id")
            if isinstance(theirs, list):
                theirs = theirs[0] if theirs else None
            if not isinstance(theirs, int | None):  # a list of lists, a string: shown as it is
                theirs = repr(theirs)
            if theirs is not None and ours is not None and theirs != ours:
                claims.setdefault(theirs, []).append(file)
        for theirs, files in claims.items():
            named = vocab.tokens[theirs] if isinstance(theirs, int) and 0 <= theirs < len(vocab.tokens) else "out of range"
            on_message(
                f"warning: {' and '.join(files)} say{'s' if len(files) == 1 else ''} {key}_token_id={theirs} ({named}) but the "
                f"tokenizer's {key} token is {vocab.tokens[ours]} (id {ours}); using the tokenizer's"
            )


def _resolve_chat_template(vocab: Vocab, checkpoint: Checkpoint, on_message: OnMessage, given: str | None) -> None:
    if given is not None:
        vocab.chat_template, vocab.chat_template_source = given, "given"
        return
    template = checkpoint.tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None:
        jinja = checkpoint.path / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
    if template:
        vocab.chat_template, vocab.chat_template_source = template, "checkpoint"
    elif is_fox1_vocab(vocab.tokens):
        vocab.chat_template, vocab.chat_template_source = FOX1_CHAT_TEMPLATE, "fox-1 fallback"
        on_message("note: the checkpoint has no chat template; using Fox-1's built-in one")
