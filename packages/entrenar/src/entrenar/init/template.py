"""Write the commented ``config.yaml`` of an `InitPlan`.

Every section the method needs is written with every key of the schema (`entrenar.config.schema`),
each under a comment taken from the schema's own documentation of that key (the ``Attributes:`` of its
section dataclass), so the file explains itself and cannot drift from what the loader accepts. Values
are the schema defaults except those `entrenar init` chose, which carry one more comment line saying
why (``# init: ...``). A full fine-tune has no ``lora:`` section, QLoRA adds ``quantize:``, and a
commented-out ``publish:`` section shows how to upload the result.

Before writing, the text is parsed and validated exactly as ``entrenar train`` will load it
(`entrenar.config.config_from_mapping`), then written atomically (`aprender.atomic.atomic_write_text`);
an existing file is replaced only with ``force``.
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from aprender.atomic import atomic_write_text
from entrenar.config import config_from_mapping, parse_yaml
from entrenar.config.docs import key_docs, schema_sections
from entrenar.errors import InitError
from entrenar.init.plan import WARMUP_STEPS, InitPlan
from entrenar.init.propose import SEQ_LEN_MULTIPLE, SEQ_LEN_PERCENTILE, nearest_rank_percentile
from entrenar.init.rank import LARGE_MODEL_RANK, RANK_BY_SIZE

__all__ = [
    "PUBLISH_REPO_PLACEHOLDER",
    "SECTIONS",
    "check_output",
    "render_config",
    "write_config",
]

# Schema order; `publish` is written commented out.
SECTIONS: dict[str, type] = schema_sections()
PUBLISH_REPO_PLACEHOLDER = "your-name/model-name"
_WIDTH = 110


def _yaml_scalar(value: Any) -> str:
    """One YAML value in flow style (strings quoted only where YAML needs it)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n...\n").rstrip("\n")


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, width=_WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _section_lines(name: str, values: dict[str, Any], notes: dict[str, str]) -> list[str]:
    """``name:`` and every key of the section: its doc comment, an optional init note, the value."""
    section = SECTIONS[name]
    title = inspect.cleandoc(section.__doc__ or "").split("\n")[0].replace("``", "")
    lines = [f"# {title}", f"{name}:"]
    docs = key_docs(section)
    for f in fields(section):
        if "spec" not in f.metadata:
            continue
        lines += _comment(docs[f.name], "  ")
        if f.name in notes:
            lines += _comment(f"init: {notes[f.name]}", "  ")
        lines.append(f"  {f.name}: {_yaml_scalar(values.get(f.name, f.default))}")
    return lines


def _seq_len_note(plan: InitPlan) -> str:
    data, max_positions = plan.data, plan.base.config.max_position_embeddings
    p95 = nearest_rank_percentile(data.lengths, SEQ_LEN_PERCENTILE)
    return (
        f"the {SEQ_LEN_PERCENTILE}th percentile of your samples' lengths ({p95} tokens, longest "
        f"{int(data.lengths.max())}) rounded up to a multiple of {SEQ_LEN_MULTIPLE}, at most the model's context "
        f"({max_positions}); {data.truncated} of {data.samples} samples are longer and will be cut"
    )


def _rank_note(plan: InitPlan) -> str:
    bounds = ", ".join(f"< {bound / 1e9:g}B: {rank}" for bound, rank in RANK_BY_SIZE)
    return (
        f"for a base of {plan.base.num_parameters:,} parameters ({bounds}, larger: {LARGE_MODEL_RANK}); "
        "more rank, more capacity and memory"
    )


def _warmup_note(plan: InitPlan) -> str:
    return f"{WARMUP_STEPS} steps, capped at a tenth of the run's {plan.steps} planned optimizer steps"


