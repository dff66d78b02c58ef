"""`make_spec`: every bad request is one line naming what to fix; the spec says what it will do."""

from __future__ import annotations

import math

import pytest

from aprender.errors import PruningError
from entrenar.prune.spec import METHODS, PATTERNS, make_spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "random", "sparsity": 0.5}, "method 'random' is unknown; use one of magnitude, wanda, sparsegpt"),
        ({"method": "wanda"}, "pass exactly one of --sparsity"),
        ({"method": "wanda", "sparsity": 0.5, "pattern": "2:4"}, "pass exactly one of --sparsity"),
        ({"method": "wanda", "pattern": "3:4"}, "pattern '3:4' is unknown; use one of 2:4, 4:8"),
        ({"method": "wanda", "sparsity": 1.0}, "sparsity 1.0 is outside [0, 1)"),
        ({"method": "wanda", "sparsity": -0.1}, "sparsity -0.1 is outside [0, 1)"),
        ({"method": "wanda", "sparsity": math.nan}, "sparsity nan is outside [0, 1)"),
        ({"method": "wanda", "sparsity": 0.5, "skip": [" "]}, "--skip got an empty pattern"),
    ],
)
def test_bad_requests_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(PruningError) as info:
        make_spec(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unstructured_spec() -> None:
    spec = make_spec("wanda", sparsity=0.5, skip=["*.down_proj"])
    assert (spec.nm, spec.target, spec.group) == (None, 0.5, "output row")
    assert spec.describe() == "WANDA, 50% unstructured (per output row)"
    assert spec.skips("model.layers.3.mlp.down_proj")
    assert not spec.skips("model.layers.3.mlp.up_proj")


@pytest.mark.parametrize(("pattern", "nm"), list(PATTERNS.items()))
def test_pattern_spec(pattern: str, nm: tuple[int, int]) -> None:
    spec = make_spec("sparsegpt", pattern=pattern)
    assert spec.nm == nm
    assert spec.target == 0.5  # both patterns keep half
    assert spec.group == f"each group of {nm[1]} input weights"
    assert spec.describe() == f"SparseGPT, {pattern}"


def test_registry_names_and_references() -> None:
    assert list(METHODS) == ["magnitude", "wanda", "sparsegpt"]
    assert all(method.reference.startswith("https://arxiv.org/abs/") for method in METHODS.values())
    assert [m.name for m in METHODS.values() if m.needs_calibration] == ["wanda", "sparsegpt"]
