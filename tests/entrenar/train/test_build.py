"""entrenar.train.build / run / validate: step plans, precision, Hub models pinned by revision, dry runs."""

from __future__ import annotations

import io
import json
import shutil
from importlib import import_module
from pathlib import Path

import pytest
import torch
from rich.console import Console

from aprender.hub import upload_folder
from entrenar.config import load_config
from entrenar.display import human_size
from entrenar.errors import CheckpointError, ConfigError, LoraError
from entrenar.models import from_pretrained, save_pretrained
from entrenar.train import (
    BuildOrderError,
    RunBuilder,
    Trainer,
    build_run,
    dry_run,
    plan_steps,
    resolve_model_dir,
    run_training,
)
from entrenar.train.setup import select_device
from entrenar.train.validate import validate_run
from fixtures.hub import LocalHub

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


@pytest.mark.parametrize(
    ("epochs", "max_steps", "grad_accum", "batches", "expected"),
    [
        (3, None, 1, 4, (12, 12)),  # 3 epochs x 4 batches
        (3, None, 3, 4, (12, 4)),  # 12 micro-batches in steps of 3
        (1, None, 3, 4, (4, 2)),  # the last step takes the 1 micro-batch left
        (3, 5, 1, 4, (5, 5)),  # max_steps stops earlier
        (3, 50, 2, 4, (12, 6)),  # ... but never later than the epochs
    ],
)
def test_plan_steps(
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    epochs: int,
    max_steps: int | None,
    grad_accum: int,
    batches: int,
    expected: tuple[int, int],
) -> None:
    training = {"epochs": epochs, "max_steps": max_steps, "grad_accum": grad_accum}
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"], training=training))
    plan = plan_steps(cfg.training, batches)
    assert (plan.total_micro_batches, plan.total_steps) == expected
    assert plan.batches_per_epoch == batches


def test_the_last_step_takes_only_the_micro_batches_left(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"])  # 8 samples, batch 4: 2 per epoch
    trainer = Trainer(
        build_run(load_config(config, ["training.max_steps=null", "training.epochs=1", "training.grad_accum=3"]))
    )
    trainer.fit()
    assert (trainer.state.step, trainer.state.micro_batches, trainer.state.epoch) == (1, 2, 1.0)


def test_warmup_must_end_before_the_run(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # The config cannot check this when max_steps is null: 1 epoch of 2 steps, warmup 2.
    overrides = ["training.max_steps=null", "training.epochs=1", "scheduler.name=cosine", "scheduler.warmup_steps=2"]
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), overrides)
    with pytest.raises(ConfigError, match=r"scheduler\.warmup_steps: 2 must be below the run's 2 optimizer steps"):
        build_run(cfg)
    with pytest.raises(ConfigError, match="warmup_steps"):
        validate_run(cfg)


def test_lora_targets_are_checked(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), ["lora.target_modules=[nope_proj]"])
    with pytest.raises(LoraError, match="nope_proj"):
        build_run(cfg)


@pytest.mark.parametrize("targets", ["[lm_head]", "'.*head'"])
def test_lora_may_target_the_untied_lm_head(tiny_checkpoints: dict[str, Path], tmp_path: Path, targets: str) -> None:
    # the loss is computed inside the model's forward, through the adapted head (tests/entrenar/train/test_seams.py)
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), [f"lora.target_modules={targets}"])
    model = build_run(cfg).model
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["lm_head.lora_A", "lm_head.lora_B"]


