"""No token ever reaches a log line, an exception, stdout/stderr or a file on disk."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from aprender.errors import AprenderError
from aprender.hub import Fault, describe_token_source, download, fetch_config, upload_folder, whoami
from fixtures.hub import LocalHub


def test_tokens_never_leak(
    local_hub: LocalHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, huggingface_hub's and the server's included
    alice, bob = local_hub.tokens["alice"], local_hub.tokens["bob"]
    bad = "hf_definitely_not_valid_0123456789"
    home = Path(os.environ["HF_HOME"])
    (home / "token").write_text(alice)  # the token file is the user's own file: excluded from the grep below
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "w.bin").write_bytes(b"\0" * 50_000)

    messages: list[str] = [describe_token_source(), describe_token_source(bob)]
    upload_folder("alice/m", folder, private=True)  # token from $HF_HOME/token
    local_hub.server.faults.add(Fault("error", path="/commit/", times=None))
    (folder / "config.json").write_text('{"a": 1}')
    monkeypatch.setenv("HF_TOKEN", alice)
    calls = [
        lambda: upload_folder("alice/m", folder, max_attempts=2, backoff_s=0.01),
        lambda: download("alice/m", token=bob),
        lambda: download("alice/m", token=bad),
        lambda: fetch_config("alice/m", token=bad),
        lambda: upload_folder("alice/other", folder, token=bob),
        lambda: whoami(token=bad),
    ]
    for call in calls:
        with pytest.raises(AprenderError) as info:
            call()
        chain: BaseException | None = info.value
        while chain is not None:
            messages += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    messages.append(str(download("alice/m")))
    out, err = capfd.readouterr()
    texts = [*messages, caplog.text, out, err]
    written = [*tmp_path.rglob("*"), *home.rglob("*")]  # server data, payload, HF cache
    files = [p for p in written if p.is_file() and p != home / "token"]
    assert len(files) > 15 and any("hub" in p.parts for p in files) and caplog.records  # the grep sees something
    for secret in (alice, bob, bad):
        assert not any(secret in text for text in texts), secret
        assert not any(secret.encode() in p.read_bytes() for p in files), secret
