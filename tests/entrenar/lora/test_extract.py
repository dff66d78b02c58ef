"""Extracting a LoRA adapter from a fine-tuned model: exact at full rank, in ours and in PEFT.

"Fine-tuned" models are the tiny fixtures plus known changes (`fixtures.finetuned.finetuned_copy`), so the
expected adapter is known: a full-rank change comes back exactly at full rank, a rank-k change at rank k,
and a change built as ``U diag(s) V^T`` from orthonormal U, V has the hand-computable energy ranks and
truncation. Oracles: the fine-tuned model's logits (our `CausalLM`, and transformers for PEFT), PEFT's
``PeftModel.from_pretrained`` / ``merge_and_unload``, ``torch.linalg.svdvals`` for the truncation error and
mergekit's ``mergekit-extract-lora`` for truncated layers.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from aprender.format.safetensors import load, load_file, open_checkpoint
from entrenar.errors import MergeError
from entrenar.lora import extract as extract_module
from entrenar.lora import load_adapter, merge_adapter_into_checkpoint, read_adapter_config, read_adapter_weights
from entrenar.lora.extract import energy_rank, extract_lora
from entrenar.models.loading import from_pretrained
from entrenar.publish.detect import detect_model_folder
from fixtures.finetuned import finetuned_copy

TOLERANCE = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _ids() -> torch.Tensor:
    return torch.randint(7, 1000, (2, 10), generator=torch.Generator().manual_seed(3))


def _linear_shapes(base: Path) -> dict[str, tuple[int, ...]]:
    """Every linear weight of a tiny fixture: the 2-D tensors but the embedding (lm_head when untied)."""
    with open_checkpoint(base) as reader:
        shapes = {name: reader.shape(name) for name in list(reader.keys())}
    return {name: shape for name, shape in shapes.items() if len(shape) == 2 and "embed_tokens" not in name}


def _our_logits(folder: Path, adapter: Path | None = None) -> torch.Tensor:
    model = from_pretrained(folder)
    if adapter is not None:
        load_adapter(model, adapter)
    with torch.no_grad():
        logits: torch.Tensor = model(_ids())
    return logits


def _peft_model(load_hf: Callable[[str], Any], family: str, adapter: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(load_hf(family), str(adapter)).eval()


def _hf_logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(_ids()).logits
    return logits


@pytest.mark.parametrize("family", ["qwen2", "llama"])  # untied (lm_head adapted) and tied
def test_full_rank_adapter_reproduces_the_finetune_in_ours_and_peft(
    family: str, tmp_path: Path, tiny_checkpoints: dict[str, Path], load_hf: Callable[[str], Any]
) -> None:
    from transformers import AutoModelForCausalLM

    base = tiny_checkpoints[family]
    gen = torch.Generator().manual_seed(0)
    deltas = {name: 0.05 * torch.randn(shape, generator=gen) for name, shape in _linear_shapes(base).items()}
    finetuned = finetuned_copy(base, tmp_path / "ft", deltas)
    result = extract_lora(finetuned, base, tmp_path / "adapter", rank=64)
    # Rank 64 is min(out, in) of every layer but k_proj/v_proj (32 x 64), which keep 32 through rank_pattern.
    raw = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (raw["r"], raw["lora_alpha"]) == (64, 64)
    assert raw["rank_pattern"] == {f"model.layers.{i}.self_attn.{p}": 32 for i in (0, 1) for p in ("k_proj", "v_proj")}
    assert sorted(raw["target_modules"]) == sorted(name.removesuffix(".weight") for name in deltas)
    assert ("lm_head" in raw["target_modules"]) is (family == "qwen2")
    assert all(layer.rank == layer.max_rank and layer.relative_error == 0.0 for layer in result.layers)
    assert not result.unchanged and not result.dropped
    # Ours: base + adapter gives the fine-tuned logits (and the change matters).
    theirs = _our_logits(finetuned)
    assert (_our_logits(base, tmp_path / "adapter") - theirs).abs().max().item() <= TOLERANCE
    assert (_our_logits(base) - theirs).abs().max().item() > 0.05
    # PEFT on the transformers base gives the transformers fine-tuned logits.
    hf_finetuned = AutoModelForCausalLM.from_pretrained(finetuned).eval()
    peft_logits = _hf_logits(_peft_model(load_hf, family, tmp_path / "adapter"))
    assert (peft_logits - _hf_logits(hf_finetuned)).abs().max().item() <= TOLERANCE
    # Merged back on disk (rank_pattern read by the merge), the weights are the fine-tuned ones.
    merge_adapter_into_checkpoint(base, tmp_path / "adapter", tmp_path / "merged")
    merged, expected = load(tmp_path / "merged"), load(finetuned)
    assert all(torch.allclose(merged[name], expected[name], atol=1e-5) for name in expected)


def test_rank_k_change_comes_back_at_rank_k(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    base = tiny_checkpoints["qwen2"]
    gen = torch.Generator().manual_seed(1)
    deltas = {
        name: (0.3 * torch.randn(out, 3, generator=gen)) @ (0.3 * torch.randn(3, inp, generator=gen))
        for name, (out, inp) in _linear_shapes(base).items()
    }
    finetuned = finetuned_copy(base, tmp_path / "ft", deltas)
    result = extract_lora(finetuned, base, tmp_path / "rank3", rank=3)
    adapter = read_adapter_config(tmp_path / "rank3").lora
    assert (adapter.rank, adapter.alpha, dict(adapter.rank_pattern)) == (3, 3, {})
    assert all(layer.rank == 3 and layer.relative_error < 1e-5 for layer in result.layers)  # float32 SVD noise
    for path, tensors in read_adapter_weights(tmp_path / "rank3").items():
        assert torch.allclose(tensors["lora_B"] @ tensors["lora_A"], deltas[f"{path}.weight"], atol=1e-5)
    assert (_our_logits(base, tmp_path / "rank3") - _our_logits(finetuned)).abs().max().item() <= TOLERANCE
    # At rank 2 the error is the dropped third singular value's share (Eckart-Young; oracle: svdvals).
    lower = extract_lora(finetuned, base, tmp_path / "rank2", rank=2)
    weights = read_adapter_weights(tmp_path / "rank2")
    for layer in lower.layers:
        delta = deltas[f"{layer.path}.weight"]
        s = torch.linalg.svdvals(delta.double())
        expected = (s[2] / s[:3].norm()).item()
        assert layer.relative_error == pytest.approx(expected, rel=1e-4)
        approx = weights[layer.path]["lora_B"] @ weights[layer.path]["lora_A"]
        assert ((delta - approx).norm() / delta.norm()).item() == pytest.approx(expected, rel=1e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # mergekit imports numpy.core
def test_truncated_layers_equal_mergekit_extract_lora(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    from mergekit.scripts.extract_lora import main as mergekit_extract_lora  # the oracle (tests only)

    base = tiny_checkpoints["qwen2"]
    gen = torch.Generator().manual_seed(6)
    shapes = {name: shape for name, shape in _linear_shapes(base).items() if name != "lm_head.weight"}
    finetuned = finetuned_copy(
        base, tmp_path / "ft", {n: 0.05 * torch.randn(s, generator=gen) for n, s in shapes.items()}
    )
    extract_lora(finetuned, base, tmp_path / "ours", rank=4)
    args = ["--model", str(finetuned), "--base-model", str(base), "--out-path", str(tmp_path / "mk"), "--max-rank", "4"]
    mergekit_extract_lora.main(args, standalone_mode=False)
    theirs = load_file(tmp_path / "mk" / "adapter_model.safetensors")
    ours = read_adapter_weights(tmp_path / "ours")
    assert len(ours) == len(shapes)
    # Random changes have distinct singular values, so the rank-4 truncation is unique: B @ A must agree
    # (mergekit also splits sqrt(S) between A and B with alpha = r, scaling 1).
    for path, tensors in ours.items():
        expected = theirs[f"base_model.model.{path}.lora_B.weight"] @ theirs[f"base_model.model.{path}.lora_A.weight"]
        assert torch.allclose(tensors["lora_B"] @ tensors["lora_A"], expected, atol=1e-5), path


def test_energy_rank_on_a_hand_spectrum() -> None:
    # Squares 9, 4, 1, 1 of 15: the first k keep 0.6, 0.867, 0.933, 1.0 of the energy.
    spectrum = torch.tensor([3.0, 2.0, 1.0, 1.0])
    thresholds = (0.5, 0.6, 0.61, 0.9, 0.95, 1.0)
    assert [energy_rank(spectrum, energy) for energy in thresholds] == [1, 1, 2, 3, 4, 4]


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]


# Layer -> (distinct singular values of its change, the rank keeping 90% of their squares, by hand).
SPECTRA = {
    "model.layers.0.self_attn.q_proj": (
        [3.0, 2.0, 1.5, 0.5],
        3,
    ),  # squares 9, 4, 2.25, 0.25: 13/15.5 < 0.9 <= 15.25/15.5
    "model.layers.0.mlp.down_proj": ([1.0, 0.99, 0.98, 0.97, 0.96], 5),  # nearly flat: 4 keep 0.81
    "model.layers.1.mlp.up_proj": ([2.0, 0.1], 1),  # 4 / 4.01 = 0.9975
}


def test_energy_threshold_picks_per_layer_ranks_that_ours_and_peft_apply(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], load_hf: Callable[[str], Any]
) -> None:
    base = tiny_checkpoints["llama"]
    shapes, gen = _linear_shapes(base), torch.Generator().manual_seed(2)
    # Each change is U diag(s) V^T with orthonormal U, V, so its truncation to k is U_k diag(s_k) V_k^T exactly.
    deltas, truncated = {}, {}
    for path, (spectrum, rank) in SPECTRA.items():
        out, inp = shapes[f"{path}.weight"]
        u, v = _orthonormal(out, len(spectrum), gen), _orthonormal(inp, len(spectrum), gen)
        s = torch.tensor(spectrum, dtype=torch.float64)
        deltas[f"{path}.weight"] = (u * s) @ v.T
        truncated[path] = (u[:, :rank] * s[:rank]) @ v[:, :rank].T
    finetuned = finetuned_copy(base, tmp_path / "ft", deltas)
    result = extract_lora(finetuned, base, tmp_path / "adapter", energy=0.9)
    assert {layer.path: layer.rank for layer in result.layers} == {path: rank for path, (_, rank) in SPECTRA.items()}
    assert len(result.unchanged) == len(shapes) - len(SPECTRA)  # unchanged layers get no adapter
    q_error = next(layer.relative_error for layer in result.layers if layer.path.endswith("q_proj"))
    assert q_error == pytest.approx(0.5 / math.sqrt(15.5), rel=1e-4)  # the dropped 0.5 of sqrt(15.5)
    # Ranks 3, 5, 1 once each: r is the largest of the most common, alpha = r, the others in rank_pattern.
    adapter = read_adapter_config(tmp_path / "adapter").lora
    assert (adapter.rank, adapter.alpha) == (5, 5)
    assert adapter.rank_pattern == {"model.layers.0.self_attn.q_proj": 3, "model.layers.1.mlp.up_proj": 1}
    # scaling * B @ A is the truncated change in every layer, whatever the layer's scaling (5/3, 1, 5).
    for path, tensors in read_adapter_weights(tmp_path / "adapter").items():
        ours = adapter.for_module(path).scaling * tensors["lora_B"].double() @ tensors["lora_A"].double()
        assert torch.allclose(ours, truncated[path], atol=1e-5), path
    # PEFT reads the same ranks and scalings: its merged weights are base + the truncated changes.
    merged = _peft_model(load_hf, "llama", tmp_path / "adapter").merge_and_unload().state_dict()
    base_tensors = load(base)
    for path in SPECTRA:
        change = merged[f"{path}.weight"].double() - base_tensors[f"{path}.weight"].double()
        assert torch.allclose(change, truncated[path], atol=1e-5), path


def test_changes_outside_linear_layers_are_refused_unless_allowed(
    tmp_path: Path, tiny_checkpoints: dict[str, Path]
) -> None:
    base = tiny_checkpoints["qwen2"]
    tensors, gen = load(base), torch.Generator().manual_seed(4)
    deltas = {
        "model.layers.0.self_attn.q_proj.weight": 0.05 * torch.randn(64, 64, generator=gen),
        "model.norm.weight": torch.full((64,), 0.1),
        "model.layers.1.self_attn.v_proj.bias": 0.5 * torch.randn(32, generator=gen),
    }
    finetuned = finetuned_copy(base, tmp_path / "ft", deltas)
    # Relative changes ||delta|| / ||W_base||, by hand.
    expected = {
        name: (deltas[name].norm() / tensors[name].norm()).item() for name in deltas if "proj.weight" not in name
    }
    worst = max(expected, key=expected.__getitem__)
    with pytest.raises(MergeError) as info:
        extract_lora(finetuned, base, tmp_path / "adapter", rank=4)
    message = str(info.value)
    assert "2 tensor(s) outside linear layers" in message and worst in message and f"{expected[worst]:.3g}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # nothing written
    result = extract_lora(finetuned, base, tmp_path / "adapter", rank=4, allow_lossy=True)
    assert {change.name: change.relative_change for change in result.dropped} == pytest.approx(expected, rel=1e-5)
    assert [layer.path for layer in result.layers] == ["model.layers.0.self_attn.q_proj"]
    record = json.loads((tmp_path / "adapter" / "final_model.json").read_text())
    assert record["extract_lora"]["dropped"] == pytest.approx(expected, rel=1e-5)


def test_a_tied_embedding_change_is_refused(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    base = tiny_checkpoints["llama"]
    deltas = {"model.embed_tokens.weight": torch.full((1024, 64), 0.01), "model.layers.0.mlp.up_proj.weight": 0.1}
    finetuned = finetuned_copy(base, tmp_path / "ft", {k: torch.as_tensor(v) for k, v in deltas.items()})
    with pytest.raises(MergeError, match=r"1 tensor\(s\) outside linear layers .* model\.embed_tokens\.weight"):
        extract_lora(finetuned, base, tmp_path / "adapter", rank=2)


def test_output_folder_is_a_publishable_adapter(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    base = tiny_checkpoints["llama"]
    finetuned = finetuned_copy(base, tmp_path / "ft", {"model.layers.1.mlp.down_proj.weight": torch.tensor(0.01)})
    trained = {"output": "full", "techniques": ["full", "distill"], "base_model": {"path": str(base)}}
    (finetuned / "final_model.json").write_text(json.dumps(trained))
    (tmp_path / "adapter").mkdir()  # an empty folder is taken
    result = extract_lora(finetuned, base, tmp_path / "adapter", rank=2)
    assert [path.name for path in result.files] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "final_model.json",
    ]
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "adapter" / name).read_bytes() == (finetuned / name).read_bytes()
    record = json.loads((tmp_path / "adapter" / "final_model.json").read_text())
    assert record["output"] == "adapter" and record["techniques"] == ["full", "distill", "extract-lora"]
    assert record["base_model"] == {"path": str(base), "source": "local", "revision": None, "resolved_revision": None}
    assert record["extract_lora"]["model"] == str(finetuned) and record["extract_lora"]["rank"] == 2
    folder = detect_model_folder(tmp_path / "adapter")
    assert (folder.kind, folder.techniques, folder.base_model) == (
        "adapter",
        ("full", "distill", "extract-lora"),
        str(base),
    )


def test_a_failed_write_leaves_no_folder(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tiny_checkpoints["llama"]
    finetuned = finetuned_copy(base, tmp_path / "ft", {"model.layers.0.mlp.up_proj.weight": torch.tensor(0.01)})

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extract_module.shutil, "copyfile", disk_full)  # after the adapter files, before the rename
    with pytest.raises(OSError, match="No space left"):
        extract_lora(finetuned, base, tmp_path / "adapter", rank=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no output, no staging folder


@pytest.mark.cuda
def test_svds_on_the_gpu_give_the_cpu_adapter(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    base = tiny_checkpoints["qwen2"]
    gen = torch.Generator().manual_seed(5)
    deltas = {name: 0.05 * torch.randn(shape, generator=gen) for name, shape in _linear_shapes(base).items()}
    finetuned = finetuned_copy(base, tmp_path / "ft", deltas)
    extract_lora(finetuned, base, tmp_path / "gpu", rank=64, device="cuda")
    assert (_our_logits(base, tmp_path / "gpu") - _our_logits(finetuned)).abs().max().item() <= TOLERANCE
