"""aprender.reference: one rule for "local folder, .gguf file or Hub repo id", and the folder each stands for."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import aprender.format.convert as convert_module
from aprender.errors import FormatError, InvalidArgumentError, ModelReferenceError
from aprender.format.convert import convert_gguf_to_hf
from aprender.format.gguf_export import export_gguf
from aprender.hub import cached_file, download, upload_folder
from aprender.reference import (
    ModelReference,
    classify_model_reference,
    gguf_cache_folder,
    is_on_this_machine,
    looks_like_repo_id,
    resolve_model_folder,
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a folder, a folder named like a repo id, a .gguf file and other files."""
    root = tmp_path / "project"
    for folder in ("model", "org/name", "dir.gguf"):
        (root / folder).mkdir(parents=True)
    for name in ("tiny.gguf", "UPPER.GGUF", "weights.safetensors", "config.json", "notes"):
        (root / name).write_bytes(b"x")
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(root))
    return root


# (reference, kind, location relative to the project) or (reference, problem, None)
CASES: list[tuple[str, str, str | None]] = [
    ("model", "folder", "model"),
    ("./model/", "folder", "model"),
    ("~/model", "folder", "model"),
    ("org/name", "folder", "org/name"),  # an existing folder named like an id is local
    ("dir.gguf", "folder", "dir.gguf"),
    ("tiny.gguf", "gguf", "tiny.gguf"),
    ("UPPER.GGUF", "gguf", "UPPER.GGUF"),
    ("weights.safetensors", "file", None),
    ("config.json", "file", None),
    ("notes", "file", None),  # any file but .gguf, with or without a suffix
    ("Qwen/Qwen2.5-0.5B", "hub", None),  # ".5B" is no file suffix
    ("meta-llama/Llama-3.2-1B", "hub", None),
    ("org/model.v2", "hub", None),
    ("org/" + "n" * 96, "hub", None),  # the Hub's longest name
    ("org/" + "n" * 97, "missing", None),
    ("gpt2", "missing", None),  # the namespace is required
    ("a/b/c", "missing", None),
    ("./rel", "missing", None),
    ("~/x", "missing", None),
    ("/abs/missing", "missing", None),
    ("org/name.gguf", "missing", None),  # a file suffix: a path, and it does not exist
    ("org/config.yaml", "missing", None),
    ("org/na me", "missing", None),
    ("org/-bad", "missing", None),
    ("org/bad--name", "missing", None),
    ("org/name.git", "missing", None),
    ("org/modèle", "missing", None),
    ("models\ndir", "missing", None),
    ("x" * 5000, "missing", None),  # too long for the file system: not an error of its own
    ("", "empty", None),
    ("  ", "empty", None),
]


@pytest.mark.parametrize(("reference", "expected", "location"), CASES)
def test_one_rule_classifies_every_reference(
    project: Path, reference: str, expected: str, location: str | None
) -> None:
    if expected in ("empty", "file", "missing"):
        with pytest.raises(ModelReferenceError) as info:
            classify_model_reference(reference)
        assert info.value.problem == expected and info.value.reference == reference
        assert "\n" not in str(info.value)
        assert looks_like_repo_id(reference) is False
        return
    found = classify_model_reference(reference)
    where = str(project / location) if location is not None else reference
    assert found == ModelReference(expected, where)  # type: ignore[arg-type]
    assert looks_like_repo_id(reference) is (expected == "hub")


def test_messages_name_the_reference_and_what_to_pass(project: Path) -> None:
    missing = "no such folder, and not a Hub repo id like 'Qwen/Qwen2.5-0.5B'; check the path or the id"
    cases = {
        "notes": "notes: is a file; pass the model folder holding config.json, or a .gguf file",
        "gpt2": f"gpt2: {missing}",
        "models\ndir": f"'models\\ndir': {missing}",
        " ": "' ': is empty; pass a model folder, a .gguf file or a Hub repo id like 'Qwen/Qwen2.5-0.5B'",
    }
    for reference, message in cases.items():
        with pytest.raises(ModelReferenceError) as info:
            classify_model_reference(reference)
        assert str(info.value) == message


def test_base_dir_and_path_objects(project: Path, tmp_path: Path) -> None:
    assert classify_model_reference("name", base_dir=project / "org") == ModelReference(
        "folder", str(project / "org/name")
    )
    with pytest.raises(ModelReferenceError, match="no such folder"):
        classify_model_reference("model", base_dir=tmp_path / "elsewhere")
    with pytest.raises(ModelReferenceError, match="no such folder"):
        classify_model_reference(Path("Qwen/Qwen2.5-0.5B"))  # a Path is never a repo id
    assert classify_model_reference(Path("tiny.gguf")).kind == "gguf"


def test_a_revision_applies_to_hub_ids_only(project: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"revision 'main' applies to Hub repo ids, but .*model is a local"):
        resolve_model_folder("model", "main")
    assert resolve_model_folder("./model") == project / "model"


# --------------------------------------------------------------------------------------------- gguf


