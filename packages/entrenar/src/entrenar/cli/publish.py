"""``entrenar publish`` (alias ``entrenar push``): upload a trained model to a Hugging Face Hub repo.

The token is never taken on the command line (shell history, process lists): it comes from
``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN`` or the file ``hf auth login`` writes, and the command prints
only where it came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from aprender.hub import describe_token_source
from entrenar.constants import PUBLISH_FORMATS
from entrenar.display import human_size

if TYPE_CHECKING:
    from entrenar.publish import PublishResult

__all__ = ["publish_command", "push_command"]


def _listing(result: PublishResult) -> None:
    width = max(len(f.path) for f in result.files)
    for staged in result.files:
        click.echo(f"  {staged.path:<{width}}  {staged.size:>14,} bytes  ({human_size(staged.size)})")
    click.echo(f"  {len(result.files)} files, {result.total_size:,} bytes ({human_size(result.total_size)})")


def _options(function: click.decorators.FC) -> click.decorators.FC:
    decorators = [
        click.argument("model_dir", default="./output", type=click.Path(file_okay=False, path_type=str)),
        click.option("--repo", "repo_id", required=True, help="Target repo id, e.g. me/my-model."),
        click.option("--private", is_flag=True, help="Create the repo as private."),
        click.option(
            "--merge-adapters/--no-merge-adapters",
            default=None,
            help="Adapters: merge into the base model (default) or publish the PEFT adapter alone.",
        ),
        click.option("--base-model", help="Base model folder or Hub id (default: the one the adapter names)."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(PUBLISH_FORMATS),
            default="safetensors",
            show_default=True,
            help="safetensors (Hugging Face layout) or gguf (one file for llama.cpp).",
        ),
        click.option(
            "--gguf-type",
            help="GGUF file type, or several comma-separated (q4_k_m,q8_0: one file each): f32, f16, bf16, q8_0, "
            "q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k "
            "[default: f16].",
        ),
        click.option("--no-model-card", is_flag=True, help="Do not write README.md and loss_curve.svg."),
        click.option("--dry-run", is_flag=True, help="List the files and sizes that would be uploaded; no network."),
        click.option("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _run(
    model_dir: str,
    repo_id: str,
    private: bool,
    merge_adapters: bool | None,
    base_model: str | None,
    fmt: str,
    gguf_type: str | None,
    no_model_card: bool,
    dry_run: bool,
    endpoint: str | None,
) -> None:
    """Publish MODEL_DIR (default ./output): a training output, PEFT adapter or model folder.

    Adapters are merged into their base model by default (QLoRA: into the 16/32-bit base, never in 4
    bits). Each step is printed (merge, export, repo, uploads), the repo's URL last. The token comes from
    HF_TOKEN, HUGGING_FACE_HUB_TOKEN or `hf auth login`.
    """
    from entrenar.publish import publish  # torch and the exporters load only when a command runs

    click.echo(f"Hub token: {describe_token_source()}{' (not used by a dry run)' if dry_run else ''}", err=True)
    result = publish(
        model_dir,
        repo_id,
        private=private,
        merge_adapters=merge_adapters,
        base_model=base_model,
        fmt=fmt,
        gguf_type=gguf_type,
        model_card=not no_model_card,
        dry_run=dry_run,
        endpoint=endpoint,
        report=click.echo,
    )
    if result.dry_run:
        click.echo(f"Dry run: nothing uploaded. {result.repo_id} would receive ({result.layout}):")
        _listing(result)


def _command(name: str, help_text: str) -> click.Command:
    def callback(**kwargs: Any) -> None:
        _run(**kwargs)

    return click.command(name, help=help_text)(_options(callback))


publish_command = _command("publish", _run.__doc__ or "")
push_command = _command("push", "Same as `entrenar publish`. " + (_run.__doc__ or ""))
