"""Publish a training output to a Hugging Face Hub repo: check access, export, write the card, upload.

`publish` runs the whole of ``entrenar publish``:

1. the local checks: the repo id, the options, what the folder holds (`entrenar.publish.detect.detect_model_folder`)
   and whether the options fit it, so a typo is reported as such even with the Hub out of reach;
2. (unless a dry run) `preflight`: token, ``whoami``, write access, so a wrong token fails in a second,
   not after a long merge; then `entrenar.publish.export.export_model` into a temporary staging folder
   (merging adapters, writing GGUF);
3. the model card (`entrenar.publish.card`): ``README.md`` and ``loss_curve.svg``;
4. a dry run stops here and reports every staged file and its size; otherwise
   `aprender.hub.upload_folder` creates (or reuses) the repo and uploads everything in one commit.

Each step is told to a `entrenar.display.Report` as it starts (what ``entrenar publish`` prints):
``Merging LoRA adapters with base model...``, ``Exporting as SafeTensors...`` (`export_model`),
``Creating repo: ns/name`` or ``Using existing repo: ns/name``, ``Uploading <file> (<size>)...`` for each
large file (`upload_lines`), ``Published: <url>``.

`preflight` is also what a training run with a ``publish:`` section calls before its first step, and
`publish_output` what it calls after the last one.

Write access (https://huggingface.co/docs/hub/api#get-apiwhoami-v2): the repo's namespace must be the
token owner's user name or an organisation the user belongs to with a role other than ``read``, and
the token itself must not be a ``read`` token (fine-grained tokens are left to the server to judge).
The token is never logged, printed or written: messages name its source (`describe_token_source`).
The Hub requests go through `aprender.hub`, which retries transient failures (a 5xx, a dropped
connection) of the preflight as it does those of the upload.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aprender.errors import HubError, HubPermissionError, HubTokenMissingError
from aprender.hub import (
    account_info,
    describe_token_source,
    repo_is_private,
    resolve_token,
    upload_folder,
    validate_repo_id,
)
from aprender.hub.repo_id import RepoId
from aprender.hub.settings import HubSettings
from aprender.hub.token import HubToken
from aprender.reference import looks_like_repo_id
from entrenar import __version__
from entrenar.config.schema import PublishSection
from entrenar.display import Report, human_size
from entrenar.errors import PublishError
from entrenar.publish.card import CardContext, base_license, hub_dataset_ids, write_model_card
from entrenar.publish.curve import read_loss_points
from entrenar.publish.detect import ModelFolder, detect_model_folder
from entrenar.publish.export import ExportedModel, export_model, gguf_file_types, plan_layout
from entrenar.quant.qat_export import trained_gguf_type

__all__ = [
    "LARGE_FILE_BYTES",
    "WEIGHT_SUFFIXES",
    "Account",
    "PublishResult",
    "StagedFile",
    "preflight",
    "publish",
    "publish_output",
    "upload_lines",
]

_LOG = logging.getLogger(__name__)
LARGE_FILE_BYTES = 10_000_000  # from 10 MB the Hub keeps any file in LFS
WEIGHT_SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class Account:
    """Who the token belongs to, as `preflight` found it.

    Attributes:
        user: The user name.
        namespace: The repo's namespace (the user or one of their organisations).
        endpoint: The Hub URL checked.
        token_source: Where the token came from (never the token itself).
    """

    user: str
    namespace: str
    endpoint: str
    token_source: str


@dataclass(frozen=True)
class StagedFile:
    """One file of the upload.

    Attributes:
        path: Repo path (relative, ``/``-separated).
        size: Size in bytes.
    """

    path: str
    size: int


@dataclass(frozen=True)
class PublishResult:
    """What `publish` did.

    Attributes:
        repo_id: The repo.
        layout: ``"model"``, ``"adapter"`` or ``"gguf"``.
        files: Every uploaded (or, for a dry run, staged) file with its size, sorted by path.
        dry_run: Nothing was uploaded.
        url: The repo's URL (None for a dry run).
        commit_url: The commit's URL (None for a dry run).
    """

    repo_id: str
    layout: str
    files: list[StagedFile]
    dry_run: bool
    url: str | None = None
    commit_url: str | None = None

    @property
    def total_size(self) -> int:
        """Bytes in all files."""
        return sum(f.size for f in self.files)


# ----------------------------------------------------------------------------------------------- preflight


def preflight(repo_id: str, private: bool = False, endpoint: str | None = None, token: str | None = None) -> Account:
    """Check, before any long work, that publishing to `repo_id` can succeed.

    Validates the repo id, resolves the token, asks the Hub who the token belongs to (one
    ``whoami`` request) and checks write access to the repo's namespace. With `private`, an existing
    public repo is refused too (the upload would be). Training calls this before its first step.

    Args:
        repo_id: ``namespace/name``.
        private: The repo is to be private.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.
        token: Explicit token; default ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, then ``$HF_HOME/token``.

    Returns:
        The `Account` (user, namespace, endpoint, token source).

    Raises:
        InvalidRepoIdError: Malformed repo id.
        HubTokenMissingError: No token anywhere (the message names the variables to set).
        HubAuthError: The Hub rejects the token.
        HubPermissionError: A read-only token, or a namespace that is neither the user's nor one of
            their organisations with write access.
        HubUnreachableError: The endpoint cannot be reached, or keeps failing, through every attempt
            (transient failures are retried as for the upload).
        HubError: With `private`, the repo exists and is public; or the Hub refused a request.
    """
    repo = RepoId.parse(repo_id)
    settings = HubSettings.from_env(endpoint)
    hub_token = resolve_token(token)
    if hub_token is None:
        raise HubTokenMissingError(f"publishing to {repo} needs a Hugging Face token: {describe_token_source(token)}")
    info = account_info(token=token, endpoint=endpoint)
    user = str(info.get("name", ""))
    _check_write_access(repo, user, info, settings, hub_token)
    if private and repo_is_private(str(repo), token=token, endpoint=endpoint) is False:
        raise HubError(
            f"repo {repo} on {settings.endpoint} exists and is public, so a private publish would be refused; "
            "make it private on the Hub first or publish to a new repo"
        )
    return Account(user, repo.namespace, settings.endpoint, hub_token.source)


def _check_write_access(repo: RepoId, user: str, info: dict[str, Any], settings: HubSettings, token: HubToken) -> None:
    access = info.get("auth", {}).get("accessToken", {}) if isinstance(info.get("auth"), dict) else {}
    if isinstance(access, dict) and access.get("role") == "read":
        raise HubPermissionError(
            f"the token from {token.source} is a read-only token of {user} on {settings.endpoint}; "
            "create a token with write access and set HF_TOKEN to it"
        )
    if repo.namespace == user:
        return
    orgs = {org.get("name"): org.get("roleInOrg") for org in info.get("orgs") or [] if isinstance(org, dict)}
    if repo.namespace in orgs and orgs[repo.namespace] != "read":
        return
    detail = "has only read access to" if repo.namespace in orgs else "is not a member of"
    raise HubPermissionError(
        f"cannot publish to {repo} on {settings.endpoint}: the token from {token.source} belongs to {user}, who "
        f"{detail} {repo.namespace!r}; publish to '{user}/{repo.name}' or use a token of {repo.namespace}"
    )


# ----------------------------------------------------------------------------------------------- publish


def upload_lines(files: list[StagedFile]) -> list[str]:
    """``Uploading <file> (<size>)...`` for each weights file or file of `LARGE_FILE_BYTES` or more, in order,
    then one line for the rest (``Uploading 6 small files (52.1 kB)...``)."""
    large = [f for f in files if f.path.endswith(WEIGHT_SUFFIXES) or f.size >= LARGE_FILE_BYTES]
    lines = [f"Uploading {f.path} ({human_size(f.size)})..." for f in large]
    small = [f for f in files if f not in large]
    if small:
        noun = "file" if len(small) == 1 else "files"
        lines.append(f"Uploading {len(small)} small {noun} ({human_size(sum(f.size for f in small))})...")
    return lines


def publish(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    merge_adapters: bool | None = None,
    base_model: str | None = None,
    fmt: str = "safetensors",
    gguf_type: str | None = None,
    model_card: bool = True,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    max_shard_size: int | str = "5GB",
    report: Report = _LOG.info,
) -> PublishResult:
    """Publish a training output folder (or any adapter/model folder) to a Hub repo.

    Args:
        model_dir: The folder (see `entrenar.publish.detect`).
        repo_id: ``namespace/name``.
        private: Create the repo private (an existing public repo is refused).
        merge_adapters: Adapters: merge into the base (None: yes) or publish the adapter alone (False).
        base_model: Base model folder or Hub id: what to merge into, and the card's ``base_model``
            (default: the adapter's ``base_model_name_or_path`` / the record's ``base_model``).
        fmt: ``"safetensors"`` or ``"gguf"``.
        gguf_type: A llama-quantize file type or a comma-separated list (``"q4_k_m,q8_0"``: one file each);
            None means ``"f16"``; only with ``fmt="gguf"``.
        model_card: Write ``README.md`` (and ``loss_curve.svg``).
        dry_run: Stage everything and report the files, without any network request.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.
        token: Explicit token; default from the environment (see `preflight`).
        max_shard_size: Largest safetensors shard of a merged model.
        report: Told each step as it starts (module docstring; default: this module's logger, at INFO).

    Returns:
        The `PublishResult`.

    Raises:
        PublishError: The folder is not publishable or the options do not fit it (checked before any
            network request).
        InvalidRepoIdError, HubError: See `preflight` and `aprender.hub.upload_folder`.
        LoraError, ConversionError, TokenizerError: Merging or GGUF export failed.
    """
    repo = validate_repo_id(repo_id)
    if gguf_type is not None and fmt != "gguf":
        raise PublishError(f"--gguf-type {gguf_type} applies to --format gguf only; drop it or add --format gguf")
    model = detect_model_folder(model_dir)
    plan_layout(model, merge_adapters, fmt)
    if fmt == "gguf":
        gguf_type = gguf_type or trained_gguf_type(model.record) or "f16"  # a QAT model: the type it trained for
        gguf_file_types(gguf_type)  # checked before any request
    if not dry_run:
        account = preflight(repo, private, endpoint, token)
        _LOG.info("publishing to %s as %s (token from %s)", repo, account.user, account.token_source)
    with tempfile.TemporaryDirectory(prefix="entrenar-publish-") as tmp:
        staging = Path(tmp) / "upload"
        exported = export_model(
            model,
            staging,
            name=repo.split("/")[1],
            merge_adapters=merge_adapters,
            base_model=base_model,
            fmt=fmt,
            gguf_type=gguf_type or "f16",  # set above for gguf; unused otherwise
            offline=dry_run,
            max_shard_size=max_shard_size,
            report=report,
        )
        if model_card:
            _write_card(model, exported, repo, base_model)
        files = [StagedFile(p.relative_to(staging).as_posix(), p.stat().st_size) for p in _files(staging)]
        if dry_run:
            return PublishResult(repo, exported.layout, files, dry_run=True)
        exists = repo_is_private(repo, token=token, endpoint=endpoint) is not None
        report(f"Using existing repo: {repo}" if exists else f"Creating repo: {repo}")
        for line in upload_lines(files):
            report(line)
        message = f"Upload {exported.layout} with entrenar {__version__}"
        commit_url = upload_folder(
            repo, staging, private=private, commit_message=message, token=token, endpoint=endpoint
        )
    url = f"{HubSettings.from_env(endpoint).endpoint}/{repo}"
    report(f"Commit: {commit_url}")
    report(f"Published: {url}")
    return PublishResult(repo, exported.layout, files, dry_run=False, url=url, commit_url=commit_url)


def _files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())


def _with_export_facts(record: dict[str, Any], exported: ExportedModel) -> dict[str, Any]:
    """The record with what re-masking the merged weights changed under ``prune.remask`` and the checks of a pruned
    model's zeros under ``sparsity_checks`` (for the card)."""
    if exported.remask is not None:
        record = {**record, "prune": {**record["prune"], "remask": exported.remask}}
    if exported.sparsity:
        record = {**record, "sparsity_checks": [*record.get("sparsity_checks", []), *exported.sparsity]}
    return record


def _write_card(model: ModelFolder, exported: ExportedModel, repo: str, base_model: str | None) -> None:
    base_id = next((ref for ref in (base_model, model.base_model) if ref and looks_like_repo_id(ref)), None)
    if base_id is None and (base_model or model.base_model):
        _LOG.warning(
            "the base model %s is not a Hub repo id, so the card names no base_model", base_model or model.base_model
        )
    folder = exported.folder
    tokenizer_config = folder / "tokenizer_config.json"
    chat = (folder / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and '"chat_template"' in tokenizer_config.read_text(encoding="utf-8")
    )
    ctx = CardContext(
        repo_id=repo,
        layout=exported.layout,
        techniques=model.techniques,
        base_model=base_id,
        license=base_license(exported.base_dir),
        datasets=hub_dataset_ids(model.record),
        record=_with_export_facts(model.record, exported),
        gguf_file=exported.gguf_file,
        gguf_files=tuple((name, (folder / name).stat().st_size) for name in exported.gguf_files),
        chat=chat,
    )
    points = read_loss_points(model.metrics_path) if model.metrics_path is not None else None
    write_model_card(folder, ctx, points)


def publish_output(
    output_dir: str | os.PathLike[str], publish_section: PublishSection, report: Report = _LOG.info
) -> PublishResult:
    """Publish a finished training run as its config's ``publish:`` section says (after `preflight`).

    Args:
        output_dir: The run's output folder.
        publish_section: The resolved ``publish:`` section (repo, private, model_card, merge_adapters,
            format, gguf_type, endpoint).
        report: Told each step (see `publish`).

    Returns:
        The `PublishResult` (``url`` is the repo's URL).

    Raises:
        See `publish`.
    """
    section = publish_section
    return publish(
        output_dir,
        section.repo,
        private=section.private,
        merge_adapters=section.merge_adapters,
        fmt=section.format,
        gguf_type=section.gguf_type if section.format == "gguf" else None,
        model_card=section.model_card,
        endpoint=section.endpoint,
        report=report,
    )
