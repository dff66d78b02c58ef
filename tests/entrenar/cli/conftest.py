"""Fixtures of the CLI tests: one torch thread; config and data helpers shared with tests/entrenar/train."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.threads import torch_threads

_RUNS = "entrenar_train_test_runs"
if _RUNS not in sys.modules:  # the training tests' conftest may have loaded it already
    _spec = importlib.util.spec_from_file_location(_RUNS, Path(__file__).parents[1] / "train" / "_runs.py")
    assert _spec is not None and _spec.loader is not None
    sys.modules[_RUNS] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_RUNS])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: reproducible sums and no spinning threads on a shared 2-core machine."""
    with torch_threads(1):
        yield
