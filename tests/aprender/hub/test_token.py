"""Token resolution order and its description, which must never reveal the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from aprender.hub.token import HubToken, describe_token_source, hf_home, resolve_token, token_file_path

SECRET = "hf_secret_value_123"


def _home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    return home


def test_no_token_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = _home(monkeypatch, tmp_path)
    assert resolve_token() is None
    text = describe_token_source()
    assert text.startswith("no token found") and str(home / "token") in text and "HF_TOKEN" in text


def test_order_explicit_then_env_then_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = _home(monkeypatch, tmp_path)
    (home / "token").write_text("from-file\n")
    assert resolve_token() == HubToken("from-file", f"the token file {home / 'token'}")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "legacy")
    assert resolve_token() == HubToken("legacy", "the HUGGING_FACE_HUB_TOKEN environment variable")
    monkeypatch.setenv("HF_TOKEN", " modern ")
    assert resolve_token() == HubToken("modern", "the HF_TOKEN environment variable")
    assert resolve_token("explicit") == HubToken("explicit", "the token argument")


def test_empty_values_count_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = _home(monkeypatch, tmp_path)
    (home / "token").write_text("  \n")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "   ")
    assert resolve_token("") is None


def test_token_path_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _home(monkeypatch, tmp_path)
    custom = tmp_path / "elsewhere" / "tok"
    custom.parent.mkdir()
    custom.write_text("custom-file")
    monkeypatch.setenv("HF_TOKEN_PATH", str(custom))
    assert token_file_path() == custom
    assert resolve_token() == HubToken("custom-file", f"the token file {custom}")


def test_hf_home_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_home() == tmp_path / "xdg" / "huggingface"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hf_home() == Path.home() / ".cache" / "huggingface"


def test_description_and_repr_never_show_the_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _home(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    token = resolve_token()
    assert token is not None and token.value == SECRET
    for text in (describe_token_source(), repr(token), str(token), describe_token_source("x" + SECRET)):
        assert SECRET not in text
    assert describe_token_source() == "token from the HF_TOKEN environment variable"
    assert str(token) == "<token from the HF_TOKEN environment variable>"
