"""The client against the local Hub with the real huggingface_hub: round trips, access rules, offline mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import LocalEntryNotFoundError

from aprender.errors import (
    FormatError,
    HubAuthError,
    HubError,
    HubNotFoundError,
    HubOfflineError,
    HubPermissionError,
    HubTokenMissingError,
    HubUnreachableError,
    InvalidArgumentError,
    InvalidRepoIdError,
)
from aprender.hub import HubServer, HubSettings, client, download, fetch_config, upload_folder, whoami
from aprender.hub.repo_id import RepoId
from fixtures.hub import LocalHub

BIG = 10 * 1024 * 1024 + 4321  # over the 10 MiB regular-file limit: must take the LFS path


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("payload")
    (folder / "config.json").write_text(json.dumps({"model_type": "test", "hidden_size": 8}))
    (folder / "weights.bin").write_bytes(os.urandom(BIG))
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("hello\n")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    cache = tmp_path / name
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_round_trip_public_and_private(
    local_hub: LocalHub, payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = local_hub.tokens["alice"]
    store = local_hub.server.store
    for name, private in (("pub", False), ("priv", True)):
        repo = RepoId("alice", name)
        url = upload_folder(str(repo), payload, private=private, token=alice, commit_message="first")
        head = store.branches(repo)["main"]
        assert url == f"{local_hub.url}/alice/{name}/commit/{head}" and store.is_private(repo) is private
        entries = store.resolve(repo, "main").files
        assert (
            entries["weights.bin"].lfs
            and not entries["config.json"].lfs
            and store.has_lfs_object(repo, entries["weights.bin"].sha256, BIG)
        )
        listed = HfApi(endpoint=local_hub.url, token=alice).list_repo_files(str(repo))
        assert sorted(listed) == ["config.json", "sub/notes.txt", "weights.bin"]
        cache = _fresh_cache(monkeypatch, tmp_path, f"cache-{name}")
        path = download(str(repo), token=alice)
        assert path == cache / f"models--alice--{name}" / "snapshots" / head
        assert _files(path) == _files(payload)  # byte-identical
        commits_before = len(list((local_hub.root / "repos/alice" / name / "commits").iterdir()))
        assert upload_folder(str(repo), payload, private=private, token=alice) == url  # nothing changed: no commit
        assert store.branches(repo)["main"] == head
        assert len(list((local_hub.root / "repos/alice" / name / "commits").iterdir())) == commits_before


def test_transformers_loads_the_downloaded_snapshot(local_hub: LocalHub, tiny_checkpoints: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    source = tiny_checkpoints["qwen2"]
    upload_folder("alice/tiny-qwen2", source, token=local_hub.tokens["alice"])
    path = download("alice/tiny-qwen2")
    assert fetch_config("alice/tiny-qwen2") == json.loads((source / "config.json").read_text())
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    expected = AutoModelForCausalLM.from_pretrained(source).eval()(ids).logits
    got = AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_revisions_patterns_and_missing_things(local_hub: LocalHub, payload: Path, tmp_path: Path) -> None:
    alice = local_hub.tokens["alice"]
    small = tmp_path / "small"
    small.mkdir()
    (small / "config.json").write_text('{"v": 1}')
    (small / "a.txt").write_text("one")
    upload_folder("alice/r", small, token=alice)
    first = local_hub.server.store.branches(RepoId.parse("alice/r"))["main"]
    (small / "config.json").write_text('{"v": 2}')
    upload_folder("alice/r", small, token=alice)
    assert fetch_config("alice/r") == {"v": 2} and fetch_config("alice/r", revision=first) == {"v": 1}
    only_json = download("alice/r", allow_patterns="*.json")
    assert sorted(p.name for p in only_json.iterdir()) == ["config.json"]
    assert (download("alice/r", revision=first) / "config.json").read_text() == '{"v": 1}'
    with pytest.raises(HubNotFoundError, match="revision"):
        download("alice/r", revision="no-such-branch")
    with pytest.raises(HubNotFoundError, match="repo not found"):
        fetch_config("alice/nothing")
    (small / "config.json").unlink()
    upload_folder("alice/noconf", small, token=alice)
    with pytest.raises(HubNotFoundError, match="file not found"):
        fetch_config("alice/noconf")
    (small / "config.json").write_text("[1, 2]")
    upload_folder("alice/listconf", small, token=alice)
    with pytest.raises(FormatError, match="must hold a JSON object"):
        fetch_config("alice/listconf")
    (small / "config.json").write_text("{oops")
    upload_folder("alice/badconf", small, token=alice)
    with pytest.raises(FormatError, match="not valid JSON"):
        fetch_config("alice/badconf")


def test_access_rules_surface_as_clear_errors(
    local_hub: LocalHub, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = local_hub.tokens["alice"], local_hub.tokens["bob"]
    upload_folder("alice/secret", payload, private=True, token=alice)
    with pytest.raises(HubNotFoundError, match="private and invisible to the token from the token argument"):
        download("alice/secret", token=bob)
    with pytest.raises(HubNotFoundError, match="invisible to no token"):
        download("alice/secret")
    with pytest.raises(HubAuthError, match=r"rejected the token from the token argument \(401"):
        download("alice/secret", token="hf_not_a_real_token")
    with pytest.raises(HubPermissionError, match=r"has no write access \(403"):
        upload_folder("alice/bobs-attempt", payload, token=bob)
    with pytest.raises(HubPermissionError, match="403"):
        upload_folder("alice/secret", payload, token=bob)  # exists, but invisible to bob
    with pytest.raises(HubTokenMissingError, match="needs a Hugging Face token: no token found"):
        upload_folder("alice/x", payload)
    with pytest.raises(HubTokenMissingError):
        whoami()
    with pytest.raises(HubAuthError, match="401"):
        whoami(token="hf_bad")
    monkeypatch.setenv("HF_TOKEN", bob)
    assert whoami() == "bob"
    monkeypatch.setenv("HF_TOKEN", "hf_bad2")
    with pytest.raises(HubAuthError, match="rejected the token from the HF_TOKEN environment variable"):
        whoami()
    upload_folder("alice/public", payload, token=alice)
    with pytest.raises(HubError, match="already exists and is public"):
        upload_folder("alice/public", payload, private=True, token=alice)


def test_bad_arguments(local_hub: LocalHub, payload: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRepoIdError):
        download("not a repo")
    with pytest.raises(InvalidArgumentError, match="holds no files"):
        upload_folder("alice/x", tmp_path / "missing", token=local_hub.tokens["alice"])
    with pytest.raises(InvalidArgumentError, match="max_attempts"):
        upload_folder("alice/x", payload, token=local_hub.tokens["alice"], max_attempts=0)


def test_offline_mode(local_hub: LocalHub, payload: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = local_hub.tokens["alice"]
    upload_folder("alice/m", payload, token=alice)
    upload_folder("alice/partial", payload, token=alice)
    online = download("alice/m")
    download("alice/partial", allow_patterns="config.json")
    local_hub.server.stop()  # offline must not need the server at all
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download("alice/m") == online and _files(online) == _files(payload)
    assert fetch_config("alice/m") == json.loads((payload / "config.json").read_text())
    assert fetch_config("alice/partial")["hidden_size"] == 8
    with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE=1 forbids downloading; unset HF_HUB_OFFLINE"):
        download("alice/never-downloaded")
    with pytest.raises(HubOfflineError):
        download("alice/partial")  # only config.json is cached
    with pytest.raises(HubOfflineError, match="cannot upload"):
        upload_folder("alice/m", payload, token=alice)


def test_unreachable_endpoint(payload: Path, backoff_waits: list[float]) -> None:
    # tests/conftest.py points HF_ENDPOINT at a port that refuses connections
    with pytest.raises(HubUnreachableError, match=r"cannot reach the server.*set HF_HUB_OFFLINE=1 to use the cache$"):
        download("alice/m")
    with pytest.raises(HubUnreachableError, match=r"after 2 attempts; check the endpoint and the network$"):
        upload_folder("alice/m", payload, token="t", max_attempts=2, backoff_s=0.01)
    with pytest.raises(HubUnreachableError, match=r"after 4 attempts; check the endpoint and the network$"):
        whoami(token="t")


def test_uploads_take_the_lfs_path_even_with_xet_enabled(
    local_hub: LocalHub, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_DISABLE_XET")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)  # as in a process that never set the variable
    upload_folder("alice/m", payload, token=local_hub.tokens["alice"])
    entry = local_hub.server.store.resolve(RepoId.parse("alice/m"), "main").files["weights.bin"]
    assert entry.lfs and constants.HF_HUB_DISABLE_XET is False


def test_endpoint_that_is_not_a_hub_and_server_refusals(local_hub: LocalHub, payload: Path, tmp_path: Path) -> None:
    # The server answers 404 without an X-Error-Code for paths it does not serve.
    with pytest.raises(HubNotFoundError, match=r"not found \(404: no endpoint for GET /prefix/api/models/alice/m"):
        download("alice/m", endpoint=f"{local_hub.url}/prefix")
    with HubServer(tmp_path / "small", {"alice": "t"}, max_file_size=1000) as small:
        with pytest.raises(HubError, match=r"refused the request \(413: .*at most 1000") as info:
            upload_folder("alice/m", payload, token="t", endpoint=small.url)
        assert type(info.value) is HubError


def test_translate_unknown_and_bare_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = client._Context("download", "alice/m", HubSettings.from_env(), None)
    bare = client._translate(LocalEntryNotFoundError("cannot find it\nanywhere"), ctx)
    assert isinstance(bare, HubUnreachableError) and str(bare).endswith("cannot find it anywhere")
    assert client._translate(ValueError("a bug"), ctx) is None

    def buggy(*args: object, **kwargs: object) -> str:
        raise ValueError("a bug in the caller")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(client, "snapshot_download", buggy)
    with pytest.raises(ValueError, match="a bug in the caller"):  # unknown errors are not disguised
        download("alice/m")
