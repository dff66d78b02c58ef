"""`entrenar publish` / `entrenar push` on the command line, against the local Hub (dry runs need no Hub)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aprender.hub import Fault
from aprender.hub.repo_id import RepoId
from entrenar import cli as cli_module
from entrenar.display import human_size
from fixtures.cli import run_cli


def _load_publish_helpers() -> ModuleType:
    """tests/entrenar/publish/conftest.py by path: its run builder serves these tests too (no package to import)."""
    path = Path(__file__).resolve().parents[1] / "publish" / "conftest.py"
    spec = importlib.util.spec_from_file_location("entrenar_publish_test_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lora_output(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> Any:
    """A finished LoRA run on the tiny Llama (see tests/entrenar/publish/conftest.py)."""
    return _load_publish_helpers().build_lora_output(tmp_path_factory.mktemp("cli-run"), tiny_checkpoints["llama"])


def _run(*args: str) -> None:
    cli_module.main(list(args))


def _listing(out: str) -> dict[str, int]:
    """The file lines of a report: `  name  1,234 bytes  (1.2 kB)` -> {name: 1234}."""
    rows = re.findall(r"^  (\S+)\s+([\d,]+) bytes  \(", out, flags=re.M)
    return {name: int(size.replace(",", "")) for name, size in rows}


def test_publish_and_push_are_registered() -> None:
    assert {"publish", "push"} <= set(cli_module.cli.commands)
    assert cli_module.cli.commands["push"] is not cli_module.cli.commands["publish"]


def test_dry_run_lists_files_and_sizes(lora_output: Any, local_hub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    trap = local_hub.server.faults.add(Fault("error", path="", times=None))
    _run("publish", str(lora_output.output), "--repo", "alice/cli-dry", "--dry-run")
    captured = capsys.readouterr()
    assert trap.seen == 0
    listing = _listing(captured.out)
    assert set(listing) == {
        "README.md",
        "config.json",
        "generation_config.json",
        "loss_curve.svg",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert listing["tokenizer.json"] == (lora_output.output / "tokenizer.json").stat().st_size
    assert captured.out.startswith(
        "Merging LoRA adapters with base model...\nExporting as SafeTensors...\n"
        "Dry run: nothing uploaded. alice/cli-dry would receive (model):\n"
    )
    assert f"  7 files, {sum(listing.values()):,} bytes (" in captured.out
    assert "Hub token: no token found" in captured.err and "(not used by a dry run)" in captured.err


def test_push_is_the_same_command(lora_output: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = (str(lora_output.output), "--repo", "alice/same", "--dry-run", "--no-merge-adapters")
    _run("publish", *args)
    published = capsys.readouterr().out
    _run("push", *args)
    assert capsys.readouterr().out == published
    assert published.startswith("Exporting the LoRA adapter (PEFT, SafeTensors)...\nDry run: nothing uploaded.")
    assert set(_listing(published)) == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_curve.svg",
        "tokenizer.json",
        "tokenizer_config.json",
    }


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--no-model-card"], {"config.json", "model.safetensors"}),
        (["--format", "gguf", "--gguf-type", "q8_0"], {"README.md", "loss_curve.svg", "opts-Q8_0.gguf"}),
        (["--format", "gguf"], {"README.md", "loss_curve.svg", "opts-F16.gguf"}),
    ],
)
def test_dry_run_options(
    lora_output: Any, capsys: pytest.CaptureFixture[str], options: list[str], expected: set[str]
) -> None:
    _run("publish", str(lora_output.output), "--repo", "alice/opts", "--dry-run", *options)
    listing = set(_listing(capsys.readouterr().out))
    assert expected <= listing
    if "--no-model-card" in options:
        assert "README.md" not in listing and "loss_curve.svg" not in listing


def test_base_model_option_is_used_for_merging(
    tmp_path: Path, lora_output: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = Path(shutil.copytree(lora_output.base, tmp_path / "moved-base"))
    output = Path(shutil.copytree(lora_output.output, tmp_path / "output"))
    config = (output / "adapter_config.json").read_text().replace(str(lora_output.base), "/gone/base")
    (output / "adapter_config.json").write_text(config, encoding="utf-8")
    (output / "final_model.json").unlink()
    with pytest.raises(SystemExit) as exc:
        _run("publish", str(output), "--repo", "alice/b", "--dry-run")
    assert exc.value.code == 2
    assert "base model '/gone/base' is neither a folder here nor a Hub id" in capsys.readouterr().err
    _run("publish", str(output), "--repo", "alice/b", "--dry-run", "--base-model", str(moved))
    assert "model.safetensors" in _listing(capsys.readouterr().out)


def test_default_model_dir_is_output(
    tmp_path: Path, lora_output: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(lora_output.output, tmp_path / "output")
    monkeypatch.chdir(tmp_path)
    _run("push", "--repo", "alice/default", "--dry-run", "--no-merge-adapters")
    assert "adapter_model.safetensors" in _listing(capsys.readouterr().out)


def test_upload_tells_its_story_and_prints_the_url_last(
    lora_output: Any, local_hub: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # --endpoint wins
    monkeypatch.setenv("HF_TOKEN", local_hub.tokens["alice"])
    _run("publish", str(lora_output.output), "--repo", "alice/cli", "--endpoint", local_hub.url, "--private")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[:3] == [
        "Merging LoRA adapters with base model...",
        "Exporting as SafeTensors...",
        "Creating repo: alice/cli",
    ]
    assert re.fullmatch(r"Uploading model\.safetensors \(\d+\.\d kB\)\.\.\.", lines[3])
    # README.md, config.json, generation_config.json, loss_curve.svg, tokenizer.json, tokenizer_config.json
    assert re.fullmatch(r"Uploading 6 small files \(\d+\.\d kB\)\.\.\.", lines[4])
    assert lines[5].startswith(f"Commit: {local_hub.url}/alice/cli/commit/")
    assert lines[6:] == [f"Published: {local_hub.url}/alice/cli"]
    assert "Hub token: token from the HF_TOKEN environment variable\n" in captured.err
    assert local_hub.server.store.is_private(RepoId.parse("alice/cli"))
    assert local_hub.tokens["alice"] not in captured.out + captured.err
    # Again, as a GGUF file into the same repo: reused, not created.
    args = ["--format", "gguf", "--gguf-type", "q8_0"]
    _run("publish", str(lora_output.output), "--repo", "alice/cli", "--endpoint", local_hub.url, *args)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "Merging LoRA adapters with base model...",
        "Exporting as GGUF (Q8_0): cli-Q8_0.gguf...",
        "Using existing repo: alice/cli",
    ]
    assert re.fullmatch(r"Uploading cli-Q8_0\.gguf \(\d+\.\d kB\)\.\.\.", lines[3])
    assert re.fullmatch(r"Uploading 2 small files \(\d+\.\d kB\)\.\.\.", lines[4])  # README.md, loss_curve.svg
    assert lines[-1] == f"Published: {local_hub.url}/alice/cli"


def test_user_errors_are_one_line_with_exit_2(
    lora_output: Any, local_hub: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _run("publish", str(lora_output.output / "checkpoints" / "step-12"), "--repo", "alice/x", "--dry-run")
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and "is a training checkpoint (step 12)" in err[-1]
    with pytest.raises(SystemExit) as exc:
        _run("publish", str(lora_output.output), "--repo", "alice/x")
    assert exc.value.code == 2
    assert (
        capsys.readouterr().err.splitlines()[-1].startswith("error: publishing to alice/x needs a Hugging Face token")
    )


def _empty_folder(tmp_path: Path, lora_output: Any) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (lambda tmp, run: str(tmp / "missing"), [], "{folder}: no such folder; pass the training output folder"),
        (_empty_folder, [], "{folder}: holds neither an adapter (adapter_config.json + adapter_model.safetensors)"),
        (
            lambda tmp, run: str(run.output),
            ["--format", "gguf", "--no-merge-adapters"],
            "--format gguf needs merged weights; drop --no-merge-adapters or publish safetensors",
        ),
    ],
    ids=["missing folder", "empty folder", "gguf without merging"],
)
def test_local_mistakes_are_reported_before_the_network(
    make: Any,
    options: list[str],
    message: str,
    lora_output: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_some_token")  # HF_ENDPOINT (tests/conftest.py) refuses connections
    folder = make(tmp_path, lora_output)
    code, out, err = run_cli(capsys, "publish", folder, "--repo", "alice/x", *options)
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0] == "Hub token: token from the HF_TOKEN environment variable"
    assert len(lines) == 2 and lines[1].startswith("error: " + message.format(folder=folder)), err


def test_a_failing_upload_ends_in_one_line(lora_output: Any, local_hub: Any, tmp_path: Path) -> None:
    """The console entry point in a child process, so that huggingface_hub's logging and progress bars reach
    its real stderr; its waits between retries are skipped (sitecustomize), the retries themselves are not."""
    fault = local_hub.server.faults.add(Fault("error", path="^/lfs/", method="PUT", times=None))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import time\n\ntime.sleep = lambda seconds: None\n", encoding="utf-8")
    token = local_hub.tokens["alice"]
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_TOKEN": token, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    args = ["publish", str(lora_output.output), "--repo", "alice/failing", "--no-merge-adapters", "--no-model-card"]
    done = subprocess.run(
        [sys.executable, "-m", "entrenar.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    weights = lora_output.output / "adapter_model.safetensors"
    oid = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert done.returncode == 2
    assert done.stdout.splitlines()[:3] == [  # the story up to the upload, then the error
        "Exporting the LoRA adapter (PEFT, SafeTensors)...",
        "Creating repo: alice/failing",
        f"Uploading adapter_model.safetensors ({human_size(weights.stat().st_size)})...",
    ]
    assert re.fullmatch(r"Uploading 3 small files \(\d+\.\d kB\)\.\.\.\n", done.stdout.split("\n", 3)[3])
    assert done.stderr.splitlines() == [
        "Hub token: token from the HF_TOKEN environment variable",
        f"error: upload to alice/failing@main on {local_hub.url}: the server kept failing (500 on PUT "
        f"/lfs/alice/failing/{oid}: injected fault: internal server error) after 4 attempts; retry later or "
        "check the server",
    ]
    assert "sig=" not in done.stderr and token not in done.stderr
    assert fault.fired >= 4  # every attempt reached the upload


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repo", "alice/x", "--format", "onnx"], "Invalid value for '--format'"),
        (["--repo", "alice/x", "--token", "hf_secret"], "No such option '--token'"),
        ([], "Missing option '--repo'"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _run("publish", "./output", *args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    _run("push", "--help")
    out = capsys.readouterr().out
    for option in ("--repo", "--private", "--merge-adapters / --no-merge-adapters", "--base-model", "--format"):
        assert option in out
    for option in ("--gguf-type", "--no-model-card", "--dry-run", "--endpoint"):
        assert option in out
    assert "Same as `entrenar publish`." in out


def test_help_lists_every_gguf_type_publishing_writes(capsys: pytest.CaptureFixture[str]) -> None:
    from aprender.format.gguf_mixtures import FILE_TYPES

    _run("publish", "--help")
    out = " ".join(capsys.readouterr().out.split())  # click wraps the help text
    listed = out.split("--gguf-type TEXT")[1].split("[default: f16]")[0]
    names = [name.strip(" ,.:") for name in listed.split("(q4_k_m,q8_0: one file each):")[1].split(",")]
    assert names == [name for name, kind in FILE_TYPES.items() if not kind.needs_imatrix]
