"""entrenar.distill: the teacher vocabulary rule, layer pairing, the progressive schedule and the distances."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aprender.text import Tokenizer
from entrenar.distill.hidden import active_pairs, auto_pairs, check_pairs, hidden_distance, make_projection
from entrenar.distill.vocab import teacher_rows
from entrenar.errors import ConfigError


def test_same_padded_and_different_vocabularies(vocab_models: dict[str, Path]) -> None:
    student = Tokenizer.from_dir(vocab_models["qwen2"])
    assert teacher_rows(student, 1024, Tokenizer.from_dir(vocab_models["qwen2"]), 1024, "t") is None
    # a teacher that only adds tokens after the student's: its head is cut to the student's 1024 rows
    assert teacher_rows(student, 1024, Tokenizer.from_dir(vocab_models["extra"]), 1027, "t") == 1024
    # ids swapped (and tokens removed): the first id whose token differs is named, with both sizes
    with pytest.raises(ConfigError, match=r"teacher t has 1020 tokens and the student 1024, and id 7 is .* in the"):
        teacher_rows(student, 1024, Tokenizer.from_dir(vocab_models["fewer"]), 1020, "t")
    with pytest.raises(ConfigError, match="fewer than the student's"):
        teacher_rows(Tokenizer.from_dir(vocab_models["extra"]), 1027, student, 1024, "t")


def test_auto_pairs_match_relative_depth() -> None:
    assert auto_pairs(4, 8) == [(0, 1), (1, 3), (2, 5), (3, 7)]  # the last with the last
    assert auto_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert auto_pairs(2, 30) == [(0, 14), (1, 29)]
    check_pairs([(0, 1), (1, 7)], 2, 8)
    with pytest.raises(ConfigError, match=r"pair \[2, 1\] is outside the student's 2 or the teacher's 8 layers"):
        check_pairs([(2, 1)], 2, 8)


def test_progressive_schedule_adds_pairs_from_the_bottom() -> None:
    pairs = [(0, 1), (1, 3), (2, 5), (3, 7)]
    assert [active_pairs(pairs, "progressive", step, 100) for step in (0, 24, 25, 49, 50, 75, 99)] == [
        1,
        1,
        2,
        2,
        3,
        4,
        4,
    ]
    assert active_pairs(pairs, "constant", 0, 100) == 4


def test_distances_and_projection() -> None:
    generator = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    mse = F.mse_loss(s, t, reduction="none").mean(-1).sum()
    torch.testing.assert_close(hidden_distance(s, t, "mse"), mse)
    torch.testing.assert_close(hidden_distance(s, t, "cosine"), (1 - F.cosine_similarity(s, t)).sum())
    assert float(hidden_distance(t, t, "cosine")) == pytest.approx(0, abs=1e-6)
    assert isinstance(make_projection(8, 8), torch.nn.Identity)
    projection = make_projection(8, 12)
    assert projection(s).shape == (5, 12) and sum(p.numel() for p in projection.parameters()) == 96
