"""Per-section rules on top of the generic checks: paths, keys that depend on others, cross-section checks.

Each builder returns the section's checked values (defaults that depend on other keys filled in) and
records its problems in the `Context`; a rule that combines keys runs only when those keys are valid,
so one mistake is reported once, not again as the consequences of a default standing in for it.

Relative paths (``model.path``, ``data.train_path``, ``data.val_path``, ``training.output_dir``) are
resolved against `Context.base_dir`, the folder of the config file, so a config means the same thing
whatever directory ``entrenar train`` runs from; ``~`` is expanded.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any
from urllib.parse import urlsplit

from aprender.errors import InvalidArgumentError, InvalidRepoIdError, ModelReferenceError
from aprender.reference import classify_model_reference
from entrenar.config._values import Context, read_section
from entrenar.config.schema import (
    ADAM_FAMILY,
    DECAYING_SCHEDULERS,
    SKEW_LOSSES,
    DataSection,
    DistillSection,
    LoraSection,
    ModelSection,
    OptimizerSection,
    PruneSection,
    PublishSection,
    QatSection,
    QuantizeSection,
    SchedulerSection,
    TrainingSection,
)
from entrenar.constants import QAT_INTEGER_FORMATS, QAT_NON_GGUF_FORMATS

Values = dict[str, Any]
SAMPLE_MAX_NEW_TOKENS = 64
"""``training.sample_max_new_tokens`` when null and there are sample prompts."""

_GLOB_MAGIC = re.compile(r"[*?[]")
_QUANT_TYPE_FOR_BITS = {4: "nf4", 8: "int8"}


def absolute_path(raw: str, ctx: Context) -> str:
    """`raw` with ``~`` expanded, made absolute against the config folder and normalised."""
    return os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(raw)))


def build_model(raw: object, ctx: Context) -> Values:
    """``model:``: classify the path (`aprender.reference`, no network): a local folder or .gguf file, or a Hub id."""
    values = read_section(ModelSection, raw, "model", ctx)
    _locate_model(values, "path", "model", ctx)
    return values


def _locate_model(values: Values, key: str, section: str, ctx: Context) -> None:
    """Classify the model reference ``values[key]`` (when valid): set it to its location and ``values["source"]``.

    ``revision`` (a Hub id's branch, tag or commit) is an error with a local path.
    """
    if values.get(key) is not None:
        path: str = values[key]
        try:
            reference = classify_model_reference(path, base_dir=ctx.base_dir)
        except ModelReferenceError as exc:
            ctx.report(f"{section}.{key}", model_path_problem(path, exc, ctx))
        else:
            values.update({key: reference.location, "source": "hub" if reference.kind == "hub" else "local"})
    if values.get("revision") is not None and values.get("source") == "local":
        ctx.report(
            f"{section}.revision",
            f"applies to Hub repo ids only, and {section}.{key} is the local path {values[key]}",
        )


def model_path_problem(path: str, exc: ModelReferenceError, ctx: Context) -> str:
    """The refusal's message; for a missing path it names the absolute path looked at, as for data paths."""
    if exc.problem == "missing":
        return (
            f"{path!r} is neither an existing file or folder ({absolute_path(path, ctx)}) "
            "nor a Hub repo id like 'Qwen/Qwen2.5-0.5B'"
        )
    return str(exc)


def _data_path(key: str, raw: str, ctx: Context) -> str:
    """An absolute data path that exists, or a glob that matches at least one path (else a problem is reported)."""
    path = absolute_path(raw, ctx)
    if os.path.exists(path):
        return path
    if not _GLOB_MAGIC.search(path):
        ctx.report(key, f"{path} does not exist (relative paths are resolved against the config's folder)")
    elif not glob.glob(path, recursive=True):
        ctx.report(key, f"the pattern {path} matches no file; check it (relative to {ctx.base_dir})")
    return path


def build_data(raw: object, ctx: Context) -> Values:
    """``data:``: resolve and check the paths; ``val_path`` and ``val_split`` exclude each other."""
    values = read_section(DataSection, raw, "data", ctx)
    if "train_path" in values:
        values["train_path"] = _data_path("data.train_path", values["train_path"], ctx)
    if values.get("val_path") is not None:
        if values.get("val_split") is not None:
            ctx.report("data.val_split", "cannot be used with data.val_path; keep one of the two", "data.val_path")
        values["val_path"] = _data_path("data.val_path", values["val_path"], ctx)
    return values


def _only_for(
    values: dict[str, Any], key: str, section: str, selector: str, allowed: tuple[str, ...], ctx: Context
) -> None:
    """Report `key` set (non-null) when the section's valid `selector` (``name``, ``format``) is not in `allowed`."""
    chosen = values[selector]
    if values.get(key) is not None and chosen not in allowed and ctx.ok(f"{section}.{selector}"):
        ctx.report(
            f"{section}.{key}",
            f"applies to {section}.{selector} {' or '.join(allowed)} only, not {chosen}; remove it",
            f"{section}.{selector}",
        )


def _default(values: dict[str, Any], key: str, value: object) -> None:
    """Fill `key` when it is absent or null."""
    if values.get(key) is None:
        values[key] = value


def build_optimizer(raw: object, has_lora: bool, ctx: Context) -> Values:
    """``optimizer:``: Adam-family keys vs ``momentum``; fill their defaults; LoRA+ needs LoRA."""
    values = read_section(OptimizerSection, raw, "optimizer", ctx)
    name = values.setdefault("name", OptimizerSection.name)
    _only_for(values, "betas", "optimizer", "name", ADAM_FAMILY, ctx)
    _only_for(values, "eps", "optimizer", "name", ADAM_FAMILY, ctx)
    _only_for(values, "momentum", "optimizer", "name", ("sgd",), ctx)
    if name == "sgd":
        _default(values, "momentum", 0.0)
    else:
        _default(values, "betas", (0.9, 0.999))
        _default(values, "eps", 1e-8)
    if values.get("loraplus_lr_ratio") is not None and not has_lora:
        ctx.report("optimizer.loraplus_lr_ratio", "LoRA+ needs a lora section; add lora: or remove this key")
    return values


def build_scheduler(raw: object, max_steps: int | None, ctx: Context) -> Values:
    """``scheduler:``: keys of one schedule only; ``step`` needs ``step_size``; warmup fits the run."""
    values = read_section(SchedulerSection, raw, "scheduler", ctx)
    name = values.setdefault("name", SchedulerSection.name)
    warmup = values.setdefault("warmup_steps", SchedulerSection.warmup_steps)
    _only_for(values, "min_lr_ratio", "scheduler", "name", DECAYING_SCHEDULERS, ctx)
    _only_for(values, "step_size", "scheduler", "name", ("step",), ctx)
    _only_for(values, "gamma", "scheduler", "name", ("step",), ctx)
    if not ctx.ok("scheduler.name"):
        return values  # every rule below depends on the schedule
    warmup_ok = ctx.ok("scheduler.warmup_steps")
    if name in DECAYING_SCHEDULERS:
        _default(values, "min_lr_ratio", 0.1)
        if max_steps is not None and warmup_ok and warmup >= max_steps:
            ctx.report(
                "scheduler.warmup_steps",
                f"{warmup} must be below training.max_steps ({max_steps}) for a {name} schedule; lower it",
                "training.max_steps",
            )
    if name == "step":
        if values.get("step_size") is None and ctx.ok("scheduler.step_size"):
            ctx.report("scheduler.step_size", "required when scheduler.name is step (steps between decays)")
        _default(values, "gamma", 0.1)
    if name == "inverse_sqrt" and warmup == 0 and warmup_ok:
        ctx.report("scheduler.warmup_steps", "inverse_sqrt needs warmup_steps > 0 (lr = sqrt(warmup / step))")
    return values


def build_quantize(raw: object, has_lora: bool, ctx: Context) -> Values:
    """``quantize:``: needs LoRA; ``type`` agrees with ``bits``; ``double_quant`` is for nf4 only."""
    if not has_lora:
        ctx.report("quantize", "QLoRA trains LoRA adapters on a quantized base; add a lora section or drop this")
        return {}
    values = read_section(QuantizeSection, raw, "quantize", ctx)
    bits = values.setdefault("bits", QuantizeSection.bits)
    kind = values.setdefault("type", _QUANT_TYPE_FOR_BITS[bits])
    if kind != _QUANT_TYPE_FOR_BITS[bits] and ctx.ok("quantize.bits"):
        ctx.report(
            "quantize.type",
            f"{kind} does not store {bits}-bit weights; use {_QUANT_TYPE_FOR_BITS[bits]} or change quantize.bits",
            "quantize.bits",
        )
    if values.get("double_quant") and kind != "nf4" and ctx.ok("quantize.type"):
        ctx.report("quantize.double_quant", f"applies to nf4 only, not {kind}; remove it", "quantize.type")
    values.setdefault("double_quant", kind == "nf4")
    return values


def build_training(raw: object, has_val: bool, ctx: Context) -> Values:
    """``training:``: resolve ``output_dir``; early stopping needs validation data."""
    values = read_section(TrainingSection, raw, "training", ctx)
    if ctx.ok("training.output_dir"):
        output = absolute_path(values.get("output_dir", TrainingSection.output_dir), ctx)
        if os.path.isfile(output):
            ctx.report("training.output_dir", f"{output} is a file; choose a folder")
        values["output_dir"] = output
    if values.get("early_stopping_patience") is not None and not has_val:
        ctx.report("training.early_stopping_patience", "needs validation data; set data.val_path or data.val_split")
    if not values.get("sample_prompts") and ctx.ok("training.sample_prompts"):
        for key in ("sample_every", "sample_max_new_tokens"):
            if values.get(key) is not None:
                ctx.report(f"training.{key}", "applies with training.sample_prompts only; add prompts or remove it")
    elif values.get("sample_prompts"):
        _default(values, "sample_max_new_tokens", SAMPLE_MAX_NEW_TOKENS)
    return values


def build_publish(raw: object, has_lora: bool, ctx: Context, qat_format: object = None) -> Values:
    """``publish:``: repo id by the Hub's rules, adapter merging, GGUF type (by default the GGUF type ``qat.format``
    trains for, else ``f16``), endpoint URL."""
    from aprender.hub.repo_id import validate_repo_id

    values = read_section(PublishSection, raw, "publish", ctx)
    if "repo" in values:
        try:
            validate_repo_id(values["repo"])
        except InvalidRepoIdError as exc:
            ctx.report("publish.repo", str(exc))
    if not has_lora and values.get("merge_adapters") is not None:
        ctx.report("publish.merge_adapters", "applies to LoRA/QLoRA runs only (there is no lora section)")
    if has_lora:
        _default(values, "merge_adapters", True)
    fmt = values.setdefault("format", PublishSection.format)
    _only_for(values, "gguf_type", "publish", "format", ("gguf",), ctx)
    if fmt == "gguf":
        trained = qat_format if isinstance(qat_format, str) and qat_format not in QAT_NON_GGUF_FORMATS else None
        _default(values, "gguf_type", trained or "f16")
        _check_gguf_types(values, ctx)
        if values.get("merge_adapters") is False:
            ctx.report("publish.format", "gguf needs merged weights; set publish.merge_adapters: true")
    if values.get("endpoint") is not None:
        _check_endpoint(values["endpoint"], ctx)
    return values


def _check_endpoint(url: str, ctx: Context) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        ctx.report("publish.endpoint", f"{url!r} is not a URL ({exc})")
        return
    if parts.scheme not in ("http", "https") or not parts.netloc:
        ctx.report("publish.endpoint", f"{url!r} is not an http:// or https:// URL like https://huggingface.co")


def build_lora(raw: object, ctx: Context) -> Values:
    """``lora:``: the generic checks cover every key."""
    return read_section(LoraSection, raw, "lora", ctx)


def build_distill(raw: object, ctx: Context) -> Values:
    """``distill:``: one teacher or a mixture, each classified like ``model.path``; loss-specific keys; the cache."""
    values = read_section(DistillSection, raw, "distill", ctx)
    if not isinstance(raw, dict):
        return values  # reported: not a mapping
    _distill_teachers(values, ctx)
    loss = values.setdefault("loss", DistillSection.loss)
    _only_for(values, "beta", "distill", "loss", ("jsd",), ctx)
    _only_for(values, "skew", "distill", "loss", SKEW_LOSSES, ctx)
    if loss == "jsd":
        _default(values, "beta", 0.5)
    if loss in SKEW_LOSSES:
        _default(values, "skew", 0.1)
    if values.get("cache") is None:
        if values.get("cache_top_k") is not None:
            ctx.report("distill.cache_top_k", "applies with distill.cache only; set distill.cache or remove it")
        return values
    if values.get("hidden") is not None and ctx.ok("distill.hidden"):
        ctx.report(
            "distill.hidden",
            "cannot be used with distill.cache: the cache stores output distributions only; remove one of the two",
            "distill.cache",
        )
    cache = values["cache"] = absolute_path(values["cache"], ctx)
    if os.path.isfile(cache):
        ctx.report("distill.cache", f"{cache} is a file; choose a folder")
    _default(values, "cache_top_k", 64)
    return values


def _distill_teachers(values: Values, ctx: Context) -> None:
    """Exactly one of ``teacher`` and ``teachers`` (two or more, each once), each located like ``model.path``."""
    teachers = values.get("teachers")
    if teachers is None:
        if values.get("teacher") is None and ctx.ok("distill.teacher", "distill.teachers"):
            ctx.report("distill.teacher", "missing; name the teacher model, or a mixture under distill.teachers")
        _locate_model(values, "teacher", "distill", ctx)
        return
    if values.get("teacher") is not None:
        ctx.report("distill.teachers", "cannot be used with distill.teacher; keep one of the two", "distill.teacher")
    if values.get("revision") is not None:
        ctx.report("distill.revision", "applies to distill.teacher only; give each distill.teachers entry its own")
    if len(teachers) < 2:
        ctx.report(
            "distill.teachers", f"a mixture needs at least two teachers, got {len(teachers)}; use distill.teacher"
        )
    seen: dict[tuple[object, object], int] = {}
    for i, entry in enumerate(teachers):
        where = f"distill.teachers[{i}]"
        _locate_model(entry, "path", where, ctx)
        if ctx.ok(where):
            first = seen.setdefault((entry["path"], entry.get("revision")), i)
            if first != i:
                ctx.report(f"{where}.path", f"{entry['path']} is already distill.teachers[{first}]; list each once")


def _check_gguf_types(values: Values, ctx: Context) -> None:
    """``publish.gguf_type``: file types publishing can write (no calibration), normalised to ``q4_k_m,q8_0``."""
    from aprender.format.gguf_mixtures import file_types

    try:
        kinds = file_types(values["gguf_type"])
    except InvalidArgumentError as exc:
        ctx.report("publish.gguf_type", str(exc))
        return
    calibrated = [kind.name for kind in kinds if kind.needs_imatrix]
    if calibrated:
        ctx.report(
            "publish.gguf_type",
            f"{calibrated[0]} needs an importance matrix, which publishing does not compute; use entrenar quantize "
            "--calibration, or another type",
        )
        return
    values["gguf_type"] = ",".join(kind.name.lower() for kind in kinds)


def build_prune(raw: object, has_quantize: bool, max_steps: int | None, ctx: Context) -> Values:
    """``prune:``: one of sparsity and pattern; keys of the schedule and the method; the schedule fits the run."""
    if has_quantize:
        ctx.report(
            "prune",
            "cannot be used with quantize: (4-bit weights hold no exact mask); drop quantize: for LoRA, or prune "
            "the base with `entrenar prune` and train LoRA with prune: {schedule: keep} on its output",
        )
        return {}
    values = read_section(PruneSection, raw, "prune", ctx)
    if not isinstance(raw, dict):
        return values  # reported: not a mapping
    schedule = values.setdefault("schedule", PruneSection.schedule)
    if schedule == "keep":
        return _keep(values, ctx)
    method = values["method"] = values.get("method") or "magnitude"
    if values.get("sparsity") is None and values.get("pattern") is None and ctx.ok("prune.sparsity", "prune.pattern"):
        ctx.report("prune.sparsity", "missing; set prune.sparsity (e.g. 0.5) or prune.pattern (2:4 or 4:8)")
    if values.get("sparsity") is not None and values.get("pattern") is not None:
        ctx.report("prune.pattern", "cannot be used with prune.sparsity; keep one of the two", "prune.sparsity")
    for key in ("pattern", "initial_sparsity", "start_step", "end_step", "update_every"):
        allowed = ("oneshot",) if key == "pattern" else ("gradual",)
        _only_for(values, key, "prune", "schedule", allowed, ctx)
    for key in ("calibration", "samples", "seq_len", "seed"):
        _only_for(values, key, "prune", "method", ("wanda", "sparsegpt"), ctx)
    if method != "magnitude" and ctx.ok("prune.method"):
        _calibrated(values, schedule, method, ctx)
    if schedule == "gradual" and ctx.ok("prune.schedule"):
        _gradual(values, max_steps, ctx)
    return values


def _calibrated(values: Values, schedule: str, method: str, ctx: Context) -> None:
    """WANDA/SparseGPT: one-shot only, with a calibration file; fill the draw's defaults."""
    if schedule == "gradual" and ctx.ok("prune.schedule"):
        ctx.report("prune.method", f"{method} prunes once from calibration; use schedule: oneshot or magnitude")
    if values.get("calibration") is None and ctx.ok("prune.calibration"):
        ctx.report("prune.calibration", f"required with method {method}: a text or JSONL file to calibrate on")
    elif values.get("calibration") is not None:
        values["calibration"] = _data_path("prune.calibration", values["calibration"], ctx)
    _default(values, "samples", 128)
    _default(values, "seed", 0)


def _keep(values: Values, ctx: Context) -> Values:
    """``schedule: keep`` takes no other key: the masks are the base's zeros."""
    for key in (name for name in values if name != "schedule"):
        _only_for(values, key, "prune", "schedule", ("gradual", "oneshot"), ctx)
    return values


def _gradual(values: Values, max_steps: int | None, ctx: Context) -> None:
    """Fill the schedule's defaults; s_i <= s_f; t0 < end <= max_steps; update steps land on ``end_step``."""
    _default(values, "initial_sparsity", 0.0)
    start = values["start_step"] = values.get("start_step") or 0
    _default(values, "update_every", 1)
    final, initial, end, every = (values.get(k) for k in ("sparsity", "initial_sparsity", "end_step", "update_every"))
    if isinstance(final, float) and isinstance(initial, float) and initial > final and ctx.ok("prune.sparsity"):
        ctx.report("prune.initial_sparsity", f"{initial} is above prune.sparsity ({final}); lower it", "prune.sparsity")
    if end is None:
        if ctx.ok("prune"):  # after another mistake in the section, one line is enough
            ctx.report("prune.end_step", "required with schedule gradual: the step that reaches prune.sparsity")
        return
    if not ctx.ok("prune.end_step", "prune.start_step", "prune.update_every"):
        return
    if end <= start:
        ctx.report("prune.end_step", f"{end} must be above prune.start_step ({start})", "prune.start_step")
    elif (end - start) % every:
        ctx.report(
            "prune.end_step",
            f"end_step - start_step = {end - start} is not a multiple of prune.update_every ({every}): masks update "
            f"at start_step + k * update_every and must land on end_step",
            "prune.update_every",
        )
    elif max_steps is not None and end > max_steps:
        ctx.report("prune.end_step", f"{end} is past training.max_steps ({max_steps}); lower it", "training.max_steps")


QAT_GROUP_SIZE_INT4 = 32
"""``qat.group_size`` for ``int4`` when null (torchao's and ExecuTorch's usual 4-bit group)."""


def build_qat(raw: object, data: dict[Any, Any], max_steps: int | None, ctx: Context) -> Values:
    """``qat:``: a format the exporters write (not F16/F32/BF16, not one that needs calibration); the group size for
    the integer formats; a start before the last step; the techniques that cannot go with a fake-quantized merged
    weight refused."""
    for section, why in (
        (
            "quantize",
            "QLoRA's base is already quantized and publishing merges into the float checkpoint; drop quantize:",
        ),
        ("prune", "train the pruned model without qat:, then train for the format in a second run"),
    ):
        if data.get(section) is not None and ctx.ok(section):
            ctx.report("qat", f"cannot be used with {section}: ({why})", section)
    lora = data.get("lora")
    if isinstance(lora, dict):
        if lora.get("use_dora") and ctx.ok("lora.use_dora"):
            ctx.report("qat", "cannot be used with lora.use_dora (DoRA's rescaled weight is not fake-quantized)")
        if isinstance(lora.get("dropout"), (int, float)) and lora["dropout"] > 0 and ctx.ok("lora.dropout"):
            ctx.report(
                "lora.dropout",
                "must be 0 with qat: (the merged weight W + BA is fake-quantized, so the adapter's input cannot be "
                "dropped on its own); set lora.dropout: 0",
            )
    values = read_section(QatSection, raw, "qat", ctx)
    if "format" not in values:  # reported as missing
        return values
    fmt = values["format"] = str(values["format"]).lower()
    if fmt not in QAT_NON_GGUF_FORMATS:
        _check_qat_gguf_type(fmt, ctx)
    if values.get("group_size") is not None and fmt not in QAT_INTEGER_FORMATS and ctx.ok("qat.format"):
        ctx.report("qat.group_size", f"applies to qat.format int8 or int4 only, not {fmt}; remove it", "qat.format")
    group = values.get("group_size")
    if isinstance(group, int) and group & (group - 1) and ctx.ok("qat.group_size"):
        ctx.report("qat.group_size", f"{group} is not a power of two; use 32, 64, 128 or 256")
    if fmt == "int4":
        _default(values, "group_size", QAT_GROUP_SIZE_INT4)
    start = values.get("start_after_steps")
    if isinstance(start, int) and max_steps is not None and start >= max_steps and ctx.ok("qat.start_after_steps"):
        ctx.report(
            "qat.start_after_steps",
            f"{start} is not below training.max_steps ({max_steps}), so no step would train quantized; lower it",
            "training.max_steps",
        )
    return values


def _check_qat_gguf_type(name: str, ctx: Context) -> None:
    """``qat.format`` as a GGUF file type: one that quantizes and needs no importance matrix."""
    from aprender.format.gguf_mixtures import FILE_TYPES

    kind = FILE_TYPES.get(name)
    trainable = [n for n, k in FILE_TYPES.items() if k.name not in ("F32", "F16", "BF16") and not k.needs_imatrix]
    if kind is None or kind.name in ("F32", "F16", "BF16") or kind.needs_imatrix:
        why = "is not a format QAT trains for" if kind is None else "does not round weights to integers"
        if kind is not None and kind.needs_imatrix:
            why = "needs an importance matrix, which QAT does not use"
        ctx.report("qat.format", f"{name} {why}; use nf4, int8, int4 or a GGUF type: {', '.join(trainable)}")
