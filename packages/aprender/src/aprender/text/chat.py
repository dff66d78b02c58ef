"""Chat templates: render a conversation to text, and find the tokens the assistant wrote.

Rendering matches transformers' `apply_chat_template(tokenize=False)` (transformers
`utils/chat_template_utils.py`): a sandboxed, immutable Jinja environment with `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that does not HTML-escape and
accepts `indent`/`separators`/`sort_keys`/`ensure_ascii`, the globals `raise_exception(msg)` and
`strftime_now(fmt)`, and a `namespace` that refuses underscore attributes. Messages are cleaned the
same way first: keys whose value is None are dropped, values are rebuilt from plain JSON types, and
a reasoning field (`reasoning_content`, `thinking` or `reasoning`) is also offered under
`reasoning_content` and `thinking`. Templates: https://huggingface.co/docs/transformers/chat_templating.

Assistant masks (which characters of the rendered text the model must learn to produce) come from
one of two methods:

- "generation": the template marks them with `{% generation %}...{% endgeneration %}`; each block's
  output is one span. This equals transformers' `return_assistant_tokens_mask=True`.
- "incremental", for templates without markers: for assistant message i, render messages[:i] with
  the generation prompt (text the template writes before the reply) and messages[:i+1] without it;
  the reply is what the second adds to the first, minus trailing whitespace (a newline the template
  writes after the end-of-turn token is layout, not output; this matches the usual marker placement
  around content and end-of-turn token). Both renders must be prefixes of the full chat, otherwise
  the template rewrites history and ChatTemplateError says to add markers.

A token is in the mask when its character span overlaps an assistant span.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import jinja2
import jinja2.ext
import numpy as np
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from aprender.errors import ChatTemplateError
from aprender.text._hf_files import one_line
from aprender.text.tokenizer import Tokenizer

MaskMethod = Literal["auto", "generation", "incremental"]
_MASK_METHODS = ("auto", "generation", "incremental")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@dataclass(frozen=True)
class RenderedChat:
    """A rendered conversation and the `[start, end)` character spans the assistant produced."""

    text: str
    assistant_spans: list[tuple[int, int]]


@dataclass(frozen=True)
class ChatEncoding:
    """A rendered conversation, its T token ids, and T mask values (1 = assistant-produced token)."""

    text: str
    ids: list[int]
    assistant_mask: list[int]


# ------------------------------------------------------------------------------ Jinja environment


@dataclass
class _SpanTracker:
    length: int = 0
    spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)


_TRACKER: ContextVar[_SpanTracker | None] = ContextVar("aprender_chat_tracker", default=None)


class _GenerationExtension(jinja2.ext.Extension):
    """`{% generation %}body{% endgeneration %}`: renders body and records where it lands."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's declared class attribute)

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_record", []), [], [], body).set_lineno(lineno)

    def _record(self, caller: Any) -> str:
        text = str(caller())
        tracker = _TRACKER.get()
        if tracker is not None:  # everything yielded before this block is already counted
            tracker.spans.append((tracker.length, tracker.length + len(text)))
        return text


class _TemplateRaised(jinja2.TemplateError):
    """Raised by the template's own `raise_exception(message)`."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _DictFactory:
    """The template's `dict`: builds dicts but exposes no class internals to walk."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _check_attribute(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r}: names starting with '_' are refused")


class _SafeNamespace(Namespace):
    """Jinja's `namespace` without underscore attributes (they lead to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same self-in-args trick as Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_attribute(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_attribute(name)
        Namespace.__setitem__(self, name, value)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationExtension, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_DictFactory(), namespace=_SafeNamespace
    )
    return env


@lru_cache(maxsize=64)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a chat template in the sandboxed environment (cached by template text).

    Args:
        template: Jinja source.

    Returns:
        The compiled template.

    Raises:
        ChatTemplateError: the template has a syntax error.
    """
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise ChatTemplateError(
            f"chat template line {err.lineno}: {one_line(str(err.message))}; fix the template syntax"
        ) from err


# ------------------------------------------------------------------------------ template inputs


