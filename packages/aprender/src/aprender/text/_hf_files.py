"""The Hugging Face tokenizer files: reading `tokenizer_config.json` the way transformers does.

Private helpers of `aprender.text.tokenizer`; see its docstring for the rules they implement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from aprender.constants import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE, TOKENIZER_FILE
from aprender.errors import TokenizerError

# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Config keys `Tokenizer` interprets and rewrites on save; every other key is kept as it was.
OWNED_KEYS = frozenset(
    {
        "added_tokens_decoder",
        "additional_special_tokens",
        "extra_special_tokens",
        "chat_template",
        "model_max_length",
        "clean_up_tokenization_spaces",
        "split_special_tokens",
        "add_bos_token",
        "add_eos_token",
    }
)
ADDED_TOKEN_FIELDS = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")

ChatTemplate = str | dict[str, str]


def added_contents(backend: Backend) -> set[str]:
    """Contents of the backend's added tokens (special or not)."""
    return {str(token.content) for token in backend.get_added_tokens_decoder().values()}


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(text).split())


def load_backend(path: Path) -> Backend:
    """Parse a `tokenizer.json`, raising TokenizerError naming the file when it is missing or invalid."""
    if not path.is_file():
        raise TokenizerError(f"{path}: file not found; a tokenizer needs its {TOKENIZER_FILE}")
    try:
        return Backend.from_file(str(path))
    except Exception as err:  # tokenizers raises bare Exception for every parse error
        raise TokenizerError(f"{path}: not a valid {TOKENIZER_FILE} ({one_line(str(err))}); re-export it") from err


def read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON file whose top level must be an object, raising TokenizerError naming the file."""
    if not path.is_file():
        raise TokenizerError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: not valid JSON ({one_line(str(err))}); fix or re-export the file") from err
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerError(f"{path}: not UTF-8 text (byte {err.start}); re-save the template as UTF-8") from err


def read_template_files(folder: Path) -> dict[str, str]:
    """`chat_template.jinja` as "default" plus `additional_chat_templates/<name>.jinja` as <name>."""
    templates: dict[str, str] = {}
    default = folder / CHAT_TEMPLATE_FILE
    if default.is_file():
        templates["default"] = _read_text(default)
    extra_dir = folder / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = _read_text(file)
    return templates


def token_spec(value: Any, *, named: bool) -> AddedToken | None:
    """A config token value (`"<s>"` or `{"content": "<s>", ...}`) as an AddedToken; None otherwise.

    As in transformers, a string is special and unnormalized; a dict keeps its flags, and is
    special when it is a named token or says so itself.
    """
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: bool(value[k]) for k in ("lstrip", "rstrip", "normalized", "single_word") if k in value}
        return AddedToken(value["content"], special=named or bool(value.get("special", False)), **flags)
    return None


def add_declared_tokens(backend: Backend, declared: Any, source: Path) -> None:
    """Add the config's `added_tokens_decoder` entries that `tokenizer.json` lacks, checking their ids."""
    if not isinstance(declared, dict):
        raise TokenizerError(f"{source}: 'added_tokens_decoder' must map ids to token objects")
    for key, entry in sorted(declared.items(), key=lambda item: int(item[0])):
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise TokenizerError(f"{source}: added_tokens_decoder[{key}] needs a string 'content'")
        content = entry["content"]
        if content not in added_contents(backend):
            flags = {k: bool(entry[k]) for k in ADDED_TOKEN_FIELDS[1:] if k in entry}
            backend.add_tokens([AddedToken(content, **flags)])
        if backend.token_to_id(content) != int(key):
            found = backend.token_to_id(content)
            raise TokenizerError(f"{source}: added token {content!r} is id {key} in the config but {found} here")


def named_tokens(settings: Mapping[str, Any], backend: Backend) -> dict[str, str]:
    """Named special tokens: `*_token` keys with a token value, and a dict `extra_special_tokens`.

    The standard names come first in transformers' order, then the model-specific ones, because
    tokens missing from the vocabulary get the next ids in this order.
    """
    candidates = {k: v for k, v in settings.items() if k.endswith("_token")}
    if isinstance(settings.get("extra_special_tokens"), dict):
        candidates.update(settings["extra_special_tokens"])
    order = [k for k in NAMED_SPECIAL_TOKENS if k in candidates] + [
        k for k in candidates if k not in NAMED_SPECIAL_TOKENS
    ]
    named: dict[str, str] = {}
    for name in order:
        spec = token_spec(candidates[name], named=True)
        if spec is None:
            continue
        backend.add_special_tokens([spec])  # adds it, or marks an existing added token special
        named[name] = str(spec.content)
    return named


def extra_tokens(settings: Mapping[str, Any], backend: Backend) -> list[str]:
    """Unnamed special tokens: an `additional_special_tokens` or list `extra_special_tokens`."""
    listed = settings.get("extra_special_tokens")
    if not isinstance(listed, list) or not listed:
        listed = settings.get("additional_special_tokens") or []
    specs = [spec for spec in (token_spec(v, named=False) for v in listed) if spec is not None]
    backend.add_tokens([s for s in specs if s.content not in added_contents(backend)])
    return [str(spec.content) for spec in specs]


def parse_chat_template(value: Any, source: Path) -> ChatTemplate | None:
    """The config's `chat_template`: a string, or a list of `{"name", "template"}` (as a dict by name)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        try:
            return {str(item["name"]): str(item["template"]) for item in value}
        except (TypeError, KeyError) as err:
            raise TokenizerError(f"{source}: chat_template list entries need 'name' and 'template'") from err
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    raise TokenizerError(f"{source}: chat_template must be a string or a list of named templates")


def parse_max_length(value: Any, source: Path) -> int | None:
    """The config's `model_max_length` (transformers writes 1e30 for "no limit"); None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise TokenizerError(f"{source}: model_max_length must be a positive number, got {value!r}")
    return int(value)


def settings_to_kwargs(backend: Backend, settings: dict[str, Any], source: Path) -> dict[str, Any]:
    """Register the config's tokens on `backend` and return the other `Tokenizer(...)` arguments."""
    add_declared_tokens(backend, settings.get("added_tokens_decoder", {}), source)
    named = named_tokens(settings, backend)
    extra = extra_tokens(settings, backend)
    backend.encode_special_tokens = bool(settings.get("split_special_tokens", False))
    return {
        "special_tokens": named,
        "extra_special_tokens": extra,
        "chat_template": parse_chat_template(settings.get("chat_template"), source),
        "model_max_length": parse_max_length(settings.get("model_max_length"), source),
        "clean_up_tokenization_spaces": bool(settings.get("clean_up_tokenization_spaces", False)),
        "extra_config": {k: v for k, v in settings.items() if k not in OWNED_KEYS and k not in named},
    }