@pytest.fixture
def tiny_gguf(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> Path:
    return export_gguf(tiny_checkpoints["llama"], tmp_path / "tiny-llama.gguf", gguf_type="f32")


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every `convert_gguf_to_hf` call's GGUF path, the real conversion still running."""
    calls: list[Path] = []
    real = convert_module.convert_gguf_to_hf

    def spy(gguf_path: Any, out_dir: Any, **kwargs: Any) -> Path:
        calls.append(Path(gguf_path))
        return real(gguf_path, out_dir, **kwargs)

    monkeypatch.setattr(convert_module, "convert_gguf_to_hf", spy)
    return calls


def test_gguf_is_converted_once_into_the_assets_cache(tiny_gguf: Path, conversions: list[Path], tmp_path: Path) -> None:
    folder = resolve_model_folder(str(tiny_gguf))
    # $HF_HOME (a per-test folder, tests/conftest.py) /assets/aprender/gguf/<stem>-<16 hex>
    assert folder.parent == Path(os.environ["HF_HOME"]) / "assets" / "aprender" / "gguf"
    assert folder.name.startswith("tiny-llama-") and len(folder.name) == len("tiny-llama-") + 16
    assert os.listdir(folder.parent) == [folder.name]  # the temporary folder was renamed, nothing left over
    reference = convert_gguf_to_hf(tiny_gguf, tmp_path / "direct")  # the module's name, bound before the spy
    assert sorted(os.listdir(folder)) == sorted(os.listdir(reference))
    assert json.loads((folder / "config.json").read_text()) == json.loads((reference / "config.json").read_text())
    assert (folder / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_folder(tiny_gguf) == folder  # second call: the cached folder, untouched
    assert conversions == [tiny_gguf]
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_rewritten_gguf_gets_a_new_folder(
    tiny_gguf: Path, conversions: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_ASSETS_CACHE", str(tmp_path / "assets"))
    first = gguf_cache_folder(tiny_gguf)
    assert first.parent == tmp_path / "assets" / "aprender" / "gguf"
    assert resolve_model_folder(tiny_gguf) == first
    stat = tiny_gguf.stat()
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # replaced by a new download
    second = resolve_model_folder(tiny_gguf)
    assert second != first and second.is_dir() and first.is_dir()
    assert conversions == [tiny_gguf, tiny_gguf]


def test_a_conversion_finished_by_another_process_is_kept(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = gguf_cache_folder(tiny_gguf)
    real = convert_module.convert_gguf_to_hf

    def race(gguf_path: Any, out_dir: Any, **kwargs: Any) -> Path:
        real(gguf_path, target)  # the other process renames its complete folder first
        return real(gguf_path, out_dir, **kwargs)

    monkeypatch.setattr(convert_module, "convert_gguf_to_hf", race)
    assert resolve_model_folder(tiny_gguf) == target
    assert os.listdir(target.parent) == [target.name]


def test_a_broken_gguf_leaves_no_folder(project: Path) -> None:
    with pytest.raises(FormatError, match="too small for a GGUF header"):
        resolve_model_folder("tiny.gguf")
    assert os.listdir(gguf_cache_folder(project / "tiny.gguf").parent) == []


# --------------------------------------------------------------------------------------------- hub


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]),
        ({"tokenizer": False}, ["config.json", "generation_config.json", "model.safetensors"]),
        ({"weights": False, "tokenizer": False}, ["config.json", "generation_config.json"]),
        (
            {"weights": False, "tokenizer": False, "extra_files": ["README.md"]},
            ["README.md", "config.json", "generation_config.json"],
        ),
    ],
)
def test_hub_ids_download_what_is_asked(
    options: dict[str, Any],
    expected: list[str],
    local_hub: Any,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
) -> None:
    source = tmp_path / "upload"
    source.mkdir()
    for entry in tiny_checkpoints["llama"].iterdir():
        (source / entry.name).write_bytes(entry.read_bytes())
    (source / "README.md").write_text("---\nlicense: mit\n---\n")
    upload_folder("alice/tiny", source, token=local_hub.tokens["alice"])
    folder = resolve_model_folder("alice/tiny", **options)
    assert sorted(p.name for p in folder.iterdir()) == expected


# ------------------------------------------------------------------------------------- on this machine


def test_a_folder_is_on_this_machine_and_a_gguf_once_converted(project: Path, tiny_gguf: Path) -> None:
    assert is_on_this_machine(classify_model_reference("model"))
    gguf = classify_model_reference(str(tiny_gguf))
    assert not is_on_this_machine(gguf)
    resolve_model_folder(gguf)
    assert is_on_this_machine(gguf)


def test_a_hub_model_is_on_this_machine_once_its_config_and_every_shard_are_cached(
    local_hub: Any, tmp_path: Path
) -> None:
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    source = tmp_path / "sharded"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    for shard in shards:
        (source / shard).write_bytes(b"weights")
    upload_folder("alice/sharded", source, token=local_hub.tokens["alice"])
    ref = classify_model_reference("alice/sharded")
    assert not is_on_this_machine(ref) and cached_file("alice/sharded", "config.json") is None
    resolve_model_folder(ref, weights=False, tokenizer=False)  # what `entrenar init` fetches: config only
    assert cached_file("alice/sharded", "config.json") is not None and not is_on_this_machine(ref)
    download("alice/sharded", allow_patterns=["*.json", shards[0]])
    assert not is_on_this_machine(ref)  # the index names a shard the cache lacks
    folder = resolve_model_folder(ref)
    assert is_on_this_machine(ref) and cached_file("alice/sharded", shards[1]) == folder / shards[1]
    assert not is_on_this_machine(ref, "0" * 40)  # another revision: no request is made to find it


def test_a_single_file_hub_model_is_on_this_machine_once_downloaded(
    local_hub: Any, tiny_checkpoints: dict[str, Path]
) -> None:
    upload_folder("alice/single", tiny_checkpoints["llama"], token=local_hub.tokens["alice"])
    ref = classify_model_reference("alice/single")
    assert not is_on_this_machine(ref)
    resolve_model_folder(ref)
    assert is_on_this_machine(ref)
