"""entrenar.data.encode: chat rendering, assistant-only targets, BOS/EOS rules, truncation, labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aprender.errors import TokenizerError
from aprender.text import Tokenizer
from entrenar.data.encode import IGNORE_INDEX, EncodedSample, Encoder, _last_run_start
from entrenar.data.formats import Example, normalize_record
from entrenar.data.sources import Location
from entrenar.errors import DataError, InvalidRecordError

HERE = Location("data/x.jsonl", 3)
CONVERSATION = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six, of course."},
]
END_TOKEN = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>"}


def _messages(messages: list[dict[str, str]]) -> Example:
    return normalize_record({"messages": messages}, "messages", HERE)


def _tokenizer(tiny_checkpoints: dict[str, Path], family: str) -> Tokenizer:
    return Tokenizer.from_dir(tiny_checkpoints[family])


def _runs(ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """Contiguous runs of ids where mask is set."""
    runs: list[list[int]] = []
    previous = False
    for token, on in zip(ids.tolist(), mask.tolist(), strict=True):
        if on and not previous:
            runs.append([])
        if on:
            runs[-1].append(token)
        previous = on
    return runs


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_chat_targets_are_exactly_the_assistant_replies(tiny_checkpoints: dict[str, Path], family: str) -> None:
    from transformers import AutoTokenizer

    tok = _tokenizer(tiny_checkpoints, family)
    sample = Encoder(tok, seq_len=512).encode(_messages(CONVERSATION))
    # Oracle 1: transformers renders and tokenizes the same ids and marks the same assistant tokens.
    reference: Any = AutoTokenizer.from_pretrained(tiny_checkpoints[family]).apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert sample.ids.tolist() == reference["input_ids"]
    assert sample.targets.astype(int).tolist() == reference["assistant_masks"]
    # Oracle 2: decoded target runs are the replies followed by the template's end-of-turn token.
    end = END_TOKEN[family]
    assert [tok.decode(run) for run in _runs(sample.ids, sample.targets)] == [f"Four.{end}", f"Six, of course.{end}"]
    # Shifted labels hold the same tokens, one position earlier.
    labels = sample.labels()
    assert labels[labels != IGNORE_INDEX].tolist() == sample.ids[sample.targets].tolist()
    assert not sample.truncated and sample.n_targets == int(sample.targets.sum())


def test_llama_chat_has_one_bos(tiny_checkpoints: dict[str, Path]) -> None:
    tok = _tokenizer(tiny_checkpoints, "llama")
    bos = tok.bos_token_id
    sample = Encoder(tok, seq_len=512).encode(_messages(CONVERSATION))
    assert sample.ids[0] == bos and int((sample.ids == bos).sum()) == 1
    # The trap being avoided: encoding the rendered text with special tokens doubles the BOS.
    rendered = tok.decode(sample.ids.tolist())
    assert tok.encode(rendered)[:2] == [bos, bos]


def test_chat_eos_is_not_doubled(tiny_checkpoints: dict[str, Path]) -> None:
    qwen = _tokenizer(tiny_checkpoints, "qwen2")
    ids = Encoder(qwen, seq_len=512).encode(_messages(CONVERSATION[1:3])).ids.tolist()
    # ChatML: default system, user and assistant turns each end with <|im_end|> and a newline; no EOS after.
    assert ids.count(qwen.eos_token_id) == 3 and qwen.decode(ids[-2:]) == "<|im_end|>\n"
    llama = _tokenizer(tiny_checkpoints, "llama")
    ids = Encoder(llama, seq_len=512).encode(_messages(CONVERSATION[1:3])).ids.tolist()
    assert ids[-1] == llama.eos_token_id and ids[-2] != llama.eos_token_id and ids.count(llama.eos_token_id) == 2


def test_chat_eos_appended_when_the_template_ends_turns_with_another_token(
    tokenizer_variant: Callable[..., Tokenizer],
) -> None:
    # Like a Qwen base model: ChatML turns end with <|im_end|> but eos_token is <|endoftext|>.
    tok = tokenizer_variant("qwen2", eos_token="<|endoftext|>")
    sample = Encoder(tok, seq_len=512).encode(_messages(CONVERSATION[1:3]))
    assert tok.decode(sample.ids[-3:].tolist()) == "<|im_end|>\n<|endoftext|>"
    assert sample.targets[-3:].tolist() == [True, False, True]
    assert [tok.decode(run) for run in _runs(sample.ids, sample.targets)] == ["Four.<|im_end|>", "<|endoftext|>"]


def test_text_gets_bos_and_eos_once(tiny_checkpoints: dict[str, Path]) -> None:
    llama = _tokenizer(tiny_checkpoints, "llama")
    bos, eos = llama.bos_token_id, llama.eos_token_id
    encoder = Encoder(llama, seq_len=512)
    body = llama.encode("The cat sat on the mat.", add_special_tokens=False)
    sample = encoder.encode(Example("text", HERE, text="The cat sat on the mat."))
    assert sample.ids.tolist() == [bos, *body, eos]
    assert sample.targets.tolist() == [False] + [True] * (len(body) + 1)
    assert encoder.encode(
        Example("text", HERE, text="<|begin_of_text|>The cat sat on the mat.<|eot_id|>")
    ).ids.tolist() == [
        bos,
        *body,
        eos,
    ]
    qwen = _tokenizer(tiny_checkpoints, "qwen2")  # adds no BOS
    sample = Encoder(qwen, seq_len=512).encode(Example("text", HERE, text="The cat sat on the mat."))
    assert sample.ids.tolist() == [*qwen.encode("The cat sat on the mat.", add_special_tokens=False), qwen.eos_token_id]
    assert sample.targets.tolist() == [False] + [True] * (len(sample) - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=40).filter(str.strip))
def test_text_framing_property(tiny_checkpoints: dict[str, Path], text: str) -> None:
    llama = _tokenizer(tiny_checkpoints, "llama")
    ids = Encoder(llama, seq_len=4096).encode(Example("text", HERE, text=text)).ids.tolist()
    body = llama.encode(text, add_special_tokens=False)
    assert ids[0] == llama.bos_token_id and ids[-1] == llama.eos_token_id
    assert ids[1:-1] == body


def test_no_eos_token_means_none_appended(tokenizer_variant: Callable[..., Tokenizer]) -> None:
    tok = tokenizer_variant("qwen2", eos_token=None)
    sample = Encoder(tok, seq_len=512).encode(Example("text", HERE, text="Hello world"))
    assert sample.ids.tolist() == tok.encode("Hello world", add_special_tokens=False)


def test_single_turn_without_chat_template_is_plain_concatenation(tiny_checkpoints: dict[str, Path]) -> None:
    tok = _tokenizer(tiny_checkpoints, "llama")
    tok.chat_template = None
    encoder = Encoder(tok, seq_len=512)
    prompt_ids = tok.encode("Q: what is two plus two?\nA:", add_special_tokens=False)
    completion_ids = tok.encode(" Four.", add_special_tokens=False)
    example = normalize_record(
        {"prompt": "Q: what is two plus two?\nA:", "completion": " Four."}, "prompt_completion", HERE
    )
    sample = encoder.encode(example)
    assert sample.ids.tolist() == [tok.bos_token_id, *prompt_ids, *completion_ids, tok.eos_token_id]
    assert sample.targets.tolist() == [False] * (1 + len(prompt_ids)) + [True] * (len(completion_ids) + 1)
    alpaca = encoder.encode(normalize_record({"instruction": "Greet", "output": "Hi"}, "alpaca", HERE))
    assert tok.decode(alpaca.ids[alpaca.targets].tolist()) == "Hi<|eot_id|>"
    assert tok.decode(alpaca.ids[~alpaca.targets].tolist()).endswith("### Instruction:\nGreet\n\n### Response:\n")
    with pytest.raises(DataError, match=r"data/x\.jsonl:3: format 'messages' needs a tokenizer with a chat_template"):
        encoder.encode(_messages(CONVERSATION))


def test_single_turn_with_chat_template_is_a_user_assistant_turn(tiny_checkpoints: dict[str, Path]) -> None:
    tok = _tokenizer(tiny_checkpoints, "qwen2")
    encoder = Encoder(tok, seq_len=512)
    pair = encoder.encode(normalize_record({"prompt": "Hello", "completion": "Hi there"}, "prompt_completion", HERE))
    chat = encoder.encode(
        _messages([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}])
    )
    assert pair.ids.tolist() == chat.ids.tolist() and pair.targets.tolist() == chat.targets.tolist()


def test_train_on_all(tiny_checkpoints: dict[str, Path]) -> None:
    tok = _tokenizer(tiny_checkpoints, "qwen2")
    completion = Encoder(tok, seq_len=512).encode(_messages(CONVERSATION))
    everything = Encoder(tok, seq_len=512, train_on="all").encode(_messages(CONVERSATION))
    assert everything.ids.tolist() == completion.ids.tolist()
    assert everything.targets.tolist() == [False] + [True] * (len(everything) - 1)
    assert everything.n_targets == len(everything) - 1 > completion.n_targets


def test_truncation_keeps_the_start(tiny_checkpoints: dict[str, Path]) -> None:
    tok = _tokenizer(tiny_checkpoints, "llama")
    full = Encoder(tok, seq_len=512).encode(_messages(CONVERSATION))
    cut = Encoder(tok, seq_len=40).encode(_messages(CONVERSATION))
    assert len(full) > 40 and not full.truncated
    assert cut.truncated and cut.ids.tolist() == full.ids[:40].tolist()
    assert cut.targets.tolist() == full.targets[:40].tolist()
    exact = Encoder(tok, seq_len=len(full)).encode(_messages(CONVERSATION))
    assert not exact.truncated and exact.ids.tolist() == full.ids.tolist()


def test_labels_hand_case() -> None:
    # labels[t] = ids[t + 1] where targets[t + 1]; the last position predicts nothing.
    sample = EncodedSample(np.array([5, 6, 7, 8]), np.array([False, False, True, True]))
    assert sample.labels().tolist() == [-100, 7, 8, -100]
    assert len(sample) == 4 and sample.n_targets == 2


def test_template_rejection_is_an_invalid_record(tiny_checkpoints: dict[str, Path]) -> None:
    tok = _tokenizer(tiny_checkpoints, "qwen2")
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    encoder = Encoder(tok, seq_len=512)
    with pytest.raises(InvalidRecordError, match=r"^data/x\.jsonl:3: the chat template rejected .*no system role"):
        encoder.encode(_messages(CONVERSATION))
    # The same template without markers: replies found by rendering prefixes.
    sample = encoder.encode(_messages(CONVERSATION[1:]))
    assert [tok.decode(run) for run in _runs(sample.ids, sample.targets)] == ["Four.", "Six, of course.<|im_end|>"]


def test_encoder_checks_its_options(tiny_checkpoints: dict[str, Path]) -> None:
    tok = _tokenizer(tiny_checkpoints, "qwen2")
    for bad in (1, True, 2.0):
        with pytest.raises(DataError, match=r"seq_len=.*: must be an integer >= 2"):
            Encoder(tok, seq_len=bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"train_on='prompt': expected one of completion, all"):
        Encoder(tok, seq_len=8, train_on="prompt")  # type: ignore[arg-type]
    tok.chat_template = {"a": "{{ 1 }}", "b": "{{ 2 }}"}
    with pytest.raises(TokenizerError, match=r"none named 'default'"):
        Encoder(tok, seq_len=8)


@given(st.lists(st.booleans(), max_size=12))
def test_last_run_start(mask: list[bool]) -> None:
    # Oracle: scan from the left, remembering where each run of True values starts.
    expected, previous = len(mask), False
    for index, on in enumerate(mask):
        if on and not previous:
            expected = index
        previous = on
    assert _last_run_start(mask) == expected
