"""``entrenar validate CONFIG [KEY=VALUE ...]``: check a config, its data and its model without training.

Loads and validates the config (with the overrides), the base model's ``config.json`` and tokenizer,
every data record, the LoRA targets and the schedule (`entrenar.train.validate.validate_run`), then prints
a summary. No weights are loaded and nothing is written.
"""

from __future__ import annotations

import click

__all__ = ["validate_command"]


@click.command("validate")
@click.argument("config")
@click.argument("overrides", nargs=-1)
def validate_command(config: str, overrides: tuple[str, ...]) -> None:
    """Check CONFIG, its data and its model's config.json without training."""
    from entrenar.config import load_config
    from entrenar.train.validate import validate_run

    cfg = load_config(config, overrides)
    report = validate_run(cfg)
    click.echo(f"{config}: valid {cfg.method} config")
    for line in report.describe():
        click.echo(f"  {line}")
