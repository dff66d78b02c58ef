"""entrenar.merge.vocab against mergekit 0.1.5 run end to end on tiny models with different vocabularies.

The oracle is mergekit's own ``run_merge`` with ``merge_method: linear``: its output tokenizer (read by
transformers) and its ``embed_tokens``/``lm_head`` must equal our output vocabulary and the same linear
merge (sum of weight * row, divided by the weights' sum) of our aligned rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from aprender.text import Tokenizer
from entrenar.errors import MergeError
from entrenar.merge.vocab import MergedVocabulary, align_rows, build_vocabulary, check_vocabularies
from fixtures.vocab_models import REMOVED, ROWS


@pytest.fixture(scope="module")
def models(vocab_models: dict[str, Path]) -> dict[str, Path]:
    """``qwen2`` (1024 tokens), ``extra`` (1027 + one beyond vocab_size), ``fewer`` (1020, permuted)."""
    return vocab_models


def _mergekit(
    out: Path, models: list[Path], weights: list[float], base: Path | None, tokenizer: dict[str, Any]
) -> tuple[dict[str, int], Any, dict[str, torch.Tensor]]:
    """Run mergekit's linear merge; return its output vocabulary, tokenizer and vocabulary tensors."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoTokenizer

    config: dict[str, Any] = {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights, strict=True)],
        **tokenizer,
    }
    if base is not None:
        config["base_model"] = str(base)
    run_merge(
        MergeConfiguration.model_validate(yaml.safe_load(yaml.safe_dump(config))),
        str(out),
        MergeOptions(quiet=True, write_model_card=False),
    )
    hf = AutoTokenizer.from_pretrained(out)
    merged = load_file(out / "model.safetensors")
    return hf.get_vocab(), hf, {name: merged[name] for name in ROWS}


def _ours(
    vocab: MergedVocabulary, folders: list[Path], weights: list[float], base_index: int | None
) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor]]:
    """Our aligned rows per input and their linear merge, for each vocabulary tensor."""
    aligned = {
        name: align_rows([load_file(f / "model.safetensors")[name] for f in folders], vocab, base_index)
        for name in ROWS
    }
    merged = {
        name: sum(w * t for w, t in zip(weights, rows, strict=True)) / sum(weights) for name, rows in aligned.items()
    }
    return aligned, merged


def _vocab(vocab: MergedVocabulary) -> dict[str, int]:
    return vocab.tokenizer.backend.get_vocab(with_added_tokens=True)


