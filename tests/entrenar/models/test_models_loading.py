"""from_pretrained / save_pretrained: HF layout in and out, dtypes, sharding, factories, errors, memory.

Oracle: transformers loading our saved folders (identical logits), and transformers on the originals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from aprender.errors import InvalidArgumentError
from aprender.format.safetensors import load, save
from aprender.reference import looks_like_repo_id
from entrenar.errors import CheckpointError
from entrenar.lora import LoraConfig, LoRALinear, lora_linear_factory
from entrenar.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from entrenar.models import loading as loading_module


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_save_pretrained_loads_in_transformers_with_identical_logits(
    tiny_checkpoint: tuple[str, Path], tmp_path: Path, oracle: Any
) -> None:
    family, folder = tiny_checkpoint
    model = from_pretrained(folder)
    written = save_pretrained(model, tmp_path / "out")
    assert [path.name for path in written] == ["model.safetensors", "config.json", "generation_config.json"]
    reference = oracle.load_reference(tmp_path / "out")
    ids = oracle.random_ids(2, 24, seed=11)
    assert (_logits(model, ids) - _logits(reference, ids)).abs().max().item() == 0.0
    saved = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert saved == json.loads((folder / "generation_config.json").read_text())  # kept as loaded
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == family and config["torch_dtype"] == "float32"
    # Tensors are saved as they are (tied heads once), so they read back bit for bit.
    original, again = load(folder), load(tmp_path / "out")
    assert again.keys() == {
        name for name in original if not (family in ("llama", "qwen3") and name == "lm_head.weight")
    }
    assert all(torch.equal(again[name], original[name]) for name in again)


def test_sharded_save_loads_in_both_and_reads_in_groups(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oracle: Any
) -> None:
    model = from_pretrained(tiny_checkpoints["qwen2"])
    written = save_pretrained(model, tmp_path, max_shard_size="200KB")
    shards = [path for path in written if path.name.startswith("model-")]
    assert len(shards) >= 3 and (tmp_path / "model.safetensors.index.json") in written
    opened: list[Path] = []
    real_open = loading_module.open_checkpoint

    def counting_open(folder: Path) -> Any:
        opened.append(folder)
        return real_open(folder)

    monkeypatch.setattr(loading_module, "open_checkpoint", counting_open)
    from_pretrained(tmp_path)
    assert len(opened) == 3  # pick the dtype, check names and shapes, read everything (0.8 MB < 128 MiB)
    opened.clear()
    monkeypatch.setattr(loading_module, "_REOPEN_BYTES", 150_000)
    again = from_pretrained(tmp_path)
    # Reading groups of <= 150 kB: the 262 kB embedding and LM head alone, the 297 kB of layers in >= 2 groups.
    assert len(opened) >= 2 + 4
    ids = oracle.random_ids(2, 10, seed=12)
    assert torch.equal(_logits(again, ids), _logits(model, ids))
    assert torch.equal(_logits(oracle.load_reference(tmp_path), ids), _logits(model, ids))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", torch.bfloat16, torch.float16, torch.float32])
def test_requested_dtype_is_honoured(tiny_checkpoints: dict[str, Path], dtype: str | torch.dtype) -> None:
    model = from_pretrained(tiny_checkpoints["qwen3"], dtype=dtype)
    expected = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.config.torch_dtype == str(expected).removeprefix("torch.")
    logits = _logits(model, torch.tensor([[7, 8, 9]]))
    assert logits.dtype == expected and torch.isfinite(logits).all()


def test_auto_dtype_follows_the_config_then_the_weights(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model = from_pretrained(tiny_checkpoints["llama"], dtype="bfloat16")
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert from_pretrained(tmp_path).model.norm.weight.dtype == torch.bfloat16  # from config.json
    config = json.loads((tmp_path / "config.json").read_text())
    config["torch_dtype"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert from_pretrained(tmp_path, dtype="auto").model.norm.weight.dtype == torch.bfloat16  # from the weights
    assert from_pretrained(tiny_checkpoints["llama"], dtype="auto").model.norm.weight.dtype == torch.float32


def test_generation_config_defaults_to_the_config_token_ids(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoints["mistral"], tmp_path)
    (folder / "generation_config.json").unlink()
    model = from_pretrained(folder)
    assert model.generation_config == {}
    save_pretrained(model, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert written == {"bos_token_id": 3, "eos_token_id": 6, "pad_token_id": 0}  # config.json's ids


class LoraLike(nn.Module):
    """A projection with a base weight (from the checkpoint) and two extra matrices it initialises itself."""

    initialised = 0
    scaling: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.lora_a = nn.Parameter(torch.empty(2, in_features))
        self.lora_b = nn.Parameter(torch.empty(out_features, 2))
        self.register_buffer("scaling", torch.empty(()))

    def initialized_tensor_names(self) -> tuple[str, ...]:
        return ("lora_a", "lora_b", "scaling")

    def initialize_parameters(self) -> None:
        LoraLike.initialised += 1
        nn.init.normal_(self.lora_a)
        nn.init.zeros_(self.lora_b)
        self.scaling.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.linear(x, self.weight, self.bias)
        return base + self.scaling * (x @ self.lora_a.T) @ self.lora_b.T


def _lora_on_q(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
    if name.endswith("q_proj"):
        return LoraLike(in_features, out_features, bias)
    return nn.Linear(in_features, out_features, bias=bias)


def test_factory_parameters_missing_from_the_checkpoint_are_initialised(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, oracle: Any
) -> None:
    LoraLike.initialised = 0
    model = from_pretrained(tiny_checkpoints["qwen2"], linear_factory=_lora_on_q)
    assert LoraLike.initialised == 2  # one q_proj per layer
    q_proj = model.get_submodule("model.layers.1.self_attn.q_proj")
    assert isinstance(q_proj, LoraLike) and not q_proj.lora_a.is_meta and torch.equal(q_proj.lora_b, torch.zeros(64, 2))
    assert q_proj.scaling.item() == 0.5 and q_proj.lora_a.requires_grad
    ids = oracle.random_ids(1, 8, seed=13)
    torch.testing.assert_close(_logits(model, ids), _logits(from_pretrained(tiny_checkpoints["qwen2"]), ids))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.self_attn\.q_proj\.lora_a' \(6 in all\)"):
        save_pretrained(model, tmp_path)


def _without(folder: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the checkpoint `folder` whose ``model.safetensors`` lacks tensor `name`."""
    target = _copy(folder, tmp_path)
    tensors = load(target)
    del tensors[name]
    save(tensors, target)
    return target


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("name", ["model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.bias"])
def test_a_lora_layer_creates_only_its_adapter_tensors(
    name: str, use_dora: bool, tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    factory = lora_linear_factory(LoraConfig(rank=4, target_modules="all-linear", use_dora=use_dora))
    model = from_pretrained(tiny_checkpoints["qwen2"], linear_factory=factory)
    q_proj = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(q_proj, LoRALinear) and q_proj.weight is not None
    assert torch.equal(q_proj.lora_B, torch.zeros(64, 4))  # B starts at zero, so DoRA's m is ||W||_row
    if use_dora:
        torch.testing.assert_close(q_proj.lora_magnitude_vector, torch.linalg.norm(q_proj.weight, dim=1))
    folder = _without(tiny_checkpoints["qwen2"], tmp_path, name)
    with pytest.raises(CheckpointError, match=rf"lacks tensor '{re.escape(name)}' \(1 missing in all\)"):
        from_pretrained(folder, linear_factory=factory)
    with pytest.raises(CheckpointError, match=rf"lacks tensor '{re.escape(name)}' \(1 missing in all\)"):
        from_pretrained(folder)  # the plain model, as QLoRA and full fine-tuning load it


def test_parameters_nobody_initialises_are_an_error(tiny_checkpoints: dict[str, Path]) -> None:
    def extra(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        layer = nn.Linear(in_features, out_features, bias=bias)
        layer.register_parameter("scale", nn.Parameter(torch.empty(1)))
        return layer

    with pytest.raises(
        CheckpointError, match=r"lacks tensor 'model\.layers\.0\.self_attn\.q_proj\.scale' \(14 missing"
    ):
        from_pretrained(tiny_checkpoints["llama"], linear_factory=extra)


def test_save_refuses_a_model_missing_hf_tensors(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    def no_head(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return nn.Identity() if name == "lm_head" else nn.Linear(in_features, out_features, bias=bias)

    model = CausalLM(from_pretrained(tiny_checkpoints["mistral"]).config, linear_factory=no_head)
    with pytest.raises(CheckpointError, match=r"lacks tensor 'lm_head\.weight'"):
        save_pretrained(model, tmp_path)


def _edit_weights(folder: Path, edit: Any) -> None:
    tensors = load(folder)
    edit(tensors)
    save(tensors, folder)


def test_weights_that_do_not_fit_the_config_are_refused(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoints["llama"], tmp_path / "extra")
    _edit_weights(folder, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.9\.mlp\.up_proj\.weight' \(1 unexpected"):
        from_pretrained(folder)

    folder = _copy(tiny_checkpoints["llama"], tmp_path / "missing")
    _edit_weights(folder, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"lacks tensor 'model\.norm\.weight' \(1 missing in all\)"):
        from_pretrained(folder)

    folder = _copy(tiny_checkpoints["llama"], tmp_path / "shape")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    with pytest.raises(
        CheckpointError,
        match=r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape \[64, 128\] but config\.json implies \[64, 96\]",
    ):
        from_pretrained(folder)


def test_tensors_transformers_ignores_are_ignored(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, oracle: Any
) -> None:
    folder = _copy(tiny_checkpoints["llama"], tmp_path)  # tied embeddings

    def add(tensors: dict[str, torch.Tensor]) -> None:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)

    _edit_weights(folder, add)
    ids = oracle.random_ids(1, 5, seed=14)
    assert torch.equal(_logits(from_pretrained(folder), ids), _logits(from_pretrained(tiny_checkpoints["llama"]), ids))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"dtype": "int8"}, InvalidArgumentError, "dtype 'int8' is not supported; use 'auto', 'float32'"),
        ({"dtype": torch.float64}, InvalidArgumentError, "dtype torch.float64 is not supported"),
        ({"device": "nonsense"}, InvalidArgumentError, "device 'nonsense' is not a torch device"),
        ({"revision": "main"}, InvalidArgumentError, "revision 'main' applies to Hub repo ids"),
    ],
)
def test_bad_arguments_are_refused(
    tiny_checkpoints: dict[str, Path], arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        from_pretrained(tiny_checkpoints["llama"], **arguments)
    assert message in str(raised.value)


def test_bad_folders_are_refused(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder, and not a Hub repo id"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no such folder"):
        from_pretrained(Path("a/b"))  # a Path is never taken for a repo id
    with pytest.raises(CheckpointError, match="is a file; pass the model folder"):
        from_pretrained(tiny_checkpoints["llama"] / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json: not found"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read as JSON"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="holds a JSON list, not an object"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Qwen/Qwen2.5-0.5B", True),  # a dot in the name is not a file extension
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("gpt2", False),
        ("a/b/c", False),
        ("./model", False),
        ("~/model", False),
        ("/abs", False),
        ("me/model.safetensors", False),
        ("me/config.json", False),
        ("me/", False),
    ],
)
def test_repo_id_recognition(text: str, expected: bool) -> None:
    assert looks_like_repo_id(text) is expected


