"""Fuzz: random YAML-ish mappings, YAML text and overrides load or raise ConfigError, nothing else."""

from __future__ import annotations

import datetime
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrenar.config import ConfigError, TrainConfig, load_config
from entrenar.config.load import MAX_REPORTED
from entrenar.config.schema import (
    DataSection,
    DistillHidden,
    DistillSection,
    DistillTeacher,
    LoraSection,
    ModelSection,
    OptimizerSection,
    PublishSection,
    QuantizeSection,
    SchedulerSection,
    TrainingSection,
)

SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "scheduler": SchedulerSection,
    "lora": LoraSection,
    "quantize": QuantizeSection,
    "distill": DistillSection,
    "training": TrainingSection,
    "publish": PublishSection,
}
KEYS = sorted({f.name for cls in [*SECTIONS.values(), DistillHidden, DistillTeacher] for f in fields(cls)})
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["data/train.jsonl", "data/*.jsonl", "models/tiny", "me/x", "all-linear", "sgd", "step", "gguf"])
    | st.dates()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner),
    max_leaves=6,
)
sections = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(0, 3), values, max_size=5)
mappings = st.dictionaries(st.sampled_from(list(SECTIONS)) | st.text(max_size=8), sections | values, max_size=8) | (
    st.fixed_dictionaries(
        {"model": st.just({"path": "org/model"}) | sections, "data": st.just({"train_path": "data/train.jsonl"})},
        optional={name: sections | st.none() for name in SECTIONS if name not in ("model", "data")},
    )
)


def _check(call: Any) -> None:
    try:
        result = call()
    except ConfigError as exc:
        lines = str(exc).split("\n")  # one printable line per problem, and a count past the cap
        assert all(line and line.isprintable() for line in lines) and len(lines) <= MAX_REPORTED + 1
    else:
        assert isinstance(result, TrainConfig)


@FUZZ
@given(data=mappings)
def test_random_mappings_load_or_raise_config_error(data: dict[Any, Any], project: Path) -> None:
    _check(lambda: TrainConfig.from_dict(data, base_dir=str(project)))


@FUZZ
@given(
    data=mappings,
    overrides=st.lists(
        st.builds(
            lambda key, sep, value: f"{key}{sep}{value}",
            st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in KEYS[:8]] + list(SECTIONS)) | st.text(max_size=8),
            st.sampled_from(["=", "", "=="]),
            st.text(max_size=10) | st.sampled_from(["[a,b]", "{rank: 4}", "null", "true", "1e-3", "[0.9, 0.95]"]),
        ),
        max_size=3,
    ),
)
def test_random_yaml_files_with_overrides(data: dict[Any, Any], overrides: list[str], project: Path) -> None:
    path = project / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    _check(lambda: load_config(path, overrides))


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("ab:{}[]-,&*!|>'\"#% \n\t0.9e\x00\x85é")), max_size=60))
def test_random_text_loads_or_raises_config_error(text: str, project: Path) -> None:
    path = project / "fuzz.yaml"
    path.write_text(text)
    _check(lambda: load_config(path))


@pytest.mark.parametrize(
    "value", [float("inf"), -(2**80), datetime.date(2024, 1, 1), {"nested": [1]}, "x" * 5000, "\x00", "a\nb"]
)
def test_odd_values_in_every_key_are_config_errors_or_load(value: Any, project: Path) -> None:
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            data = {"model": {"path": "org/model"}, "data": {"train_path": "data/train.jsonl"}}
            data[section] = {**data.get(section, {}), f.name: value}
            _check(lambda data=data: TrainConfig.from_dict(data, base_dir=str(project)))


def test_pyyaml_safe_loader_is_not_changed_by_ours() -> None:
    load_config  # noqa: B018 - importing entrenar.config registered our float resolver
    assert yaml.safe_load("lr: 2e-4") == {"lr": "2e-4"}  # PyYAML's own YAML 1.1 reading is untouched
