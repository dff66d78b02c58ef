"""`entrenar.display`: sizes as the Hub shows them, unpadded scientific notation, paths seen from the working dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrenar.display import human_size, scientific, shown_path, silent


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1_000, "1.0 kB"),
        (56_123, "56.1 kB"),
        (988_097_824, "988.1 MB"),
        (15.2e12, "15200.0 GB"),
    ],
)
def test_human_size_in_decimal_units(n_bytes: int, text: str) -> None:
    assert human_size(int(n_bytes)) == text


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (2e-4, None, "2e-4"),
        (2.5e-5, None, "2.5e-5"),
        (1e-2, None, "1e-2"),
        (2e-4, 1, "2.0e-4"),
        (0.0123, 1, "1.2e-2"),
        (150.0, 1, "1.5e2"),
    ],
)
def test_scientific_drops_the_exponent_padding(value: float, decimals: int | None, text: str) -> None:
    assert scientific(value, decimals) == text


def test_shown_path_is_relative_below_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "output" / "model.safetensors") == "./output/model.safetensors"
    assert shown_path("output") == "./output"
    assert shown_path(tmp_path) == "."
    assert shown_path(tmp_path.parent / "elsewhere") == str(tmp_path.parent / "elsewhere")


def test_silent_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    silent("Loading model weights (SafeTensors)...")
    assert capsys.readouterr() == ("", "")
