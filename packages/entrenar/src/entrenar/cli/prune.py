"""``entrenar prune MODEL -o OUT_DIR --method magnitude|wanda|sparsegpt (--sparsity S | --pattern 2:4|4:8)``.

Prunes a model once (`entrenar.prune.run.run_prune`): MODEL is a folder, ``.gguf`` file, Hub id or training
output (an adapter is folded into its base first). WANDA and SparseGPT calibrate layer by layer on
``--samples`` random windows of ``--seq-len`` tokens of ``--calibration`` drawn with ``--seed``;
``--eval-data`` scores the model before and after; ``--skip`` keeps matching linear layers dense.
"""

from __future__ import annotations

import click

from entrenar.prune.spec import DEFAULT_SAMPLES

__all__ = ["prune_command"]


@click.command("prune")
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, help="New folder for the pruned model.")
@click.option("--method", required=True, help="magnitude, wanda or sparsegpt.")
@click.option("--sparsity", type=float, help="Fraction of each layer's weights to prune, in [0, 1), e.g. 0.5.")
@click.option("--pattern", help="N:M sparsity instead: 2:4 or 4:8 (keep N of every M input weights).")
@click.option("--calibration", help="Calibration text or JSONL (wanda, sparsegpt): a file, folder or glob.")
@click.option("--samples", type=int, default=DEFAULT_SAMPLES, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=int, help="Tokens per window [default: the context length, at most 2048].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the window draw.")
@click.option("--eval-data", help="Text to measure perplexity on before and after pruning.")
@click.option("--skip", multiple=True, help="Keep linear layers matching this glob dense, e.g. '*.down_proj'.")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors (as entrenar --debug).")
def prune_command(
    model: str,
    out_dir: str,
    method: str,
    sparsity: float | None,
    pattern: str | None,
    calibration: str | None,
    samples: int,
    seq_len: int | None,
    seed: int,
    eval_data: str | None,
    skip: tuple[str, ...],
    debug: bool,
) -> None:
    """Prune MODEL once (magnitude, WANDA or SparseGPT) into a new Hugging Face model folder."""
    from entrenar.prune.run import run_prune
    from entrenar.prune.spec import make_spec

    spec = make_spec(method, sparsity=sparsity, pattern=pattern, skip=skip)
    run_prune(
        model,
        out_dir,
        spec,
        calibration=calibration,
        samples=samples,
        seq_len=seq_len,
        seed=seed,
        eval_data=eval_data,
        log=click.echo,
    )
