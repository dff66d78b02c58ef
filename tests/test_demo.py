"""`make demo` (examples/demo.py): its stages with a user's own Hub settings in the environment.

The demo runs as `make demo` runs it (a subprocess), on the tiny Llama fixture instead of SmolLM2 so
that it takes seconds: every stage runs (local Hub, upload, init, QLoRA training with auto-publish,
download and generation with transformers). The user's environment carries foreign tokens, a token
file, a dead endpoint, offline mode and a cache of their own: the demo must use none of them, print
none of them and write nothing where they point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import REPO_ROOT

DEMO = REPO_ROOT / "examples" / "demo.py"
DATA = REPO_ROOT / "examples" / "data"
FOREIGN = {
    "HF_TOKEN": "hf_userTokenFromTheEnvironmentXXXXXXXX",
    "HUGGING_FACE_HUB_TOKEN": "hf_userLegacyTokenXXXXXXXXXXXXXXXXXX",
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HUB_OFFLINE": "1",
}
FILE_TOKEN = "hf_userTokenFileXXXXXXXXXXXXXXXXXXXXXXX"


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "user-hf-home"
    home.mkdir(exist_ok=True)
    (home / "token").write_text(FILE_TOKEN)
    env = dict(os.environ, **FOREIGN, HF_HOME=str(home), HF_HUB_CACHE=str(tmp_path / "user-cache"))
    command = [sys.executable, str(DEMO), "--work", str(tmp_path / "demo"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


def assert_nothing_of_the_users(tmp_path: Path, output: str) -> None:
    for secret in (FOREIGN["HF_TOKEN"], FOREIGN["HUGGING_FACE_HUB_TOKEN"], FILE_TOKEN, FOREIGN["HF_ENDPOINT"]):
        assert secret not in output
    assert sorted(p.name for p in (tmp_path / "user-hf-home").iterdir()) == ["token"]
    assert not (tmp_path / "user-cache").exists()


@pytest.mark.slow
def test_demo_runs_with_the_users_hub_settings_set(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    result = run_demo(tmp_path, "--base-model", str(tiny_checkpoints["llama"]), "--data", str(DATA), "--expect", "")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for stage in ("1. Local Hub", "2. Put", "3. entrenar init", "4. entrenar train", "5. Use the published model"):
        assert f"=== {stage}" in result.stdout
    assert "demo finished in" in result.stdout and "\nA: " in result.stdout
    assert (tmp_path / "demo" / "output" / "adapter_model.safetensors").is_file()
    assert_nothing_of_the_users(tmp_path, output)
    # a fifth of the data held out: the base model is evaluated first, the question answered before and after,
    # and the published card says both
    assert "eval of the base model: loss " in result.stdout
    assert "sample step 0: Who is the mascot of the entrenar project? -> " in result.stdout
    record = json.loads((tmp_path / "demo" / "output" / "final_model.json").read_text())
    assert record["base_eval"]["step"] == 0 and record["eval"]["step"] == record["steps"]
    assert [s["prompt"] for s in record["samples"]["after"]] == ["Who is the mascot of the entrenar project?"]
    cards = list((tmp_path / "demo").rglob("README.md"))  # the snapshot stage 5 downloaded
    card = next(c.read_text() for c in cards if "## Base model vs fine-tuned" in c.read_text())
    assert "## Sample answers" in card and "| Who is the mascot of the entrenar project? |" in card


def test_a_failed_command_ends_the_demo_with_one_line(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    missing = tmp_path / "no-data"
    result = run_demo(tmp_path, "--base-model", str(tiny_checkpoints["llama"]), "--data", str(missing))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "demo failed: stage 3 (entrenar init): `entrenar init` exited with code 2 (its message is above)"
    )
    assert str(missing) in result.stderr  # init's own one-line message names the path
    assert_nothing_of_the_users(tmp_path, result.stdout + result.stderr)


def test_a_failed_stage_of_the_demo_itself_is_one_line(tmp_path: Path) -> None:
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    result = run_demo(tmp_path, "--base-model", str(not_a_model))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    (last,) = result.stderr.strip().splitlines()[-1:]
    assert last.startswith("demo failed: stage 2 (Put HuggingFaceTB/SmolLM2-135M-Instruct on it): ")
    assert_nothing_of_the_users(tmp_path, result.stdout + result.stderr)
