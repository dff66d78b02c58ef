"""End to end against the local Hub: publish, download fresh with plain huggingface_hub, load, compare.

Oracles: transformers (the merged repo's logits equal our merged model's), peft (the adapter repo's
logits equal our adapter model's), the gguf package's reader, the server's request log (a dry run makes
no request), and a byte search for the token in every file and log line.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
import yaml
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM

from aprender.errors import (
    HubAuthError,
    HubError,
    HubPermissionError,
    HubTokenMissingError,
    HubUnreachableError,
    InvalidRepoIdError,
)
from aprender.hub import Fault, upload_folder
from aprender.hub.api import Response
from aprender.hub.repo_id import RepoId
from entrenar.config import PublishSection
from entrenar.display import human_size
from entrenar.errors import PublishError
from entrenar.publish import StagedFile, preflight, publish, publish_output
from entrenar.publish.upload import upload_lines

publish_module = importlib.import_module("entrenar.publish.upload")


@pytest.fixture
def alice(local_hub: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The local Hub with alice's token in HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", local_hub.tokens["alice"])
    return local_hub


def _download(hub: Any, repo: str, tmp_path: Path) -> Path:
    """A fresh snapshot through plain huggingface_hub (own cache folder, explicit endpoint)."""
    return Path(
        snapshot_download(repo, endpoint=hub.url, token=hub.tokens["alice"], cache_dir=tmp_path / "fresh-cache")
    )


def _logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


def _front_matter(readme: Path) -> dict[str, Any]:
    head = readme.read_text(encoding="utf-8").split("---\n")[1]
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data


def test_merged_publish_loads_in_transformers_with_our_logits(alice: Any, lora_output: Any, tmp_path: Path) -> None:
    result = publish(lora_output.output, "alice/tiny-merged")
    assert result.url == f"{alice.url}/alice/tiny-merged"
    assert result.commit_url is not None and result.commit_url.startswith(f"{alice.url}/alice/tiny-merged/commit/")
    folder = _download(alice, "alice/tiny-merged", tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f.path for f in result.files]
    assert names == [
        "README.md",
        "config.json",
        "generation_config.json",
        "loss_curve.svg",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert all((folder / f.path).stat().st_size == f.size for f in result.files)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(model, lora_output.input_ids), lora_output.merged_logits, atol=1e-4, rtol=0)
    meta = _front_matter(folder / "README.md")
    assert meta == {
        "library_name": "transformers",
        "license": "apache-2.0",  # from the base folder's README.md
        "datasets": ["acme/chat-set"],
        "pipeline_tag": "text-generation",
        "tags": ["entrenar", "lora", "fine-tuned"],
    }  # no base_model: the run's base is a local folder


def test_adapter_publish_loads_in_peft_with_our_logits(alice: Any, lora_output: Any, tmp_path: Path) -> None:
    from peft import PeftModel

    upload_folder("alice/tiny-base", lora_output.base)
    result = publish(lora_output.output, "alice/tiny-adapter", merge_adapters=False, base_model="alice/tiny-base")
    assert result.layout == "adapter"
    folder = _download(alice, "alice/tiny-adapter", tmp_path)
    base = AutoModelForCausalLM.from_pretrained(lora_output.base, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, folder).eval()
    assert model.peft_config["default"].base_model_name_or_path == "alice/tiny-base"
    logits = _logits(model, lora_output.input_ids)
    torch.testing.assert_close(logits, lora_output.adapter_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, lora_output.merged_logits, atol=1e-4, rtol=0)
    meta = _front_matter(folder / "README.md")
    assert (meta["base_model"], meta["library_name"]) == ("alice/tiny-base", "peft")
    assert "license" not in meta  # alice/tiny-base is not in the HF cache: unknown, so left out


def test_gguf_publish_holds_a_readable_gguf(alice: Any, lora_output: Any, tmp_path: Path) -> None:
    result = publish(lora_output.output, "alice/tiny-gguf", fmt="gguf", gguf_type="q4_0")
    assert [f.path for f in result.files] == ["README.md", "loss_curve.svg", "tiny-gguf-Q4_0.gguf"]
    folder = _download(alice, "alice/tiny-gguf", tmp_path)
    reader = gguf.GGUFReader(folder / "tiny-gguf-Q4_0.gguf")
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "blk.1.ffn_down.weight", "output_norm.weight"}
    assert "gguf" in _front_matter(folder / "README.md")["tags"]
    assert "--hf-file tiny-gguf-Q4_0.gguf" in (folder / "README.md").read_text()


def test_several_gguf_types_publish_one_file_each_and_the_card_lists_them(
    alice: Any, lora_output: Any, tmp_path: Path
) -> None:
    result = publish(lora_output.output, "alice/tiny-ggufs", fmt="gguf", gguf_type="q5_k_m,q8_0")
    assert [f.path for f in result.files] == [
        "README.md",
        "loss_curve.svg",
        "tiny-ggufs-Q5_K_M.gguf",
        "tiny-ggufs-Q8_0.gguf",
    ]
    card = (_download(alice, "alice/tiny-ggufs", tmp_path) / "README.md").read_text()
    assert (
        "Files (pick one):" in card and "| `tiny-ggufs-Q5_K_M.gguf` |" in card and "| `tiny-ggufs-Q8_0.gguf` |" in card
    )
    assert "--hf-file tiny-ggufs-Q5_K_M.gguf" in card


def test_dry_run_lists_the_exact_upload_and_makes_no_request(
    alice: Any, lora_output: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    trap = Fault("error", path="", times=None)  # every request would fail; `seen` counts them
    alice.server.faults.add(trap)
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token either
    with caplog.at_level(logging.INFO, logger="aprender.hub.server"):
        dry = publish(lora_output.output, "alice/tiny-dry", dry_run=True)
        assert trap.seen == 0
        assert not [r for r in caplog.records if r.name == "aprender.hub.server"]
        assert (dry.dry_run, dry.url, dry.commit_url) == (True, None, None)
        alice.server.faults.clear()
        monkeypatch.setenv("HF_TOKEN", alice.tokens["alice"])
        real = publish(lora_output.output, "alice/tiny-dry")
        assert [r for r in caplog.records if r.name == "aprender.hub.server"]  # the log does see requests
    assert dry.files == real.files  # same names, same sizes
    assert dry.total_size == sum(f.size for f in real.files) > 560_000


def test_no_model_card_and_reuse_of_an_existing_repo(alice: Any, lora_output: Any) -> None:
    first = publish(lora_output.output, "alice/tiny-nocard", model_card=False)
    assert [f.path for f in first.files if f.path in ("README.md", "loss_curve.svg")] == []
    second = publish(lora_output.output, "alice/tiny-nocard", model_card=False)
    assert second.commit_url == first.commit_url  # nothing changed: the head commit is reused
    assert alice.server.store.exists(RepoId.parse("alice/tiny-nocard"))


def test_upload_lines_name_the_weights_and_large_files_and_count_the_rest() -> None:
    files = [
        StagedFile("README.md", 2_345),
        StagedFile("config.json", 700),
        StagedFile("model-00001-of-00002.safetensors", 4_990_000_000),
        StagedFile("model-00002-of-00002.safetensors", 999),  # weights: named whatever their size
        StagedFile("tokenizer.json", 11_418_266),  # 10 MB or more: named
        StagedFile("vocab.txt", 9_999_999),
    ]
    assert upload_lines(files) == [
        "Uploading model-00001-of-00002.safetensors (5.0 GB)...",
        "Uploading model-00002-of-00002.safetensors (999 B)...",
        "Uploading tokenizer.json (11.4 MB)...",
        "Uploading 3 small files (10.0 MB)...",  # 2,345 + 700 + 9,999,999 bytes
    ]
    assert upload_lines([StagedFile("x.gguf", 1), StagedFile("README.md", 1)])[1:] == [
        "Uploading 1 small file (1 B)..."
    ]
    assert upload_lines([StagedFile("x.gguf", 1)]) == ["Uploading x.gguf (1 B)..."]


def test_publish_reports_each_step(alice: Any, lora_output: Any) -> None:
    told: list[str] = []
    result = publish(lora_output.output, "alice/tiny-told", report=told.append)
    weights = next(f for f in result.files if f.path == "model.safetensors")
    assert told[:4] == [
        "Merging LoRA adapters with base model...",
        "Exporting as SafeTensors...",
        "Creating repo: alice/tiny-told",
        f"Uploading model.safetensors ({human_size(weights.size)})...",
    ]
    small = [f for f in result.files if f is not weights]
    assert told[4] == f"Uploading {len(small)} small files ({human_size(sum(f.size for f in small))})..."
    assert told[5:] == [f"Commit: {result.commit_url}", f"Published: {alice.url}/alice/tiny-told"]
    told.clear()
    publish(lora_output.output, "alice/tiny-told", report=told.append)
    assert told[2] == "Using existing repo: alice/tiny-told"


def test_private_publish_creates_a_private_repo(alice: Any, lora_output: Any) -> None:
    publish(lora_output.output, "alice/tiny-private", private=True, merge_adapters=False)
    assert alice.server.store.is_private(RepoId.parse("alice/tiny-private"))


def test_publish_output_follows_the_config_section(alice: Any, lora_output: Any, tmp_path: Path) -> None:
    section = PublishSection(repo="alice/tiny-run", format="gguf", gguf_type="q8_0", merge_adapters=True)
    result = publish_output(lora_output.output, section)
    assert [f.path for f in result.files] == ["README.md", "loss_curve.svg", "tiny-run-Q8_0.gguf"]
    section = PublishSection(repo="alice/tiny-run2", model_card=False, merge_adapters=False, endpoint=alice.url)
    result = publish_output(lora_output.output, section)
    assert result.layout == "adapter" and result.url == f"{alice.url}/alice/tiny-run2"


def test_endpoint_argument_overrides_hf_endpoint(alice: Any, lora_output: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    result = publish(lora_output.output, "alice/tiny-endpoint", endpoint=alice.url, merge_adapters=False)
    assert result.url == f"{alice.url}/alice/tiny-endpoint"


def test_gguf_type_needs_gguf_format(lora_output: Any) -> None:
    with pytest.raises(PublishError, match="--gguf-type q8_0 applies to --format gguf only"):
        publish(lora_output.output, "alice/x", gguf_type="q8_0", dry_run=True)


def test_local_checks_run_before_the_preflight_and_the_preflight_before_any_export(
    local_hub: Any, lora_output: Any, tmp_path: Path
) -> None:
    with pytest.raises(PublishError, match="does-not-exist: no such folder"):  # no token either: the folder comes first
        publish(tmp_path / "does-not-exist", "alice/x")
    with pytest.raises(PublishError, match="--format gguf needs merged weights"):
        publish(lora_output.output, "alice/x", fmt="gguf", merge_adapters=False)
    output = Path(shutil.copytree(lora_output.output, tmp_path / "output"))
    config = (output / "adapter_config.json").read_text().replace(str(lora_output.base), "/gone/base")
    (output / "adapter_config.json").write_text(config, encoding="utf-8")
    with pytest.raises(HubTokenMissingError):  # merging would fail on the missing base, but that comes later
        publish(output, "alice/x")


# ----------------------------------------------------------------------------------------------- token


def _everything_on_disk(*roots: Path) -> Iterator[tuple[Path, bytes]]:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                yield path, path.read_bytes()


def test_token_appears_in_no_file_log_line_or_card(
    alice: Any,
    lora_output: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = alice.tokens["alice"]
    with caplog.at_level(logging.DEBUG):
        for kwargs in ({}, {"merge_adapters": False}, {"fmt": "gguf"}):
            publish(lora_output.output, f"alice/leak-{len(kwargs)}{kwargs.get('fmt', '')}", **kwargs)
        preflight("alice/leak-check")
    folders = [_download(alice, f"alice/leak-{n}", tmp_path / str(n)) for n in ("0", "1", "1gguf")]
    captured = capsys.readouterr()
    texts = [r.getMessage() for r in caplog.records] + [captured.out, captured.err]
    assert caplog.records  # the check saw the log lines
    assert not [text for text in texts if token in text]
    hf_home = Path(publish_module.os.environ["HF_HOME"])
    files = list(_everything_on_disk(alice.root, hf_home, lora_output.output, tmp_path, *folders))
    assert len(files) > 20
    leaks = [path for path, data in files if token.encode() in data]
    assert leaks == []


# ----------------------------------------------------------------------------------------------- preflight


def test_preflight_accepts_the_users_namespace(alice: Any) -> None:
    account = preflight("alice/new-model")
    assert (account.user, account.namespace, account.endpoint) == ("alice", "alice", alice.url)
    assert account.token_source == "the HF_TOKEN environment variable"


def test_preflight_without_token_names_the_variables(local_hub: Any) -> None:
    with pytest.raises(HubTokenMissingError, match="publishing to alice/m needs a Hugging Face token") as exc:
        preflight("alice/m")
    assert "HF_TOKEN, HUGGING_FACE_HUB_TOKEN" in str(exc.value)


def test_preflight_refuses_a_foreign_namespace(alice: Any) -> None:
    with pytest.raises(HubPermissionError, match=r"belongs to alice, who is not a member of 'bob'") as exc:
        preflight("bob/model")
    assert "publish to 'alice/model'" in str(exc.value)


def test_preflight_explicit_token_wins(alice: Any) -> None:
    assert preflight("bob/model", token=alice.tokens["bob"]).user == "bob"


def test_preflight_rejected_token(local_hub: Any) -> None:
    with pytest.raises(HubAuthError, match="rejected the token from the token argument"):
        preflight("alice/m", token="hf_not_a_real_token")


def test_preflight_unreachable_endpoint(local_hub: Any, backoff_waits: list[float]) -> None:
    expected = (
        r"on http://127.0.0.1:9: cannot reach the server .* after 4 attempts; check the endpoint and the network$"
    )
    with pytest.raises(HubUnreachableError, match=expected):
        preflight("alice/m", endpoint="http://127.0.0.1:9", token=local_hub.tokens["alice"])


def test_preflight_server_error(alice: Any, backoff_waits: list[float]) -> None:
    fault = alice.server.faults.add(Fault("error", path="/api/whoami-v2", times=None))
    with pytest.raises(HubUnreachableError, match=r"kept failing \(500 on GET /api/whoami-v2: .*\) after 4 attempts"):
        preflight("alice/m")
    assert fault.fired == 4 and backoff_waits == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("kind", ["error", "cut"])
def test_a_blip_on_the_token_check_does_not_fail_the_publish(
    alice: Any, lora_output: Any, kind: str, backoff_waits: list[float]
) -> None:
    fault = alice.server.faults.add(Fault(kind, path="^/api/whoami-v2$"))  # type: ignore[arg-type]
    result = publish(lora_output.output, f"alice/blip-{kind}", merge_adapters=False, model_card=False)
    assert result.commit_url is not None and alice.server.store.exists(RepoId.parse(f"alice/blip-{kind}"))
    assert fault.fired == 1 and backoff_waits == [1.0]


def test_a_blip_on_the_private_repo_check_is_retried(alice: Any, backoff_waits: list[float]) -> None:
    fault = alice.server.faults.add(Fault("cut", path="^/api/models/alice/m$"))
    assert preflight("alice/m", private=True).user == "alice"
    assert fault.fired == 1 and backoff_waits == [1.0]


def test_preflight_invalid_repo_id(alice: Any) -> None:
    with pytest.raises(InvalidRepoIdError):
        preflight("alice/bad--name")


def _patch_whoami(hub: Any, **extra: Any) -> None:
    """Make the server's whoami answer carry `extra` (orgs, token role): the local Hub has no organisations."""
    routes = hub.server.routes
    index = next(i for i, (method, pattern, _) in enumerate(routes) if pattern.pattern == r"/api/whoami-v2")
    method, pattern, handler = routes[index]

    def whoami(req: Any, **params: Any) -> Response:
        response = handler(req, **params)
        return Response(response.status, response.data | extra)

    routes[index] = (method, pattern, whoami)


