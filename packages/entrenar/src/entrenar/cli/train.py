"""``entrenar train CONFIG [--resume/--no-resume] [--dry-run] [KEY=VALUE ...]``: fine-tune as a config says.

``KEY=VALUE`` overrides config keys (``training.max_steps=10``). When the output folder holds checkpoints
the run continues from the latest one (and says so); ``--no-resume`` deletes them and starts over,
``--resume`` fails when there is none. ``--dry-run`` builds everything and takes one step, writing
nothing. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint and exits with code 130.
"""

from __future__ import annotations

import shlex
import sys

import click

__all__ = ["INTERRUPTED_EXIT_CODE", "train_command"]

INTERRUPTED_EXIT_CODE = 130


@click.command("train")
@click.argument("config")
@click.argument("overrides", nargs=-1)
@click.option(
    "--resume/--no-resume",
    default=None,
    help="Continue from the latest checkpoint (default when one exists) or delete checkpoints and start over.",
)
@click.option("--dry-run", is_flag=True, help="Resolve everything and run one step without writing anything.")
def train_command(config: str, overrides: tuple[str, ...], resume: bool | None, dry_run: bool) -> None:
    """Fine-tune the model of CONFIG (a YAML file); KEY=VALUE pairs override its keys."""
    from entrenar.config import load_config
    from entrenar.errors import TrainingInterrupted
    from entrenar.train import dry_run as run_dry
    from entrenar.train import run_training

    cfg = load_config(config, overrides)
    if dry_run:
        if resume is not None:
            raise click.UsageError("--dry-run writes nothing and never resumes; drop --resume/--no-resume")
        run_dry(cfg)
        return
    try:
        run_training(cfg, resume=resume)
    except TrainingInterrupted as exc:
        again = shlex.join(["entrenar", "train", config, *overrides])
        click.echo(f"{exc}; run `{again}` to resume", err=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
