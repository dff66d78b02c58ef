"""The teacher cache (``distill.cache``, ``entrenar distill-cache``) on the tiny fixtures.

A Qwen2 teacher and a Llama student share one tokenizer of 1024 tokens. Checked: a cache that keeps the whole
vocabulary trains exactly like the teacher run online (losses, evaluation KL, adapter weights); k = 64 stays
close (the difference is printed); training from a cache loads no teacher; the key refuses a cache built for
another temperature, data or teacher weights, and the CLI rebuilds it; an interrupted build changes nothing;
a killed run resumes bit for bit.
"""

from __future__ import annotations

import io
import json
import shutil
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from aprender.format.safetensors import load_file, save_file
from entrenar.config import load_config
from entrenar.distill import cache as cache_module
from entrenar.train import build as build_module
from entrenar.train import build_teacher_cache, run_training
from fixtures.cli import run_cli

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

VOCAB = 1024
STEPS = ["training.max_steps=4", "training.eval_every=2"]


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=300)


def _config(folder: Path, student: Path, teacher: Path, **distill: Any) -> Path:
    section = {"teacher": str(teacher), "temperature": 2.0, "alpha": 0.5, "loss": "jsd", "beta": 0.3} | distill
    return runs.write_config(folder, student, distill=section, data={"val_split": 0.25})


def _adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "adapter_model.safetensors")


def _untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "eval_seconds")} for r in records]


def _no_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a teacher was loaded")

    monkeypatch.setattr(build_module, "load_teachers", refuse)
    monkeypatch.setattr(cache_module, "load_teachers", refuse)


