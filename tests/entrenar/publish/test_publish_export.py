"""`export_model`: merged HF safetensors, adapter alone, GGUF, full models; bases from folders and the Hub.

Oracles: our in-memory merge (`entrenar.lora.merge_and_unload`) for the merged weights, loaded back with
transformers; the `gguf` package's reader for GGUF files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM

from aprender.errors import InvalidArgumentError
from aprender.hub import upload_folder
from entrenar.errors import PublishError
from entrenar.publish.detect import detect_model_folder
from entrenar.publish.export import export_model, resolve_base_model

TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def _logits(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture
def output(tmp_path: Path, lora_output: Any) -> Path:
    return Path(shutil.copytree(lora_output.output, tmp_path / "output"))


def _set_adapter_base(output: Path, base: str | None, revision: str | None = None) -> None:
    path = output / "adapter_config.json"
    config = json.loads(path.read_text()) | {"base_model_name_or_path": base, "revision": revision}
    path.write_text(json.dumps(config), encoding="utf-8")


def test_merged_export_loads_in_transformers_with_our_merged_logits(tmp_path: Path, lora_output: Any) -> None:
    exported = export_model(detect_model_folder(lora_output.output), tmp_path / "stage", name="tiny")
    assert exported.layout == "model"
    assert exported.files == ["config.json", "generation_config.json", "model.safetensors", *TOKENIZER]
    assert exported.base_dir == lora_output.base
    logits = _logits(exported.folder, lora_output.input_ids)
    torch.testing.assert_close(logits, lora_output.merged_logits, atol=1e-4, rtol=0)
    assert (logits - lora_output.base_logits).abs().max() > 1e-2  # the adapter changed the model
    for name in TOKENIZER:
        assert (exported.folder / name).read_bytes() == (lora_output.output / name).read_bytes()


def test_output_tokenizer_wins_over_the_bases(tmp_path: Path, output: Path) -> None:
    config = json.loads((output / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    (output / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    exported = export_model(detect_model_folder(output), tmp_path / "stage", name="tiny")
    staged = json.loads((exported.folder / "tokenizer_config.json").read_text())
    assert staged["chat_template"] == "{{ messages[0]['content'] }}"


def test_large_merged_models_are_sharded(tmp_path: Path, lora_output: Any) -> None:
    exported = export_model(
        detect_model_folder(lora_output.output), tmp_path / "stage", name="tiny", max_shard_size=200_000
    )
    shards = [f for f in exported.files if f.startswith("model-")]
    assert len(shards) == 3  # 560 kB of weights in shards of at most 200 kB
    assert "model.safetensors.index.json" in exported.files
    logits = _logits(exported.folder, lora_output.input_ids)
    torch.testing.assert_close(logits, lora_output.merged_logits, atol=1e-4, rtol=0)


def test_adapter_alone_keeps_peft_layout(tmp_path: Path, lora_output: Any) -> None:
    exported = export_model(
        detect_model_folder(lora_output.output), tmp_path / "stage", name="tiny", merge_adapters=False
    )
    assert exported.layout == "adapter"
    assert exported.files == ["adapter_config.json", "adapter_model.safetensors", *TOKENIZER]
    source = lora_output.output
    assert (exported.folder / "adapter_model.safetensors").read_bytes() == (
        source / "adapter_model.safetensors"
    ).read_bytes()
    assert json.loads((exported.folder / "adapter_config.json").read_text()) == json.loads(
        (source / "adapter_config.json").read_text()
    )
    assert exported.base_dir == lora_output.base  # a local folder: the card reads its license


def test_adapter_alone_with_base_model_rewrites_its_config(tmp_path: Path, output: Path) -> None:
    _set_adapter_base(output, "/home/someone/base", "v1")
    exported = export_model(
        detect_model_folder(output), tmp_path / "stage", name="tiny", merge_adapters=False, base_model="acme/base"
    )
    config = json.loads((exported.folder / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("acme/base", None)
    assert exported.base_dir is None  # not cached, and nothing is downloaded for an adapter alone
    alone = export_model(detect_model_folder(output), tmp_path / "alone", name="tiny", merge_adapters=False)
    assert alone.base_dir is None  # /home/someone/base is not on this machine


def test_gguf_export_reads_back(tmp_path: Path, lora_output: Any) -> None:
    exported = export_model(
        detect_model_folder(lora_output.output), tmp_path / "stage", name="tiny", fmt="gguf", gguf_type="q8_0"
    )
    assert (exported.layout, exported.files, exported.gguf_file) == ("gguf", ["tiny-Q8_0.gguf"], "tiny-Q8_0.gguf")
    reader = gguf.GGUFReader(exported.folder / "tiny-Q8_0.gguf")
    assert bytes(reader.fields["general.name"].parts[-1]).decode() == "tiny"
    assert int(reader.fields["general.file_type"].parts[-1][0]) == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert len([n for n in types if n.startswith("blk.0.")]) == 9  # 7 projections + 2 norms


def test_full_model_is_copied(tmp_path: Path, full_output: Path, tiny_checkpoints: dict[str, Path]) -> None:
    exported = export_model(detect_model_folder(full_output), tmp_path / "stage", name="tiny")
    assert exported.files == ["config.json", "generation_config.json", "model.safetensors", *TOKENIZER]
    for name in exported.files:
        assert (exported.folder / name).read_bytes() == (tiny_checkpoints["qwen2"] / name).read_bytes()
    assert exported.base_dir is None  # Qwen/Qwen2.5-0.5B is not cached here


def test_sharded_full_model_copies_index_and_shards(tmp_path: Path, lora_output: Any) -> None:
    merged = export_model(
        detect_model_folder(lora_output.output), tmp_path / "merged", name="tiny", max_shard_size=200_000
    )
    exported = export_model(detect_model_folder(merged.folder), tmp_path / "stage", name="tiny")
    assert exported.files == merged.files


def test_sharded_full_model_with_a_missing_shard_or_bad_index(tmp_path: Path, lora_output: Any) -> None:
    merged = export_model(
        detect_model_folder(lora_output.output), tmp_path / "merged", name="tiny", max_shard_size=200_000
    )
    (merged.folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(PublishError, match=r"lists shard model-00002-of-00003\.safetensors that is not in"):
        export_model(detect_model_folder(merged.folder), tmp_path / "stage", name="tiny")
    (merged.folder / "model.safetensors.index.json").write_text("[]", encoding="utf-8")
    with pytest.raises(PublishError, match="not a safetensors index with a weight_map"):
        export_model(detect_model_folder(merged.folder), tmp_path / "stage2", name="tiny")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"merge_adapters": False, "fmt": "gguf"}, "--format gguf needs merged weights"),
        ({"fmt": "onnx"}, "format 'onnx' is not supported"),
        ({"fmt": "gguf", "gguf_type": "q2_k_s"}, "GGUF type Q2_K_S needs an importance matrix, which publishing"),
        ({"base_model": "./no/such/base"}, "neither a folder here nor a Hub id"),
    ],
)
def test_option_errors(tmp_path: Path, lora_output: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PublishError, match=message):
        export_model(detect_model_folder(lora_output.output), tmp_path / "stage", name="tiny", **kwargs)


def test_unknown_or_repeated_gguf_types(tmp_path: Path, lora_output: Any) -> None:
    folder = detect_model_folder(lora_output.output)
    with pytest.raises(InvalidArgumentError, match="GGUF type 'q4_k' is not supported; use one of f32, f16"):
        export_model(folder, tmp_path / "stage", name="tiny", fmt="gguf", gguf_type="q4_k")
    with pytest.raises(InvalidArgumentError, match="list Q8_0 twice"):
        export_model(folder, tmp_path / "stage", name="tiny", fmt="gguf", gguf_type="q8_0,Q8_0")
    assert not (tmp_path / "stage").exists() or not list((tmp_path / "stage").iterdir())


def test_several_gguf_types_one_file_each(tmp_path: Path, lora_output: Any) -> None:
    lines: list[str] = []
    exported = export_model(
        detect_model_folder(lora_output.output),
        tmp_path / "stage",
        name="tiny",
        fmt="gguf",
        gguf_type="q4_k_m,Q8_0",
        report=lines.append,
    )
    assert exported.gguf_files == ("tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf") and exported.gguf_file == "tiny-Q4_K_M.gguf"
    assert exported.files == ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"]
    assert [line for line in lines if line.startswith("Exporting as GGUF")] == [
        "Exporting as GGUF (Q4_K_M): tiny-Q4_K_M.gguf...",
        "Exporting as GGUF (Q8_0): tiny-Q8_0.gguf...",
    ]
    types = {}
    for name in exported.gguf_files:
        reader = gguf.GGUFReader(exported.folder / name)
        types[name] = {t.name: t.tensor_type for t in reader.tensors}
    # the tiny model's 64-wide rows: Q4_K falls back to Q5_0 (llama.cpp's rule); Q8_0 stays Q8_0
    assert types["tiny-Q4_K_M.gguf"]["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q5_0
    assert types["tiny-Q8_0.gguf"]["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0


@pytest.mark.parametrize("merge", [True, False])
def test_merge_flag_is_refused_for_a_full_model(tmp_path: Path, full_output: Path, merge: bool) -> None:
    with pytest.raises(PublishError, match="holds a full model, so --merge-adapters/--no-merge-adapters"):
        export_model(detect_model_folder(full_output), tmp_path / "stage", name="tiny", merge_adapters=merge)


def test_adapter_without_any_base_needs_base_model(tmp_path: Path, output: Path) -> None:
    _set_adapter_base(output, None)
    (output / "final_model.json").unlink()
    with pytest.raises(PublishError, match=r"names no base model .* pass --base-model"):
        export_model(detect_model_folder(output), tmp_path / "stage", name="tiny")
    assert (
        export_model(detect_model_folder(output), tmp_path / "alone", name="t", merge_adapters=False).base_dir is None
    )


def test_base_model_option_overrides_the_adapters(tmp_path: Path, output: Path, lora_output: Any) -> None:
    _set_adapter_base(output, "/gone/base")
    exported = export_model(
        detect_model_folder(output), tmp_path / "stage", name="tiny", base_model=str(lora_output.base)
    )
    torch.testing.assert_close(
        _logits(exported.folder, lora_output.input_ids), lora_output.merged_logits, atol=1e-4, rtol=0
    )


def test_hub_base_is_downloaded_or_refused_offline(
    tmp_path: Path, output: Path, lora_output: Any, local_hub: Any
) -> None:
    _set_adapter_base(output, "alice/tiny-base")
    folder = detect_model_folder(output)
    with pytest.raises(PublishError, match="not in the HF cache and --dry-run makes no request"):
        export_model(folder, tmp_path / "dry", name="tiny", offline=True)
    assert export_model(folder, tmp_path / "alone", name="t", merge_adapters=False).base_dir is None
    upload_folder("alice/tiny-base", lora_output.base, token=local_hub.tokens["alice"])
    exported = export_model(folder, tmp_path / "stage", name="tiny")
    assert exported.base_dir is not None and (exported.base_dir / "README.md").is_file()
    torch.testing.assert_close(
        _logits(exported.folder, lora_output.input_ids), lora_output.merged_logits, atol=1e-4, rtol=0
    )
    # now cached: an offline export and an adapter-alone export find it without the server
    local_hub.server.stop()
    assert export_model(folder, tmp_path / "dry2", name="tiny", offline=True).files == exported.files
    assert export_model(folder, tmp_path / "alone2", name="t", merge_adapters=False).base_dir == exported.base_dir


def test_resolve_base_model_accepts_folders(tmp_path: Path) -> None:
    assert resolve_base_model(str(tmp_path), "ignored", offline=True) == tmp_path
    with pytest.raises(PublishError, match="neither a folder here nor a Hub id"):
        resolve_base_model("a/b/c", None, offline=False)


def test_qlora_merges_into_the_16_bit_base_never_4_bit(
    tmp_path: Path, output: Path, lora_output: Any, make_record: Any
) -> None:
    """A QLoRA run merges into the stored base in its own dtype (here bfloat16): W' = W + alpha/r * B @ A."""
    from aprender.format.safetensors import load, save

    base = Path(shutil.copytree(lora_output.base, tmp_path / "bf16-base"))
    weights = load(base)
    save({name: tensor.to(torch.bfloat16) for name, tensor in weights.items()}, base)
    (output / "final_model.json").write_text(json.dumps(make_record(str(base), "qlora")), encoding="utf-8")
    folder = detect_model_folder(output)
    assert folder.techniques == ("qlora",)
    exported = export_model(folder, tmp_path / "stage", name="tiny", base_model=str(base))
    merged = load(exported.folder)
    assert {tensor.dtype for tensor in merged.values()} == {torch.bfloat16}
    assert merged.keys() == weights.keys()
    adapter = load(output / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
    w = weights["model.layers.0.self_attn.q_proj.weight"].to(torch.bfloat16)
    expected = (w.float() + 8.0 / 4 * (b.float() @ a.float())).to(torch.bfloat16)  # alpha 8, rank 4
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], expected, atol=0, rtol=0)


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_gguf_export_carries_the_fine_tune(tmp_path: Path, lora_output: Any, gguf_type: str) -> None:
    """Read back by our GGUF reader and by the `gguf` package: the merged model's logits, not the base's.

    Tolerances: f16 rounding, and q8_0's block scales.
    """
    from entrenar.models import from_pretrained

    exported = export_model(
        detect_model_folder(lora_output.output), tmp_path / "stage", name="tiny", fmt="gguf", gguf_type=gguf_type
    )
    path = exported.folder / exported.gguf_file
    ours = from_pretrained(path, dtype="float32")
    with torch.no_grad():
        read_back = {"aprender": ours(lora_output.input_ids).float()}
    # The `gguf` package's tensors, as transformers dequantizes and un-permutes them, in a model with the base's
    # config: transformers' GGUF loader drops llama.cpp's rope_freqs (the fixture's llama3 rope scaling).
    dequantized = AutoModelForCausalLM.from_pretrained(exported.folder, gguf_file=exported.gguf_file)
    theirs = AutoModelForCausalLM.from_pretrained(lora_output.base, dtype=torch.float32)
    theirs.load_state_dict({k: v.float() for k, v in dequantized.state_dict().items()})
    with torch.no_grad():
        read_back["gguf"] = theirs.eval()(lora_output.input_ids).logits
    tolerance = {"f16": 2e-2, "q8_0": 1e-1}[gguf_type]
    change = (lora_output.merged_logits - lora_output.base_logits).abs().max().item()
    assert change > 5 * tolerance  # the fine-tune moved the logits far more than the format's rounding
    for reader, logits in read_back.items():
        error = (logits - lora_output.merged_logits).abs().max().item()
        assert error < tolerance, (reader, error, change)
        assert (logits - lora_output.base_logits).abs().max().item() > change - tolerance, reader
