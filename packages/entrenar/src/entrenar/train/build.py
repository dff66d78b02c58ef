"""From a validated `TrainConfig` to the objects the training loop runs, in named steps.

The order of `RunBuilder`'s steps is the documentation (torchtune's recipes: ``_setup_model``,
``_setup_optimizer``, ``_setup_lr_scheduler``, ``_setup_data``):

1. `RunBuilder.setup_data`: the base model's folder, its tokenizer, the datasets and the shuffled loader
   (`entrenar.train.setup.data`).
2. `RunBuilder.setup_model`: seed, then the model for the config's method: base, frozen layers
   quantized, adapters (`entrenar.train.setup.model`).
3. `RunBuilder.setup_teacher` (with ``distill:``): the frozen teacher(s) and, with ``distill.hidden``, the
   learned projections of layer-wise transfer (`entrenar.distill`); before the optimizer, which trains them.
   With ``distill.cache`` the teacher cache instead (built first when the folder is empty), and no teacher.
4. `RunBuilder.setup_prune` (with ``prune:``): the masking callback; ``schedule: oneshot`` prunes the model
   here (`entrenar.train.pruning`), before the wrapper and the optimizer.
5. `RunBuilder.setup_qat` (with ``qat:``): every decoder linear fake-quantizes its weight for the format
   (`entrenar.train.qat`), and the callback that turns it on; before the wrapper and the optimizer.
6. `RunBuilder.wrap` (optional): a wrapper around the model (DDP, FSDP2); only before the optimizer,
   which must hold the parameters the wrapper trains.
7. `RunBuilder.setup_optimization`: the step plan (needs the loader), the optimizer over the trainable
   parameters (the model's and the loss's own) and the learning-rate schedule
   (`entrenar.train.setup.optimization`).
8. `RunBuilder.build`: the precision policy and the gradient engine (it caches the parameter list, so it
   comes last) and the `TrainingRun`.

Calling a step before the ones it needs, or twice, raises `BuildOrderError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from aprender.text import Tokenizer
from entrenar.autograd import GradientEngine, PrecisionPolicy
from entrenar.config import TrainConfig
from entrenar.data import DataLoader, Dataset
from entrenar.display import Report, silent
from entrenar.distill.cache import TeacherCache, prepare_teacher_cache
from entrenar.distill.hidden import HiddenTransfer, build_hidden_transfer
from entrenar.distill.teacher import Teacher, load_teachers
from entrenar.errors import ConfigError
from entrenar.models import CausalLM, loaded_dtype, read_config
from entrenar.quant.fake import WeightQuantizer
from entrenar.train.callbacks import Callback
from entrenar.train.distill_loss import DistillLoss
from entrenar.train.loss import CausalLMLoss
from entrenar.train.pruning import PruneMasks, prepare_pruning, pruned_base_note
from entrenar.train.qat import QatSwitch, prepare_qat
from entrenar.train.setup.data import load_data
from entrenar.train.setup.model import (
    build_model,
    compute_dtype,
    model_source_line,
    resolve_model_dir,
    seed_everything,
    select_device,
)
from entrenar.train.setup.optimization import StepPlan, build_optimizer_for, build_scheduler_for, plan_steps

__all__ = ["BuildOrderError", "RunBuilder", "TrainingRun", "build_run", "build_teacher_cache"]


class BuildOrderError(RuntimeError):
    """A `RunBuilder` step was called before the steps it needs, or twice (a programming error)."""


@dataclass
class TrainingRun:
    """Everything the loop needs, built from one config.

    Attributes:
        config: The validated config.
        model_dir: The base model's local folder.
        tokenizer: Its tokenizer.
        model: The model, in training mode (wrapped, when `RunBuilder.wrap` was used).
        loss: The loss over the model's LM head (reduction ``"sum"``).
        train_data: Training samples (packed rows or single samples).
        val_data: Validation samples, or None.
        loader: Shuffled training batches.
        optimizer: The optimizer.
        scheduler: The learning-rate schedule.
        precision: Autocast policy.
        engine: Accumulated backward, clipping, anomaly guard.
        device: Where the model is.
        plan: The run's length.
        trainables: Parameters the loss owns and trains beside the model (distillation's projections), or None.
        pruning: The ``prune:`` masks (a callback every `Trainer` of the run calls first), or None.
        calibration: The one-shot pruning's calibration record, or None.
        qat: The ``qat:`` switch (a callback every `Trainer` of the run calls), or None.
        qat_quantizers: With ``qat:``, the quantizer of each fake-quantized weight by checkpoint name.
    """

    config: TrainConfig
    model_dir: Path
    tokenizer: Tokenizer
    model: CausalLM
    loss: CausalLMLoss
    train_data: Dataset
    val_data: Dataset | None
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    precision: PrecisionPolicy
    engine: GradientEngine
    device: torch.device
    plan: StepPlan
    trainables: nn.Module | None = None
    pruning: PruneMasks | None = None
    calibration: dict[str, Any] | None = None
    qat: QatSwitch | None = None
    qat_quantizers: dict[str, WeightQuantizer] = field(default_factory=dict)

    def technique_callbacks(self) -> list[Callback]:
        """The callbacks the run's techniques bring (the pruning masks, then the QAT switch), which every `Trainer`
        of the run calls before its own."""
        return [callback for callback in (self.pruning, self.qat) if callback is not None]

    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter that trains, by name: the model's, then the loss's own as ``trainables.<name>``."""
        params: dict[str, torch.Tensor] = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if self.trainables is not None:
            params |= {f"trainables.{name}": p for name, p in self.trainables.named_parameters()}
        return params


class RunBuilder:
    """Builds a `TrainingRun` step by step (module docstring); each step checks the ones before it.

    Example:
        >>> builder = RunBuilder(cfg)  # doctest: +SKIP
        >>> builder.setup_data(); builder.setup_model(); builder.setup_optimization()  # doctest: +SKIP
        >>> run = builder.build()  # doctest: +SKIP
    """

    def __init__(self, cfg: TrainConfig, *, device: torch.device | None = None, report: Report = silent) -> None:
        """Start a build.

        Args:
            cfg: The validated config.
            device: Where to train; None picks `select_device`.
            report: Told where the model comes from, and as it is loaded and its adapters applied.
        """
        self.cfg = cfg
        self.device = device or select_device()
        self.report = report
        self._done: list[str] = []
        self.model_dir: Path | None = None
        self.tokenizer: Tokenizer | None = None
        self.train_data: Dataset | None = None
        self.val_data: Dataset | None = None
        self.loader: DataLoader | None = None
        self.model: CausalLM | None = None
        self.plan: StepPlan | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: LambdaLR | None = None
        self.teachers: list[Teacher] = []
        self.hidden: HiddenTransfer | None = None
        self.teacher_cache: TeacherCache | None = None
        self.pruning: PruneMasks | None = None
        self.calibration: dict[str, Any] | None = None
        self.qat: QatSwitch | None = None
        self.qat_quantizers: dict[str, WeightQuantizer] = {}

    def _step(self, name: str, needs: tuple[str, ...] = (), before: tuple[str, ...] = ()) -> None:
        if name in self._done:
            raise BuildOrderError(f"RunBuilder.{name}() was already called")
        missing = [step for step in needs if step not in self._done]
        if missing:
            raise BuildOrderError(f"RunBuilder.{name}() needs {', '.join(f'{m}()' for m in missing)} first")
        late = [step for step in before if step in self._done]
        if late:
            raise BuildOrderError(f"RunBuilder.{name}() must come before {', '.join(f'{s}()' for s in late)}")
        self._done.append(name)

    def setup_data(self) -> None:
        """The base model's folder and tokenizer, the datasets and the shuffled training loader."""
        self._step("setup_data")
        self.report(model_source_line(self.cfg.model))
        self.model_dir = resolve_model_dir(self.cfg.model)
        self.tokenizer = Tokenizer.from_dir(self.model_dir)
        self.train_data, self.val_data = load_data(self.cfg, self.tokenizer)
        self.loader = DataLoader(
            self.train_data, batch_size=self.cfg.data.batch_size, shuffle=True, seed=self.cfg.training.seed
        )

    def setup_model(self) -> None:
        """Seed everything, then load the model for the config's method (adapter init draws from the seed)."""
        self._step("setup_model", needs=("setup_data",))
        assert self.model_dir is not None
        seed_everything(self.cfg.training.seed)
        self.model = build_model(self.cfg, self.model_dir, self.device, self.report)
        note = pruned_base_note(self.cfg, self.model_dir)
        if note is not None:
            self.report(note)

    def setup_teacher(self) -> None:
        """The frozen teachers of ``distill:``, their vocabulary checked; layer-wise transfer's projections."""
        self._step("setup_teacher", needs=("setup_model",), before=("setup_optimization",))
        section = self.cfg.distill
        assert section is not None and self.model is not None and self.tokenizer is not None
        if section.cache is not None:
            assert self.model_dir is not None and self.train_data is not None
            self.teacher_cache = prepare_teacher_cache(
                self.cfg,
                model_dir=self.model_dir,
                tokenizer=self.tokenizer,
                student_config=self.model.config,
                splits={"train": self.train_data, "validation": self.val_data},
                device=self.device,
                precision=PrecisionPolicy.for_device(self.device, compute_dtype(self.model)),
                report=self.report,
            )
            return
        self.report(f"Loading teacher {', '.join(t.path for t in section.teacher_models)}...")
        self.teachers = load_teachers(
            section, self.tokenizer, self.model.config, device=self.device, dtype=self.cfg.model.dtype
        )
        for teacher in self.teachers:
            if teacher.note is not None:
                self.report(teacher.note)
        if section.hidden is not None:
            self.hidden = build_hidden_transfer(
                section.hidden, self.model.config, [t.model.config for t in self.teachers]
            )

    def setup_prune(self) -> None:
        """The ``prune:`` masks; a one-shot schedule prunes the model now (before the wrapper and the optimizer)."""
        self._step("setup_prune", needs=("setup_model",), before=("wrap", "setup_optimization"))
        assert self.model is not None and self.tokenizer is not None
        self.pruning, self.calibration = prepare_pruning(self.cfg, self.model, self.tokenizer, self.report)

    def setup_qat(self) -> None:
        """The ``qat:`` fake quantization of every decoder linear (before the wrapper and the optimizer)."""
        self._step("setup_qat", needs=("setup_model",), before=("wrap", "setup_optimization"))
        assert self.model is not None and self.model_dir is not None and self.cfg.qat is not None
        self.qat, self.qat_quantizers = prepare_qat(self.cfg.qat, self.model, self.model_dir, self.report)

    def wrap(self, wrapper: Callable[[CausalLM], CausalLM]) -> None:
        """Replace the model by ``wrapper(model)`` (DDP, FSDP2): after the model, before the optimizer."""
        self._step("wrap", needs=("setup_model",), before=("setup_optimization",))
        assert self.model is not None
        self.model = wrapper(self.model)

    def setup_optimization(self) -> None:
        """The step plan, the optimizer over the trainable parameters and the learning-rate schedule."""
        self._step("setup_optimization", needs=("setup_data", "setup_model"))
        assert self.model is not None and self.loader is not None
        self.plan = plan_steps(self.cfg.training, len(self.loader))
        if self.hidden is not None:
            self.hidden.total_steps = self.plan.total_steps
        trained = self.model if self.hidden is None else nn.ModuleDict({"model": self.model, "hidden": self.hidden})
        self.optimizer = build_optimizer_for(self.cfg, trained)
        self.scheduler = build_scheduler_for(self.cfg, self.optimizer, self.plan)

    def build(self) -> TrainingRun:
        """The precision policy and the gradient engine over the final parameters, and the run."""
        self._step("build", needs=("setup_data", "setup_model", "setup_optimization"))
        assert self.model is not None and self.model_dir is not None and self.tokenizer is not None
        assert self.train_data is not None and self.loader is not None and self.plan is not None
        assert self.optimizer is not None and self.scheduler is not None
        precision = PrecisionPolicy.for_device(self.device, compute_dtype(self.model))
        return TrainingRun(
            config=self.cfg,
            model_dir=self.model_dir,
            tokenizer=self.tokenizer,
            model=self.model,
            loss=self._loss(),
            train_data=self.train_data,
            val_data=self.val_data,
            loader=self.loader,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            precision=precision,
            engine=GradientEngine(self.model, precision),
            device=self.device,
            plan=self.plan,
            trainables=self.hidden,
            pruning=self.pruning,
            calibration=self.calibration,
            qat=self.qat,
            qat_quantizers=self.qat_quantizers,
        )

    def _loss(self) -> CausalLMLoss:
        assert self.model is not None
        if self.cfg.distill is None:
            return CausalLMLoss(self.model)
        return DistillLoss(
            self.model,
            teachers=tuple(self.teachers),
            section=self.cfg.distill,
            hidden=self.hidden,
            cache=self.teacher_cache,
        )


def build_run(cfg: TrainConfig, *, device: torch.device | None = None, report: Report = silent) -> TrainingRun:
    """Build every object of a run, ready for `entrenar.train.Trainer`: `RunBuilder`'s steps in order.

    Args:
        cfg: The validated config.
        device: Where to train; None picks `select_device`.
        report: Told where the model comes from, and as it is loaded and its adapters applied.

    Returns:
        The run.

    Raises:
        AprenderError: Any user-caused problem (model, data, options), as one message.
    """
    builder = RunBuilder(cfg, device=device, report=report)
    builder.setup_data()
    builder.setup_model()
    if cfg.distill is not None:
        builder.setup_teacher()
    if cfg.prune is not None:
        builder.setup_prune()
    if cfg.qat is not None:
        builder.setup_qat()
    builder.setup_optimization()
    return builder.build()


def build_teacher_cache(
    cfg: TrainConfig, *, device: torch.device | None = None, report: Report = silent
) -> TeacherCache:
    """``entrenar distill-cache``: the run's teacher cache, built (or rebuilt when stale) without the student.

    Only the student's config, tokenizer and data are read, so the teachers have the memory to themselves;
    they run under the autocast the training run will use, so the cache equals what they compute online.

    Args:
        cfg: The validated config, with ``distill.cache``.
        device: Where to run the teachers; None picks `select_device`.
        report: Told where the model comes from and whether the cache was built or is up to date.

    Raises:
        ConfigError: No ``distill.cache``; the folder holds something that is not a teacher cache.
    """
    if cfg.distill is None:
        raise ConfigError("the config has no distill: section; add one with a teacher and `cache: DIR`")
    if cfg.distill.cache is None:
        raise ConfigError("distill.cache is not set; add `cache: DIR` to distill: (or pass distill.cache=DIR)")
    builder = RunBuilder(cfg, device=device, report=report)
    builder.setup_data()
    assert builder.model_dir is not None and builder.tokenizer is not None and builder.train_data is not None
    dtype = loaded_dtype(builder.model_dir, cfg.model.dtype)
    return prepare_teacher_cache(
        cfg,
        model_dir=builder.model_dir,
        tokenizer=builder.tokenizer,
        student_config=read_config(builder.model_dir),
        splits={"train": builder.train_data, "validation": builder.val_data},
        device=builder.device,
        precision=PrecisionPolicy.for_device(builder.device, dtype),
        rebuild=True,
        report=report,
    )