def test_repo_ids_resolve_through_a_local_hub(tiny_checkpoints: dict[str, Path], local_hub: Any, oracle: Any) -> None:
    from aprender.hub import upload_folder

    token = local_hub.tokens["alice"]
    first = upload_folder("alice/tiny", tiny_checkpoints["qwen3"], token=token).rsplit("/", 1)[-1]
    upload_folder("alice/tiny", tiny_checkpoints["llama"], token=token)  # a second commit replaces the model
    pinned, latest = from_pretrained("alice/tiny", revision=first), from_pretrained("alice/tiny")
    assert (pinned.config.model_type, latest.config.model_type) == ("qwen3", "llama")
    ids = oracle.random_ids(1, 6, seed=17)
    assert torch.equal(_logits(pinned, ids), _logits(from_pretrained(tiny_checkpoints["qwen3"]), ids))
    snapshot = next(Path(os.environ["HF_HUB_CACHE"]).glob(f"models--alice--tiny/snapshots/{first}"))
    # Only what the model needs is fetched: no tokenizer files.
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


# --------------------------------------------------------------------------------------------- memory

# Peak memory from /proc (Linux): VmHWM is the address space's peak RSS, and writing 5 to clear_refs resets
# it to the current RSS. (ru_maxrss would not do: it survives exec, so a child can inherit pytest's peak.)
_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    from entrenar.models import from_pretrained
    torch.set_num_threads(1)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def touch(model):  # read every parameter, so every page is really in memory
        return sum(float(p.detach().float().sum()) for p in model.parameters())

    touch(from_pretrained(sys.argv[3]))  # warm up: the first load and sum pay ~80 MB of one-time initialisation
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    model = from_pretrained(sys.argv[1], dtype=sys.argv[2])
    touch(model)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"growth": status("VmHWM") - before, "model": model_bytes}))
    """
)
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="measures memory through Linux /proc"
)


def _peak_growth(folder: Path, dtype: str, warm_up: Path) -> tuple[int, int]:
    """Peak RSS growth (bytes) of a fresh interpreter loading `folder` after a warm-up load, and the model bytes."""
    command = [sys.executable, "-c", _MEASURE, str(folder), dtype, str(warm_up)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["growth"], result["model"]


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random untied Llama of ~120 MB (float32), saved by save_pretrained."""
    config = ModelConfig(
        model_type="llama",
        vocab_size=16000,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=4,
        num_heads=8,
        num_kv_heads=8,
        head_dim=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("big")
    save_pretrained(CausalLM(config), folder)
    return folder


@needs_proc
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_does_not_hold_two_copies(big_checkpoint: Path, dtype: str, tiny_checkpoints: dict[str, Path]) -> None:
    checkpoint_bytes = (big_checkpoint / "model.safetensors").stat().st_size
    growth, model_bytes = _peak_growth(big_checkpoint, dtype, tiny_checkpoints["llama"])
    data_bytes = model_bytes * (1 if dtype == "float32" else 2)
    assert 0 <= checkpoint_bytes - data_bytes < 100_000  # the rest is the header: the model is in `dtype`
    assert growth < 1.5 * checkpoint_bytes, (growth, checkpoint_bytes)
    if dtype == "bfloat16":  # half-size model: what remains is the model plus at most one reading group
        assert growth < model_bytes + loading_module._REOPEN_BYTES + 0.25 * checkpoint_bytes


# --------------------------------------------------------------------------------------------- SmolLM2


@needs_proc
@pytest.mark.slow
def test_smollm2_loads_without_two_copies(smollm2_hf_dir: Path, tiny_checkpoints: dict[str, Path]) -> None:
    checkpoint_bytes = (smollm2_hf_dir / "model.safetensors").stat().st_size
    growth, _ = _peak_growth(smollm2_hf_dir, "float32", tiny_checkpoints["llama"])
    assert growth < 1.5 * checkpoint_bytes, (growth, checkpoint_bytes)


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2_hf_dir: Path, oracle: Any) -> None:
    ours = from_pretrained(smollm2_hf_dir)
    reference = oracle.load_reference(smollm2_hf_dir)
    ids = oracle.random_ids(2, 12, seed=16, vocab=49152)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            difference = ours(ids, **kwargs) - reference(ids, **kwargs).logits
            real = mask.bool() if kwargs else torch.ones_like(mask, dtype=torch.bool)
            assert difference[real].abs().max().item() <= 1e-4
        packed = ours(ids[:1], position_ids=positions)[0]
        assert (packed[:5] - ours(ids[:1, :5])[0]).abs().max().item() <= 1e-4
        assert (packed[5:] - ours(ids[:1, 5:])[0]).abs().max().item() <= 1e-4
