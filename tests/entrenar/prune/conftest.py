"""The pruning tests run with one torch thread: tiny tensors, a shared 2-core machine, reproducible sums."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fixtures.threads import torch_threads


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield
