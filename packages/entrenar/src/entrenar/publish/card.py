"""The model card (``README.md``) of a published model, next to its loss curve (`entrenar.publish.curve`).

The card follows the Hub's model card layout (https://huggingface.co/docs/hub/model-cards): YAML front
matter that the Hub indexes (https://huggingface.co/docs/hub/model-cards#model-card-metadata), then
Markdown. Front matter keys:

- ``base_model``: the base model's Hub id (left out when the base is only a local folder);
- ``library_name``: ``transformers`` for a model, ``peft`` for an adapter (none for a GGUF file);
- ``tags``: ``entrenar``, the techniques (``lora``, ``qlora``, ``full`` ... any name), ``fine-tuned``, and
  ``gguf`` for GGUF;
- ``datasets``: Hub dataset ids the training data was read from (files in the HF cache under
  ``datasets--ns--name``); left out when none is known;
- ``license``: the base model card's (or config's) ``license``; left out when unknown, never guessed;
- ``pipeline_tag``: ``text-generation``.

The body has a training-details table and evaluation metrics from ``final_model.json``, the loss curve
drawn from ``metrics.jsonl`` and a usage snippet for what was published (transformers, PEFT or llama.cpp).

``final_model.json`` keys read (as `entrenar.train.outputs` writes them; all optional, a missing key leaves
its row out): ``steps``, ``epochs``, ``tokens.input``, ``loss`` {``final_train``, ``best_train``,
``final_eval``, ``best_eval``, ``best_eval_step``}, ``eval`` (the last evaluation's metrics),
``parameters`` {``trainable``, ``total``}, ``stop_reason``, ``wall_time_s``, ``data_files`` (paths, for
dataset ids) and ``config`` (the resolved config: ``lora.rank``/``alpha``, ``quantize.bits``/``type``/
``double_quant``, ``optimizer.name``/``lr``, ``scheduler.name``/``warmup_steps``,
``data.batch_size``/``seq_len``/``train_path``/``val_path``, ``training.grad_accum``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from aprender.atomic import atomic_write_text
from aprender.constants import REPOCARD_NAME
from entrenar import __version__
from entrenar.constants import QAT_NON_GGUF_FORMATS, TECHNIQUE_NAMES
from entrenar.publish.curve import LOSS_CURVE_NAME, LossPoints, is_number, loss_curve_svg

__all__ = [
    "CardContext",
    "Layout",
    "base_license",
    "card_metadata",
    "hub_dataset_ids",
    "render_model_card",
    "write_model_card",
]

_LOG = logging.getLogger(__name__)
# The HF cache stores dataset repos as datasets--<namespace>--<name>; Hub ids never contain "--".
_DATASET_DIR = re.compile(r"^datasets--([A-Za-z0-9._-]+?)--([A-Za-z0-9._-]+)$")

Layout = Literal["model", "adapter", "gguf"]


@dataclass(frozen=True)
class CardContext:
    """Everything the card says.

    Attributes:
        repo_id: The repo the card is for (``namespace/name``).
        layout: ``"model"`` (HF safetensors), ``"adapter"`` (PEFT adapter) or ``"gguf"``.
        techniques: What made the model (``final_model.json``'s ``techniques``: ``("qlora",)``,
            ``("lora", "distill")`` ...); known ones are named as `TECHNIQUE_NAMES` says, others as given.
        base_model: The base model's Hub id, or None (unknown, or only a local folder).
        license: The base model's license id, or None when unknown.
        datasets: Hub dataset ids of the training data.
        record: The parsed ``final_model.json`` (may be empty).
        gguf_file: The (first) GGUF file name (``layout="gguf"`` only).
        gguf_files: Every GGUF file published, with its size in bytes (``layout="gguf"`` only).
        chat: The tokenizer has a chat template (the usage snippet uses it).
        has_loss_curve: ``loss_curve.svg`` is published next to the card.
    """

    repo_id: str
    layout: Layout
    techniques: tuple[str, ...]
    base_model: str | None = None
    license: str | None = None
    datasets: tuple[str, ...] = ()
    record: Mapping[str, Any] = field(default_factory=dict)
    gguf_file: str | None = None
    gguf_files: tuple[tuple[str, int], ...] = ()
    chat: bool = False
    has_loss_curve: bool = False


# ----------------------------------------------------------------------------------------------- inputs


def base_license(base_dir: Path | None) -> str | None:
    """The base model's license: ``license`` of its README.md front matter, else of its config.json.

    Args:
        base_dir: The base model folder, or None when it is not available locally.

    Returns:
        The license id (e.g. ``"apache-2.0"``), or None when neither file states one.
    """
    if base_dir is None:
        return None
    readme = base_dir / REPOCARD_NAME
    if readme.is_file():
        license_id = _front_matter(readme).get("license")
        if isinstance(license_id, str) and license_id.strip():
            return license_id.strip()
    config = base_dir / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("license")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _front_matter(readme: Path) -> dict[str, Any]:
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    end = next((i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---"), None)
    if end is None:
        return {}
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        _LOG.warning("%s: front matter is not valid YAML (%s); the base model's license is unknown", readme, exc)
        return {}
    return data if isinstance(data, dict) else {}


def hub_dataset_ids(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Hub dataset ids the training data came from, found in the record's data paths.

    A file read from the HF cache lives under ``.../datasets--<namespace>--<name>/snapshots/<sha>/``;
    that folder name gives the id back. Paths elsewhere name no Hub dataset.

    Args:
        record: ``final_model.json`` (``data_files`` and ``config.data.train_path``/``val_path`` are read).

    Returns:
        Sorted unique ids such as ``("HuggingFaceH4/no_robots",)``; empty when none is known.
    """
    data = _mapping(_mapping(record.get("config")).get("data"))
    sources = [record.get("data_files"), data.get("train_path"), data.get("val_path")]
    found: set[str] = set()
    for text in _strings(sources):
        for part in Path(text).parts:
            match = _DATASET_DIR.match(part)
            if match:
                found.add(f"{match.group(1)}/{match.group(2)}")
    return tuple(sorted(found))


def _strings(value: Any) -> Iterator[str]:
    """Every string in a nested structure of lists and dicts (dict keys included: paths may be keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


# ----------------------------------------------------------------------------------------------- card


def card_metadata(ctx: CardContext) -> dict[str, Any]:
    """The card's YAML front matter.

    Args:
        ctx: What was published.

    Returns:
        Keys in this order, unknown ones left out: ``base_model``, ``library_name``, ``license``,
        ``datasets``, ``pipeline_tag``, ``tags``.
    """
    meta: dict[str, Any] = {}
    if ctx.base_model:
        meta["base_model"] = ctx.base_model
    if ctx.layout != "gguf":
        meta["library_name"] = "peft" if ctx.layout == "adapter" else "transformers"
    if ctx.license:
        meta["license"] = ctx.license
    if ctx.datasets:
        meta["datasets"] = list(ctx.datasets)
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["entrenar", *ctx.techniques, "fine-tuned"] + (["gguf"] if ctx.layout == "gguf" else [])
    return meta


def render_model_card(ctx: CardContext) -> str:
    """The whole ``README.md``: front matter, description, training details, metrics, curve, usage.

    Args:
        ctx: What was published.

    Returns:
        The Markdown text.
    """
    front = yaml.safe_dump(card_metadata(ctx), sort_keys=False, allow_unicode=True)
    name = ctx.repo_id.split("/")[-1]
    base = f"[{ctx.base_model}](https://huggingface.co/{ctx.base_model})" if ctx.base_model else "a base model"
    what = {"model": "model", "adapter": "LoRA adapter", "gguf": "GGUF model"}[ctx.layout]
    merge, prune = _mapping(ctx.record.get("merge")), _mapping(ctx.record.get("prune"))
    if merge:
        made = f"was merged from {len(merge.get('inputs') or [])} models"
    elif prune and tuple(ctx.techniques) == ("prune",):
        made = f"was pruned from {base}"
    else:
        made = f"was fine-tuned from {base} with {_techniques(ctx)}"
    sections = [f"---\n{front}---\n", f"# {name}\n", f"This {what} {made} using entrenar {__version__}.\n"]
    if merge:
        sections.append(_merge_section(merge))
    if prune:
        sections.append(_prune_section(prune))
    qat = _mapping(ctx.record.get("qat"))
    if qat:
        sections.append(_qat_section(qat))
    checks = [item for item in ctx.record.get("sparsity_checks") or [] if isinstance(item, Mapping)]
    if checks:
        sections.append("## Sparsity\n\n" + "".join(f"- {item.get('line')}\n" for item in checks))
    details = _training_rows(ctx)
    if details:
        sections.append("## Training details\n\n" + _table(("Setting", "Value"), details))
    metrics = _eval_rows(ctx.record)
    if metrics:
        sections.append("## Evaluation\n\n" + _table(("Metric", "Value"), metrics))
    compared = _base_vs_tuned(ctx.record)
    if compared:
        sections.append(compared)
    answered = _samples_section(_mapping(ctx.record.get("samples")))
    if answered:
        sections.append(answered)
    if ctx.has_loss_curve:
        sections.append(f"## Loss curve\n\n![Training loss]({LOSS_CURVE_NAME})\n")
    sections.append("## Usage\n\n" + _usage(ctx))
    return "\n".join(sections)


def _merge_section(merge: Mapping[str, Any]) -> str:
    """Method, inputs with their revisions, perplexities on the evaluation text, and the merge config."""
    method = (
        f"[{merge.get('title', merge.get('method'))}]({merge['reference']})"
        if merge.get("reference")
        else (str(merge.get("title", merge.get("method"))))
    )
    rows = [
        (f"`{item.get('model')}`", str(item.get("resolved_revision") or item.get("revision") or "local"))
        for item in merge.get("inputs") or []
        if isinstance(item, Mapping)
    ]
    text = f"## Merge\n\nMethod: {method}.\n\n" + _table(("Input", "Revision"), rows)
    scores = [item for item in merge.get("perplexity") or [] if isinstance(item, Mapping)]
    if scores:
        table = _table(("Model", "Perplexity"), [(str(item["model"]), _number(item["perplexity"])) for item in scores])
        text += f"\nPerplexity on the evaluation text:\n\n{table}"
    if merge.get("config"):
        text += f"\nConfiguration:\n\n```yaml\n{str(merge['config']).rstrip()}\n```\n"
    return text


def _qat_section(qat: Mapping[str, Any]) -> str:
    """The format trained for, how each weight was rounded, from which step; how to export it the same way."""
    fmt = str(qat.get("format"))
    start = qat.get("start_after_steps")
    when = f"after {start} optimizer steps in full precision" if start else "from the first step"
    text = (
        f"## Quantization-aware training\n\nTrained for `{fmt}`: the linear weights of the decoder layers were "
        f"fake-quantized in the forward pass {when} (straight-through gradient)"
    )
    text += ", and their inputs fake-quantized to int8 per token.\n" if qat.get("activations") else ".\n"
    quantizers = [str(item) for item in qat.get("quantizers") or []]
    if quantizers:
        text += "Rounded as: " + "; ".join(quantizers) + ".\n"
    if fmt not in QAT_NON_GGUF_FORMATS:
        text += (
            f"`entrenar publish --format gguf --gguf-type {fmt}` and `entrenar quantize --gguf {fmt}` (without "
            "`--calibration`) store these weights exactly as they were rounded in training.\n"
        )
    return text


def _prune_section(prune: Mapping[str, Any]) -> str:
    """Method, sparsity or pattern, calibration, sparsity per decoder layer, perplexity before and after."""
    if prune.get("schedule") == "keep":
        text = (
            "## Pruning\n\nThe base model was pruned; training kept its zeros (`prune: {schedule: keep}`: its "
            "non-zero weights were the masks, applied after every optimizer step).\n"
        )
    else:
        title = prune.get("title", prune.get("method"))
        method = f"[{title}]({prune['reference']})" if prune.get("reference") else str(title)
        sparsity = prune.get("sparsity")
        amount = (
            f"{100 * sparsity:.4g}% unstructured sparsity"
            if is_number(sparsity)
            else f"{prune.get('pattern')} sparsity"
        )
        text = f"## Pruning\n\nMethod: {method}, {amount} (compared within: {prune.get('comparison_group')}).\n"
    calibration = _mapping(prune.get("calibration"))
    if calibration:
        hashes = ", ".join(f"`{digest[:12]}`" for digest in _mapping(calibration.get("files")).values())
        text += (
            f"Calibration: {calibration.get('samples')} windows of {calibration.get('seq_len')} tokens from "
            f"`{calibration.get('path')}` (seed {calibration.get('seed')}; sha256 {hashes}).\n"
        )
    if is_number(prune.get("pruned_sparsity")) and is_number(prune.get("model_sparsity")):
        text += (
            f"Zeros: {100 * prune['pruned_sparsity']:.2f}% of the pruned linear layers' weights, "
            f"{100 * prune['model_sparsity']:.2f}% of all parameters (stored densely).\n"
        )
    if prune.get("schedule") == "gradual":
        text += (
            f"Schedule: gradual (cubic, Zhu & Gupta 2017) from {prune.get('initial_sparsity')} at step "
            f"{prune.get('start_step')} to {prune.get('sparsity')} at step {prune.get('end_step')}, masks "
            f"updated every {prune.get('update_every')} steps.\n"
        )
    remask = _mapping(prune.get("remask"))
    if remask:
        text += (
            "The adapter was trained on the pruned base; the merged weights were masked again, so this model keeps "
            f"the sparsity. Re-masking zeroed {remask.get('remasked_weights')} merged weights and changed the logits "
            f"by at most {_number(remask.get('max_abs_logit_change'))} on {remask.get('input')}.\n"
        )
    layers = [item for item in prune.get("layers") or [] if isinstance(item, Mapping)]
    if layers:
        rows = [(str(item.get("layer")), f"{100 * float(item.get('sparsity', 0)):.2f}%") for item in layers]
        text += "\n" + _table(("Decoder layer", "Sparsity"), rows)
    scores = [item for item in prune.get("perplexity") or [] if isinstance(item, Mapping)]
    if scores:
        table = _table(("Model", "Perplexity"), [(str(item["model"]), _number(item["perplexity"])) for item in scores])
        text += f"\nPerplexity on the evaluation text:\n\n{table}"
    return text


def _techniques(ctx: CardContext) -> str:
    """The techniques in words: "QLoRA", "LoRA + distill" (unknown names as they are)."""
    return " + ".join(TECHNIQUE_NAMES.get(name, name) for name in ctx.techniques)


def _training_rows(ctx: CardContext) -> list[tuple[str, str]]:
    record = ctx.record
    config = _mapping(record.get("config"))
    lora, quant, optim, sched, data, training = (
        _mapping(config.get(key)) for key in ("lora", "quantize", "optimizer", "scheduler", "data", "training")
    )
    tokens, loss, params = (_mapping(record.get(key)) for key in ("tokens", "loss", "parameters"))
    candidates: list[tuple[str, Any]] = [
        ("Method", _techniques(ctx)),
        ("LoRA rank / alpha", f"{lora['rank']} / {_number(lora['alpha'])}" if {"rank", "alpha"} <= set(lora) else None),
        ("Distillation", _distillation(_mapping(config.get("distill")))),
        ("Base quantization", _quantization(quant) if quant else None),
        ("Trainable parameters", _share(params)),
        ("Steps", record.get("steps")),
        ("Epochs", record.get("epochs")),
        ("Training tokens", tokens.get("input")),
        ("Optimizer", optim.get("name")),
        ("Learning rate", _learning_rate(optim, sched)),
        ("Batch size", _batch(data, training)),
        ("Sequence length", data.get("seq_len")),
        ("Final training loss", loss.get("final_train")),
        ("Best training loss", loss.get("best_train")),
        ("Final evaluation loss", loss.get("final_eval")),
        ("Best evaluation loss", _best_eval(loss)),
        ("Stopped by", "early stopping" if record.get("stop_reason") == "early_stopping" else None),
        ("Wall time", _duration(record["wall_time_s"]) if is_number(record.get("wall_time_s")) else None),
    ]
    return [(label, _number(value)) for label, value in candidates if value is not None]


def _eval_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The last evaluation's metrics (``eval``), without its step and epoch."""
    metrics = _mapping(record.get("eval"))
    return [(str(key), _number(value)) for key, value in metrics.items() if key not in ("step", "epoch", "kind")]