def test_precision_of_a_bfloat16_run(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), ["model.dtype=bfloat16"])
    run = build_run(cfg)
    assert run.precision.dtype == torch.bfloat16 and run.device == select_device() == torch.device("cpu")
    dtypes = {p.dtype for p in run.model.parameters() if p.requires_grad}
    assert dtypes == {torch.float32}  # trainable master weights
    assert run.model.get_parameter("model.layers.0.mlp.up_proj.weight").dtype == torch.bfloat16  # frozen
    assert Trainer(run).train_step() > 0


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of `path` (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the Linux memory-map table")
def test_qlora_keeps_no_tensor_in_the_checkpoint_memory_map(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # The oracle: a plain load leaves the weights as views of the file's map; after QLoRA's build no tensor
    # of the model points into a map of the file (so the map, and its resident pages, can go).
    folder = tiny_checkpoints["qwen2"]
    checkpoint = folder / "model.safetensors"
    plain = from_pretrained(folder)

    def in_map(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
        return any(start <= tensor.untyped_storage().data_ptr() < end for start, end in ranges)

    embedding = plain.get_parameter("model.embed_tokens.weight")
    assert in_map(embedding, _mapped_ranges(checkpoint))
    cfg = load_config(runs.write_config(tmp_path, folder, quantize={"bits": 4, "type": "nf4"}))
    model = build_run(cfg).model
    ranges = _mapped_ranges(checkpoint)
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and not any(in_map(tensor, ranges) for tensor in tensors)


def test_dry_run_takes_one_step_and_writes_nothing(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]))
    console = Console(file=io.StringIO())
    loss = dry_run(cfg, console=console)
    assert loss == Trainer(build_run(cfg)).train_step()  # the same first step
    assert not (tmp_path / "out").exists()
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "lora fine-tune of" in output and "16,384 of 221,760 parameters train" in output
    assert f"dry run: one step took loss {loss:.4f}; nothing was written" in output


def test_the_start_banner(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from entrenar.train.estimate import estimate_memory
    from entrenar.train.run import describe_run

    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], qat={"format": "q8_0"})
    run = build_run(load_config(config, ["training.grad_accum=2", "data.val_split=0.25"]))
    lines = describe_run(run).splitlines()
    # 8 memory records, 2 held out: 6 samples in batches of 4 are 2 batches an epoch; 10 steps of 2 batches
    assert (
        lines[0].startswith("lora fine-tune of ") and "6 training samples (prompt_completion), 2 validation" in lines[0]
    )
    assert lines[1:4] == [
        "  techniques  LoRA + quantization-aware training",
        "  schedule    10 epochs of 2 batches, 10 optimizer steps of 4 (batch) x 2 (accumulation) x 1 (process) = 8 "
        "sequences of up to 64 tokens",
        "  device      cpu, float32 (no autocast)",
    ]
    total = estimate_memory(run.config, run.model.config, run.model).total
    assert lines[4].startswith(f"  memory      about {human_size(total)} estimated (weights ")


def test_resume_true_without_a_checkpoint_fails(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]))
    with pytest.raises(CheckpointError, match=r"--resume: no checkpoint in .*checkpoints"):
        run_training(cfg, resume=True, console=Console(file=io.StringIO()))


def test_validate_run_reports_without_loading_weights(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_checkpoints["qwen2"], folder)
    (folder / "model.safetensors").unlink()  # validate must not need them
    cfg = load_config(runs.write_config(tmp_path, folder), ["data.val_split=0.25", "data.packing=true"])
    report = validate_run(cfg)
    assert (report.parameters.trainable, report.parameters.total) == (16384, 221760)
    assert (len(report.train_data.samples), len(report.val_data.samples)) == (6, 2)  # type: ignore[union-attr]
    lines = report.describe()
    assert lines[0].startswith("model: qwen2, 2 layers, hidden 64, 4 heads (2 kv), vocab 1024")
    tokens = report.train_data.n_target_tokens
    assert lines[1] == (
        f"train: 6 samples (prompt_completion) from 1 file(s), packed into 6 rows; {tokens:,} target tokens; "
        "0 truncated, 0 dropped"
    )  # 50-61 tokens each: one per 64-token row
    assert lines[2].startswith("validation: 2 samples")
    assert lines[3] == "plan: 10 optimizer steps (2 batches per epoch)"  # 6 rows / batch 4


