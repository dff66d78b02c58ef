"""Generate ``docs/configuration.md`` from the schema: one table per section, one row per YAML key.

The schema is the one source: each key's type and default come from its dataclass field, its meaning from
the ``Attributes:`` of its section's docstring (`entrenar.config.schema`). Only the introduction is
written here. Run ``make docs`` (``python -m entrenar.config.docs docs/configuration.md``); without a
path the document goes to stdout.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import MISSING, fields, is_dataclass
from typing import get_args, get_type_hints

from aprender.atomic import atomic_write_text
from entrenar.config.schema import TrainConfig

__all__ = ["key_docs", "render_reference", "schema_sections"]

INTRO = """\
# Configuration reference (schema v1)

`entrenar init` writes a commented `config.yaml`; `entrenar train config.yaml [KEY=VALUE ...]` reads it.
Unknown keys, wrong types and out-of-range values are errors that name the key path
(`config.yaml: lora.rnak: unknown key; did you mean rank?`). Every key is checked in one pass and every
problem gets its own line, in the order of the file (at most 20, then `... and N more errors in
config.yaml`); a rule that combines keys (such as `optimizer.betas` only for the Adam family) is checked
once the keys themselves are valid. Command-line overrides such as `training.max_steps=10` or
`lora.target_modules=[q_proj,v_proj]` go through the same validation, and their lines end with
`(from the command line)`.
The method follows from the sections: no `lora:` is a full fine-tune, `lora:` is LoRA, `lora:` plus
`quantize:` is QLoRA. A `distill:` section adds knowledge distillation from a frozen teacher to any of
the three (`final_model.json` then lists the techniques as, e.g., `[qlora, distill]`). A `publish:`
section makes `entrenar train` check the repo id and token before the first step and publish after the last.

This table is generated from the schema's own docstrings (`packages/entrenar/src/entrenar/config/schema.py`)
by `make docs`; edit those, not this file.
"""

_ATTRIBUTE = re.compile(r"^    (\w+): (.*)$")


def schema_sections() -> dict[str, type]:
    """YAML section name -> its dataclass, in `TrainConfig` field order (optional sections included)."""
    hints = get_type_hints(TrainConfig)
    return {
        f.name: next(t for t in (hints[f.name], *get_args(hints[f.name])) if isinstance(t, type) and is_dataclass(t))
        for f in fields(TrainConfig)
    }


def key_docs(section: type) -> dict[str, str]:
    """The documentation of each YAML key of a schema section, from its docstring's ``Attributes:``.

    Args:
        section: a section dataclass of `entrenar.config.schema`.

    Returns:
        Key name -> one-paragraph description (RST double backticks made single), in field order, for
        every key with a spec (derived fields such as ``model.source`` are not keys).

    Raises:
        ValueError: the docstring has no ``Attributes:`` block.
        KeyError: a key of the section is not documented (the schema and its docstring disagree).
    """
    lines = inspect.cleandoc(section.__doc__ or "").split("\n")
    docs: dict[str, str] = {}
    current = ""
    for line in lines[lines.index("Attributes:") + 1 :]:
        match = _ATTRIBUTE.match(line)
        if match:
            current = match[1]
            docs[current] = match[2]
        elif line.startswith(" " * 8) and current:
            docs[current] += " " + line.strip()
    keys = [f.name for f in fields(section) if "spec" in f.metadata]
    return {key: docs[key].replace("``", "`") for key in keys}


def _cell(text: str) -> str:
    return text.replace("|", r"\|")  # a bare pipe would end the table cell


def _section_tables(name: str, section: type) -> list[str]:
    """The section's table, then those of its nested sections (``distill.hidden``, ``distill.teachers[i]``)."""
    defaults = {f.name: "required" if f.default is MISSING else f"`{f.default}`" for f in fields(section)}
    rows = [f"| `{name}.{key}` | {defaults[key]} | {_cell(doc)} |" for key, doc in key_docs(section).items()]
    tables = ["\n".join([f"### `{name}:`", "", "| key | default | meaning |", "|---|---|---|", *rows]) + "\n"]
    for f in fields(section):
        spec = f.metadata.get("spec")
        if spec is not None and spec.section is not None:
            tables += _section_tables(f"{name}.{f.name}{'[i]' if spec.kind == 'sections' else ''}", spec.section)
    return tables


def render_reference() -> str:
    """The whole text of ``docs/configuration.md``."""
    return "\n".join([INTRO, *(t for name, cls in schema_sections().items() for t in _section_tables(name, cls))])


def main(argv: list[str]) -> None:
    """``python -m entrenar.config.docs [PATH]``: write the reference atomically to PATH, or to stdout."""
    text = render_reference()
    if argv:
        atomic_write_text(argv[0], text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
