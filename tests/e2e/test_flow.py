"""The user's flow end to end through the CLI: init -> train (with `publish:`) -> publish, on a local Hub.

A tiny Llama checkpoint is put on the local Hub as `alice/tiny-llama`; everything after that goes
through `entrenar` commands with the Hub id, as a user would. The published repos are downloaded into a
fresh cache with plain `huggingface_hub` and loaded with transformers / PEFT, whose logits must equal
our own model's (merged, or with the adapter) within 1e-4.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import AutoModelForCausalLM

from aprender.hub import upload_folder
from entrenar.lora import load_adapter, merge_and_unload
from entrenar.models import from_pretrained
from fixtures.cli import run_cli
from fixtures.hub import LocalHub

BASE = "alice/tiny-llama"
IDS = torch.tensor([[5, 17, 42, 99, 7, 300, 12, 64]])


def _story(out: str) -> list[str]:
    """The lines of a command's output with sizes, losses and the commit id as placeholders, step lines left out."""
    text = re.sub(r"\(\d+(\.\d)? [kMG]?B\)", "(SIZE)", out)
    text = re.sub(r"loss=\d+\.\d{3}", "loss=L", text)
    text = re.sub(r"/commit/[0-9a-f]{40}$", "/commit/SHA", text, flags=re.M)
    text = re.sub(r"^Trained (\d+) steps in \d+\.\ds$", r"Trained \1 steps in Ts", text, flags=re.M)
    return [line for line in text.splitlines() if not line.startswith("step ")]


def _download(hub: LocalHub, repo: str, cache: Path) -> Path:
    folder = huggingface_hub.snapshot_download(repo, endpoint=hub.url, cache_dir=str(cache), token=hub.tokens["alice"])
    return Path(folder)


@pytest.fixture
def project(local_hub: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    """The base model on the Hub and a small chat dataset; returns the project folder."""
    upload_folder(BASE, tiny_checkpoints["llama"], token=local_hub.tokens["alice"])
    data = tmp_path / "project" / "data"
    data.mkdir(parents=True)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} plus {a}?"},
                {"role": "assistant", "content": str(2 * a)},
            ]
        }
        for a in range(12)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "project"