def _base_vs_tuned(record: Mapping[str, Any]) -> str | None:
    """The validation loss and perplexity of the base model (evaluated before training) and of the fine-tuned one,
    or None without both."""
    base, tuned = _mapping(record.get("base_eval")), _mapping(record.get("eval"))
    keys = ("eval_loss", "eval_perplexity", "eval_token_accuracy")
    if not base or not tuned or not all(is_number(base.get(k)) and is_number(tuned.get(k)) for k in keys):
        return None
    rows = [
        (name, _number(base[key]), _number(tuned[key]))
        for name, key in zip(("loss", "perplexity", "token accuracy"), keys, strict=True)
    ]
    return (
        "## Base model vs fine-tuned\n\nOn the validation data (the base model evaluated before the first step):\n\n"
        + _table(("Validation", "Base model", f"Fine-tuned (step {tuned.get('step')})"), rows)
    )


def _samples_section(samples: Mapping[str, Any]) -> str | None:
    """The answers to the sample prompts before training and after it, or None without samples."""
    before = {s.get("prompt"): s.get("answer") for s in samples.get("before") or [] if isinstance(s, Mapping)}
    after = [s for s in samples.get("after") or [] if isinstance(s, Mapping)]
    if not after:
        return None
    rows = [
        (_quote(str(s.get("prompt"))), _quote(str(before.get(s.get("prompt"), ""))), _quote(str(s.get("answer"))))
        for s in after
    ]
    step = samples.get("after_step")
    return "## Sample answers\n\nGreedy answers to the run's sample prompts:\n\n" + _table(
        ("Prompt", "Before training", f"After training (step {step})"), rows
    )


