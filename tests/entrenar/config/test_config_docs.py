"""docs/configuration.md is what `entrenar.config.docs` renders from the schema."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from entrenar.config.docs import key_docs, main, render_reference, schema_sections
from entrenar.config.schema import LoraSection, ModelSection

REFERENCE = Path(__file__).parents[3] / "docs" / "configuration.md"


def test_committed_reference_is_current() -> None:
    if REFERENCE.read_text() != render_reference():
        pytest.fail("docs/configuration.md is stale: run `make docs`", pytrace=False)


def test_every_schema_key_has_a_row() -> None:
    text = render_reference()
    for name, section in schema_sections().items():
        for f in fields(section):
            if "spec" in f.metadata:
                assert f"| `{name}.{f.name}` |" in text


def test_sections_in_schema_order() -> None:
    sections = schema_sections()
    expected = "model, data, optimizer, scheduler, lora, quantize, distill, prune, qat, training, publish"
    assert ", ".join(sections) == expected
    assert sections["lora"] is LoraSection


def test_key_docs_skips_derived_fields_and_joins_lines() -> None:
    docs = key_docs(ModelSection)
    assert list(docs) == ["path", "revision", "dtype"]  # `source` has no spec: not a YAML key
    assert docs["revision"] == "Hub only: a branch, tag or commit to pin; null takes the default branch."
    assert "`.gguf`" in docs["path"] and "``" not in docs["path"]


def test_main_writes_the_file_or_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path / "configuration.md")])
    assert (tmp_path / "configuration.md").read_text() == render_reference()
    main([])
    assert capsys.readouterr().out == render_reference()
