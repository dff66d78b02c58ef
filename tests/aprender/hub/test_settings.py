"""Settings read at call time, and the huggingface_hub flags pinned for one call."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from aprender.hub.settings import DEFAULT_ENDPOINT, HubSettings, env_flag, library_flags


def test_endpoint_from_env_argument_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1234/")
    assert HubSettings.from_env().endpoint == "http://127.0.0.1:1234"
    assert HubSettings.from_env("http://other:9/").endpoint == "http://other:9"
    monkeypatch.delenv("HF_ENDPOINT")
    assert HubSettings.from_env().endpoint == DEFAULT_ENDPOINT == "https://huggingface.co"


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert HubSettings.from_env().cache_dir == tmp_path / "cache"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert HubSettings.from_env().cache_dir == tmp_path / "legacy"
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE")
    assert HubSettings.from_env().cache_dir == tmp_path / "home" / "hub"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("", False), ("no", False)],
)
def test_flags_parse_like_huggingface_hub(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setenv("DO_NOT_TRACK", value)
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    settings = HubSettings.from_env()
    assert env_flag("HF_HUB_OFFLINE") is expected
    assert settings.offline is expected and settings.disable_telemetry is expected


def test_library_flags_pin_and_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    settings = HubSettings.from_env()
    before = (constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET, constants.HF_HUB_DISABLE_TELEMETRY)
    with library_flags(settings):
        assert constants.is_offline_mode() is True
        assert (constants.HF_HUB_DISABLE_XET, constants.HF_HUB_DISABLE_TELEMETRY) == (False, True)
    with library_flags(settings, force_lfs=True):
        assert constants.HF_HUB_DISABLE_XET is True
    with pytest.raises(RuntimeError), library_flags(settings):
        raise RuntimeError("boom")
    after = (constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET, constants.HF_HUB_DISABLE_TELEMETRY)
    assert after == before
