"""A typed tokenizer over `tokenizers` that reads and writes the Hugging Face file pair.

A checkpoint's tokenizer is `tokenizer.json` (the `tokenizers` pipeline: normalizer, pre-tokenizer,
model, post-processor, decoder, added tokens) plus `tokenizer_config.json` (named special tokens,
chat template, `model_max_length`, ...). `Tokenizer` reads both the way transformers'
`AutoTokenizer.from_pretrained` does for `PreTrainedTokenizerFast`-based configs, so a text encodes
to the same ids with either library. The rules, from transformers 5 (`tokenization_utils_base.py`,
`tokenization_utils_tokenizers.py`):

- The post-processor in `tokenizer.json` decides whether BOS/EOS are added. `from_pretrained`
  drops the config's `add_bos_token`/`add_eos_token` when `tokenizer.json` exists, and so do we;
  the `add_bos_token`/`add_eos_token` properties report what the post-processor does, and setting
  them rebuilds it as a `TemplateProcessing`, like transformers' setters.
- Named special tokens (any `*_token` key holding a token, plus a dict `extra_special_tokens`)
  and `additional_special_tokens`/`extra_special_tokens` lists are added to the vocabulary when
  `tokenizer.json` does not list them as added tokens; named ones missing from it take the next
  ids in transformers' order, and are marked special even when it lists them as plain tokens.
- `chat_template` is a string or a list of `{"name", "template"}`; in a folder, `chat_template.jinja`
  and `additional_chat_templates/*.jinja` take priority over it.
- `special_tokens_map.json` (legacy) fills named tokens only when the config has no
  `added_tokens_decoder`.

Format reference: https://huggingface.co/docs/tokenizers/api/tokenizer and
https://huggingface.co/docs/transformers/main_classes/tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as Backend

from aprender.atomic import atomic_write_json, atomic_write_text
from aprender.constants import (
    CHAT_TEMPLATE_DIR,
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)
from aprender.errors import TokenizerError
from aprender.text._hf_files import (
    ADDED_TOKEN_FIELDS,
    ChatTemplate,
    added_contents,
    load_backend,
    read_json_object,
    read_template_files,
    settings_to_kwargs,
)

# transformers' `clean_up_tokenization`: undo the spaces a WordPiece decoder puts before punctuation.
_CLEAN_UP: tuple[tuple[str, str], ...] = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


@dataclass(frozen=True)
class Encoding:
    """Token ids of one text and the `[start, end)` character span in the text each token covers.

    Attributes:
        ids: token ids, length T.
        offsets: T `(start, end)` pairs; tokens added by the post-processor (BOS/EOS) get `(0, 0)`.
    """

    ids: list[int]
    offsets: list[tuple[int, int]]


class Tokenizer:
    """A `tokenizers.Tokenizer` with the special tokens, chat template and limits of its config.

    Example:
        >>> tok = Tokenizer.from_dir("SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> tok.decode(tok.encode("Hello"))  # doctest: +SKIP
        'Hello'
    """

    def __init__(
        self,
        backend: Backend,
        *,
        special_tokens: Mapping[str, str] | None = None,
        extra_special_tokens: Sequence[str] = (),
        chat_template: ChatTemplate | None = None,
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Wrap `backend`, registering the special tokens on it.

        Named tokens are added (or marked special when already added tokens); extra tokens are
        added when missing.

        Args:
            backend: the `tokenizers` pipeline; modified in place.
            special_tokens: named special tokens, e.g. `{"bos_token": "<s>", "eos_token": "</s>"}`;
                these are also the variables a chat template sees.
            extra_special_tokens: more special tokens without a name.
            chat_template: one Jinja template, or `{name: template}` (transformers' "default" and
                "tool_use" names are honoured by `get_chat_template`).
            model_max_length: the longest sequence the model accepts, or None when unknown.
            clean_up_tokenization_spaces: drop spaces before punctuation after decoding, as
                transformers does; it is ignored for BPE models, as transformers ignores it there.
            extra_config: other `tokenizer_config.json` keys, written back unchanged by `save`.

        Raises:
            TokenizerError: the chat template is neither a string nor a dict of strings.
        """
        self._backend = backend
        self._special = dict(special_tokens or {})
        self._extra_special = list(dict.fromkeys(extra_special_tokens))
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self._clean_up = clean_up_tokenization_spaces
        self._extra_config = dict(extra_config or {})
        # Named tokens are always (made) special, as transformers' `_post_init` does; extras only when missing.
        named = list(dict.fromkeys(self._special.values()))
        extra = [t for t in self._extra_special if t not in added_contents(backend) and t not in named]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [*named, *extra]])

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def from_file(
        cls, tokenizer_file: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
    ) -> Tokenizer:
        """Load a `tokenizer.json` and, when given, its `tokenizer_config.json`.

        Args:
            tokenizer_file: path of `tokenizer.json`.
            config: path of `tokenizer_config.json`, or None for no special tokens/template.

        Returns:
            The tokenizer.

        Raises:
            TokenizerError: a file is missing, is not valid JSON, or holds an invalid tokenizer/config.
        """
        backend = load_backend(Path(tokenizer_file))
        settings = read_json_object(Path(config)) if config is not None else {}
        source = Path(config) if config is not None else Path(tokenizer_file)
        return cls(backend, **settings_to_kwargs(backend, settings, source))

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load the tokenizer of a checkpoint folder (what transformers' `from_pretrained` reads).

        Reads `tokenizer.json` (required), `tokenizer_config.json`, `special_tokens_map.json`,
        `chat_template.jinja` and `additional_chat_templates/*.jinja` (each optional).

        Args:
            path: the folder.

        Returns:
            The tokenizer.

        Raises:
            TokenizerError: the folder or its `tokenizer.json` is missing, or a file is invalid.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: not a folder; pass the folder holding {TOKENIZER_FILE}")
        backend = load_backend(folder / TOKENIZER_FILE)
        config_path = folder / TOKENIZER_CONFIG_FILE
        settings = read_json_object(config_path) if config_path.is_file() else {}
        legacy_map = folder / SPECIAL_TOKENS_MAP_FILE
        if "added_tokens_decoder" not in settings and legacy_map.is_file():
            settings.update(read_json_object(legacy_map))
        templates = read_template_files(folder)
        if templates:
            only_default = list(templates) == ["default"]
            settings["chat_template"] = templates["default"] if only_default else templates
        return cls(backend, **settings_to_kwargs(backend, settings, config_path))

    def with_backend(self, backend: Backend) -> Tokenizer:
        """This tokenizer's config (special tokens, chat template, limits, other keys) over another pipeline.

        Args:
            backend: the new `tokenizers` pipeline (e.g. an edited copy of `backend`); modified in place.

        Returns:
            The new tokenizer; this one is unchanged.
        """
        backend.encode_special_tokens = self._backend.encode_special_tokens
        return Tokenizer(
            backend,
            special_tokens=self._special,
            extra_special_tokens=self._extra_special,
            chat_template=self._chat_template,
            model_max_length=self.model_max_length,
            clean_up_tokenization_spaces=self._clean_up,
            extra_config=self._extra_config,
        )

    # ---------------------------------------------------------------------------------- encoding

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (T ids).

        Args:
            text: the text.
            add_special_tokens: let the post-processor add BOS/EOS (see `add_bos_token`).

        Returns:
            The ids.
        """
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text (B lists); same ids as `encode` on each, computed in parallel.

        Args:
            texts: the texts.
            add_special_tokens: let the post-processor add BOS/EOS.

        Returns:
            One id list per text.
        """
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [list(e.ids) for e in encodings]

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True) -> Encoding:
        """Token ids of `text` and the character span each token covers.

        Args:
            text: the text.
            add_special_tokens: let the post-processor add BOS/EOS.

        Returns:
            The ids and `(start, end)` offsets into `text`.
        """
        encoding = self._backend.encode(text, add_special_tokens=add_special_tokens)
        return Encoding(ids=list(encoding.ids), offsets=[(int(s), int(e)) for s, e in encoding.offsets])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids.

        Args:
            ids: token ids.
            skip_special_tokens: leave out tokens marked special (BOS, EOS, PAD, ...).

        Returns:
            The text.
        """
        return self._clean(self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        """Text of each id list; same as `decode` on each.

        Args:
            batch: B id lists.
            skip_special_tokens: leave out tokens marked special.

        Returns:
            B texts.
        """
        texts = self._backend.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)
        return [self._clean(text) for text in texts]

    def _clean(self, text: str) -> str:
        if not self._clean_up or type(self._backend.model).__name__ == "BPE":
            return text
        for before, after in _CLEAN_UP:
            text = text.replace(before, after)
        return text

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (`"Ġthe"`, `"<s>"`), or None when it is not in the vocabulary."""
        token_id = self._backend.token_to_id(token)
        return None if token_id is None else int(token_id)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None when the id is out of range."""
        token = self._backend.id_to_token(token_id)
        return None if token is None else str(token)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (transformers' `len(tokenizer)`; size embeddings by it)."""
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    @property
    def backend(self) -> Backend:
        """The underlying `tokenizers.Tokenizer`."""
        return self._backend

    # ---------------------------------------------------------------------------- special tokens

    @property
    def special_tokens(self) -> dict[str, str]:
        """Named special tokens, e.g. `{"bos_token": "<s>", ...}` (the variables a chat template sees)."""
        return dict(self._special)

    @property
    def extra_special_tokens(self) -> list[str]:
        """Special tokens without a name (`additional_special_tokens`)."""
        return list(self._extra_special)

    @property
    def bos_token(self) -> str | None:
        """Beginning-of-sequence token, or None."""
        return self._special.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        """End-of-sequence token, or None."""
        return self._special.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        """Padding token, or None."""
        return self._special.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        """Unknown-text token, or None."""
        return self._special.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        """Id of `bos_token`, or None."""
        return self._named_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        """Id of `eos_token`, or None."""
        return self._named_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        """Id of `pad_token`, or None."""
        return self._named_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        """Id of `unk_token`, or None."""
        return self._named_id("unk_token")

    def _named_id(self, name: str) -> int | None:
        token = self._special.get(name)
        return None if token is None else self.token_to_id(token)

    @property
    def add_bos_token(self) -> bool:
        """Whether `encode(..., add_special_tokens=True)` starts with `bos_token` (set to change it)."""
        return self._inserted("bos_token", 0)

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._set_inserted(add_bos=value, add_eos=self.add_eos_token)

    @property
    def add_eos_token(self) -> bool:
        """Whether `encode(..., add_special_tokens=True)` ends with `eos_token` (set to change it)."""
        return self._inserted("eos_token", -1)

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._set_inserted(add_bos=self.add_bos_token, add_eos=value)

    def _inserted(self, name: str, position: int) -> bool:
        """Whether the post-processor puts token `name` at `position` of an encoded one-letter text."""
        encoding = self._backend.encode("a", add_special_tokens=True)
        token_id = self._named_id(name)
        inserted = bool(encoding.ids) and encoding.special_tokens_mask[position] == 1
        return inserted and token_id is not None and encoding.ids[position] == token_id

    def _set_inserted(self, *, add_bos: bool, add_eos: bool) -> None:
        """Rebuild the post-processor as transformers' `update_post_processor` does."""
        pieces = {"bos_token": add_bos, "eos_token": add_eos}
        for name, wanted in pieces.items():
            if wanted and self._named_id(name) is None:
                raise TokenizerError(f"add_{name}=True needs a {name} in the vocabulary; set special token {name!r}")
        bos, eos = self.bos_token, self.eos_token
        head = [f"{bos}:0"] if add_bos else []
        tail = [f"{eos}:0"] if add_eos else []
        single = [*head, "$A:0", *tail]
        pair = [*single, *([f"{bos}:1"] if add_bos else []), "$B:1", *([f"{eos}:1"] if add_eos else [])]
        specials = {tok: self.token_to_id(tok) for tok, on in ((bos, add_bos), (eos, add_eos)) if on and tok}
        self._backend.post_processor = processors.TemplateProcessing(
            single=" ".join(single), pair=" ".join(pair), special_tokens=list(specials.items())
        )

    # ----------------------------------------------------------------------------- chat template

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The chat template: one Jinja string, `{name: template}`, or None."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, value: ChatTemplate | None) -> None:
        if isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
            if bad or not value:
                raise TokenizerError("chat_template: a dict of templates must map names to template strings")
            value = dict(value)
        elif value is not None and not isinstance(value, str):
            raise TokenizerError(f"chat_template must be a string, a dict or None, not {type(value).__name__}")
        self._chat_template = value

    def get_chat_template(self, template: str | None = None, *, use_tools: bool = False) -> str:
        """Pick the template to render, as transformers' `get_chat_template` does.

        Args:
            template: a template name (when `chat_template` is a dict holding it) or a template
                string; None for the tokenizer's own.
            use_tools: prefer the template named "tool_use" when there are several.

        Returns:
            The Jinja template string.

        Raises:
            TokenizerError: no template is set, or several are and none is named "default".
        """
        own = self._chat_template
        if isinstance(own, dict):
            if template is not None:
                return own.get(template, template)
            if use_tools and "tool_use" in own:
                return own["tool_use"]
            if "default" in own:
                return own["default"]
            raise TokenizerError(f"tokenizer has chat templates {sorted(own)} but none named 'default'; pass a name")
        if template is not None:
            return template
        if own is None:
            raise TokenizerError("tokenizer has no chat_template; set one in tokenizer_config.json or pass a template")
        return own

    # ------------------------------------------------------------------------------------ saving

    def save(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write `tokenizer.json` and `tokenizer_config.json` into `directory`, each atomically.

        The chat template goes into `tokenizer_config.json`. A `chat_template.jinja` or
        `additional_chat_templates/` already in the folder would override it when loading, so
        saving there is refused.

        Args:
            directory: the folder, created when missing.

        Returns:
            The paths of `tokenizer.json` and `tokenizer_config.json`.

        Raises:
            TokenizerError: the folder holds template files that would shadow the saved template.
        """
        folder = Path(directory)
        for shadow in (folder / CHAT_TEMPLATE_FILE, folder / CHAT_TEMPLATE_DIR):
            if shadow.exists():
                raise TokenizerError(f"{shadow} would override the saved chat template; remove it or save elsewhere")
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer_path, config_path = folder / TOKENIZER_FILE, folder / TOKENIZER_CONFIG_FILE
        atomic_write_text(tokenizer_path, self._backend.to_str(pretty=True))
        atomic_write_json(config_path, self._config())
        return tokenizer_path, config_path

    def _config(self) -> dict[str, Any]:
        """The `tokenizer_config.json` content describing this tokenizer."""
        added = {
            str(token_id): {field: getattr(token, field) for field in ADDED_TOKEN_FIELDS}
            for token_id, token in sorted(self._backend.get_added_tokens_decoder().items())
        }
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **self._extra_config}
        config.update(self._special)
        config.update(added_tokens_decoder=added, add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token)
        config.update(
            clean_up_tokenization_spaces=self._clean_up, split_special_tokens=self._backend.encode_special_tokens
        )
        if self._extra_special:
            config["extra_special_tokens"] = list(self._extra_special)
        if isinstance(self._chat_template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self._chat_template.items()]
        elif self._chat_template is not None:
            config["chat_template"] = self._chat_template
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        return config

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={self._special!r})"
