"""Publish fine-tuned models to the Hugging Face Hub (``entrenar publish`` / ``entrenar push``).

For the training loop (a config with a ``publish:`` section), two calls:

- ``preflight(repo_id: str, private: bool = False, endpoint: str | None = None, token: str | None = None)
  -> Account``: before the first step. Validates the repo id, resolves the token (explicit, ``HF_TOKEN``,
  ``HUGGING_FACE_HUB_TOKEN``, ``$HF_HOME/token``), calls ``whoami`` (transient failures retried as for
  the upload) and checks write access to the namespace; raises `aprender.errors.HubError` subclasses
  (or `InvalidRepoIdError`) with a one-line message.
- ``publish_output(output_dir: str | PathLike, publish_section: PublishSection) -> PublishResult``: after
  training wrote the output folder; ``result.url`` is the repo's URL to print.

The pieces: `detect_model_folder` (what a folder holds), `export_model` (merge adapters, HF safetensors
or GGUF into a staging folder), `write_model_card` (README.md + loss_curve.svg) and `publish` (all of it,
plus the upload in one commit, or a dry run that lists files and sizes without any request).

Example:
    >>> account = preflight("me/qwen-finetuned")  # doctest: +SKIP
    >>> result = publish("output", "me/qwen-finetuned", fmt="gguf", gguf_type="q8_0")  # doctest: +SKIP
    >>> result.url  # doctest: +SKIP
    'https://huggingface.co/me/qwen-finetuned'
"""

from entrenar.publish.card import CardContext, write_model_card
from entrenar.publish.curve import LossPoints, loss_curve_svg, read_loss_points
from entrenar.publish.detect import ModelFolder, detect_model_folder
from entrenar.publish.export import ExportedModel, export_model
from entrenar.publish.upload import Account, PublishResult, StagedFile, preflight, publish, publish_output

__all__ = [
    "Account",
    "CardContext",
    "ExportedModel",
    "LossPoints",
    "ModelFolder",
    "PublishResult",
    "StagedFile",
    "detect_model_folder",
    "export_model",
    "loss_curve_svg",
    "preflight",
    "publish",
    "publish_output",
    "read_loss_points",
    "write_model_card",
]