def test_init_train_publish_then_transformers_and_peft_load_it(
    project: Path,
    local_hub: LocalHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = project / "config.yaml"
    code, out, err = run_cli(
        capsys, "init", "--base", BASE, "--method", "lora", "--data", str(project / "data"), "-o", str(config)
    )
    assert code == 0, err
    assert out.startswith(f"Created {config} with:\n  Model: {BASE} (64 hidden, 2 layers)\n") and config.is_file()
    assert "\n  Method: LoRA (rank=64, alpha=16)\n  Data: ./data (12 samples detected)\n" in out

    monkeypatch.setenv("HF_TOKEN", local_hub.tokens["alice"])
    code, out, err = run_cli(
        capsys, "train", str(config), "training.max_steps=3", "optimizer.lr=0.01", "publish.repo=alice/tiny-ft"
    )
    assert code == 0, err
    story = _story(out)
    assert story[:4] == [
        "will publish to alice/tiny-ft as alice (the HF_TOKEN environment variable)",
        f"Downloading {BASE} from {local_hub.url}...",  # `init` fetched only config.json and the tokenizer
        "Loading model weights (SafeTensors)...",
        "Applying LoRA adapters (rank=64)...",
    ]
    assert story[4].startswith(f"lora fine-tune of {BASE} on cpu: ")
    assert story[5].startswith("  techniques  LoRA") and story[8].startswith("  memory      about ")
    # 12 samples pack into 2 rows: one batch an epoch, so each of the 3 steps is an epoch of the planned 3. The lr
    # of each is init's cosine schedule (no warmup: a tenth of 3 steps) over 3 steps: 1e-2 x 1, 0.775, 0.325.
    written = (
        "adapter_config.json",
        "adapter_model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "final_model.json",
        "config.yaml",
        "metrics.jsonl",
        "run_state.json",
    )
    assert story[9:] == [
        "Epoch 1/3: loss=L, lr=1.0e-2",
        "Epoch 2/3: loss=L, lr=7.8e-3",
        "Epoch 3/3: loss=L, lr=3.3e-3",
        "Trained 3 steps in Ts",
        *(f"Saved: {project / 'output' / name} (SIZE)" for name in written),
        "Auto-publishing to alice/tiny-ft...",
        "Merging LoRA adapters with base model...",
        "Exporting as SafeTensors...",
        "Creating repo: alice/tiny-ft",
        "Uploading model.safetensors (SIZE)...",
        "Uploading 6 small files (SIZE)...",
        f"Commit: {local_hub.url}/alice/tiny-ft/commit/SHA",
        f"Published: {local_hub.url}/alice/tiny-ft",
    ]
    code, out, err = run_cli(capsys, "train", str(config), "--dry-run")
    assert code == 0, err
    assert _story(out)[0] == f"Downloading {BASE}... [cached]"
    output = project / "output"
    assert (output / "adapter_model.safetensors").is_file() and (output / "final_model.json").is_file()

    # The merged model on the Hub == our base + adapter, merged.
    ours = from_pretrained(BASE, dtype="float32")
    load_adapter(ours, output)
    with torch.no_grad():
        ours_adapter = ours(IDS)
        merged = merge_and_unload(ours)(IDS)
        base_logits = from_pretrained(BASE, dtype="float32")(IDS)
    assert (ours_adapter - base_logits).abs().max() > 1e-3  # training changed the model: the check below can fail
    published = _download(local_hub, "alice/tiny-ft", tmp_path / "fresh-1")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in published.iterdir()}
    hf = AutoModelForCausalLM.from_pretrained(published, dtype=torch.float32)
    with torch.no_grad():
        assert (hf(IDS).logits - merged).abs().max() <= 1e-4

    # The adapter alone, published with `entrenar publish --no-merge-adapters`, loads in PEFT.
    from peft import PeftModel

    code, out, err = run_cli(capsys, "publish", str(output), "--repo", "alice/tiny-adapter", "--no-merge-adapters")
    assert code == 0, err
    assert _story(out) == [
        "Exporting the LoRA adapter (PEFT, SafeTensors)...",
        "Creating repo: alice/tiny-adapter",
        "Uploading adapter_model.safetensors (SIZE)...",
        "Uploading 5 small files (SIZE)...",
        f"Commit: {local_hub.url}/alice/tiny-adapter/commit/SHA",
        f"Published: {local_hub.url}/alice/tiny-adapter",
    ]
    adapter = _download(local_hub, "alice/tiny-adapter", tmp_path / "fresh-2")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    base_dir = _download(local_hub, BASE, tmp_path / "fresh-3")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter)
    with torch.no_grad():
        assert (peft_model(IDS).logits - ours_adapter).abs().max() <= 1e-4


@pytest.mark.parametrize("who", ["nobody", "bob"])
def test_train_with_publish_fails_before_training_without_write_access(
    project: Path, local_hub: LocalHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    config = project / "config.yaml"
    assert (
        run_cli(capsys, "init", "--base", BASE, "--method", "lora", "--data", str(project / "data"), "-o", str(config))[
            0
        ]
        == 0
    )
    if who == "bob":
        monkeypatch.setenv("HF_TOKEN", local_hub.tokens["bob"])  # a valid token, but alice's namespace
    code, out, err = run_cli(capsys, "train", str(config), "training.max_steps=2", "publish.repo=alice/tiny-ft")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("HF_TOKEN" in err) if who == "nobody" else ("alice" in err)
    assert not (project / "output" / "metrics.jsonl").exists()  # nothing trained
    for token in local_hub.tokens.values():
        assert token not in out + err
