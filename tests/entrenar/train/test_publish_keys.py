"""The ``publish:`` section of a training config: access checked before training, the output published after.

Each row trains one step of LoRA on the tiny qwen2 and publishes to the local Hub as alice; the repo's
files and visibility show what the key changed. Merging, export and model cards themselves are tested
with `entrenar.publish`.
"""

from __future__ import annotations

import io
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aprender.errors import HubPermissionError
from aprender.hub import Fault
from aprender.hub.repo_id import RepoId
from entrenar.config import load_config
from entrenar.train import dry_run, run_training
from fixtures.hub import LocalHub

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


@pytest.fixture
def alice(local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    monkeypatch.setenv("HF_TOKEN", local_hub.tokens["alice"])
    return local_hub


def _publish(hub: LocalHub, tiny: Path, folder: Path, section: dict[str, Any]) -> tuple[set[str], RepoId]:
    config = runs.write_config(folder, tiny, publish=section, training={"max_steps": 1})
    console = Console(file=io.StringIO())
    result = run_training(load_config(config), console=console)
    repo = RepoId.parse(section["repo"])
    endpoint = section.get("endpoint") or hub.url
    assert result.published_url == f"{endpoint}/{repo}"
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines[-1] == f"Published: {result.published_url}"
    assert f"Auto-publishing to {repo}..." in lines
    store = hub.server.store
    return set(store.resolve(repo, "main").files), repo


@pytest.mark.parametrize(
    ("section", "present", "absent"),
    [
        (
            {"repo": "alice/a"},
            {"model.safetensors", "config.json", "tokenizer.json", "README.md"},
            {"adapter_model.safetensors"},
        ),
        (
            {"repo": "alice/b", "merge_adapters": False},
            {"adapter_model.safetensors", "adapter_config.json"},
            {"model.safetensors"},
        ),
        ({"repo": "alice/c", "model_card": False}, {"model.safetensors"}, {"README.md"}),
        ({"repo": "alice/d", "format": "gguf"}, {"d-F16.gguf"}, {"model.safetensors"}),
        ({"repo": "alice/e", "format": "gguf", "gguf_type": "q8_0"}, {"e-Q8_0.gguf"}, {"e-F16.gguf"}),
    ],
    ids=["repo", "merge_adapters", "model_card", "format", "gguf_type"],
)
def test_publish_keys_shape_the_upload(
    alice: LocalHub,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    section: dict[str, Any],
    present: set[str],
    absent: set[str],
) -> None:
    files, repo = _publish(alice, tiny_checkpoints["qwen2"], tmp_path, section)
    assert present <= files and not absent & files, files
    assert not alice.server.store.is_private(repo)


def test_private(alice: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    _, repo = _publish(alice, tiny_checkpoints["qwen2"], tmp_path, {"repo": "alice/secret", "private": True})
    assert alice.server.store.is_private(repo)


def test_endpoint(
    alice: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refuses connections: only publish.endpoint works
    files, _ = _publish(alice, tiny_checkpoints["qwen2"], tmp_path, {"repo": "alice/ep", "endpoint": alice.url})
    assert "model.safetensors" in files


def test_access_is_checked_before_training(alice: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], publish={"repo": "bob/not-yours"})
    for action in (run_training, dry_run):
        with pytest.raises(HubPermissionError, match="bob"):
            action(load_config(config), console=Console(file=io.StringIO()))
    assert not (tmp_path / "out").exists()  # nothing was trained or written


@pytest.mark.parametrize("kind", ["error", "cut"])
def test_a_blip_on_the_token_check_before_training_is_retried(
    alice: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path, kind: str, backoff_waits: list[float]
) -> None:
    fault = alice.server.faults.add(Fault(kind, path="^/api/whoami-v2$"))  # type: ignore[arg-type]
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], publish={"repo": "alice/blip"})
    console = Console(file=io.StringIO())
    dry_run(load_config(config), console=console)
    assert fault.fired == 1 and backoff_waits == [1.0]
    assert "will publish to alice/blip as alice" in console.file.getvalue()  # type: ignore[attr-defined]
