"""Every entry point that takes a model classifies a reference by the one rule of `aprender.reference`.

The same strings go to the config (``model.path``), ``entrenar init --base`` (`inspect_base`), ``entrenar
generate --model`` (the CLI), publish's base model (`resolve_base_model`) and `from_pretrained`; each must
take it for a local model (a folder, or a .gguf file it converts), try the Hub (offline here, so the Hub
client refuses with `HubOfflineError`), or refuse it with its own one-line error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import aprender.format.convert as convert_module
from aprender.errors import AprenderError, HubOfflineError, ModelReferenceError
from aprender.format.gguf_export import export_gguf
from aprender.reference import classify_model_reference, resolve_model_folder
from entrenar.config import TrainConfig, load_config
from entrenar.init import inspect_base
from entrenar.models import from_pretrained
from entrenar.publish.export import resolve_base_model
from fixtures.cli import run_cli

LONG_NAME = "n" * 96  # the Hub's longest repo name

# (reference, what the resolver makes of it): folder, gguf, hub or refused
CASES: list[tuple[str, str]] = [
    ("model", "folder"),
    ("./model/", "folder"),
    ("~/model", "folder"),
    ("org/name", "folder"),  # an existing folder named like a repo id, relative to the working directory
    ("tiny.gguf", "gguf"),
    ("weights.safetensors", "refused"),  # an existing file other than .gguf
    ("config.json", "refused"),
    ("notes", "refused"),
    ("Qwen/Qwen2.5-0.5B", "hub"),
    ("meta-llama/Llama-3.2-1B", "hub"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub"),
    ("org/model.v2", "hub"),  # ".v2" is no file suffix
    (f"org/{LONG_NAME}", "hub"),
    (f"org/{LONG_NAME}n", "refused"),  # 97 characters
    ("gpt2", "refused"),  # a repo id needs its namespace
    ("a/b/c", "refused"),
    ("./rel", "refused"),
    ("~/x", "refused"),
    ("/abs/missing", "refused"),
    ("org/name.gguf", "refused"),  # a file suffix, and no such file
    ("org/weights.safetensors", "refused"),
    ("org/na me", "refused"),
    ("org/-bad", "refused"),
    ("org/bad--name", "refused"),
    ("org/name.git", "refused"),
    ("org/modèle", "refused"),
    ("models\ndir", "refused"),
    ("x" * 5000, "refused"),
    ("", "refused"),
    (" ", "refused"),
]


@pytest.fixture
def project(tmp_path: Path, tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory (and HOME): two copies of the tiny Llama, its GGUF export, other files, data."""
    root = tmp_path / "project"
    shutil.copytree(tiny_checkpoints["llama"], root / "model")
    shutil.copytree(tiny_checkpoints["llama"], root / "org" / "name")
    export_gguf(tiny_checkpoints["llama"], root / "tiny.gguf", gguf_type="f32")
    shutil.copyfile(tiny_checkpoints["llama"] / "model.safetensors", root / "weights.safetensors")
    shutil.copyfile(tiny_checkpoints["llama"] / "config.json", root / "config.json")
    (root / "notes").write_text("not a model\n")
    (root / "train.jsonl").write_text('{"text": "hello there"}\n')
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub id reaches the Hub client, which refuses offline
    return root


def _label(reference: str) -> str:
    return reference if len(reference) <= 40 else f"{reference[:20]}... ({len(reference)} characters)"


def _outcome(call: Callable[[str], object], reference: str) -> str:
    """``local``, ``hub`` (the Hub client was asked, or the config says so) or ``refused`` (the entry point's error)."""
    try:
        result = call(reference)
    except AprenderError as exc:
        asked_hub = isinstance(exc, HubOfflineError) or isinstance(exc.__cause__, HubOfflineError)
        return "hub" if asked_hub else "refused"
    return "hub" if result == "hub" else "local"


def _config(reference: str) -> str:
    """The config's ``model.source`` (it never asks the Hub): ``local`` or ``hub``."""
    return TrainConfig.from_dict({"model": {"path": reference}, "data": {"train_path": "train.jsonl"}}).model.source


def _generate(capsys: pytest.CaptureFixture[str]) -> Callable[[str], object]:
    def run(reference: str) -> None:
        code, _, err = run_cli(capsys, "generate", "hello", "--model", reference, "--max-new-tokens", "1")
        if code != 0:
            assert err.count("\n") == 1 and err.startswith("error: "), err  # one line
            raise (HubOfflineError if "HF_HUB_OFFLINE=1" in err else AprenderError)(err)

    return run


ENTRY_POINTS: dict[str, Callable[[pytest.CaptureFixture[str]], Callable[[str], object]]] = {
    "config": lambda capsys: _config,
    "init": lambda capsys: inspect_base,
    "generate": _generate,
    "publish": lambda capsys: lambda reference: resolve_base_model(reference, None, offline=False),
    "loading": lambda capsys: from_pretrained,
}


def _resolver_kind(reference: str) -> str:
    try:
        return classify_model_reference(reference).kind
    except ModelReferenceError:
        return "refused"


def test_the_table_is_the_resolvers(project: Path) -> None:
    assert [(_label(r), _resolver_kind(r)) for r, _ in CASES] == [(_label(r), kind) for r, kind in CASES]


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_every_entry_point_classifies_alike(
    entry_point: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call = ENTRY_POINTS[entry_point](capsys)
    seen = [(_label(reference), _outcome(call, reference)) for reference, _ in CASES]
    local = ("folder", "gguf")  # a .gguf file is converted, then loaded like a folder
    assert seen == [(_label(reference), "local" if kind in local else kind) for reference, kind in CASES]


# ------------------------------------------------------------------------------------- .gguf model.path


def test_a_gguf_model_path_is_validated_converted_once_and_loads(
    project: Path, tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "config.yaml").write_text("model: {path: tiny.gguf}\ndata: {train_path: train.jsonl}\n")
    model = load_config(project / "config.yaml").model
    assert (model.path, model.source) == (str(project / "tiny.gguf"), "local")
    conversions: list[Any] = []
    real = convert_module.convert_gguf_to_hf
    monkeypatch.setattr(convert_module, "convert_gguf_to_hf", lambda *a, **k: conversions.append(a) or real(*a, **k))
    folder = resolve_model_folder(model.path, model.revision)
    assert resolve_model_folder(model.path, model.revision) == folder and len(conversions) == 1
    converted, original = from_pretrained(folder), from_pretrained(tiny_checkpoints["llama"])
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    # F32 GGUF: the weights survive the round trip exactly (llama.cpp's q/k row order is undone)
    torch.testing.assert_close(converted(ids), original(ids), rtol=0, atol=0)


@pytest.mark.parametrize("path", ["weights.safetensors", "config.json", "notes"])
def test_other_files_are_refused_by_validate_in_one_line(
    path: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "config.yaml").write_text(f"model: {{path: {path}}}\ndata: {{train_path: train.jsonl}}\n")
    code, out, err = run_cli(capsys, "validate", "config.yaml")
    message = f"{path}: is a file; pass the model folder holding config.json, or a .gguf file"
    assert (code, out, err) == (2, "", f"error: config.yaml: model.path: {message}\n")
