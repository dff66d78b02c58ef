"""``entrenar generate``: continue a prompt (or answer a chat message) with a model, streaming the text.

The model is a local folder in the Hugging Face layout, a ``.gguf`` file (converted once into a cached
folder) or a Hub repo id (downloaded with its tokenizer into the standard HF cache), classified as every
entry point does (`aprender.reference`). Text goes to stdout as tokens arrive, decoded incrementally so that a
character split across tokens is printed whole. ``--temperature 0`` (the default) decodes greedily;
above 0 it samples, optionally with ``--top-k``, ``--top-p`` and a ``--seed``. An empty PROMPT is refused
(an unset shell variable, most likely), with or without ``--chat``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from entrenar.constants import DTYPES

if TYPE_CHECKING:
    from aprender.text import Tokenizer

__all__ = ["generate_command"]


@click.command("generate")
@click.argument("prompt")
@click.option("--model", "model_ref", required=True, help="A model folder, a .gguf file or a Hugging Face repo id.")
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user message with the model's chat template.")
@click.option("--system", default=None, help="System message (with --chat).")
@click.option("--max-new-tokens", default=256, show_default=True, type=int, help="Most tokens to generate.")
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 decodes greedily; above 0 samples.")
@click.option("--top-k", default=0, show_default=True, type=int, help="Sample among the k likeliest tokens (0: all).")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="Sample within this probability mass.")
@click.option("--repetition-penalty", default=1.0, show_default=True, type=float, help="Above 1 discourages repeats.")
@click.option("--seed", default=None, type=int, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop after this text appears (repeatable).")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(DTYPES), help="Weight dtype.")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda.")
def generate_command(
    prompt: str,
    model_ref: str,
    chat: bool,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    seed: int | None,
    stop: tuple[str, ...],
    dtype: str,
    device: str,
) -> None:
    """Generate text from PROMPT with a model, printing it as it is produced."""
    import torch

    from aprender.text import Tokenizer
    from entrenar.generation import IncrementalDetokenizer, default_eos_token_ids, generate
    from entrenar.models import from_pretrained

    _check_flags(prompt, chat, system, temperature, top_k, top_p, seed)
    folder = _model_folder(model_ref)
    tokenizer = Tokenizer.from_dir(folder)
    prompt_ids = _prompt_ids(tokenizer, prompt, chat, system, folder)
    model = from_pretrained(folder, dtype=dtype, device=_device(device))
    sampling = temperature > 0
    generator = None if seed is None else torch.Generator(device=model.lm_head_weight.device).manual_seed(seed)
    stream = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)

    def show(_row: int, tokens: list[int]) -> None:
        click.echo(stream.push(tokens), nl=False)

    generate(
        model,
        [prompt_ids],
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else 1.0,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        eos_token_ids=default_eos_token_ids(model, tokenizer),
        stop_strings=list(stop) or None,
        tokenizer=tokenizer,
        generator=generator,
        streamer=show,
    )
    click.echo(stream.flush())


def _check_flags(
    prompt: str, chat: bool, system: str | None, temperature: float, top_k: int, top_p: float, seed: int | None
) -> None:
    """Refuse an empty prompt and option combinations that would silently do nothing."""
    from entrenar.errors import GenerationError

    if prompt == "":
        raise GenerationError(
            "PROMPT is empty; give the text to continue, e.g. entrenar generate 'Once upon a time' --model MODEL"
        )
    if system is not None and not chat:
        raise GenerationError("--system applies only with --chat; add --chat or drop --system")
    if not temperature >= 0:
        raise GenerationError(f"--temperature {temperature} must be >= 0 (0 decodes greedily)")
    unused = [
        flag
        for flag, used in (("--top-k", top_k != 0), ("--top-p", top_p != 1.0), ("--seed", seed is not None))
        if used
    ]
    if temperature == 0 and unused:
        verb = "apply" if len(unused) > 1 else "applies"
        raise GenerationError(f"{', '.join(unused)} only {verb} when sampling; add --temperature above 0 (e.g. 0.7)")


def _model_folder(model_ref: str) -> Path:
    """The local folder of `model_ref`: a Hub repo id is downloaded (config, weights, tokenizer), a .gguf converted."""
    from aprender.errors import ModelReferenceError
    from aprender.reference import classify_model_reference, resolve_model_folder
    from entrenar.errors import GenerationError

    try:
        reference = classify_model_reference(model_ref)
    except ModelReferenceError as exc:
        raise GenerationError(f"--model {exc}") from exc
    return resolve_model_folder(reference)


def _prompt_ids(tokenizer: Tokenizer, prompt: str, chat: bool, system: str | None, folder: Path) -> list[int]:
    """Token ids of the prompt: plain text (with the tokenizer's BOS), or a chat turn opening the reply."""
    from aprender.text import encode_chat
    from entrenar.errors import GenerationError

    if not chat:
        ids = tokenizer.encode(prompt)
    elif tokenizer.chat_template is None:
        raise GenerationError(f"{folder}: the tokenizer has no chat template; drop --chat to continue plain text")
    else:
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        ids = encode_chat(tokenizer, messages, add_generation_prompt=True).ids
    if not ids:
        raise GenerationError("the prompt encodes to no tokens; give some text")
    return ids


def _device(device: str) -> str:
    """Refuse a CUDA device on a machine without one before any weight is loaded."""
    import torch

    from entrenar.errors import GenerationError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    return device
