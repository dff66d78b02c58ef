"""``entrenar init``: look at a base model and a dataset, write a commented config.yaml, say what to run next.

Everything is checked (output file, base model, tokenizer, every record) before the file is written.
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING

import click

from entrenar.constants import METHODS

if TYPE_CHECKING:
    from entrenar.init import InitPlan

__all__ = ["OPTIMIZER_TITLES", "init", "summary_lines"]

OPTIMIZER_TITLES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "adamw8bit": "8-bit AdamW"}


def _count(n: int) -> str:
    """``494,032,768 (494.0M)``."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n:,} ({n / scale:.1f}{unit})"
    return f"{n:,}"


def _method(plan: InitPlan) -> str:
    """``QLoRA (rank=64, alpha=16, 4-bit base)``, ``LoRA (rank=64, alpha=16)`` or ``Full fine-tune (...)``."""
    from entrenar.config.schema import QuantizeSection

    if plan.lora_rank is None or plan.lora_alpha is None:
        return "Full fine-tune (every parameter trains)"
    adapter = f"rank={plan.lora_rank}, alpha={plan.lora_alpha:g}"
    if plan.method == "qlora":
        return f"QLoRA ({adapter}, {QuantizeSection.bits}-bit base)"
    return f"LoRA ({adapter})"


def _output_dir(plan: InitPlan) -> str:
    """Where the run will write, as seen from the working directory (``./output/``)."""
    from entrenar.config.schema import TrainingSection
    from entrenar.display import shown_path

    return shown_path(os.path.normpath(os.path.join(plan.output.parent, TrainingSection.output_dir))) + "/"


def summary_lines(plan: InitPlan, shown_path: str) -> list[str]:
    """The lines `entrenar init` prints: the spec's summary (model, method, data, optimizer, output) with details.

    Args:
        plan: the plan that was written.
        shown_path: the config path as the user gave it.

    Returns:
        The lines, without newlines.
    """
    import numpy as np

    from entrenar.config.schema import OptimizerSection, TrainingSection
    from entrenar.display import scientific
    from entrenar.init import SEQ_LEN_MULTIPLE, SEQ_LEN_PERCENTILE, nearest_rank_percentile

    cfg, data = plan.base.config, plan.data
    tied = ", tied embeddings" if cfg.tie_word_embeddings else ""
    lengths = data.lengths
    p95 = nearest_rank_percentile(lengths, SEQ_LEN_PERCENTILE)
    optimizer = OPTIMIZER_TITLES[OptimizerSection.name]
    return [
        f"Created {shown_path} with:",
        f"  Model: {plan.base.reference} ({cfg.hidden_size} hidden, {cfg.num_layers} layers)",
        f"    {cfg.model_type} ({plan.base.source}): {cfg.num_heads} heads (kv {cfg.num_kv_heads}, "
        f"dim {cfg.head_dim}), MLP {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
        f"context {cfg.max_position_embeddings}",
        f"    parameters {_count(plan.base.num_parameters)}{tied}",
        f"  Method: {_method(plan)}",
        f"  Data: {plan.train_path} ({data.samples:,} samples detected)",
        f"    format {data.format}, {len(data.files)} file(s); tokens per sample: min {int(lengths.min())}, "
        f"median {int(np.median(lengths))}, p{SEQ_LEN_PERCENTILE} {p95}, max {int(lengths.max())}",
        f"    seq_len {data.seq_len} (p{SEQ_LEN_PERCENTILE} rounded up to a multiple of {SEQ_LEN_MULTIPLE}); "
        f"{data.truncated} sample(s) longer will be cut",
        f"  Optimizer: {optimizer} (lr={scientific(plan.lr)}, warmup={plan.warmup_steps} steps)",
        f"  Training: {TrainingSection.epochs} epochs, {plan.steps:,} optimizer steps",
        f"  Output: {_output_dir(plan)}",
        f"Next: entrenar train {shlex.quote(shown_path)}",
    ]


@click.command("init")
@click.option("--base", required=True, help="Base model: a folder, a .gguf file or a Hub repo id (namespace/name).")
@click.option("--method", required=True, type=click.Choice(METHODS), help="Fine-tuning method.")
@click.option("--data", "data", required=True, help="Training data: a file, a folder or a glob.")
@click.option("-o", "--output", default="config.yaml", show_default=True, help="Config file to write.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def init(base: str, method: str, data: str, output: str, force: bool) -> None:
    """Inspect a base model and a dataset, and write a commented config.yaml that trains without edits.

    Reads only config.json and the tokenizer of the base model (never its weights), proposes a LoRA rank
    from the model size and seq_len from the token lengths of your samples.
    """
    from entrenar.init import build_plan, check_output, write_config

    check_output(output, force)
    plan = build_plan(base, method, data, output)
    write_config(plan, force=force)
    for line in summary_lines(plan, output):
        click.echo(line)
