"""The training config, schema v1: one frozen dataclass per YAML section and the root `TrainConfig`.

Each field carries a `Spec` in its metadata (type, allowed values, range, whether ``null`` is allowed);
`entrenar.config.load` walks these specs to validate a YAML mapping, so the table below and the
validator cannot drift apart. Build configs with `load_config` or `TrainConfig.from_dict`: they
validate every key, fill the defaults that depend on other keys and make paths absolute. Constructing
the dataclasses by hand skips all of that.

The training method is derived, not written: no ``lora`` section means a full fine-tune, ``lora``
alone means LoRA, ``lora`` plus ``quantize`` means QLoRA (see `TrainConfig.method`). A separate
``method`` key could only repeat (or contradict) what the sections already say.

A ``distill:`` section adds knowledge distillation to any method, a ``prune:`` section pruning and a ``qat:`` section
quantization-aware training (LoRA and full fine-tunes); `TrainConfig.techniques` lists what a run applies
(``["lora", "distill", "prune"]``).

A ``null`` section (``lora:`` with nothing under it) is the same as no section; ``lora: {}`` turns
LoRA on with every default. Nested sections (``distill.hidden``, the entries of ``distill.teachers``)
are dataclasses too, named by their key's ``Spec.section``.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, replace
from typing import Any

from aprender.constants import DIVERGENCES
from entrenar.constants import (
    ALL_LINEAR,
    AUTO_LAYERS,
    DATA_FORMATS,
    DTYPES,
    HIDDEN_LOSSES,
    HIDDEN_SCHEDULES,
    LORA_INITS,
    PUBLISH_FORMATS,
    QUANT_TYPES,
    TRAIN_ON,
)
from entrenar.prune.spec import METHODS as PRUNE_METHODS
from entrenar.prune.spec import PATTERNS as PRUNE_PATTERNS

__all__ = [
    "DATA_FORMATS",
    "DTYPES",
    "LORA_INITS",
    "OPTIMIZER_NAMES",
    "PUBLISH_FORMATS",
    "QUANT_TYPES",
    "SCHEDULER_NAMES",
    "TRAIN_ON",
    "DataSection",
    "DistillHidden",
    "DistillSection",
    "DistillTeacher",
    "LoraSection",
    "ModelSection",
    "OptimizerSection",
    "PruneSection",
    "PublishSection",
    "QatSection",
    "QuantizeSection",
    "SchedulerSection",
    "Spec",
    "TrainConfig",
    "TrainingSection",
]

OPTIMIZER_NAMES = ("adamw", "adam", "sgd", "adamw8bit")
ADAM_FAMILY = ("adamw", "adam", "adamw8bit")
SCHEDULER_NAMES = ("constant", "linear", "cosine", "step", "inverse_sqrt")
DECAYING_SCHEDULERS = ("linear", "cosine")
QUANT_BITS = (4, 8)
MAX_SEED = 2**32 - 1  # numpy's seed range; torch accepts more
SKEW_LOSSES = ("skew_forward_kl", "skew_reverse_kl")
PRUNE_SCHEDULES = ("gradual", "oneshot", "keep")
QAT_ACTIVATIONS = ("int8",)
REPORT_TO = ("tensorboard",)


@dataclass(frozen=True)
class Spec:
    """How one YAML key is validated.

    Attributes:
        kind: ``"int"``, ``"float"`` (ints accepted), ``"bool"``, ``"str"`` (non-empty), ``"pair"`` (two
            floats, from a list), ``"strs"`` (a list of non-empty strings, each once; `choices` apply to each),
            ``"targets"`` (``"all-linear"``, a regex string or a list of names),
            ``"layer_pairs"`` (``"auto"`` or a list of ``[int, int]``), ``"section"`` (a nested mapping) or
            ``"sections"`` (a list of nested mappings).
        choices: Allowed values; empty means any value of the kind.
        low: Lower bound for numbers (and each element of a pair); None for none.
        high: Upper bound; None for none.
        low_open: The lower bound itself is excluded.
        high_open: The upper bound itself is excluded.
        nullable: ``null`` is allowed (and means "unset", see the field's docstring).
        section: ``"section"`` and ``"sections"`` only: the dataclass of the nested mapping(s).
    """

    kind: str
    choices: tuple[object, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    section: type | None = None


def _key(default: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field that is a YAML key; no `default` makes the key required."""
    return field(default=default, metadata={"spec": Spec(**spec)})


@dataclass(frozen=True)
class ModelSection:
    """``model:`` the base model.

    Attributes:
        path: A local model folder, a ``.gguf`` file (converted once into a cached Hugging Face folder), or a
            Hub repo id. Relative paths are resolved against the folder of the config file (``~`` is
            expanded). A value that is not an existing path, is a valid ``namespace/name`` repo id and
            does not end in a file suffix (``.gguf``, ``.safetensors``, ``.json``, ...) is a Hub id; an
            existing file other than ``.gguf`` is refused. Required.
        revision: Hub only: a branch, tag or commit to pin; null takes the default branch.
        dtype: Weights dtype while training: ``auto`` (the checkpoint's), ``float32``, ``bfloat16``,
            ``float16``.
        source: Derived, not a YAML key: ``"local"`` (``path`` is the absolute path of a folder or a
            ``.gguf`` file) or ``"hub"`` (``path`` is a repo id). Decided without network access, by
            `aprender.reference.classify_model_reference`.
    """

    path: str = _key(kind="str")
    revision: str | None = _key(None, kind="str", nullable=True)
    dtype: str = _key("auto", kind="str", choices=DTYPES)
    source: str = "local"  # derived by the loader; no Spec, so not a YAML key


@dataclass(frozen=True)
class DataSection:
    """``data:`` what to train on.

    Attributes:
        train_path: A file, a folder or a glob (``data/*.jsonl``); relative to the config file's folder.
            Must exist (a glob must match at least one path). Required.
        val_path: Validation data, same rules as ``train_path``; null for none. Excludes ``val_split``.
        val_split: Fraction of the training samples held out for validation, in (0, 1); null for none.
            Excludes ``val_path``.
        format: Record format: ``auto`` (detected), ``text``, ``prompt_completion``, ``alpaca``,
            ``messages``, ``sharegpt``.
        seq_len: Tokens per training sequence (>= 2: at least one input and one target token).
        batch_size: Sequences per micro-batch (>= 1).
        packing: Concatenate samples into full ``seq_len`` rows instead of padding each one.
        train_on: ``completion`` (loss on the answer only; prompt tokens masked) or ``all``.
        skip_invalid: Skip malformed records (with a warning) instead of stopping at the first one.
    """

    train_path: str = _key(kind="str")
    val_path: str | None = _key(None, kind="str", nullable=True)
    val_split: float | None = _key(None, kind="float", low=0.0, high=1.0, low_open=True, high_open=True, nullable=True)
    format: str = _key("auto", kind="str", choices=("auto", *DATA_FORMATS))
    seq_len: int = _key(1024, kind="int", low=2)
    batch_size: int = _key(8, kind="int", low=1)
    packing: bool = _key(True, kind="bool")
    train_on: str = _key("completion", kind="str", choices=TRAIN_ON)
    skip_invalid: bool = _key(False, kind="bool")


@dataclass(frozen=True)
class OptimizerSection:
    """``optimizer:`` how weights are updated.

    Attributes:
        name: ``adamw``, ``adam``, ``sgd`` or ``adamw8bit`` (AdamW with block-wise 8-bit states).
        lr: Peak learning rate, > 0.
        weight_decay: Decoupled (AdamW) or L2 (Adam, SGD) weight decay, >= 0.
        betas: Adam family only: the two moment decay rates, each in [0, 1). null (the only value for
            ``sgd``) means ``[0.9, 0.999]`` for the Adam family.
        eps: Adam family only: denominator epsilon, > 0. null means ``1e-8`` for the Adam family.
        momentum: ``sgd`` only: momentum factor in [0, 1). null means ``0.0`` for ``sgd``.
        loraplus_lr_ratio: LoRA+ (https://arxiv.org/abs/2402.12354): LoRA B matrices learn at
            ``lr * ratio``, > 0. Needs a ``lora`` section; null turns it off.
    """

    name: str = _key("adamw", kind="str", choices=OPTIMIZER_NAMES)
    lr: float = _key(2e-4, kind="float", low=0.0, low_open=True)
    weight_decay: float = _key(0.0, kind="float", low=0.0)
    betas: tuple[float, float] | None = _key(None, kind="pair", low=0.0, high=1.0, high_open=True, nullable=True)
    eps: float | None = _key(None, kind="float", low=0.0, low_open=True, nullable=True)
    momentum: float | None = _key(None, kind="float", low=0.0, high=1.0, high_open=True, nullable=True)
    loraplus_lr_ratio: float | None = _key(None, kind="float", low=0.0, low_open=True, nullable=True)


@dataclass(frozen=True)
class SchedulerSection:
    """``scheduler:`` the learning-rate schedule (all start with a linear warmup from 0).

    Attributes:
        name: ``constant``, ``linear``, ``cosine`` (decay to ``min_lr_ratio * lr``), ``step`` (multiply
            by ``gamma`` every ``step_size`` steps) or ``inverse_sqrt`` (``sqrt(warmup / step)`` after
            warmup; needs ``warmup_steps`` > 0).
        warmup_steps: Optimizer steps of warmup, >= 0; below ``training.max_steps`` for ``linear`` and
            ``cosine`` when that is set.
        min_lr_ratio: ``linear``/``cosine`` only: final lr as a fraction of ``lr``, in [0, 1]; null means
            0.1 for those two.
        step_size: ``step`` only (and required there): steps between decays, >= 1.
        gamma: ``step`` only: decay factor in (0, 1]; null means 0.1 for ``step``.
    """

    name: str = _key("cosine", kind="str", choices=SCHEDULER_NAMES)
    warmup_steps: int = _key(0, kind="int", low=0)
    min_lr_ratio: float | None = _key(None, kind="float", low=0.0, high=1.0, nullable=True)
    step_size: int | None = _key(None, kind="int", low=1, nullable=True)
    gamma: float | None = _key(None, kind="float", low=0.0, high=1.0, low_open=True, nullable=True)


@dataclass(frozen=True)
class LoraSection:
    """``lora:`` train low-rank adapters instead of all weights (https://arxiv.org/abs/2106.09685).

    Attributes:
        rank: r, the inner width of the adapter, >= 1.
        alpha: Scaling numerator (``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA), > 0.
        dropout: Dropout on the adapter input while training, in [0, 1).
        target_modules: ``all-linear`` (every linear layer but the LM head), a list of module names matched
            as path suffixes (``[q_proj, v_proj]``; ``lm_head`` adapts an untied LM head), or a regex string
            matched against whole module paths.
        use_rslora: Scale by ``alpha / sqrt(rank)`` (https://arxiv.org/abs/2312.03732).
        use_dora: Weight-decomposed LoRA (https://arxiv.org/abs/2402.09353).
        init: Adapter initialisation: ``default`` (B = 0), ``gaussian``, ``pissa`` (principal singular
            vectors) or ``none`` (both random; for debugging).
    """

    rank: int = _key(64, kind="int", low=1)
    alpha: float = _key(16.0, kind="float", low=0.0, low_open=True)
    dropout: float = _key(0.0, kind="float", low=0.0, high=1.0, high_open=True)
    target_modules: str | tuple[str, ...] = _key(ALL_LINEAR, kind="targets")
    use_rslora: bool = _key(False, kind="bool")
    use_dora: bool = _key(False, kind="bool")
    init: str = _key("default", kind="str", choices=LORA_INITS)


@dataclass(frozen=True)
class QuantizeSection:
    """``quantize:`` its presence (with ``lora``) makes the run QLoRA: the frozen base is quantized.

    Attributes:
        bits: 4 or 8.
        type: ``nf4`` (4-bit NormalFloat, https://arxiv.org/abs/2305.14314) or ``int8`` (8-bit absmax);
            must agree with ``bits``. Omitted: ``nf4`` for 4 bits, ``int8`` for 8.
        double_quant: ``nf4`` only: quantize the absmax scales too (~0.37 bits/weight saved). Omitted:
            true for ``nf4``, false for ``int8``.
    """

    bits: int = _key(4, kind="int", choices=QUANT_BITS)
    type: str = _key("nf4", kind="str", choices=QUANT_TYPES)
    double_quant: bool = _key(True, kind="bool")


@dataclass(frozen=True)
class DistillTeacher:
    """One entry of ``distill.teachers``: a teacher of the mixture.

    Attributes:
        path: The teacher model, as ``model.path``: a local folder, a ``.gguf`` file or a Hub repo id. Required.
        weight: Its share of the mixture, > 0. The weights need not sum to 1: they are normalised (``[1, 3]``
            means a quarter and three quarters).
        revision: Hub only: a branch, tag or commit to pin; null takes the default branch.
        source: Derived, not a YAML key: ``"local"`` or ``"hub"``, as ``model.source``.
    """

    path: str = _key(kind="str")
    weight: float = _key(1.0, kind="float", low=0.0, low_open=True)
    revision: str | None = _key(None, kind="str", nullable=True)
    source: str = "local"  # derived by the loader


@dataclass(frozen=True)
class DistillHidden:
    """``distill.hidden:`` layer-wise transfer: student hidden states are pulled towards the teacher's.

    Attributes:
        layers: ``auto`` (every student layer paired with the teacher layer at the same relative depth, the last
            with the last) or a list of ``[student_layer, teacher_layer]`` pairs of layer indices >= 0 (checked
            against the models when the run starts).
        loss: Distance between paired hidden states: ``mse`` or ``cosine`` (1 - cosine similarity).
        weight: The hidden loss enters the total as ``weight * hidden``, >= 0.
        schedule: ``constant`` (every pair from the first step) or ``progressive`` (pairs join one after the
            other, from the lowest layer up, in equal stages of the run).
    """

    layers: str | tuple[tuple[int, int], ...] = _key(AUTO_LAYERS, kind="layer_pairs")
    loss: str = _key("mse", kind="str", choices=HIDDEN_LOSSES)
    weight: float = _key(1.0, kind="float", low=0.0)
    schedule: str = _key("constant", kind="str", choices=HIDDEN_SCHEDULES)


@dataclass(frozen=True)
class DistillSection:
    """``distill:`` knowledge distillation: the student (the model trained, by any method) learns a frozen teacher.

    Attributes:
        teacher: The teacher model, as ``model.path``: a local folder, a ``.gguf`` file or a Hub repo id
            (relative paths start at the config file's folder). Exactly one of ``teacher`` and ``teachers``.
        revision: ``teacher`` on the Hub only: a branch, tag or commit to pin; null takes the default branch.
        teachers: A mixture: a list of at least two ``{path, weight, revision}`` (``distill.teachers[i]``
            below); the student learns the weighted mixture of their distributions. Exactly one of ``teacher``
            and ``teachers``.
        teacher_quantize: Load the frozen teacher (each one of a mixture) quantized to save memory: ``nf4`` or
            ``int8``; null: not quantized.
        loss: Divergence between the teacher's and the student's token distributions: ``forward_kl``
            (KL(teacher ‖ student), https://arxiv.org/abs/1503.02531), ``reverse_kl`` (KL(student ‖ teacher),
            https://arxiv.org/abs/2306.08543), ``jsd`` (generalised Jensen-Shannon, see ``beta``,
            https://arxiv.org/abs/2306.13649), ``skew_forward_kl``, ``skew_reverse_kl`` (see ``skew``,
            https://arxiv.org/abs/2402.03898) or ``tvd`` (total variation distance). Every one of them is multiplied by
            T² (``temperature`` squared), as Hinton et al. (https://arxiv.org/abs/1503.02531) do for KL, so the
            gradients' size does not change with T (TRL's GKD and DistiLLM leave the divergence unscaled).
        beta: ``jsd`` only: the interpolation in [0, 1], GKD's convention: 0 is forward KL, 1 is reverse KL. null
            means 0.5 for ``jsd``.
        skew: ``skew_forward_kl`` and ``skew_reverse_kl`` only, in (0, 1): they are ``KL(t ‖ skew * t + (1 - skew)
            * s)`` and ``KL(s ‖ skew * s + (1 - skew) * t)`` for teacher and student distributions t and s. null
            means 0.1 for those two.
        temperature: T > 0: both distributions are ``softmax(logits / T)``, and the divergence is multiplied by
            T² (see ``loss``). Evaluation's ``eval_kl_to_teacher`` is always at T = 1.
        alpha: Weight of distillation in [0, 1]: the loss is ``alpha * kd + (1 - alpha) * cross-entropy`` on
            the data.
        hidden: ``distill.hidden`` (below): also match hidden states layer by layer; null for none. Not with
            ``cache``.
        cache: A folder of precomputed teacher outputs, relative to the config file's folder; null runs the
            teacher at every step. The teacher runs once over the training and validation data
            (``entrenar distill-cache CONFIG``, or the first ``entrenar train`` when the folder is missing or
            empty) and training then loads no teacher. Keyed by the teachers' weights, the tokenizer, the
            temperature, ``cache_top_k`` and the data: a cache built for anything else is refused, with what
            differs; ``entrenar distill-cache`` rebuilds it. Not with ``hidden``: the cache stores output
            distributions only.
        cache_top_k: ``cache`` only: the teacher's most likely tokens kept per position (with the remaining mass
            as one tail bucket), from 1 to the vocabulary size (which makes the cache exact); null means 64
            with ``cache``.
        source: Derived, not a YAML key: ``teacher``'s ``"local"`` or ``"hub"``, as ``model.source``; None with
            ``teachers``.
    """

    teacher: str | None = _key(None, kind="str", nullable=True)
    revision: str | None = _key(None, kind="str", nullable=True)
    teachers: tuple[DistillTeacher, ...] | None = _key(None, kind="sections", section=DistillTeacher, nullable=True)
    teacher_quantize: str | None = _key(None, kind="str", choices=QUANT_TYPES, nullable=True)
    loss: str = _key("forward_kl", kind="str", choices=DIVERGENCES)
    beta: float | None = _key(None, kind="float", low=0.0, high=1.0, nullable=True)
    skew: float | None = _key(None, kind="float", low=0.0, high=1.0, low_open=True, high_open=True, nullable=True)
    temperature: float = _key(1.0, kind="float", low=0.0, low_open=True)
    alpha: float = _key(0.5, kind="float", low=0.0, high=1.0)
    hidden: DistillHidden | None = _key(None, kind="section", section=DistillHidden, nullable=True)  # noqa: RUF009
    cache: str | None = _key(None, kind="str", nullable=True)
    cache_top_k: int | None = _key(None, kind="int", low=1, nullable=True)
    source: str | None = None  # derived by the loader

    @property
    def teacher_models(self) -> tuple[DistillTeacher, ...]:
        """Every teacher with its share of the mixture (normalised to sum to 1); ``teacher`` alone has weight 1."""
        if self.teachers is None:
            assert self.teacher is not None and self.source is not None  # the loader sets one of the two
            return (DistillTeacher(self.teacher, 1.0, self.revision, self.source),)
        total = sum(t.weight for t in self.teachers)
        return tuple(replace(t, weight=t.weight / total) for t in self.teachers)


@dataclass(frozen=True)
class PruneSection:
    """``prune:`` prune the decoder layers' linear weights while training, or keep a pruned base's zeros (full
    fine-tune: the trained weights; LoRA: the frozen base, re-masked after merging when publishing). Not with
    ``quantize:``: prune the base first with ``entrenar prune`` and train LoRA with ``schedule: keep`` on its output.

    Attributes:
        schedule: ``gradual``: Zhu & Gupta's cubic schedule (https://arxiv.org/abs/1710.01878): after optimizer step
            t = ``start_step + k * update_every`` (k = 0, 1, ... up to ``end_step``; step 0 is before the first step)
            each layer's mask is recomputed by weight magnitude at sparsity
            ``s_t = sparsity + (initial_sparsity - sparsity) * (1 - (t - start_step) / (end_step - start_step))^3``;
            between updates and after ``end_step`` the mask is fixed. ``oneshot``: prune once before the first step
            (as ``entrenar prune`` does), mask fixed. ``keep``: prune nothing, keep the zeros the base model already
            has (a model made by ``entrenar prune``): the masks are its weights that are non-zero, fixed. Each way the
            masks are applied after every optimizer step, so pruned weights stay exactly zero, and checkpoints save
            them.
        method: ``magnitude``, or with ``oneshot`` only ``wanda`` or ``sparsegpt`` (which need ``calibration``); not
            with ``keep``. null: ``magnitude`` (``gradual``, ``oneshot``).
        sparsity: The final fraction of each linear layer's weights that is zero, in [0, 1). Exactly one of
            ``sparsity`` and ``pattern`` (neither with ``keep``).
        pattern: ``oneshot`` only: ``2:4`` or ``4:8`` (keep N of every M consecutive input weights).
        initial_sparsity: ``gradual`` only: s_i, the sparsity of the first update, in [0, ``sparsity``]; null: 0.
        start_step: ``gradual`` only: t0, the first update, >= 0; null: 0.
        end_step: ``gradual`` only (and required there): the update that reaches ``sparsity``, > ``start_step``, at
            most ``training.max_steps``; ``end_step - start_step`` must be a multiple of ``update_every``.
        update_every: ``gradual`` only: Δt, optimizer steps between mask updates, >= 1; null: 1.
        calibration: ``wanda``/``sparsegpt`` only (and required there): calibration text, read as ``entrenar prune
            --calibration`` reads it (relative to the config file's folder).
        samples: With ``calibration``: windows drawn, >= 1; null: 128.
        seq_len: With ``calibration``: tokens per window, >= 2; null: ``data.seq_len``.
        seed: With ``calibration``: seed of the window draw, >= 0; null: 0.
    """

    schedule: str = _key("gradual", kind="str", choices=PRUNE_SCHEDULES)
    method: str | None = _key(None, kind="str", choices=tuple(PRUNE_METHODS), nullable=True)
    sparsity: float | None = _key(None, kind="float", low=0.0, high=1.0, high_open=True, nullable=True)
    pattern: str | None = _key(None, kind="str", choices=tuple(PRUNE_PATTERNS), nullable=True)
    initial_sparsity: float | None = _key(None, kind="float", low=0.0, high=1.0, high_open=True, nullable=True)
    start_step: int | None = _key(None, kind="int", low=0, nullable=True)
    end_step: int | None = _key(None, kind="int", low=1, nullable=True)
    update_every: int | None = _key(None, kind="int", low=1, nullable=True)
    calibration: str | None = _key(None, kind="str", nullable=True)
    samples: int | None = _key(None, kind="int", low=1, nullable=True)
    seq_len: int | None = _key(None, kind="int", low=2, nullable=True)
    seed: int | None = _key(None, kind="int", low=0, high=MAX_SEED, nullable=True)


@dataclass(frozen=True)
class QatSection:
    """``qat:`` quantization-aware training: the linear weights of the decoder layers are fake-quantized in the
    forward pass, rounded exactly as the export quantizer will round them, with a straight-through gradient (LoRA:
    the merged weight ``W + scaling * B @ A``, as publishing merges it; full fine-tune: the trained weight).
    Not with ``quantize:``, ``prune:``, ``lora.use_dora`` or ``lora.dropout``.

    Attributes:
        format: What the model is trained for: a GGUF file type as ``entrenar quantize --gguf`` takes it
            (``q4_k_m``, ``q8_0``, ``q3_k_m``, ...: each weight gets the type llama-quantize's mixture gives it,
            quantized by the same code ``entrenar publish`` and ``entrenar quantize`` write GGUF files with, without
            an importance matrix), ``nf4`` (bitsandbytes' NF4, blocks of 64, as ``load_in_4bit`` rounds),
            ``int8`` or ``int4`` (symmetric, torchao's QAT numerics). Required.
        group_size: ``int8``/``int4`` only: weights per scale along each row, a power of two >= 2 dividing every
            row; null: 32 for ``int4``, one scale per output row for ``int8``.
        start_after_steps: Optimizer steps trained in full precision before fake quantization starts, >= 0 and
            below ``training.max_steps``.
        activations: ``int8``: also fake-quantize each linear layer's input per token (asymmetric int8, torchao's
            dynamic activation numerics); null: weights only.
    """

    format: str = _key(kind="str")
    group_size: int | None = _key(None, kind="int", low=2, nullable=True)
    start_after_steps: int = _key(0, kind="int", low=0)
    activations: str | None = _key(None, kind="str", choices=QAT_ACTIVATIONS, nullable=True)


@dataclass(frozen=True)
class TrainingSection:
    """``training:`` the loop.

    Attributes:
        epochs: Passes over the training data, >= 1 (``max_steps`` stops earlier when set).
        max_steps: Stop after this many optimizer steps, >= 1; null runs all ``epochs``.
        grad_accum: Micro-batches per optimizer step, >= 1.
        grad_clip: Clip the global gradient L2 norm to this, > 0; null turns clipping off.
        eval_every: Evaluate on the validation data every this many optimizer steps, >= 1.
        save_every: Save a checkpoint every this many optimizer steps, >= 1.
        keep_checkpoints: Keep only the newest this many checkpoints, >= 1.
        seed: Seed for weights init, dropout and data order, in [0, 2**32 - 1].
        output_dir: The output folder (relative to the config file's folder); must not be a file.
        early_stopping_patience: Stop after this many evaluations without a better validation loss,
            >= 1; needs ``data.val_path`` or ``data.val_split``. null turns it off.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        log_every: Write a line to ``metrics.jsonl`` every this many optimizer steps, >= 1.
        report_to: Where the scalars of ``metrics.jsonl`` also go, a list: ``tensorboard`` writes TensorBoard
            event files into ``<output_dir>/tensorboard/`` (tags named as the keys of ``metrics.jsonl``: ``loss``,
            ``lr``, ``grad_norm``, ``tokens_per_s``, ``parts/ce``, ``eval_loss`` ...; a resumed run hides what the
            interrupted one logged after its checkpoint). ``metrics.jsonl`` is always written; ``[]`` adds nothing.
        sample_prompts: Prompts answered greedily during training, a list (each as the training data presents a
            prompt: a user turn of the tokenizer's chat template for conversation formats when it has one, plain
            text otherwise): before the first step, every ``sample_every`` steps and after the last. The answers go
            to ``metrics.jsonl`` (``kind: sample``), the console, ``entrenar monitor`` and, the first and last, to
            the model card. ``[]``: no samples.
        sample_every: With ``sample_prompts``: also answer them every this many optimizer steps, >= 1; null: only
            before the first step and after the last.
        sample_max_new_tokens: With ``sample_prompts``: the most tokens of each answer, >= 1; null: 64 with
            ``sample_prompts``.
    """

    epochs: int = _key(3, kind="int", low=1)
    max_steps: int | None = _key(None, kind="int", low=1, nullable=True)
    grad_accum: int = _key(1, kind="int", low=1)
    grad_clip: float | None = _key(1.0, kind="float", low=0.0, low_open=True, nullable=True)
    eval_every: int = _key(100, kind="int", low=1)
    save_every: int = _key(200, kind="int", low=1)
    keep_checkpoints: int = _key(2, kind="int", low=1)
    seed: int = _key(42, kind="int", low=0, high=MAX_SEED)
    output_dir: str = _key("./output", kind="str")
    early_stopping_patience: int | None = _key(None, kind="int", low=1, nullable=True)
    gradient_checkpointing: bool = _key(False, kind="bool")
    log_every: int = _key(10, kind="int", low=1)
    report_to: tuple[str, ...] = _key((), kind="strs", choices=REPORT_TO)
    sample_prompts: tuple[str, ...] = _key((), kind="strs")
    sample_every: int | None = _key(None, kind="int", low=1, nullable=True)
    sample_max_new_tokens: int | None = _key(None, kind="int", low=1, nullable=True)


@dataclass(frozen=True)
class PublishSection:
    """``publish:`` upload the result to a Hugging Face Hub repo after training.

    Attributes:
        repo: ``namespace/name`` (checked with the Hub's rules before training). Required in the section.
        private: Create the repo as private.
        model_card: Write and upload a README.md model card.
        merge_adapters: LoRA/QLoRA only: upload the base with the adapters merged in (true) or the adapter
            alone (false). null means true for LoRA/QLoRA; must stay null for a full fine-tune.
        format: ``safetensors`` (HF layout) or ``gguf`` (needs merged weights).
        gguf_type: ``gguf`` only: a llama-quantize file type (``f16``, ``q8_0``, ``q4_k_m``, ... every type of
            ``entrenar quantize`` but ``q2_k_s``, which needs calibration) or a comma-separated list of them
            (``q4_k_m,q8_0``: one GGUF file each); null means, for ``gguf``, the GGUF type ``qat.format`` trains
            for, else ``f16``.
        endpoint: Hub URL (``http://`` or ``https://``); null uses ``HF_ENDPOINT`` or huggingface.co.
    """

    repo: str = _key(kind="str")
    private: bool = _key(False, kind="bool")
    model_card: bool = _key(True, kind="bool")
    merge_adapters: bool | None = _key(None, kind="bool", nullable=True)
    format: str = _key("safetensors", kind="str", choices=PUBLISH_FORMATS)
    gguf_type: str | None = _key(None, kind="str", nullable=True)
    endpoint: str | None = _key(None, kind="str", nullable=True)


@dataclass(frozen=True)
class TrainConfig:
    """The whole config (schema v1). Sections ``model`` and ``data`` are required.

    Attributes:
        model: `ModelSection`.
        data: `DataSection`.
        optimizer: `OptimizerSection`.
        scheduler: `SchedulerSection`.
        lora: `LoraSection`, or None for a full fine-tune.
        quantize: `QuantizeSection` (needs ``lora``), or None.
        distill: `DistillSection`, or None for no distillation.
        prune: `PruneSection`, or None for no pruning.
        qat: `QatSection`, or None for no quantization-aware training.
        training: `TrainingSection`.
        publish: `PublishSection`, or None to skip publishing.

    Example:
        >>> cfg = TrainConfig.from_dict({"model": {"path": "Qwen/Qwen2.5-0.5B"}, "data": {"train_path": "."}})
        >>> cfg.method, cfg.model.source, cfg.techniques
        ('full', 'hub', ('full',))
    """

    model: ModelSection
    data: DataSection
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    lora: LoraSection | None = None
    quantize: QuantizeSection | None = None
    distill: DistillSection | None = None
    prune: PruneSection | None = None
    qat: QatSection | None = None
    training: TrainingSection = field(default_factory=TrainingSection)
    publish: PublishSection | None = None

    @property
    def method(self) -> str:
        """``"full"`` without ``lora``, ``"qlora"`` with ``lora`` and ``quantize``, else ``"lora"``."""
        if self.lora is None:
            return "full"
        return "lora" if self.quantize is None else "qlora"

    @property
    def techniques(self) -> tuple[str, ...]:
        """What the run applies, in ``final_model.json`` order: `method`, then ``distill``, ``prune`` and ``qat`` when
        set."""
        extra = (name for name in ("distill", "prune", "qat") if getattr(self, name) is not None)
        return (self.method, *extra)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "<dict>", base_dir: str | None = None) -> TrainConfig:
        """Validate a plain mapping (as YAML would give) and build the config.

        Args:
            data: The mapping, e.g. ``yaml.safe_load`` of a config file or `config_to_dict` output.
            source: Label that starts every error message (a file name, ``"<dict>"``).
            base_dir: Folder that relative paths are resolved against; None uses the current directory.

        Returns:
            The validated config with defaults filled and absolute local paths.

        Raises:
            ConfigError: Every problem found, one line each naming `source` and the key path.
        """
        from entrenar.config.load import config_from_mapping  # load.py imports this module

        return config_from_mapping(data, source=source, base_dir=base_dir)