def _sections(plan: InitPlan) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Section name -> (values init chose, why) for every section written uncommented."""
    model_note = f"{plan.base.config.model_type}, {plan.base.num_parameters:,} parameters"
    out: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
        "model": ({"path": plan.model_path}, {"path": model_note}),
        "data": (
            {"train_path": plan.train_path, "format": plan.data.format, "seq_len": plan.data.seq_len},
            {
                "train_path": f"{plan.data.samples} samples in {len(plan.data.files)} file(s)",
                "format": "detected from the records",
                "seq_len": _seq_len_note(plan),
            },
        ),
        "optimizer": (
            {"lr": plan.lr},
            {"lr": "full fine-tune: 10x below LoRA's 2e-4"} if plan.method == "full" else {},
        ),
        "scheduler": ({"warmup_steps": plan.warmup_steps}, {"warmup_steps": _warmup_note(plan)}),
    }
    if plan.lora_rank is not None and plan.lora_alpha is not None:
        scale = plan.lora_alpha / plan.lora_rank
        out["lora"] = (
            {"rank": plan.lora_rank, "alpha": plan.lora_alpha},
            {
                "rank": _rank_note(plan),
                "alpha": f"{plan.lora_alpha:g} at every rank, QLoRA's setting (scale alpha / rank = {scale:g})",
            },
        )
    if plan.method == "qlora":
        out["quantize"] = ({}, {})
    out["training"] = ({}, {"epochs": f"about {plan.steps} optimizer steps in all with these values"})
    return out


def _publish_lines() -> list[str]:
    body = _section_lines("publish", {"repo": PUBLISH_REPO_PLACEHOLDER}, {})
    return [
        "# To upload the result to the Hugging Face Hub after training, uncomment the section below and set",
        "# `repo`. The repo id and your token (HF_TOKEN or `hf auth login`) are checked before training starts.",
        *(f"# {line}" for line in body[1:]),
    ]


def render_config(plan: InitPlan) -> str:
    """The commented YAML text of the plan's config (see the module docstring).

    Args:
        plan: from `entrenar.init.plan.build_plan`.

    Returns:
        The file's text.
    """
    name = plan.output.name
    lines = [
        "# entrenar training config (schema v1), written by `entrenar init`.",
        f"# Base model {plan.base.reference}; method {plan.method}; {plan.data.samples} {plan.data.format} samples.",
        f"# Train:     entrenar train {name}",
        f"# Override:  entrenar train {name} training.epochs=1   (any key.path=value)",
        "# Relative paths are resolved against the folder of this file.",
    ]
    for section, (values, notes) in _sections(plan).items():
        lines += ["", *_section_lines(section, values, notes)]
    lines += ["", *_publish_lines()]
    return "\n".join(lines) + "\n"


def check_output(path: str | Path, force: bool) -> None:
    """Refuse to replace an existing file without `force`, and never replace a folder.

    Args:
        path: the config file to write.
        force: allow replacing an existing file.

    Raises:
        InitError: `path` is a folder, or an existing file and not `force`.
    """
    target = Path(path)
    if target.is_dir():
        raise InitError(f"-o {target}: is a folder; name the config file to write, e.g. {target / 'config.yaml'}")
    if target.exists() and not force:
        raise InitError(f"-o {target}: already exists; pass --force to replace it or choose another file with -o")


def write_config(plan: InitPlan, *, force: bool) -> Path:
    """Validate the rendered config as ``entrenar train`` will load it, then write it atomically.

    The folder of `plan.output` is created when missing.

    Args:
        plan: from `entrenar.init.plan.build_plan`.
        force: replace an existing file.

    Returns:
        The path written.

    Raises:
        InitError: the file exists and not `force`, or is a folder.
        ConfigError: the rendered config does not validate (a bug in init, reported rather than written).
    """
    check_output(plan.output, force)
    text = render_config(plan)
    config_from_mapping(parse_yaml(text, str(plan.output)), source=str(plan.output), base_dir=str(plan.output.parent))
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.output, text)
    return plan.output