def _quote(text: str) -> str:
    """One table cell: newlines as <br>, pipes escaped."""
    return text.replace("|", "\\|").replace("\n", "<br>")


def _share(params: Mapping[str, Any]) -> str | None:
    trainable, total = params.get("trainable"), params.get("total")
    if not (is_number(trainable) and is_number(total) and total > 0):
        return None
    return f"{_number(trainable)} of {_number(total)} ({100 * trainable / total:.2f}%)"


def _best_eval(loss: Mapping[str, Any]) -> str | None:
    best = loss.get("best_eval")
    if best is None:
        return None
    step = loss.get("best_eval_step")
    return _number(best) + (f" (step {step})" if step is not None else "")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _distillation(distill: Mapping[str, Any]) -> str | None:
    """Teacher(s), divergence, temperature and alpha of a ``distill:`` section, or None without one."""
    if not distill:
        return None
    teachers = (
        [str(distill["teacher"])]
        if distill.get("teacher")
        else [
            f"{t.get('path')} ({_number(t.get('weight'))})"
            for t in distill.get("teachers") or []
            if isinstance(t, Mapping)
        ]
    )
    return (
        f"from {', '.join(teachers)}: {distill.get('loss')}, temperature {_number(distill.get('temperature'))}, "
        f"alpha {_number(distill.get('alpha'))}"
    )


