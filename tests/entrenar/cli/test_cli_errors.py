"""User mistakes reach `entrenar train|validate|info` as ``error: ...`` lines (one per problem), exit code 2."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import pytest

from aprender.format.safetensors import load_file, save_file
from entrenar.cli import main
from fixtures.cli import run_cli
from fixtures.hub import LocalHub

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


def _yaml(text: str) -> Callable[[Path, Path], Path]:
    def make(folder: Path, model: Path) -> Path:
        runs.write_config(folder, model)
        path = folder / "config.yaml"
        path.write_text(text.replace("MODEL", str(model)), encoding="utf-8")
        return path

    return make


def _config(**sections: object) -> Callable[[Path, Path], Path]:
    return lambda folder, model: runs.write_config(folder, model, **sections)


def _bad_jsonl(folder: Path, model: Path) -> Path:
    lines = [json.dumps(r) for r in runs.memory_records()]
    runs.write_jsonl(folder / "bad.jsonl", [lines[0], lines[1], '{"prompt": "x", "completion": ', lines[2]])
    return runs.write_config(folder, model, data={"train_path": "bad.jsonl"})


def _empty(folder: Path, model: Path) -> Path:
    (folder / "empty.jsonl").write_text("\n\n")
    return runs.write_config(folder, model, data={"train_path": "empty.jsonl"})


def _gpt2(folder: Path, model: Path) -> Path:
    other = folder / "gpt2"
    shutil.copytree(model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    return runs.write_config(folder, other)


CASES: list[tuple[str, Callable[[Path, Path], Path], list[str], str]] = [
    ("bad yaml", _yaml("model: {path: MODEL\ndata: [\n"), [], r"config\.yaml:\d+:\d+: "),
    ("unknown key", _config(lora={"rnak": 4}), [], r"lora\.rnak: unknown key; did you mean rank\?"),
    ("wrong type", _config(training={"max_steps": "ten"}), [], r"training\.max_steps: .*integer"),
    ("bad override", _config(), ["training.max_steps=abc"], r"training\.max_steps: .*\(from the command line\)"),
    ("missing config", lambda folder, model: folder / "nope.yaml", [], r"nope\.yaml: no such file"),
    (
        "missing data file",
        _config(data={"train_path": "missing.jsonl"}),
        [],
        r"data\.train_path: .*missing\.jsonl does not exist",
    ),
    ("malformed jsonl line", _bad_jsonl, [], r"bad\.jsonl:3: "),
    ("empty dataset", _empty, [], r"empty\.jsonl: no usable records"),
    ("unsupported model type", _gpt2, [], r"model_type 'gpt2' is not supported"),
    ("bad repo id", _config(model={"path": "not a/repo id!"}), [], r"model\.path: .*nor a Hub repo id"),
]


DATA_CASES = ("malformed jsonl line", "empty dataset")  # `info` reads no data
PARAMS = [
    pytest.param(command, *case, id=f"{command}-{case[0]}")
    for case in CASES
    for command in ("train", "validate", "info")
    if not (command == "info" and case[0] in DATA_CASES)
]


@pytest.mark.parametrize(("command", "name", "make", "overrides", "message"), PARAMS)
def test_user_errors_are_one_line_with_exit_code_2(
    command: str,
    name: str,
    make: Callable[[Path, Path], Path],
    overrides: list[str],
    message: str,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make(tmp_path, tiny_checkpoints["qwen2"])
    with pytest.raises(SystemExit) as exc:
        main([command, str(config), *overrides])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize("command", ["train", "validate", "info"])
def test_every_config_error_is_one_line(
    command: str, tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "model: {path: MODEL, dtype: fp8}\ndata: {train_path: train.jsonl}\n"
        "lora: {rnak: 4}\ntraining: {max_steps: ten}\n"
    )
    config = _yaml(text)(tmp_path, tiny_checkpoints["qwen2"])
    code, out, err = run_cli(capsys, command, str(config), "optimizer.lr=-1")
    assert (code, out) == (2, "")
    assert err.splitlines() == [  # in the file's order; the section the override added comes last
        f"error: {config}: model.dtype: 'fp8' is not one of auto, float32, bfloat16, float16",
        f"error: {config}: lora.rnak: unknown key; did you mean rank?",
        f"error: {config}: training.max_steps: expected an integer, got 'ten'",
        f"error: {config}: optimizer.lr: must be > 0, got -1 (from the command line)",
    ]


@pytest.mark.parametrize("command", ["train", "validate", "info"])
def test_a_repo_the_hub_does_not_have(
    command: str,
    local_hub: LocalHub,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], model={"path": "alice/missing"})
    with pytest.raises(SystemExit) as exc:
        main([command, str(config)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "alice/missing" in err, err


MISSING = "model.layers.1.self_attn.q_proj.weight"


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
@pytest.mark.parametrize(
    "sections",
    [
        pytest.param({}, id="lora"),
        pytest.param({"quantize": {"bits": 4}}, id="qlora"),
        pytest.param({"lora": None}, id="full"),
    ],
)
def test_a_weight_missing_from_the_checkpoint_is_named(
    sections: dict[str, object],
    dry_run: bool,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoints["qwen2"], model)
    tensors = load_file(model / "model.safetensors")
    del tensors[MISSING]  # a layer LoRA targets: its adapter must not stand in for the base weight
    save_file(tensors, model / "model.safetensors")
    config = runs.write_config(tmp_path, model, training={"max_steps": 1}, **sections)
    code, out, err = run_cli(capsys, "train", str(config), *(["--dry-run"] if dry_run else []))
    # The story up to the load that fails: LoRA's adapters are built with the model, QLoRA's after it.
    adapters = ["Applying LoRA adapters (rank=8)..."] if sections == {} else []
    assert code == 2
    assert out.splitlines() == [f"Model: {model} (local folder)", "Loading model weights (SafeTensors)...", *adapters]
    assert err == (
        f"error: {model}: the checkpoint lacks tensor '{MISSING}' (1 missing in all); "
        "it is incomplete or for another architecture\n"
    )
    assert not (tmp_path / "out").exists()


def test_dry_run_does_not_resume(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"])
    with pytest.raises(SystemExit) as exc:
        main(["train", str(config), "--dry-run", "--resume"])
    assert exc.value.code == 2
    assert "--dry-run writes nothing and never resumes" in capsys.readouterr().err


def test_an_unsupported_model_type_on_the_hub_names_the_repo(
    local_hub: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aprender.hub import upload_folder

    upload_folder(
        "alice/gpt", _gpt2(tmp_path, tiny_checkpoints["qwen2"]).parent / "gpt2", token=local_hub.tokens["alice"]
    )
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], model={"path": "alice/gpt"})
    capsys.readouterr()  # the upload's progress bars
    with pytest.raises(SystemExit) as exc:
        main(["info", str(config)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert (
        err
        == "error: alice/gpt/config.json: model_type 'gpt2' is not supported; supported: llama, mistral, qwen2, qwen3\n"
    )
