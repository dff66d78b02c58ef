"""Fault rules: which matching requests fail, and the command-line spec."""

from __future__ import annotations

import pytest

from aprender.errors import InvalidArgumentError
from aprender.hub.faults import Fault, FaultPlan, parse_fault


def test_nth_and_times_count_matching_requests_only() -> None:
    plan = FaultPlan([Fault("error", path="/commit/", method="POST", nth=2, times=2)])
    hits = [
        plan.check(m, p)
        for m, p in [
            ("POST", "/api/models/a/b/commit/main"),  # match 1: passes
            ("GET", "/api/models/a/b/commit/main"),  # wrong method: not counted
            ("POST", "/api/models/a/b/preupload/main"),  # wrong path: not counted
            ("POST", "/api/models/a/b/commit/main"),  # match 2: fails
            ("POST", "/api/models/a/b/commit/main"),  # match 3: fails
            ("POST", "/api/models/a/b/commit/main"),  # match 4: passes again
        ]
    ]
    assert hits == [None, None, None, "error", "error", None]


def test_persistent_fault_and_first_rule_wins() -> None:
    plan = FaultPlan()
    cut = plan.add(Fault("cut", times=None))
    error = plan.add(Fault("error"))
    assert [plan.check("GET", "/x") for _ in range(3)] == ["cut", "cut", "cut"]
    assert (cut.fired, error.fired) == (3, 1)  # both rules counted the first request; the first one answered
    plan.clear()
    assert plan.check("GET", "/x") is None


def test_parse_fault() -> None:
    fault = parse_fault("kind=cut, method=PUT, path=/lfs/, nth=3, times=all")
    assert (fault.kind, fault.method, fault.path, fault.nth, fault.times) == ("cut", "PUT", "/lfs/", 3, None)
    assert parse_fault("kind=error") == Fault("error")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("method=PUT", "kind=error or kind=cut is required"),
        ("kind=boom", "kind must be"),
        ("kind=error,colour=red", "is not one of"),
        ("kind=error,nth", "is not one of"),
        ("kind=error,nth=x", "must be integers"),
    ],
)
def test_parse_fault_errors(spec: str, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        parse_fault(spec)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"kind": "boom"}, "fault kind"), ({"kind": "cut", "nth": 0}, ">= 1"), ({"kind": "cut", "times": 0}, ">= 1")],
)
def test_fault_validation(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        Fault(**kwargs)  # type: ignore[arg-type]
