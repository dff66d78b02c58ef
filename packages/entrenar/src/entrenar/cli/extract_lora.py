"""``entrenar extract-lora --model FINETUNED --base BASE (--rank R | --energy E) [-o OUT] [--allow-lossy]``.

Writes the PEFT adapter that turns BASE into FINETUNED: a truncated SVD of each changed linear layer
(`entrenar.lora.extract`). Both models are folders, ``.gguf`` files or Hub repo ids (`aprender.reference`).
Changes LoRA cannot express (norms, biases, embeddings) are refused unless ``--allow-lossy`` drops them.
"""

from __future__ import annotations

import click

__all__ = ["extract_lora_command"]


@click.command("extract-lora")
@click.option("--model", "model_ref", required=True, help="The fine-tuned model: a folder, a .gguf file or a Hub id.")
@click.option("--base", "base_ref", required=True, help="The base model it was fine-tuned from (same kinds).")
@click.option("--rank", type=int, help="Rank of every layer (capped at the layer's smaller side).")
@click.option("--energy", type=float, help="Per layer, the fraction of squared singular values to keep, e.g. 0.99.")
@click.option("-o", "--output", "out_dir", default="./output", show_default=True, help="New adapter folder.")
@click.option("--allow-lossy", is_flag=True, help="Drop changes LoRA cannot express (norms, biases, embeddings).")
@click.option("--device", default="cpu", show_default=True, help="Where the SVDs run, e.g. cpu or cuda.")
def extract_lora_command(
    model_ref: str,
    base_ref: str,
    rank: int | None,
    energy: float | None,
    out_dir: str,
    allow_lossy: bool,
    device: str,
) -> None:
    """Extract a LoRA adapter (PEFT format) from a fine-tuned model and its base."""
    from entrenar.lora.extract import extract_lora

    result = extract_lora(
        model_ref, base_ref, out_dir, rank=rank, energy=energy, allow_lossy=allow_lossy, device=device
    )
    ranks = sorted({layer.rank for layer in result.layers})
    worst = max(result.layers, key=lambda layer: layer.relative_error)
    shown = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
    click.echo(
        f"extracted {len(result.layers)} layers ({shown}); largest relative error {worst.relative_error:.3g} "
        f"({worst.path})"
    )
    if result.unchanged:
        click.echo(f"{len(result.unchanged)} linear layers are unchanged and get no adapter")
    if result.dropped:
        lossy = max(result.dropped, key=lambda change: change.relative_change)
        click.echo(
            f"dropped {len(result.dropped)} changes LoRA cannot express (largest relative change "
            f"{lossy.relative_change:.3g} in {lossy.name})",
            err=True,
        )
    click.echo(f"wrote {result.out_dir}: {', '.join(path.name for path in result.files)}")
