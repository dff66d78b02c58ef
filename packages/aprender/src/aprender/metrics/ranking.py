"""Ranking metrics for retrieval and recommendation: hit@k, MRR, DCG@k, NDCG@k and MAP@k.

Input format (all functions): a batch of ``Q`` queries.

- ``ranked``: one ranking per query, best first: a sequence of item-id sequences (lists, tuples,
  1-D arrays or tensors), or a ``(Q, L)`` array/tensor such as the indices from ``topk``. Item ids
  are any hashable values; an item may appear only once per ranking; rankings may differ in length.
- ``relevant`` / ``relevance``: one judgement per query, either a collection of relevant item ids
  (each with grade 1) or a mapping ``item id -> grade`` (finite, >= 0; grade 0 = not relevant).
  Items missing from a judgement have grade 0.

Every metric is the mean over queries of a per-query value. A query without relevant items scores
0 (no hit, no reciprocal rank, NDCG and AP 0, as scikit-learn's ``ndcg_score`` does). ``k`` cuts each
ranking to its first ``k`` items; a ranking shorter than ``k`` is used whole.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from aprender.errors import MetricInputError
from aprender.metrics._arrays import check_k, is_tensor, to_numpy

Gain = Literal["linear", "exponential"]
_GAINS = ("linear", "exponential")
_REAL = (int, float, np.integer, np.floating)
Query = tuple[list[Hashable], dict[Hashable, float]]


def hit_at_k(ranked: Any, relevant: Any, k: int) -> float:
    """Fraction of queries with at least one relevant item among their top ``k``.

    Args:
        ranked: ``Q`` rankings (see the module docstring).
        relevant: ``Q`` judgements.
        k: cut-off, >= 1.

    Returns:
        Hit rate in [0, 1].

    Raises:
        MetricInputError: malformed inputs, ``Q`` mismatch or zero queries, or ``k`` < 1.
    """
    k = check_k(k)
    return _mean(
        1.0 if any(item in _relevant_set(grades) for item in items[:k]) else 0.0
        for items, grades in _queries(ranked, relevant)
    )


def mean_reciprocal_rank(ranked: Any, relevant: Any, *, k: int | None = None) -> float:
    """Mean of ``1 / rank`` of the first relevant item (0 when none is in the top ``k``).

    Reference: Voorhees, "The TREC-8 question answering track report", TREC 1999,
    https://trec.nist.gov/pubs/trec8/papers/qa_report.pdf.

    Args:
        ranked: ``Q`` rankings.
        relevant: ``Q`` judgements.
        k: cut-off, >= 1; None scores whole rankings.

    Returns:
        MRR in [0, 1].

    Raises:
        MetricInputError: malformed inputs, ``Q`` mismatch or zero queries, or ``k`` < 1.
    """
    cut = None if k is None else check_k(k)
    return _mean(_reciprocal_rank(items[:cut], _relevant_set(grades)) for items, grades in _queries(ranked, relevant))


def dcg_at_k(ranked: Any, relevance: Any, k: int, *, gain: Gain = "linear") -> float:
    """Discounted cumulative gain ``sum_{i=1..k} g(rel_i) / log2(i + 1)``, averaged over queries.

    Reference: Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques", ACM TOIS
    20(4), 2002, https://doi.org/10.1145/582415.582418. The discount ``log2(i + 1)`` is the usual
    form (also scikit-learn's); ``gain="linear"`` uses the grade, ``"exponential"`` uses
    ``2**grade - 1`` (Burges et al., ICML 2005, https://doi.org/10.1145/1102351.1102363).

    Args:
        ranked: ``Q`` rankings.
        relevance: ``Q`` judgements (graded mappings or collections).
        k: cut-off, >= 1.
        gain: ``"linear"`` or ``"exponential"``.

    Returns:
        Mean DCG@k (>= 0).

    Raises:
        MetricInputError: malformed inputs, ``Q`` mismatch or zero queries, ``k`` < 1, unknown ``gain``.
    """
    k = check_k(k)
    _check_gain(gain)
    return _mean(
        _dcg([grades.get(item, 0.0) for item in items[:k]], gain) for items, grades in _queries(ranked, relevance)
    )


def ndcg_at_k(ranked: Any, relevance: Any, k: int, *, gain: Gain = "linear") -> float:
    """DCG@k divided by the ideal DCG@k (all judged items sorted by grade), averaged over queries.

    Arguments and reference as in :func:`dcg_at_k`. With linear gain, scores without ties and every
    item ranked, this equals ``sklearn.metrics.ndcg_score``.

    Returns:
        Mean NDCG@k in [0, 1].

    Raises:
        MetricInputError: malformed inputs, ``Q`` mismatch or zero queries, ``k`` < 1, unknown ``gain``.
    """
    k = check_k(k)
    _check_gain(gain)
    values = []
    for items, grades in _queries(ranked, relevance):
        ideal = _dcg(sorted(grades.values(), reverse=True)[:k], gain)
        values.append(_dcg([grades.get(item, 0.0) for item in items[:k]], gain) / ideal if ideal > 0 else 0.0)
    return _mean(values)


def map_at_k(ranked: Any, relevant: Any, k: int) -> float:
    """Mean average precision: ``AP@k = sum_{i<=k} P@i * rel_i / min(|R|, k)``, averaged over queries.

    ``P@i`` is the precision of the top ``i`` items and ``rel_i`` is 1 when item ``i`` is relevant.
    Dividing by ``min(|R|, k)`` (not ``|R|``) lets a perfect top-k score 1 when there are more than
    ``k`` relevant items. Reference: Manning, Raghavan & Schütze, "Introduction to Information
    Retrieval", 2008, section 8.4, https://nlp.stanford.edu/IR-book/html/htmledition/evaluation-of-ranked-retrieval-results-1.html.

    Args:
        ranked: ``Q`` rankings.
        relevant: ``Q`` judgements.
        k: cut-off, >= 1.

    Returns:
        MAP@k in [0, 1].

    Raises:
        MetricInputError: malformed inputs, ``Q`` mismatch or zero queries, or ``k`` < 1.
    """
    k = check_k(k)
    return _mean(
        _average_precision(items[:k], _relevant_set(grades), k) for items, grades in _queries(ranked, relevant)
    )


def _mean(values: Any) -> float:
    return float(np.mean(list(values)))


def _check_gain(gain: str) -> None:
    if gain not in _GAINS:
        raise MetricInputError(f"gain={gain!r} is unknown; use one of {_GAINS}")


def _dcg(grades: Sequence[float], gain: Gain) -> float:
    gains = np.asarray(grades, dtype=np.float64)
    if gain == "exponential":
        gains = np.exp2(gains) - 1.0
    return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def _reciprocal_rank(items: list[Hashable], relevant: set[Hashable]) -> float:
    return next((1.0 / rank for rank, item in enumerate(items, start=1) if item in relevant), 0.0)


def _average_precision(items: list[Hashable], relevant: set[Hashable], k: int) -> float:
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(items, start=1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k)


def _relevant_set(grades: dict[Hashable, float]) -> set[Hashable]:
    return {item for item, grade in grades.items() if grade > 0}


def _queries(ranked: Any, relevance: Any) -> list[Query]:
    rankings = _rankings(ranked)
    judgements = [_judgement(entry, index) for index, entry in enumerate(_outer(relevance, "relevance"))]
    if len(rankings) != len(judgements):
        raise MetricInputError(
            f"ranked has {len(rankings)} queries but relevance has {len(judgements)}; pass one judgement per query"
        )
    if not rankings:
        raise MetricInputError("ranked is empty; pass at least one query")
    return list(zip(rankings, judgements, strict=True))


def _outer(value: Any, name: str) -> list[Any]:
    """The per-query entries of a batch argument (a sequence, or the rows of a 2-D array)."""
    if is_tensor(value) or isinstance(value, np.ndarray):
        array = to_numpy(value, name)
        if array.ndim != 2:
            raise MetricInputError(f"{name}: an array must be 2-D (queries, items), got shape {array.shape}")
        return list(array)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise MetricInputError(f"{name}: expected a sequence with one entry per query, got {type(value).__name__}")
    return list(value)


def _rankings(ranked: Any) -> list[list[Hashable]]:
    rankings = []
    for index, row in enumerate(_outer(ranked, "ranked")):
        if is_tensor(row) or isinstance(row, np.ndarray):
            row = to_numpy(row, f"ranked[{index}]").tolist()
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise MetricInputError(f"ranked[{index}]: expected a sequence of item ids, got {type(row).__name__}")
        items = list(row)
        try:
            distinct = len(set(items))
        except TypeError:
            raise MetricInputError(f"ranked[{index}]: item ids must be hashable (ints, strings)") from None
        if distinct != len(items):
            raise MetricInputError(f"ranked[{index}]: lists an item twice; rank each item once")
        rankings.append(items)
    return rankings


def _judgement(entry: Any, index: int) -> dict[Hashable, float]:
    """Grades of one query: a mapping is validated, a collection of ids gets grade 1 each."""
    name = f"relevance[{index}]"
    if is_tensor(entry) or isinstance(entry, np.ndarray):
        entry = to_numpy(entry, name).ravel().tolist()
    if isinstance(entry, str | bytes) or not hasattr(entry, "__iter__"):
        raise MetricInputError(f"{name}: expected a set of item ids or a dict item -> grade, got {entry!r}")
    try:
        grades = dict(entry) if isinstance(entry, Mapping) else dict.fromkeys(entry, 1.0)
    except TypeError:
        raise MetricInputError(f"{name}: item ids must be hashable (ints, strings)") from None
    for item, grade in grades.items():
        if isinstance(grade, bool) or not isinstance(grade, _REAL) or not math.isfinite(grade) or grade < 0:
            raise MetricInputError(f"{name}[{item!r}]={grade!r}: grades must be finite numbers >= 0")
    return {item: float(grade) for item, grade in grades.items()}
