"""Uploads under injected faults: transient ones are retried, persistent ones fail cleanly and atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from aprender.errors import HubPermissionError, HubUnreachableError
from aprender.hub import Fault, account_info, download, upload_folder, whoami
from aprender.hub.repo_id import RepoId
from fixtures.hub import LocalHub

REPO = RepoId("alice", "m")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"v": 1}')
    (folder / "weights.bin").write_bytes(os.urandom(300_000))  # binary: LFS path
    return folder


def _update(folder: Path) -> None:
    (folder / "config.json").write_text('{"v": 2}')
    (folder / "weights.bin").write_bytes(os.urandom(300_000))


def test_transient_faults_are_retried(local_hub: LocalHub, folder: Path) -> None:
    alice = local_hub.tokens["alice"]
    upload_folder(str(REPO), folder, token=alice)
    _update(folder)
    # huggingface_hub retries the LFS PUT itself; the commit POST is retried by our whole-upload retry
    put_500 = local_hub.server.faults.add(Fault("error", path="^/lfs/", method="PUT"))
    commit_cut = local_hub.server.faults.add(Fault("cut", path="/commit/", method="POST"))
    url = upload_folder(str(REPO), folder, token=alice, backoff_s=0.01)
    assert (put_500.fired, commit_cut.fired) == (1, 1)
    head = local_hub.server.store.branches(REPO)["main"]
    assert url.endswith(head)
    snapshot = download(str(REPO))
    assert (snapshot / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()
    assert (snapshot / "config.json").read_text() == '{"v": 2}'


@pytest.mark.parametrize("kind", ["error", "cut"])
def test_persistent_faults_fail_clearly_and_keep_the_previous_commit(
    local_hub: LocalHub, folder: Path, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = local_hub.tokens["alice"]
    upload_folder(str(REPO), folder, token=alice)
    head = local_hub.server.store.branches(REPO)["main"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _update(folder)
    fault = local_hub.server.faults.add(Fault(kind, path="/commit/", times=None))  # type: ignore[arg-type]
    expected = "the server kept failing \\(500" if kind == "error" else "cannot reach the server"
    with pytest.raises(HubUnreachableError, match=f"upload to alice/m@main on .*: {expected}.*after 3 attempts"):
        upload_folder(str(REPO), folder, token=alice, max_attempts=3, backoff_s=0.01)
    assert fault.fired == 3
    local_hub.server.faults.clear()
    assert local_hub.server.store.branches(REPO)["main"] == head
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "fresh-cache"))
    snapshot = download(str(REPO))
    assert snapshot.name == head and {p.name: p.read_bytes() for p in snapshot.iterdir()} == before


def test_a_failing_lfs_upload_is_named_without_its_signature_or_per_request_noise(
    local_hub: LocalHub, folder: Path, backoff_waits: list[float], capfd: pytest.CaptureFixture[str]
) -> None:
    local_hub.server.faults.add(Fault("error", path="^/lfs/", method="PUT", times=None))
    with pytest.raises(HubUnreachableError) as info:
        upload_folder(str(REPO), folder, token=local_hub.tokens["alice"], max_attempts=2)
    message = str(info.value)
    pattern = r"the server kept failing \(500 on PUT /lfs/alice/m/[0-9a-f]{64}: injected fault: .*\) after 2 attempts"
    assert re.search(pattern, message), message
    assert "sig=" not in message and "?" not in message.split("(500")[1]
    # huggingface_hub's own retry warnings print the signed URL; off a terminal its progress bars are noise too
    assert capfd.readouterr() == ("", "")
    assert 1.0 in backoff_waits  # our retry of the whole upload waited (the library's waits are recorded too)


@pytest.mark.parametrize("kind", ["error", "cut"])
def test_the_token_check_is_retried_like_uploads(local_hub: LocalHub, kind: str, backoff_waits: list[float]) -> None:
    fault = local_hub.server.faults.add(Fault(kind, path="^/api/whoami-v2$"))  # type: ignore[arg-type]
    assert whoami(token=local_hub.tokens["bob"]) == "bob"
    assert fault.fired == 1 and backoff_waits == [1.0]
    assert account_info(token=local_hub.tokens["bob"])["name"] == "bob"


def test_a_persistently_failing_token_check_gives_up_like_uploads(
    local_hub: LocalHub, backoff_waits: list[float]
) -> None:
    fault = local_hub.server.faults.add(Fault("error", path="^/api/whoami-v2$", times=None))
    expected = r"^check the token for the Hub on .*: the server kept failing \(500 on GET /api/whoami-v2: .* after 4"
    with pytest.raises(HubUnreachableError, match=expected):
        whoami(token=local_hub.tokens["bob"])
    assert fault.fired == 4 and backoff_waits == [1.0, 2.0, 4.0]


def test_non_transient_errors_are_not_retried(local_hub: LocalHub, folder: Path) -> None:
    seen = local_hub.server.faults.add(Fault("error", path="^/never-matches$"))
    upload_folder(str(REPO), folder, token=local_hub.tokens["alice"])
    bob_fault = local_hub.server.faults.add(Fault("error", path="/api/repos/create", nth=2, times=None))
    with pytest.raises(HubPermissionError, match="403"):
        upload_folder(str(REPO), folder, token=local_hub.tokens["bob"], max_attempts=5, backoff_s=10)
    # bob's 403 came from the first create request; a retry would have hit the nth=2 fault
    assert bob_fault.seen == 1 and seen.fired == 0