def test_preflight_accepts_an_org_with_write_role(alice: Any) -> None:
    _patch_whoami(alice, orgs=[{"name": "acme", "roleInOrg": "write"}, {"name": "lab", "roleInOrg": "admin"}])
    assert preflight("acme/model").namespace == "acme"
    assert preflight("lab/model").namespace == "lab"


def test_preflight_refuses_an_org_with_read_role(alice: Any) -> None:
    _patch_whoami(alice, orgs=[{"name": "acme", "roleInOrg": "read"}])
    with pytest.raises(HubPermissionError, match="alice, who has only read access to 'acme'"):
        preflight("acme/model")


def test_preflight_refuses_a_read_only_token(alice: Any) -> None:
    _patch_whoami(alice, auth={"type": "access_token", "accessToken": {"role": "read"}})
    with pytest.raises(HubPermissionError, match="is a read-only token of alice"):
        preflight("alice/model")


def test_preflight_private_refuses_an_existing_public_repo(alice: Any, lora_output: Any) -> None:
    upload_folder("alice/public", lora_output.base)
    upload_folder("alice/secret", lora_output.base, private=True)
    with pytest.raises(HubError, match=r"alice/public on .* exists and is public"):
        preflight("alice/public", private=True)
    assert preflight("alice/public").user == "alice"
    assert preflight("alice/secret", private=True).user == "alice"
    assert preflight("alice/not-yet", private=True).user == "alice"


