"""Fixtures of the benchmark smoke tests: each test module names its script in ``SCRIPT``; one torch thread.

One thread, as the benchmarks' workers run: tiny matmuls gain nothing from two, and on a busy machine two
threads wait on each other (steps 30x slower were seen).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from fixtures.threads import torch_threads

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench(request: pytest.FixtureRequest) -> ModuleType:
    """The module's benchmark script (``benchmarks/<SCRIPT>``), imported as a module."""
    script = BENCHMARKS / request.module.SCRIPT
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_cache(tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A benchmark's cache folder for ``main([..., "--cache", str(bench_cache)])``: the tiny Llama stands in for
    the converted SmolLM2 folder (reused when its config.json is there), and benchmarks/ is on ``sys.path``
    as when a script runs (forward_backward.py is beside it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    shutil.copytree(tiny_checkpoints["llama"], tmp_path / "smollm2")
    return tmp_path


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield
