"""Merging adapters: on disk (tensor by tensor) equals in memory, and loads in transformers like PEFT's merge.

Oracles: our in-memory `merge_and_unload` (bit-for-bit: same float32 arithmetic), PEFT's ``merge_and_unload``
on the transformers model (logits), and the hand formula for dtype handling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from aprender.format.safetensors import load, open_checkpoint, save_file
from entrenar.errors import LoraError
from entrenar.lora import (
    AdapterConfig,
    LoraConfig,
    apply_lora,
    load_adapter,
    lora_modules,
    merge_adapter_into_checkpoint,
    merge_and_unload,
    merge_weight,
    save_adapter,
)
from entrenar.lora import merge as merge_module
from entrenar.models.loading import from_pretrained, save_pretrained
from entrenar.quant import NF4Linear

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
VARIANTS = {
    "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
    "dora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"], "use_dora": True},
    "pissa": {"r": 2, "lora_alpha": 4, "target_modules": ["k_proj", "down_proj"], "init_lora_weights": "pissa"},
}


def _ids() -> torch.Tensor:
    return torch.randint(7, 1000, (2, 10), generator=torch.Generator().manual_seed(3))


def _peft_adapter(load_hf: Callable[[str], Any], family: str, out: Path, **kwargs: Any) -> None:
    """Save a PEFT adapter with random B and magnitudes (so merging changes the weights)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(load_hf(family), PeftLoraConfig(task_type="CAUSAL_LM", **kwargs))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
            elif "lora_magnitude_vector" in name:
                param.mul_(1.25)
    model.save_pretrained(str(out))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_on_disk_merge_equals_in_memory_and_peft(
    family: str, variant: str, tmp_path: Path, tiny_checkpoints: dict[str, Path], load_hf: Callable[[str], Any]
) -> None:
    from transformers import AutoModelForCausalLM

    base_dir = tiny_checkpoints[family]
    _peft_adapter(load_hf, family, tmp_path / "adapter", **VARIANTS[variant])
    written = merge_adapter_into_checkpoint(base_dir, tmp_path / "adapter", tmp_path / "merged")
    assert [p.name for p in written] == [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (tmp_path / "merged" / "config.json").read_bytes() == (base_dir / "config.json").read_bytes()
    on_disk = load(tmp_path / "merged")
    # In memory: our model + the adapter, merged and unwrapped.
    model = from_pretrained(base_dir)
    load_adapter(model, tmp_path / "adapter")
    merge_and_unload(model)
    assert not lora_modules(model)
    in_memory = model.state_dict()
    assert set(on_disk) == set(in_memory) == set(load(base_dir))
    changed = [name for name in on_disk if not torch.equal(on_disk[name], load(base_dir)[name])]
    assert changed  # the adapter changed some weights
    for name, tensor in on_disk.items():
        assert torch.equal(tensor, in_memory[name]), name
    # transformers loads the merged folder; its logits equal PEFT's own merge.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_merged = PeftModel.from_pretrained(load_hf(family), str(tmp_path / "adapter")).merge_and_unload()
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        diff = (merged(_ids()).logits - peft_merged.eval()(_ids()).logits).abs().max().item()
    assert diff <= 1e-4


def test_sharded_output_and_in_memory_save_pretrained(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], load_hf: Callable[[str], Any]
) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(rank=2, alpha=4, target_modules="all-linear", init="none")
    model = from_pretrained(tiny_checkpoints["mistral"])
    apply_lora(model, config)
    save_adapter(model, tmp_path / "adapter", config)
    with torch.no_grad():
        expected = model(_ids())
    written = merge_adapter_into_checkpoint(
        tiny_checkpoints["mistral"], tmp_path / "adapter", tmp_path / "merged", max_shard_size="100KB"
    )
    assert (tmp_path / "merged" / "model.safetensors.index.json") in written
    assert len([p for p in written if p.name.startswith("model-")]) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (merged(_ids()).logits - expected).abs().max().item() <= 1e-4
    merge_and_unload(model)
    save_pretrained(model, tmp_path / "saved")  # the unwrapped model is plain HF layout again
    assert load(tmp_path / "saved").keys() == load(tmp_path / "merged").keys()


def test_failed_merge_leaves_the_earlier_output(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(rank=2, alpha=4, target_modules="all-linear", init="none")
    model = from_pretrained(tiny_checkpoints["llama"])
    apply_lora(model, config)
    save_adapter(model, tmp_path / "adapter", config)
    out = tmp_path / "merged"
    merge_adapter_into_checkpoint(tiny_checkpoints["llama"], tmp_path / "adapter", out, max_shard_size="100KB")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    real_merge, temps_seen = merge_module.merge_weight, []

    def failing_merge(*args: Any) -> torch.Tensor:
        temps_seen.append(len(list(out.glob(".model-*.tmp"))))
        if len(temps_seen) == 10:
            raise RuntimeError("interrupted")
        return real_merge(*args)

    monkeypatch.setattr(merge_module, "merge_weight", failing_merge)
    with pytest.raises(RuntimeError, match="interrupted"):
        merge_adapter_into_checkpoint(tiny_checkpoints["llama"], tmp_path / "adapter", out, max_shard_size="100KB")
    assert temps_seen[-1] > 0  # shards of the failed merge had reached the disk under temp names
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (merged(_ids()).logits - model(_ids())).abs().max().item() <= 1e-4


# Runs in a fresh process, so the peak RSS is the merge's own (ru_maxrss is in KiB on Linux).
_MERGE_IN_A_FRESH_PROCESS = """
import resource, sys
from entrenar.lora import merge_adapter_into_checkpoint
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
merge_adapter_into_checkpoint(sys.argv[1], sys.argv[2], sys.argv[3], max_shard_size=sys.argv[4])
print(after_imports, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and MALLOC_MMAP_THRESHOLD_ are Linux/glibc's")
def test_smollm2_merge_holds_one_shard(smollm2_hf_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = LoraConfig(rank=16, alpha=32, target_modules="all-linear", init="none")  # random non-zero A and B
    model = from_pretrained(smollm2_hf_dir)
    apply_lora(model, config)
    save_adapter(model, tmp_path / "adapter", config)
    del model
    # glibc keeps freed heap blocks and raises its mmap threshold as tensors are freed, adding 20-70 MB of
    # run-to-run noise; a fixed threshold hands every tensor-sized block back on free, so the peak is what is held.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    # 100 MB shards against a ~540 MB float32 base: holding one shard is clearly not holding the model.
    args = [str(smollm2_hf_dir), str(tmp_path / "adapter"), str(tmp_path / "merged"), "100MB"]
    result = subprocess.run(
        [sys.executable, "-c", _MERGE_IN_A_FRESH_PROCESS, *args], env=env, capture_output=True, text=True, check=True
    )
    after_imports, peak = (int(kib) * 1024 for kib in result.stdout.split())
    shards = sorted((tmp_path / "merged").glob("model-*.safetensors"))
    base_size = (smollm2_hf_dir / "model.safetensors").stat().st_size
    adapter_size = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    # The embedding matrix (49152 x 576 float32, 113 MB) exceeds 100 MB, so the largest shard is its own.
    one_shard = max(shard.stat().st_size for shard in shards)
    # Base and adapter are read through mmap (their pages count once touched); the writer holds one shard.
    assert peak - after_imports <= base_size + adapter_size + one_shard, (peak - after_imports, base_size, one_shard)
    assert len(shards) == 6  # 113 MB, four of ~99 MB, 28 MB: 538 MB in 100 MB shards
    key = "model.layers.0.self_attn.q_proj.weight"
    adapter = load(tmp_path / "adapter")
    prefix = f"base_model.model.{key.removesuffix('.weight')}"
    lora = {name: adapter[f"{prefix}.{name}.weight"] for name in ("lora_A", "lora_B")}
    with open_checkpoint(smollm2_hf_dir) as base, open_checkpoint(tmp_path / "merged") as merged:
        assert merged.keys() == base.keys()
        assert torch.equal(merged.get_tensor(key), merge_weight(base.get_tensor(key), lora, config))
        assert torch.equal(merged.get_tensor("model.norm.weight"), base.get_tensor("model.norm.weight"))


def test_merge_weight_keeps_the_base_dtype() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 5).to(torch.bfloat16)
    tensors = {"lora_A": torch.randn(2, 5), "lora_B": torch.randn(6, 2)}
    merged = merge_weight(weight, tensors, LoraConfig(rank=2, alpha=6))
    # Float32 arithmetic, then the base dtype: W + (6 / 2) B A.
    expected = (weight.float() + 3.0 * tensors["lora_B"] @ tensors["lora_A"]).to(torch.bfloat16)
    assert merged.dtype == torch.bfloat16 and torch.equal(merged, expected)


def _hand_adapter(folder: Path, path: str, a: torch.Tensor, b: torch.Tensor, **config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lora = LoraConfig(rank=a.shape[0], alpha=4, target_modules=[path.rpartition(".")[2]], **config)
    (folder / "adapter_config.json").write_text(json.dumps(AdapterConfig(lora).to_peft_dict([path])))
    prefix = f"base_model.model.{path}"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, folder / "adapter_model.safetensors")
    return folder


def test_adapters_that_do_not_fit_the_base(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    llama = tiny_checkpoints["llama"]
    head = _hand_adapter(tmp_path / "head", "lm_head", torch.zeros(2, 64), torch.zeros(1024, 2))
    with pytest.raises(LoraError, match=r"no tensor 'lm_head\.weight' that the adapter targets"):
        merge_adapter_into_checkpoint(llama, head, tmp_path / "out")
    wrong = _hand_adapter(tmp_path / "wrong", "model.layers.0.self_attn.q_proj", torch.zeros(2, 32), torch.zeros(64, 2))
    with pytest.raises(LoraError, match=r"has shape \[64, 64\] but the adapter implies \[64, 32\]"):
        merge_adapter_into_checkpoint(llama, wrong, tmp_path / "out")
    dora = _hand_adapter(
        tmp_path / "dora", "model.layers.0.self_attn.q_proj", torch.zeros(2, 64), torch.zeros(64, 2), use_dora=True
    )
    with pytest.raises(LoraError, match="disagree with its config"):
        merge_adapter_into_checkpoint(llama, dora, tmp_path / "out")
    with pytest.raises(LoraError, match="is the base folder"):
        merge_adapter_into_checkpoint(llama, wrong, llama)
    assert not (tmp_path / "out").exists()


def test_merge_and_unload_refuses_a_quantized_base() -> None:
    model = torch.nn.Sequential()
    model.add_module("proj", NF4Linear.from_weight(torch.randn(64, 64)))
    apply_lora(model, LoraConfig(rank=2, target_modules=["proj"]))
    with pytest.raises(LoraError, match="needs a dense base weight"):
        merge_and_unload(model)
