"""``entrenar init``: look at a base model and a dataset, write a commented config.yaml, say what to run next.

Everything is checked (output file, base model, tokenizer, every record) before the file is written.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

import click

from entrenar.constants import METHODS

if TYPE_CHECKING:
    from entrenar.init import InitPlan

__all__ = ["init", "summary_lines"]


def _count(n: int) -> str:
    """``494,032,768 (494.0M)``."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n:,} ({n / scale:.1f}{unit})"
    return f"{n:,}"


def summary_lines(plan: InitPlan, shown_path: str) -> list[str]:
    """The lines `entrenar init` prints: architecture, method, data, run length and the next command.

    Args:
        plan: the plan that was written.
        shown_path: the config path as the user gave it (used in the next command).

    Returns:
        The lines, without newlines.
    """
    import numpy as np

    from entrenar.init import SEQ_LEN_PERCENTILE, nearest_rank_percentile

    cfg, data = plan.base.config, plan.data
    tied = ", tied embeddings" if cfg.tie_word_embeddings else ""
    method = plan.method
    if plan.lora_rank is not None:
        method += f": LoRA rank {plan.lora_rank}, alpha {plan.lora_alpha:g}"
    lengths = data.lengths
    return [
        f"Base model  {plan.base.reference} ({plan.base.source})",
        f"  {cfg.model_type}: hidden {cfg.hidden_size}, layers {cfg.num_layers}, heads {cfg.num_heads} "
        f"(kv {cfg.num_kv_heads}, dim {cfg.head_dim}), MLP {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
        f"context {cfg.max_position_embeddings}",
        f"  parameters {_count(plan.base.num_parameters)}{tied}",
        f"Method      {method}",
        f"Data        {plan.train_path}: {data.samples:,} samples, format {data.format}, {len(data.files)} file(s)",
        f"  tokens per sample: min {int(lengths.min())}, median {int(np.median(lengths))}, "
        f"p{SEQ_LEN_PERCENTILE} {nearest_rank_percentile(lengths, SEQ_LEN_PERCENTILE)}, max {int(lengths.max())}",
        f"  seq_len {data.seq_len}; {data.truncated} sample(s) longer will be cut",
        f"Training    about {plan.steps:,} optimizer steps",
        f"Wrote       {shown_path}",
        f"Next:       entrenar train {shlex.quote(shown_path)}",
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
