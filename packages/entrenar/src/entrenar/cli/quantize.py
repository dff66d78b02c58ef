"""``entrenar quantize MODEL --gguf TYPE -o FILE.gguf [--calibration DATA] [--eval-data TEXT]``.

Writes MODEL as one GGUF file of a llama-quantize file type (`entrenar.quant.run.run_quantize`): MODEL is a
folder, ``.gguf`` file, Hub id, or training or merge output (an adapter is folded into its base first). With
``--calibration`` an importance matrix from ``--samples`` windows of ``--seq-len`` tokens (drawn with
``--seed``) weighs the quantization error, as ``llama-quantize --imatrix`` does; ``--eval-data`` compares the
quantized model with the original (perplexities, KL of next-token distributions, same top token).
"""

from __future__ import annotations

import click

from aprender.format.gguf_mixtures import FILE_TYPES
from entrenar.constants import QUANTIZE_SAMPLES, QUANTIZE_SEQ_LEN

__all__ = ["quantize_command"]


@click.command("quantize")
@click.argument("model")
@click.option("--gguf", "gguf_type", required=True, help=f"GGUF file type: {', '.join(FILE_TYPES)}.")
@click.option("-o", "--output", "out", required=True, help="The .gguf file to write.")
@click.option("--calibration", help="Text or JSONL for the importance matrix: a file, folder or glob.")
@click.option("--samples", type=int, default=QUANTIZE_SAMPLES, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=int, default=QUANTIZE_SEQ_LEN, show_default=True, help="Tokens per window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the window draw.")
@click.option("--eval-data", help="Text to compare the quantized model with the original on.")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors (as entrenar --debug).")
def quantize_command(
    model: str,
    gguf_type: str,
    out: str,
    calibration: str | None,
    samples: int,
    seq_len: int,
    seed: int,
    eval_data: str | None,
    debug: bool,
) -> None:
    """Quantize MODEL into a GGUF file (llama-quantize's file types, our own quantizers)."""
    from entrenar.quant.run import run_quantize

    run_quantize(
        model,
        out,
        gguf_type,
        calibration=calibration,
        samples=samples,
        seq_len=seq_len,
        seed=seed,
        eval_data=eval_data,
        log=click.echo,
    )
