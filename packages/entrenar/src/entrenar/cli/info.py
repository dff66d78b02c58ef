"""``entrenar info CONFIG [KEY=VALUE ...]``: the resolved config, parameter counts and estimated memory.

Only the base model's ``config.json`` is read (for a Hub id, that one file is downloaded): the model is
built on PyTorch's ``meta`` device with the run's adapters and quantization, so the counts are exact and
the memory is estimated without allocating anything (`entrenar.train.estimate`).
"""

from __future__ import annotations

import click
import yaml

__all__ = ["info_command"]


def _size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError


@click.command("info")
@click.argument("config")
@click.argument("overrides", nargs=-1)
def info_command(config: str, overrides: tuple[str, ...]) -> None:
    """Show CONFIG resolved, the model's parameter counts and the estimated training memory."""
    from entrenar.config import config_to_dict, load_config
    from entrenar.train.estimate import count_parameters, estimate_memory, meta_model
    from entrenar.train.setup import read_model_config

    cfg = load_config(config, overrides)
    model_config = read_model_config(cfg.model)
    model = meta_model(cfg, model_config)
    counts = count_parameters(model)
    memory = estimate_memory(cfg, model_config, model)
    click.echo(f"# {config} resolved ({cfg.method})")
    click.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True).rstrip())
    mc = model_config
    click.echo(
        f"\nmodel: {mc.model_type}, {mc.num_layers} layers, hidden {mc.hidden_size}, {mc.num_heads} heads "
        f"({mc.num_kv_heads} kv), vocab {mc.vocab_size}"
    )
    click.echo(f"parameters: {counts.total:,} total, {counts.trainable:,} trainable ({counts.percent:.2f}%)")
    click.echo("estimated training memory:")
    for name in ("weights", "gradients", "optimizer", "activations", "total"):
        click.echo(f"  {name + ':':<13}{_size(getattr(memory, name))}")