def _plain(value: Any) -> Any:
    """Rebuild a value from plain JSON types so the sandbox never sees objects with methods of their own."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (str, int, float):  # subclasses such as enums: keep the value, drop the class
        if isinstance(value, base):
            return base(value) if base is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    prepared = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{index}] is a {type(message).__name__}; each message must be a dict")
        message = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _check_dicts(items: Sequence[Any] | None, name: str) -> list[Any] | None:
    if items is None:
        return None
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ChatTemplateError(f"{name}[{index}] is a {type(item).__name__}; pass {name} as JSON-schema dicts")
    return [_plain(item) for item in items]


@dataclass(frozen=True)
class _Request:
    """Everything but the messages that a render needs."""

    template: str
    tools: list[Any] | None
    documents: list[Any] | None
    variables: dict[str, Any]

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> RenderedChat:
        compiled = compile_chat_template(self.template)
        tracker = _SpanTracker()
        reset = _TRACKER.set(tracker)
        parts: list[str] = []
        try:
            context = {**self.variables, "tools": self.tools, "documents": self.documents}
            for chunk in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt, **context):
                parts.append(chunk)
                tracker.length += len(chunk)
        except _TemplateRaised as err:
            raise ChatTemplateError(
                f"the chat template rejected the conversation: {one_line(str(err.message))}"
            ) from err
        except (jinja2.TemplateError, TypeError, ValueError) as err:
            raise ChatTemplateError(
                f"chat template failed: {type(err).__name__}: {one_line(str(err))}; check the messages"
            ) from err
        finally:
            _TRACKER.reset(reset)
        return RenderedChat("".join(parts), tracker.spans)


def _request(
    template: str,
    messages: Sequence[Any],
    tools: Sequence[Any] | None,
    documents: Sequence[Any] | None,
    variables: Mapping[str, Any],
) -> tuple[_Request, list[dict[str, Any]]]:
    if not messages:
        raise ChatTemplateError("messages is empty; a conversation needs at least one message")
    prepared = _prepare_messages(messages)
    tools_, documents_ = _check_dicts(tools, "tools"), _check_dicts(documents, "documents")
    return _Request(template, tools_, documents_, {k: _plain(v) for k, v in variables.items()}), prepared


def _with_specials(bos_token: str | None, eos_token: str | None, variables: dict[str, Any]) -> dict[str, Any]:
    """Template variables; a None BOS/EOS stays undefined (renders as ''), like a tokenizer without one."""
    specials = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}
    return {**specials, **variables}


# ------------------------------------------------------------------------------ public functions


def apply_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **variables: Any,
) -> str:
    """Render a conversation with a chat template, as transformers' `apply_chat_template(tokenize=False)`.

    Args:
        template: Jinja chat template (e.g. `Tokenizer.get_chat_template()`).
        messages: dicts with at least "role" and "content".
        add_generation_prompt: append the text that opens an assistant reply.
        tools: tool JSON schemas, visible to the template as `tools` (None: `tools` is none).
        documents: retrieval documents (dicts, e.g. "title" and "text"), visible as `documents`.
        bos_token: visible as `bos_token`; None leaves it undefined, like a tokenizer without one.
        eos_token: visible as `eos_token`; None leaves it undefined.
        **variables: more template variables (e.g. `Tokenizer.special_tokens`, `enable_thinking`).

    Returns:
        The rendered text.

    Raises:
        ChatTemplateError: empty or malformed messages, a syntax error, or the template raised.
    """
    request, prepared = _request(template, messages, tools, documents, _with_specials(bos_token, eos_token, variables))
    return request.render(prepared, add_generation_prompt).text


def render_with_assistant_spans(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    method: MaskMethod = "auto",
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **variables: Any,
) -> RenderedChat:
    """Render a conversation and locate the text each assistant turn must produce.

    Args:
        template: Jinja chat template.
        messages: dicts with at least "role" and "content".
        method: "generation" (spans of `{% generation %}` blocks), "incremental" (spans by
            rendering prefixes, see the module docstring), or "auto" (generation when the template
            has the tag, else incremental).
        add_generation_prompt: append the text that opens an assistant reply.
        tools: tool JSON schemas, visible as `tools`.
        documents: retrieval documents, visible as `documents`.
        bos_token: visible as `bos_token`; None leaves it undefined.
        eos_token: visible as `eos_token`; None leaves it undefined.
        **variables: more template variables.

    Returns:
        The text and its assistant character spans, in order.

    Raises:
        ChatTemplateError: bad method, "generation" on a template without the tag, a template that
            rewrites earlier turns (incremental), or any rendering error.
    """
    if method not in _MASK_METHODS:
        raise ChatTemplateError(f"method={method!r}: expected one of {', '.join(_MASK_METHODS)}")
    has_tag = _GENERATION_TAG.search(template) is not None
    if method == "generation" and not has_tag:
        raise ChatTemplateError("method='generation' needs {% generation %} blocks in the template; use 'incremental'")
    request, prepared = _request(template, messages, tools, documents, _with_specials(bos_token, eos_token, variables))
    rendered = request.render(prepared, add_generation_prompt)
    if method == "generation" or (method == "auto" and has_tag):
        return rendered
    return RenderedChat(rendered.text, _incremental_spans(request, prepared, rendered.text))


def _incremental_spans(request: _Request, messages: list[dict[str, Any]], full: str) -> list[tuple[int, int]]:
    """Assistant spans by difference of prefix renders (see the module docstring)."""
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = request.render(messages[:index], add_generation_prompt=True).text
        through = request.render(messages[: index + 1], add_generation_prompt=False).text
        if not through.startswith(before) or not full.startswith(through):
            raise ChatTemplateError(
                f"messages[{index}]: the template does not render earlier turns unchanged, so the reply cannot be "
                "located by rendering prefixes; add {% generation %} blocks to the template"
            )
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return spans


def assistant_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for each token whose character span overlaps an assistant span, else 0.

    Args:
        offsets: T `(start, end)` token spans, in order.
        spans: assistant `(start, end)` spans, in order and not overlapping.

    Returns:
        T mask values.
    """
    mask = [0] * len(offsets)
    current = 0
    for index, (start, end) in enumerate(offsets):
        while current < len(spans) and start >= spans[current][1]:
            current += 1
        if current == len(spans):
            break
        if end > spans[current][0]:
            mask[index] = 1
    return mask


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    chat_template: str | None = None,
    method: MaskMethod = "auto",
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    **variables: Any,
) -> ChatEncoding:
    """Render with the tokenizer's template and special tokens, tokenize, and mask assistant tokens.

    Equals transformers' `apply_chat_template(..., tokenize=True, return_dict=True,
    return_assistant_tokens_mask=True)` ids and `assistant_masks` for templates with generation
    markers: the text is encoded without added BOS/EOS (the template writes its own).

    Args:
        tokenizer: the tokenizer; its `special_tokens` are template variables.
        messages: dicts with at least "role" and "content".
        chat_template: a template name (when the tokenizer has several) or a template string;
            None for the tokenizer's own ("tool_use" is preferred when `tools` is given).
        method: how to find assistant text, see `render_with_assistant_spans`.
        add_generation_prompt: append the text that opens an assistant reply.
        tools: tool JSON schemas, visible as `tools`.
        documents: retrieval documents, visible as `documents`.
        **variables: more template variables; they override the special tokens of the same name.

    Returns:
        Text, T ids and the T-long assistant mask.

    Raises:
        TokenizerError: the tokenizer has no usable template.
        ChatTemplateError: as `render_with_assistant_spans`.
    """
    template = tokenizer.get_chat_template(chat_template, use_tools=tools is not None)
    rendered = render_with_assistant_spans(
        template,
        messages,
        method=method,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        documents=documents,
        **{**tokenizer.special_tokens, **variables},
    )
    encoding = tokenizer.encode_with_offsets(rendered.text, add_special_tokens=False)
    mask = assistant_token_mask(encoding.offsets, rendered.assistant_spans)
    return ChatEncoding(text=rendered.text, ids=encoding.ids, assistant_mask=mask)
