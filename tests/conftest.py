"""Suite-wide settings: no test may reach the real Hugging Face Hub.

Fixture modules live in tests/fixtures/ and are registered below as plugins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "fixtures.tiny_models",
    "fixtures.smollm2",
    "fixtures.hub",
    "fixtures.llama_cpp",
    "fixtures.vocab_models",
]

# An endpoint that refuses connections at once: any accidental Hub call fails fast and loudly.
_DEAD_ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the HF client at a dead local endpoint and a private cache; drop any real token."""
    home: Path = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", _DEAD_ENDPOINT)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `cuda` tests on machines without a GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