def _quantization(quant: Mapping[str, Any]) -> str:
    text = f"{quant.get('bits', 4)}-bit {str(quant.get('type', 'nf4')).upper()}"
    return text + (" with double quantization" if quant.get("double_quant") else "")


def _learning_rate(optim: Mapping[str, Any], sched: Mapping[str, Any]) -> str | None:
    if "lr" not in optim:
        return None
    text = _number(optim["lr"])
    if sched.get("name"):
        text += f" ({sched['name']} schedule"
        text += f", {sched['warmup_steps']} warmup steps)" if sched.get("warmup_steps") else ")"
    return text


def _batch(data: Mapping[str, Any], training: Mapping[str, Any]) -> str | None:
    if "batch_size" not in data:
        return None
    accum = training.get("grad_accum", 1)
    return str(data["batch_size"]) if accum == 1 else f"{data['batch_size']} x {accum} gradient accumulation"


def _duration(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}".rstrip("0").rstrip(".")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _usage(ctx: CardContext) -> str:
    repo = ctx.repo_id
    if ctx.layout == "gguf":
        files = ""
        if len(ctx.gguf_files) > 1:
            rows = [(f"`{name}`", f"{size / 2**20:.1f} MiB") for name, size in ctx.gguf_files]
            files = "Files (pick one):\n\n" + _table(("File", "Size"), rows) + "\n"
        return (
            files + "With [llama.cpp](https://github.com/ggml-org/llama.cpp):\n\n```bash\n"
            f'llama-cli --hf-repo {repo} --hf-file {ctx.gguf_file} -p "Hello"\n```\n'
        )
    if ctx.layout == "adapter":
        load = (
            "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")\n'
        )
        intro = "With [PEFT](https://github.com/huggingface/peft) (loads the base model, then the adapter):"
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n'
        )
        intro = "With [transformers](https://github.com/huggingface/transformers):"
    if ctx.chat:
        prompt = (
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            "inputs = tokenizer.apply_chat_template(\n"
            '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n)\n'
        )
    else:
        prompt = 'inputs = tokenizer("Hello", return_tensors="pt")\n'
    generate = (
        "outputs = model.generate(**inputs, max_new_tokens=64)\n"
        'print(tokenizer.decode(outputs[0][inputs["input_ids"].shape[-1] :], skip_special_tokens=True))\n'
    )
    return f'{intro}\n\n```python\n{load}tokenizer = AutoTokenizer.from_pretrained("{repo}")\n{prompt}{generate}```\n'


def write_model_card(folder: Path, ctx: CardContext, points: LossPoints | None) -> list[Path]:
    """Write ``README.md`` (and ``loss_curve.svg`` when there are training points) into `folder`.

    Args:
        folder: The staging folder.
        ctx: What was published (``has_loss_curve`` is set here from `points`).
        points: The loss series, or None without ``metrics.jsonl``.

    Returns:
        The files written.
    """
    written = []
    has_curve = points is not None and bool(points.train)
    if has_curve:
        assert points is not None
        atomic_write_text(folder / LOSS_CURVE_NAME, loss_curve_svg(points))
        written.append(folder / LOSS_CURVE_NAME)
    card = replace(ctx, has_loss_curve=has_curve)
    atomic_write_text(folder / REPOCARD_NAME, render_model_card(card))
    return [folder / REPOCARD_NAME, *written]