def _upload(local_hub: LocalHub, folder: Path) -> str:
    url = upload_folder("alice/tiny", folder, token=local_hub.tokens["alice"])
    return url.rstrip("/").rsplit("/", 1)[-1]


def test_hub_model_pinned_by_revision(local_hub: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    first = tmp_path / "v1"
    shutil.copytree(tiny_checkpoints["qwen2"], first)
    sha = _upload(local_hub, first)
    second = tmp_path / "v2"
    model = from_pretrained(first)
    with torch.no_grad():
        model.lm_head_weight.mul_(2)
    save_pretrained(model, second)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(first / name, second / name)
    _upload(local_hub, second)
    head = {}
    for revision in (None, sha):
        section = {"path": "alice/tiny", "revision": revision}
        cfg = load_config(runs.write_config(tmp_path, first, model=section), ["training.max_steps=1"])
        result = run_training(cfg, resume=False, console=Console(file=io.StringIO()))
        head[revision] = result.run.model.lm_head_weight.detach()
        summary = json.loads((result.output_dir / "final_model.json").read_text())
        assert summary["base_model"]["source"] == "hub"
        assert summary["base_model"]["revision"] == revision
        assert summary["base_model"]["resolved_revision"] == result.run.model_dir.name
    original = from_pretrained(first).lm_head_weight.detach()
    assert torch.equal(head[sha], original)  # pinned: the first commit
    assert torch.equal(head[None], 2 * original)  # default branch: the second
    assert (head[sha] != head[None]).any()


def test_hub_model_without_weights_for_validation(
    local_hub: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    _upload(local_hub, tiny_checkpoints["qwen2"])
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"], model={"path": "alice/tiny"}))
    folder = resolve_model_dir(cfg.model, weights=False)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert validate_run(cfg).parameters.trainable == 16384


def test_run_builder_steps_in_order_equal_build_run(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["llama"], lora={"rank": 4}))
    wrapped: list[torch.nn.Module] = []
    builder = RunBuilder(cfg, device=torch.device("cpu"))
    builder.setup_data()
    builder.setup_model()
    builder.wrap(lambda model: wrapped.append(model) or model)
    builder.setup_optimization()
    stepwise, whole = builder.build(), build_run(cfg, device=torch.device("cpu"))
    assert wrapped == [stepwise.model]
    # the same seed before the model: the same adapter initialisation, the same optimizer over it
    assert stepwise.model.state_dict().keys() == whole.model.state_dict().keys()
    for name, tensor in stepwise.model.state_dict().items():
        assert torch.equal(tensor, whole.model.state_dict()[name]), name
    trainable = [p for p in stepwise.model.parameters() if p.requires_grad]
    assert [p for group in stepwise.optimizer.param_groups for p in group["params"]] == trainable
    assert stepwise.plan == whole.plan and len(trainable) == 2 * 7 * 2  # A and B of 7 linears in 2 layers


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (["setup_model"], r"setup_model\(\) needs setup_data\(\) first"),
        (["setup_data", "setup_optimization"], r"setup_optimization\(\) needs setup_model\(\) first"),
        (["setup_data", "setup_data"], r"setup_data\(\) was already called"),
        (["setup_data", "setup_model", "build"], r"build\(\) needs setup_optimization\(\) first"),
        (["setup_data", "setup_model", "setup_optimization", "wrap"], r"must come before setup_optimization\(\)"),
        (["wrap"], r"wrap\(\) needs setup_model\(\) first"),
    ],
)
def test_run_builder_refuses_a_wrong_order(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, steps: list[str], message: str
) -> None:
    builder = RunBuilder(
        load_config(runs.write_config(tmp_path, tiny_checkpoints["llama"])), device=torch.device("cpu")
    )
    *fine, wrong = steps
    for step in fine:
        getattr(builder, step)()
    call = getattr(builder, wrong)
    with pytest.raises(BuildOrderError, match=message):
        call(lambda model: model) if wrong == "wrap" else call()
