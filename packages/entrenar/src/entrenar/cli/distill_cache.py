"""``entrenar distill-cache CONFIG [KEY=VALUE ...]``: run the teacher once over the data into ``distill.cache``.

Builds the teacher cache a training run with this config will read (`entrenar.distill.cache`): the teacher's
top ``distill.cache_top_k`` log-probabilities and tail mass at every labelled position of the training and
validation data. A cache that already fits the config is left as it is (and said to be up to date); one
built for another teacher, temperature, tokenizer or data is rebuilt. The student's weights are not loaded.
"""

from __future__ import annotations

import click

__all__ = ["distill_cache_command"]


@click.command("distill-cache")
@click.argument("config")
@click.argument("overrides", nargs=-1)
def distill_cache_command(config: str, overrides: tuple[str, ...]) -> None:
    """Run the teacher of CONFIG's distill: section over its data into distill.cache (built or rebuilt)."""
    from entrenar.config import load_config
    from entrenar.train import build_teacher_cache

    build_teacher_cache(load_config(config, overrides), report=click.echo)