@pytest.fixture
def online(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    """The output folder of the run with the teacher online."""
    config = _config(tmp_path / "online", tiny_checkpoints["llama"], tiny_checkpoints["qwen2"])
    return run_training(load_config(config, STEPS), console=_quiet()).output_dir


def test_whole_vocabulary_cache_trains_like_the_online_teacher(
    online: Path,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(
        tmp_path / "cached", tiny_checkpoints["llama"], tiny_checkpoints["qwen2"], cache="cache", cache_top_k=VOCAB
    )
    code, out, err = run_cli(capsys, "distill-cache", str(config))
    assert code == 0, err
    assert "Running the teacher over the data into" in out
    info = json.loads((tmp_path / "cached" / "cache" / "cache.json").read_text())
    assert info["key"]["top_k"] == VOCAB and info["key"]["temperature"] == 2.0
    assert info["positions"]["train"] > 0 and info["positions"]["validation"] > 0
    assert f"built, {sum(info['positions'].values())} positions" in out

    _no_teacher(monkeypatch)
    console = _quiet()
    cached = run_training(load_config(config, STEPS), console=console).output_dir
    assert "up to date" in console.file.getvalue()  # type: ignore[attr-defined]
    for kind in ("train", "eval"):
        ours, theirs = _untimed(runs.read_metrics(cached, kind)), _untimed(runs.read_metrics(online, kind))
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs, strict=True):
            assert a.keys() == b.keys()
            for key, value in a.items():
                if isinstance(value, float):
                    assert value == pytest.approx(b[key], rel=1e-5, abs=1e-6), (kind, key)
                elif key == "parts":
                    assert value == pytest.approx(b[key], rel=1e-5), kind
    assert "eval_kl_to_teacher" in runs.read_metrics(cached, "eval")[-1]
    ours_w, theirs_w = _adapter(cached), _adapter(online)
    assert ours_w.keys() == theirs_w.keys()
    for name in ours_w:
        torch.testing.assert_close(ours_w[name], theirs_w[name], rtol=1e-5, atol=1e-5)
    record = json.loads((cached / "final_model.json").read_text())
    assert record["techniques"] == ["lora", "distill"]


def test_top_64_cache_stays_close_to_the_online_teacher(
    memorizable_checkpoints: dict[str, Path], tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """A teacher with a 4x head (peaked like a trained model's; the fixtures' own are near uniform)."""
    outputs = {}
    for name, cache in (("online", {}), ("k64", {"cache": "cache"})):
        config = _config(
            tmp_path / name, tiny_checkpoints["llama"], memorizable_checkpoints["qwen2"], temperature=1.0, **cache
        )
        outputs[name] = run_training(load_config(config, STEPS), console=_quiet()).output_dir
    assert json.loads((tmp_path / "k64" / "cache" / "cache.json").read_text())["key"]["top_k"] == 64
    ours, theirs = runs.read_metrics(outputs["k64"]), runs.read_metrics(outputs["online"])
    kd = max(abs(a["parts"]["kd"] - b["parts"]["kd"]) / b["parts"]["kd"] for a, b in zip(ours, theirs, strict=True))
    pairs = zip(_adapter(outputs["k64"]).values(), _adapter(outputs["online"]).values(), strict=True)
    weights = max(((a - b).norm() / b.norm()).item() for a, b in pairs)
    tail = np.exp(np.load(tmp_path / "k64" / "cache" / "train.tail.npy")).mean()
    print(
        f"top-64 cache vs online teacher: mean tail mass {tail:.3f}, kd relative difference {kd:.2e}, "
        f"adapter relative difference {weights:.2e}"
    )
    assert 0 < tail < 0.5 and 0 < kd < 0.15 and 0 < weights < 0.1


def test_stale_cache_is_refused_and_the_cli_rebuilds_it(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_checkpoints["qwen2"], teacher)
    config = _config(tmp_path / "run", tiny_checkpoints["llama"], teacher, cache="cache", cache_top_k=8)
    assert run_cli(capsys, "distill-cache", str(config))[0] == 0
    code, out, _ = run_cli(capsys, "distill-cache", str(config))
    assert code == 0 and "up to date" in out and "Running the teacher" not in out

    def refused(*overrides: str) -> str:
        code, _, err = run_cli(capsys, "train", str(config), "training.max_steps=1", *overrides)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "does not fit this run" in err and "rebuild it with `entrenar distill-cache`" in err
        return err

    assert "distill.temperature differs (built with 2.0, now 1.0)" in refused("distill.temperature=1.0")
    assert "distill.cache_top_k differs (built with 8, now 4)" in refused("distill.cache_top_k=4")
    data = tmp_path / "run" / "train.jsonl"
    original = data.read_text()
    data.write_text(original.replace("nineteen", "twenty"))
    assert "the train data differ" in refused()
    data.write_text(original)

    weights = teacher / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    save_file({**tensors, name: tensors[name] + 0.01}, weights)
    assert f"the weights of teacher {teacher} differ" in refused()
    code, out, err = run_cli(capsys, "distill-cache", str(config))
    assert code == 0 and "built" in out, err
    result = run_training(load_config(config, ["training.max_steps=1"]), console=_quiet())
    assert result.output_dir.is_dir()


def test_cli_and_folder_errors(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = runs.write_config(tmp_path / "plain", tiny_checkpoints["llama"])
    code, _, err = run_cli(capsys, "distill-cache", str(plain))
    assert code == 2 and "has no distill: section" in err and len(err.strip().splitlines()) == 1
    online = _config(tmp_path / "online", tiny_checkpoints["llama"], tiny_checkpoints["qwen2"])
    code, _, err = run_cli(capsys, "distill-cache", str(online))
    assert code == 2 and "distill.cache is not set; add `cache: DIR`" in err
    code, _, err = run_cli(capsys, "distill-cache", str(online), "distill.cache=c", "distill.cache_top_k=5000")
    assert code == 2 and "distill.cache_top_k: 5000 is more than the 1024 tokens" in err
    assert not (tmp_path / "online" / "c").exists()

    foreign = tmp_path / "online" / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "train", str(online), "distill.cache=notes", "training.max_steps=1")
    assert code == 2 and "is not empty and holds no cache.json" in err
    assert (foreign / "todo.txt").read_text() == "keep me"

    (foreign / "todo.txt").unlink()  # an empty folder is built into
    result = run_training(load_config(online, ["distill.cache=notes", "training.max_steps=1"]), console=_quiet())
    assert (foreign / "cache.json").is_file() and result.output_dir.is_dir()
    (foreign / "cache.json").write_text("{not json")
    code, _, err = run_cli(capsys, "train", str(online), "distill.cache=notes", "training.max_steps=1")
    assert code == 2 and "its cache.json is unreadable" in err


def test_interrupted_build_leaves_the_previous_cache(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, tiny_checkpoints["llama"], tiny_checkpoints["qwen2"], cache="cache", cache_top_k=8)
    real = cache_module.topk_teacher_heads
    calls = 0

    def crash_on_second(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "topk_teacher_heads", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(load_config(config))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "train.jsonl"]  # no partial folder

    monkeypatch.setattr(cache_module, "topk_teacher_heads", real)
    built = build_teacher_cache(load_config(config))
    before = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
    calls = 0
    monkeypatch.setattr(cache_module, "topk_teacher_heads", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(load_config(config, ["distill.temperature=3.0"]))
    assert {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "config.yaml", "train.jsonl"]
    assert built.info["key"]["temperature"] == 2.0


def test_killed_run_from_a_cache_resumes_bit_for_bit(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ["training.max_steps=6", "training.save_every=3", "training.keep_checkpoints=1"]

    def config(name: str) -> Path:
        return _config(tmp_path / name, tiny_checkpoints["llama"], tiny_checkpoints["qwen2"], cache="cache")

    straight = run_training(load_config(config("a"), overrides), console=_quiet()).output_dir

    with pytest.raises(runs.Killed):
        run_training(load_config(config("b"), overrides), console=_quiet(), callbacks=[runs.kill_after(4)])
    _no_teacher(monkeypatch)  # the cache was built by the killed run
    resumed = run_training(load_config(config("b"), overrides), console=_quiet()).output_dir
    ours, theirs = _adapter(resumed), _adapter(straight)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _untimed(runs.read_metrics(resumed)) == _untimed(runs.read_metrics(straight))