def _assert_rows_match(
    ours: torch.Tensor, theirs: torch.Tensor, our_vocab: dict[str, int], their_vocab: dict[str, int]
) -> None:
    """Row of each token equal (<= 1e-5), wherever each side put it; padding rows compared in place."""
    tokens = list(our_vocab)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(
        ours[[our_vocab[t] for t in tokens]], theirs[[their_vocab[t] for t in tokens]], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(ours[len(tokens) :], theirs[len(tokens) :], atol=1e-5, rtol=0)


def _rows(folder: Path, name: str = ROWS[0]) -> torch.Tensor:
    return load_file(folder / "model.safetensors")[name]


def _id(folder: Path, token: str) -> int:
    token_id = Tokenizer.from_dir(folder).token_to_id(token)
    assert token_id is not None
    return token_id


def test_fixtures_read_the_same_in_transformers_and_aprender(models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    for folder in models.values():
        assert (
            Tokenizer.from_dir(folder).backend.get_vocab(with_added_tokens=True)
            == AutoTokenizer.from_pretrained(folder).get_vocab()
        )
    assert Tokenizer.from_dir(models["extra"]).vocab_size == 1028 and _rows(models["extra"]).shape[0] == 1027
    assert Tokenizer.from_dir(models["fewer"]).vocab_size == _rows(models["fewer"]).shape[0] == 1020


def test_base_source_strips_the_base_and_permutes_by_token(models: dict[str, Path], tmp_path: Path) -> None:
    folders, weights = [models["extra"], models["fewer"]], [0.5, 0.5]
    their_vocab, hf, theirs = _mergekit(
        tmp_path / "mk", folders, weights, models["extra"], {"tokenizer_source": "base"}
    )
    vocab = build_vocabulary(folders, ["extra", "fewer"], 0, "base")
    assert _vocab(vocab) == their_vocab and len(their_vocab) == vocab.size == vocab.num_tokens == 1027
    assert "<|beyond|>" not in their_vocab  # id 1027 >= vocab_size: stripped
    aligned, merged = _ours(vocab, folders, weights, 0)
    for name in ROWS:
        _assert_rows_match(merged[name], theirs[name], _vocab(vocab), their_vocab)
    # Tokens only the base has: the donor's row; swapped tokens: found by string.
    tool = _vocab(vocab)["<|tool_call|>"]
    torch.testing.assert_close(aligned[ROWS[0]][1][tool], _rows(models["extra"])[tool], atol=0, rtol=0)
    token = Tokenizer.from_dir(models["qwen2"]).id_to_token(10)
    assert token is not None and vocab.permutations[1][_vocab(vocab)[token]] == 500
    # Saved, transformers reads the same vocabulary and special tokens.
    from transformers import AutoTokenizer

    vocab.tokenizer.save(tmp_path / "ours")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "ours")
    assert reloaded.get_vocab() == their_vocab and reloaded.eos_token == hf.eos_token


def test_union_averages_the_rows_of_tokens_the_base_lacks(models: dict[str, Path], tmp_path: Path) -> None:
    folders, weights = [models["fewer"], models["extra"], models["qwen2"]], [1.0, 1.0, 1.0]
    their_vocab, hf, theirs = _mergekit(
        tmp_path / "mk", folders, weights, models["fewer"], {"tokenizer_source": "union"}
    )
    vocab = build_vocabulary(folders, ["fewer", "extra", "qwen2"], 0, "union")
    ours = _vocab(vocab)
    # mergekit adds new tokens in a hash map's order (it varies per run): same tokens, the base's ids kept.
    assert ours.keys() == their_vocab.keys() and len(ours) == vocab.size == 1020 + REMOVED + 3
    assert {t: i for t, i in ours.items() if i < 1020} == {t: i for t, i in their_vocab.items() if i < 1020}
    settings = {
        str(t.content): (t.special, t.normalized) for t in vocab.tokenizer.backend.get_added_tokens_decoder().values()
    }
    assert settings == {str(t.content): (t.special, t.normalized) for t in hf.added_tokens_decoder.values()}
    aligned, merged = _ours(vocab, folders, weights, 0)
    for name in ROWS:
        _assert_rows_match(merged[name], theirs[name], ours, their_vocab)
    # A token in extra and qwen2 but not the base: fewer's row is their mean.
    token = Tokenizer.from_dir(models["qwen2"]).id_to_token(1023)
    assert token is not None and vocab.permutations[0][ours[token]] == -1
    mean = (_rows(models["extra"])[1023] + _rows(models["qwen2"])[1023]) / 2
    torch.testing.assert_close(aligned[ROWS[0]][0][ours[token]], mean, atol=0, rtol=0)


def test_union_padded_takes_the_base_row_and_pads_with_the_mean(models: dict[str, Path], tmp_path: Path) -> None:
    folders, weights = [models["extra"], models["fewer"], models["qwen2"]], [0.5, 0.3, 0.2]
    tokenizer = {"tokenizer": {"source": "union", "pad_to_multiple_of": 64}}
    their_vocab, _, theirs = _mergekit(tmp_path / "mk", folders, weights, models["extra"], tokenizer)
    vocab = build_vocabulary(folders, ["extra", "fewer", "qwen2"], 0, "union", pad_to_multiple_of=64)
    assert _vocab(vocab) == their_vocab and (vocab.num_tokens, vocab.size) == (1027, 1088)
    aligned, merged = _ours(vocab, folders, weights, 0)
    for name in ROWS:
        assert merged[name].shape == theirs[name].shape == (1088, 64)
        _assert_rows_match(merged[name], theirs[name], their_vocab, their_vocab)
    # A token in the base and qwen2 but not fewer: fewer takes the base's row, not the mean.
    fewer_rows = aligned[ROWS[0]][1]
    torch.testing.assert_close(fewer_rows[1023], _rows(models["extra"])[1023], atol=0, rtol=0)
    torch.testing.assert_close(fewer_rows[1027:], fewer_rows[:1027].mean(dim=0).expand(61, 64), atol=0, rtol=0)


def test_model_source_uses_that_model_tokenizer(models: dict[str, Path], tmp_path: Path) -> None:
    folders, weights = [models["qwen2"], models["extra"], models["fewer"]], [0.5, 0.25, 0.25]
    their_vocab, _, theirs = _mergekit(
        tmp_path / "mk", folders, weights, None, {"tokenizer_source": str(models["fewer"])}
    )
    vocab = build_vocabulary(folders, ["qwen2", "extra", "fewer"], None, 2)
    assert _vocab(vocab) == their_vocab and vocab.size == 1020
    _, merged = _ours(vocab, folders, weights, None)
    for name in ROWS:
        _assert_rows_match(merged[name], theirs[name], their_vocab, their_vocab)


def test_same_vocabulary_gives_identity_permutations(models: dict[str, Path]) -> None:
    folders = [models["qwen2"], models["qwen2"]]
    vocab = build_vocabulary(folders, ["a", "b"], None, "base")
    assert vocab.size == 1024 and all(torch.equal(p, torch.arange(1024)) for p in vocab.permutations)
    rows = _rows(models["qwen2"])
    assert all(torch.equal(out, rows) for out in align_rows([rows, rows], vocab, None))


def test_rows_for_missing_tokens_follow_mergekit_rules() -> None:
    # Tokens 0..4 with inputs (base = 0): all have 0; only 1 has 1; base and 2 have 2; 1 and 2 have 3; none has 4.
    table = torch.tensor([[0, -1, 1, -1, -1, -1], [1, 0, -1, 2, -1, -1], [2, -1, 0, 1, -1, -1]])
    vocab = MergedVocabulary(Tokenizer(Backend(BPE())), 6, tuple(table), 5, ("a", "b", "c"))
    inputs = [
        torch.tensor([[1.0], [2.0]]),
        torch.tensor([[10.0], [20.0], [30.0]]),
        torch.tensor([[100.0], [200.0], [300.0]]),
    ]
    # Expected by hand: own row where present; donor b for 1; base a (2.0) for 2; mean (30 + 200) / 2 for 3; 0 for 4;
    # the padding row is the mean of the first five.
    a, b, c = (out.squeeze(1).tolist() for out in align_rows(inputs, vocab, base_index=0))
    assert a[:5] == [1.0, 10.0, 2.0, 115.0, 0.0] and a[5] == pytest.approx(sum(a[:5]) / 5)
    assert b[:5] == [20.0, 10.0, 2.0, 30.0, 0.0]
    assert c[:5] == [300.0, 10.0, 100.0, 200.0, 0.0]
    without_base = align_rows(inputs, vocab, base_index=None)[1].squeeze(1).tolist()
    assert without_base[2] == (2.0 + 100.0) / 2  # no base: the mean of a and c
    # Along axis 1 (a head stored transposed) the result is the same, transposed.
    transposed = align_rows([t.T for t in inputs], vocab, base_index=0, axis=1)
    assert transposed[0].squeeze(0).tolist() == a


def test_check_vocabularies_names_each_size() -> None:
    check_vocabularies([1024, 1024], ["a", "b"], None)
    check_vocabularies([1024, 1027], ["a", "b"], "union")
    with pytest.raises(
        MergeError, match=r"^the models' vocabularies differ \(a: 1024, b: 1027\); set tokenizer_source"
    ):
        check_vocabularies([1024, 1027], ["a", "b"], None)


def test_rows_that_do_not_fit_are_an_error(models: dict[str, Path]) -> None:
    vocab = build_vocabulary([models["qwen2"], models["extra"]], ["qwen2", "extra"], 0, "union")
    rows = _rows(models["qwen2"])
    with pytest.raises(MergeError, match=r"^extra: 1000 token rows but its tokenizer uses id 1026"):
        align_rows([rows, rows[:1000]], vocab, 0)
    with pytest.raises(MergeError, match="cannot be aligned"):
        align_rows([rows, rows[:, :8]], vocab, 0)