def _requests(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """The (method, path) of every request the local Hub served, in order, from its log."""
    return [(str(r.args[0]), str(r.args[1])) for r in caplog.records if r.name == "aprender.hub.server" and r.args]  # type: ignore[index]


@pytest.mark.parametrize("kind", ["error", "cut"])
def test_one_transient_failure_of_any_hub_call_is_retried_and_the_publish_succeeds(
    alice: Any, lora_output: Any, kind: str, backoff_waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """Every distinct request a publish makes (preflight, repo creation, LFS, commit, ...) fails once in turn."""
    with caplog.at_level(logging.INFO, logger="aprender.hub.server"):
        publish(lora_output.output, "alice/clean")
    calls: dict[tuple[str, str], None] = {}
    for method, path in _requests(caplog):  # one pattern per kind of call: repo name and content hashes vary
        pattern = path.split("?")[0].replace("alice/clean", "alice/blip-[0-9]+")
        calls[method, "^" + re.sub(r"[0-9a-f]{40,64}", "[0-9a-f]+", pattern) + "$"] = None
    assert len(calls) >= 6 and any("/commit/" in p for _, p in calls) and any("whoami" in p for _, p in calls)
    for index, (method, pattern) in enumerate(calls):
        fault = alice.server.faults.add(Fault(kind, path=pattern, method=method))  # type: ignore[arg-type]
        backoff_waits.clear()
        result = publish(lora_output.output, f"alice/blip-{index}")
        assert fault.fired == 1, (method, pattern)
        assert backoff_waits == [1.0], (method, pattern)  # retried once, after the first backoff
        assert result.commit_url is not None and alice.server.store.exists(RepoId.parse(f"alice/blip-{index}"))
        alice.server.faults.clear()
