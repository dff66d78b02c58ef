"""``entrenar merge CONFIG [-o OUT_DIR] [KEY=VALUE ...] [--dry-run] [--eval-data PATH] [--keep-worse]``.

Merges models as a mergekit YAML says (`entrenar.merge.run.run_merge`): ``KEY=VALUE`` overrides its keys,
``--dry-run`` checks the inputs and prints the plan without writing, ``--eval-data`` scores the merged
model and each input on a text (the YAML's ``eval_data``), and ``--keep-worse`` keeps a merged model far
worse than every input (otherwise refused).
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["merge_command"]


@click.command("merge")
@click.argument("config")
@click.argument("overrides", nargs=-1)
@click.option("-o", "--output", "output", default="merged", show_default=True, help="Folder for the merged model.")
@click.option("--dry-run", is_flag=True, help="Resolve the inputs, check shapes and print the plan; write nothing.")
@click.option("--eval-data", type=click.Path(dir_okay=False), help="Text to score the merged model and each input on.")
@click.option("--keep-worse", is_flag=True, help="Keep a merged model whose perplexity is far worse than its inputs'.")
def merge_command(
    config: str, overrides: tuple[str, ...], output: str, dry_run: bool, eval_data: str | None, keep_worse: bool
) -> None:
    """Merge models as the mergekit-style YAML CONFIG says; KEY=VALUE pairs override its keys."""
    from entrenar.merge.config import load_merge_config
    from entrenar.merge.run import run_merge

    extra = [f"eval_data={Path(eval_data).absolute()}"] if eval_data is not None else []
    cfg = load_merge_config(config, [*overrides, *extra])
    run_merge(cfg, output, dry_run=dry_run, keep_worse=keep_worse, log=click.echo)
