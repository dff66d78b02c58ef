"""aprender.metrics.regression against scikit-learn (oracle) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import MetricInputError
from aprender.metrics import mean_absolute_error, mean_squared_error, r2_score, root_mean_squared_error

FAST = settings(max_examples=80, deadline=None)
values = st.floats(-1e3, 1e3, allow_nan=False)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    n = draw(st.integers(2, 30))
    return draw(st.lists(values, min_size=n, max_size=n)), draw(st.lists(values, min_size=n, max_size=n))


@FAST
@given(data=pairs())
def test_match_sklearn(data) -> None:
    y_true, y_pred = data
    assert mean_squared_error(y_true, y_pred) == pytest.approx(skm.mean_squared_error(y_true, y_pred))
    assert mean_absolute_error(y_true, y_pred) == pytest.approx(skm.mean_absolute_error(y_true, y_pred))
    assert root_mean_squared_error(y_true, y_pred) == pytest.approx(skm.root_mean_squared_error(y_true, y_pred))
    assert r2_score(y_true, y_pred) == pytest.approx(skm.r2_score(y_true, y_pred), rel=1e-9, abs=1e-9)


@FAST
@given(target=values, n=st.integers(2, 10), pred=st.lists(values, min_size=10, max_size=10))
def test_constant_target_follows_sklearn_force_finite(target, n, pred) -> None:
    y_true = [target] * n
    assert r2_score(y_true, pred[:n]) == skm.r2_score(y_true, pred[:n])
    assert r2_score(y_true, y_true) == skm.r2_score(y_true, y_true) == 1.0


def test_hand_computed_case() -> None:
    # errors: 1 - 2 = -1, 2 - 2 = 0, 3 - 5 = -2 -> MSE (1 + 0 + 4) / 3 = 5/3, MAE 3/3 = 1.
    # mean of y_true = 2, SS_tot = 1 + 0 + 1 = 2, SS_res = 5 -> R² = 1 - 5/2 = -1.5.
    y_true, y_pred = [1.0, 2.0, 3.0], [2.0, 2.0, 5.0]
    assert mean_squared_error(y_true, y_pred) == pytest.approx(5 / 3)
    assert root_mean_squared_error(y_true, y_pred) == pytest.approx(math.sqrt(5 / 3))
    assert mean_absolute_error(y_true, y_pred) == pytest.approx(1.0)
    assert r2_score(y_true, y_pred) == pytest.approx(-1.5)


def test_multi_output_is_pooled() -> None:
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    # MSE/MAE equal sklearn's uniform average over outputs; R² is the pooled value over all elements.
    assert mean_squared_error(y_true, y_pred) == pytest.approx(skm.mean_squared_error(y_true, y_pred))
    assert mean_absolute_error(y_true, y_pred) == pytest.approx(skm.mean_absolute_error(y_true, y_pred))
    assert r2_score(y_true, y_pred) == pytest.approx(skm.r2_score(y_true.ravel(), y_pred.ravel()))


def test_tensors_and_integer_lists() -> None:
    assert mean_squared_error(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0])) == pytest.approx(0.125)
    assert mean_absolute_error([1, 2], [2, 4]) == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mean_squared_error([], []), "y_true: is empty"),
        (lambda: mean_squared_error([1.0, 2.0], [1.0]), r"y_true has shape \(2,\) but y_pred has \(1,\)"),
        (lambda: mean_absolute_error([1.0, math.inf], [1.0, 2.0]), "y_true: contains NaN or infinity"),
        (lambda: root_mean_squared_error([1.0], [math.nan]), "y_pred: contains NaN or infinity"),
        (lambda: r2_score([1.0], [1.0]), "at least 2 samples"),
        (lambda: r2_score(["a", "b"], [1.0, 2.0]), "expected numbers"),
    ],
)
def test_errors_name_the_problem(call, message) -> None:
    with pytest.raises(MetricInputError, match=message):
        call()
