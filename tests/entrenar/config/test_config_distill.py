"""The ``distill:`` section: defaults, what each key sets, every error as one line naming its key path, overrides,
the resolved round trip, the generated docs and ``entrenar validate``.

Expected messages are written by hand from the rule each case breaks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from entrenar.config import (
    ConfigError,
    DistillHidden,
    DistillSection,
    DistillTeacher,
    TrainConfig,
    config_to_dict,
    load_config,
    write_resolved_config,
)
from entrenar.config.docs import render_reference
from fixtures.cli import run_cli

WriteConfig = Callable[..., Path]
HUB = "org/teacher"


@pytest.fixture(autouse=True)
def _in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)  # so the source label is the relative name "config.yaml"


def _distill(write_config: WriteConfig, distill: object, overrides: tuple[str, ...] = (), **sections: Any) -> Any:
    cfg = load_config(write_config({"distill": distill, **sections}), overrides)
    return cfg.distill


def _error_lines(write_config: WriteConfig, content: dict[str, Any], overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(content).name, overrides)
    return str(info.value).split("\n")


# ------------------------------------------------------------------------------------------ what it parses to


def test_defaults_with_one_hub_teacher(write_config: WriteConfig) -> None:
    cfg = load_config(write_config({"distill": {"teacher": HUB}}))
    assert cfg.distill == DistillSection(
        teacher=HUB,
        revision=None,
        teachers=None,
        teacher_quantize=None,
        loss="forward_kl",
        beta=None,
        skew=None,
        temperature=1.0,
        alpha=0.5,
        hidden=None,
        cache=None,
        cache_top_k=None,
        source="hub",
    )
    assert cfg.distill.teacher_models == (DistillTeacher(HUB, 1.0, None, "hub"),)
    assert cfg.techniques == ("full", "distill") and cfg.method == "full"


def test_no_section_or_a_null_one_is_no_distillation(write_config: WriteConfig) -> None:
    assert load_config(write_config()).distill is None
    cfg = load_config(write_config({"distill": None}))
    assert (cfg.distill, cfg.techniques) == (None, ("full",))


@pytest.mark.parametrize(
    ("sections", "techniques"),
    [
        ({}, ("full", "distill")),
        ({"lora": {}}, ("lora", "distill")),
        ({"lora": {}, "quantize": {}}, ("qlora", "distill")),
    ],
)
def test_every_method_takes_a_teacher(
    write_config: WriteConfig, sections: dict[str, Any], techniques: tuple[str, ...]
) -> None:
    cfg = load_config(write_config({"distill": {"teacher": HUB}, **sections}))
    assert cfg.techniques == techniques and cfg.method == techniques[0]


def test_a_local_teacher_is_located_like_model_path(project: Path, write_config: WriteConfig) -> None:
    distill = _distill(write_config, {"teacher": "./models/../models/tiny"})
    assert (distill.teacher, distill.source) == (str(project / "models" / "tiny"), "local")
    (project / "models" / "t.GGUF").write_bytes(b"GGUF")
    distill = _distill(write_config, {"teacher": "models/t.GGUF"})
    assert (distill.teacher, distill.source) == (str(project / "models" / "t.GGUF"), "local")
    distill = _distill(write_config, {"teacher": HUB, "revision": "v1.0"})
    assert (distill.teacher, distill.revision, distill.source) == (HUB, "v1.0", "hub")


def test_a_mixture_of_teachers(project: Path, write_config: WriteConfig) -> None:
    teachers = [{"path": "models/tiny", "weight": 1}, {"path": HUB, "weight": 3, "revision": "main"}]
    distill = _distill(write_config, {"teachers": teachers})
    assert (distill.teacher, distill.source) == (None, None)
    tiny = str(project / "models" / "tiny")
    assert distill.teachers == (DistillTeacher(tiny, 1.0, None, "local"), DistillTeacher(HUB, 3.0, "main", "hub"))
    # normalised: 1 and 3 are a quarter and three quarters
    assert distill.teacher_models == (
        DistillTeacher(tiny, 0.25, None, "local"),
        DistillTeacher(HUB, 0.75, "main", "hub"),
    )
    distill = _distill(write_config, {"teachers": [{"path": HUB}, {"path": "org/other"}, {"path": "org/third"}]})
    assert [t.weight for t in distill.teachers] == [1.0, 1.0, 1.0]  # the default weight: an even mixture
    assert [t.weight for t in distill.teacher_models] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize(
    ("loss", "beta", "skew"),
    [
        ("forward_kl", None, None),
        ("reverse_kl", None, None),
        ("jsd", 0.5, None),
        ("skew_forward_kl", None, 0.1),
        ("skew_reverse_kl", None, 0.1),
        ("tvd", None, None),
    ],
)
def test_each_loss_fills_its_own_parameter(
    write_config: WriteConfig, loss: str, beta: float | None, skew: float | None
) -> None:
    distill = _distill(write_config, {"teacher": HUB, "loss": loss})
    assert (distill.loss, distill.beta, distill.skew) == (loss, beta, skew)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"loss": "jsd", "beta": 0}, {"beta": 0.0}),
        ({"loss": "jsd", "beta": 1}, {"beta": 1.0}),
        ({"loss": "skew_reverse_kl", "skew": 0.3}, {"skew": 0.3}),
        ({"teacher_quantize": "nf4"}, {"teacher_quantize": "nf4"}),
        ({"teacher_quantize": "int8"}, {"teacher_quantize": "int8"}),
        ({"temperature": 2}, {"temperature": 2.0}),
        ({"temperature": 0.5}, {"temperature": 0.5}),
        ({"alpha": 0}, {"alpha": 0.0}),
        ({"alpha": 1}, {"alpha": 1.0}),
        ({"hidden": {}}, {"hidden": DistillHidden("auto", "mse", 1.0, "constant")}),
        ({"hidden": None}, {"hidden": None}),
        ({"hidden": {"layers": "auto"}}, {"hidden": DistillHidden()}),
        ({"hidden": {"layers": [[0, 0], [1, 3]]}}, {"hidden": DistillHidden(layers=((0, 0), (1, 3)))}),
        ({"hidden": {"loss": "cosine", "weight": 0}}, {"hidden": DistillHidden(loss="cosine", weight=0.0)}),
        ({"hidden": {"schedule": "progressive"}}, {"hidden": DistillHidden(schedule="progressive")}),
        ({"cache_top_k": 8, "cache": "cache"}, {"cache_top_k": 8}),
    ],
)
def test_each_key_sets_its_field(write_config: WriteConfig, keys: dict[str, Any], expected: dict[str, Any]) -> None:
    distill = _distill(write_config, {"teacher": HUB, **keys})
    assert {name: getattr(distill, name) for name in expected} == expected
    assert type(distill.temperature) is float and type(distill.alpha) is float


def test_cache_is_a_folder_relative_to_the_config_with_64_tokens(project: Path, write_config: WriteConfig) -> None:
    distill = _distill(write_config, {"teacher": HUB, "cache": "runs/../kd-cache"})
    assert (distill.cache, distill.cache_top_k) == (str(project / "kd-cache"), 64)  # need not exist yet


# ------------------------------------------------------------------------------------------------- errors

TWO = [{"path": HUB}, {"path": "org/b"}]
LOSSES = "forward_kl, reverse_kl, jsd, skew_forward_kl, skew_reverse_kl, tvd"
KEYS = "teacher, revision, teachers, teacher_quantize, loss, beta, skew, temperature, alpha, hidden, cache, cache_top_k"
MISSING = "distill.teacher: missing; name the teacher model, or a mixture under distill.teachers"
LOCAL = "applies to Hub repo ids only, and {key} is the local path {project}/models/tiny"
PAIRS = "distill.hidden.layers: expected 'auto' or a list of [student_layer, teacher_layer] pairs like [[0, 0], [1, 2]]"
PAIR = "expected [student_layer, teacher_layer], two integers >= 0, got"
ONLY_JSD = "applies to distill.loss jsd only, not"
ONLY_SKEW = "applies to distill.loss skew_forward_kl or skew_reverse_kl only, not"


def _teacher(**keys: Any) -> dict[str, Any]:
    return {"teacher": HUB, **keys}


def _hidden(**keys: Any) -> dict[str, Any]:
    return _teacher(hidden=keys)


ERRORS: list[tuple[dict[str, Any] | list[Any], str]] = [
    (_teacher(teachers=TWO), "distill.teachers: cannot be used with distill.teacher; keep one of the two"),
    ({}, MISSING),
    ({"teacher": None, "loss": "tvd"}, MISSING),
    ({"teachers": [{"path": HUB, "weight": 0}, TWO[1]]}, "distill.teachers[0].weight: must be > 0, got 0"),
    ({"teachers": [TWO[0], {"path": "org/b", "weight": -1.5}]}, "distill.teachers[1].weight: must be > 0, got -1.5"),
    (
        {"teachers": [{"path": HUB, "weight": 2}]},
        "distill.teachers: a mixture needs at least two teachers, got 1; use distill.teacher",
    ),
    ({"teachers": []}, "distill.teachers: expected a list of mappings, got an empty list"),
    ({"teachers": HUB}, "distill.teachers: expected a list of mappings, got 'org/teacher'"),
    ({"teachers": [HUB, TWO[1]]}, "distill.teachers[0]: expected a mapping of keys, got 'org/teacher'"),
    ({"teachers": [{"weight": 1}, TWO[1]]}, "distill.teachers[0].path: missing required key"),
    (
        {"teachers": [{"path": HUB, "wieght": 1}, TWO[1]]},
        "distill.teachers[0].wieght: unknown key; did you mean weight?",
    ),
    (
        {"teachers": [TWO[0], {"path": HUB, "weight": 2}]},
        "distill.teachers[1].path: org/teacher is already distill.teachers[0]; list each once",
    ),
    (
        {"teachers": TWO, "revision": "v1"},
        "distill.revision: applies to distill.teacher only; give each distill.teachers entry its own",
    ),
    (
        {"teachers": [{"path": "models/tiny", "revision": "v1"}, TWO[0]]},
        "distill.teachers[0].revision: " + LOCAL.replace("{key}", "distill.teachers[0].path"),
    ),
    ({"teacher": "models/tiny", "revision": "v1"}, "distill.revision: " + LOCAL.replace("{key}", "distill.teacher")),
    (
        {"teacher": "data/train.jsonl"},
        "distill.teacher: data/train.jsonl: is a file; pass the model folder holding config.json, or a .gguf file",
    ),
    (
        {"teacher": "./missing"},
        "distill.teacher: './missing' is neither an existing file or folder ({project}/missing) "
        "nor a Hub repo id like 'Qwen/Qwen2.5-0.5B'",
    ),
    ({"teacher": 3}, "distill.teacher: expected a string, got 3 (quote it in YAML)"),
    (_teacher(beta=0.3), f"distill.beta: {ONLY_JSD} forward_kl; remove it"),
    (_teacher(loss="tvd", beta=0.5), f"distill.beta: {ONLY_JSD} tvd; remove it"),
    (_teacher(loss="jsd", beta=1.5), "distill.beta: must be in [0, 1], got 1.5"),
    (_teacher(loss="jsd", skew=0.1), f"distill.skew: {ONLY_SKEW} jsd; remove it"),
    (_teacher(loss="skew_forward_kl", skew=0), "distill.skew: must be in (0, 1), got 0"),
    (_teacher(loss="skew_reverse_kl", skew=1.0), "distill.skew: must be in (0, 1), got 1.0"),
    (_teacher(temperature=0), "distill.temperature: must be > 0, got 0"),
    (_teacher(temperature=-2.0), "distill.temperature: must be > 0, got -2.0"),
    (_teacher(alpha=-0.1), "distill.alpha: must be in [0, 1], got -0.1"),
    (_teacher(alpha=1.5), "distill.alpha: must be in [0, 1], got 1.5"),
    (_teacher(loss="forward_kld"), f"distill.loss: 'forward_kld' is not one of {LOSSES}; did you mean forward_kl?"),
    (_teacher(teacher_quantize="nf5"), "distill.teacher_quantize: 'nf5' is not one of nf4, int8; did you mean nf4?"),
    (_hidden(layers="all"), f"{PAIRS}, got 'all'"),
    (_hidden(layers=[]), f"{PAIRS}, got an empty list"),
    (_hidden(layers=[[0, 0], [1]]), f"distill.hidden.layers[1]: {PAIR} [1]"),
    (_hidden(layers=[[0, -1]]), f"distill.hidden.layers[0]: {PAIR} [0, -1]"),
    (_hidden(layers=[0, 1]), f"distill.hidden.layers[0]: {PAIR} 0"),
    (_hidden(layers=[[0, 1.5]]), f"distill.hidden.layers[0]: {PAIR} [0, 1.5]"),
    (_hidden(layers=[[True, 0]]), f"distill.hidden.layers[0]: {PAIR} [True, 0]"),
    (_hidden(loss="mes"), "distill.hidden.loss: 'mes' is not one of mse, cosine; did you mean mse?"),
    (
        _hidden(schedule="progresive"),
        "distill.hidden.schedule: 'progresive' is not one of constant, progressive; did you mean progressive?",
    ),
    (_hidden(weight=-1), "distill.hidden.weight: must be >= 0, got -1"),
    (_hidden(lyers="auto"), "distill.hidden.lyers: unknown key; did you mean layers?"),
    (_teacher(hidden=True), "distill.hidden: expected a mapping of keys, got true"),
    (_teacher(cache_top_k=32), "distill.cache_top_k: applies with distill.cache only; set distill.cache or remove it"),
    (_teacher(cache="c", cache_top_k=0), "distill.cache_top_k: must be >= 1, got 0"),
    (
        _teacher(cache="c", hidden={}),
        "distill.hidden: cannot be used with distill.cache: the cache stores output distributions only; "
        "remove one of the two",
    ),
    (_teacher(cache="data/train.jsonl"), "distill.cache: {project}/data/train.jsonl is a file; choose a folder"),
    (_teacher(temprature=2), "distill.temprature: unknown key; did you mean temperature?"),
    (_teacher(zzz=2), f"distill.zzz: unknown key; valid keys: {KEYS}"),
    ([HUB], "distill: expected a mapping of keys, got a list"),
]


@pytest.mark.parametrize(("distill", "message"), ERRORS)
def test_each_mistake_is_one_line_naming_its_key(
    project: Path, write_config: WriteConfig, distill: dict[str, Any] | list[Any], message: str
) -> None:
    assert _error_lines(write_config, {"distill": distill}) == [f"config.yaml: {message.format(project=project)}"]


def test_every_problem_is_reported_at_once_in_the_files_order(write_config: WriteConfig) -> None:
    distill = {
        "teachers": [{"path": HUB, "weight": 0}, {"path": "org/b"}],
        "loss": "reverse_kl",
        "skew": 0.2,
        "temperature": 0,
        "alpha": 2,
        "hidden": {"layers": [[0, -1]], "loss": "l1"},
        "cache_top_k": 4,
    }
    assert _error_lines(write_config, {"distill": distill, "lora": {"rnak": 4}}) == [
        "config.yaml: distill.teachers[0].weight: must be > 0, got 0",
        f"config.yaml: distill.skew: {ONLY_SKEW} reverse_kl; remove it",
        "config.yaml: distill.temperature: must be > 0, got 0",
        "config.yaml: distill.alpha: must be in [0, 1], got 2",
        f"config.yaml: distill.hidden.layers[0]: {PAIR} [0, -1]",
        "config.yaml: distill.hidden.loss: 'l1' is not one of mse, cosine",
        "config.yaml: distill.cache_top_k: applies with distill.cache only; set distill.cache or remove it",
        "config.yaml: lora.rnak: unknown key; did you mean rank?",
    ]


def test_an_invalid_key_is_not_blamed_again_by_the_rules_that_use_it(write_config: WriteConfig) -> None:
    # An unknown loss is one problem: beta is not also "not for this loss"; a broken teachers list is not "missing".
    lines = _error_lines(write_config, {"distill": {"teacher": HUB, "loss": "jds", "beta": 0.2}})
    assert lines == ["config.yaml: distill.loss: 'jds' is not one of forward_kl, reverse_kl, jsd, skew_forward_kl, "
                     "skew_reverse_kl, tvd; did you mean jsd?"]  # fmt: skip
    assert _error_lines(write_config, {"distill": {"teachers": 5}}) == [
        "config.yaml: distill.teachers: expected a list of mappings, got 5"
    ]
    # A typo inside hidden is reported alone; the cache conflict waits until hidden is valid.
    assert _error_lines(write_config, {"distill": {"teacher": HUB, "cache": "c", "hidden": {"los": "mse"}}}) == [
        "config.yaml: distill.hidden.los: unknown key; did you mean loss?"
    ]


# ---------------------------------------------------------------------------------------------- overrides


def test_overrides_set_distill_keys(project: Path, write_config: WriteConfig) -> None:
    distill = _distill(write_config, {"teacher": HUB}, ("distill.temperature=2", "distill.hidden.loss=cosine"))
    assert (distill.temperature, distill.hidden) == (2.0, DistillHidden(loss="cosine"))
    distill = _distill(write_config, {"teacher": HUB}, ("distill.loss=jsd", "distill.beta=0.9", "distill.cache=kd"))
    assert (distill.loss, distill.beta, distill.cache, distill.cache_top_k) == ("jsd", 0.9, str(project / "kd"), 64)
    mixture = "distill.teachers=[{path: org/a, weight: 2}, {path: org/b}]"
    distill = _distill(write_config, {"teacher": HUB}, ("distill.teacher=null", mixture))
    assert [(t.path, t.weight) for t in distill.teachers] == [("org/a", 2.0), ("org/b", 1.0)]
    distill = _distill(write_config, {"teacher": HUB}, ("distill.hidden.layers=[[0, 1], [1, 3]]",))
    assert distill.hidden.layers == ((0, 1), (1, 3))


def test_overrides_add_and_remove_the_section(write_config: WriteConfig) -> None:
    path = write_config()
    cfg = load_config(path, ["distill.teacher=org/teacher", "lora.rank=8"])
    assert cfg.distill is not None and cfg.techniques == ("lora", "distill")
    assert load_config(write_config({"distill": {"teacher": HUB}}), ["distill=null"]).distill is None


def test_override_errors_say_they_came_from_the_command_line(write_config: WriteConfig) -> None:
    overrides = ("distill.beta=0.3", "distill.hidden.loss=mes", "distill.temperature=0")
    assert _error_lines(write_config, {"distill": {"teacher": HUB}}, overrides) == [
        f"config.yaml: distill.beta: {ONLY_JSD} forward_kl; remove it (from the command line)",
        "config.yaml: distill.hidden.loss: 'mes' is not one of mse, cosine; did you mean mse? (from the command line)",
        "config.yaml: distill.temperature: must be > 0, got 0 (from the command line)",
    ]  # in the order the keys now stand in the section: teacher, then the three added
    # a file's jsd beta made wrong by a loss changed on the command line is marked too
    lines = _error_lines(write_config, {"distill": {"teacher": HUB, "loss": "jsd", "beta": 0.2}}, ("distill.loss=tvd",))
    assert lines == [
        "config.yaml: distill.beta: applies to distill.loss jsd only, not tvd; remove it (from the command line)"
    ]


# --------------------------------------------------------------------------------------- resolved config

VARIANTS: list[dict[str, Any]] = [
    {"teacher": HUB},
    {"teacher": "models/tiny", "loss": "jsd", "beta": 0.1, "temperature": 2, "alpha": 0.9, "teacher_quantize": "nf4"},
    {"teacher": HUB, "revision": "v2", "loss": "skew_forward_kl", "cache": "kd", "cache_top_k": 16},
    {
        "teachers": [{"path": "models/tiny", "weight": 1}, {"path": HUB, "weight": 3, "revision": "main"}],
        "loss": "tvd",
        "hidden": {"layers": [[0, 0], [1, 2]], "loss": "cosine", "weight": 0.1, "schedule": "progressive"},
    },
]


@pytest.mark.parametrize("distill", VARIANTS)
def test_resolved_config_round_trips(distill: dict[str, Any], tmp_path: Path, write_config: WriteConfig) -> None:
    cfg = load_config(write_config({"distill": distill, "lora": {}}))
    data = config_to_dict(cfg)
    assert json.loads(json.dumps(data)) == data  # plain: nested sections as mappings, pairs as lists
    assert TrainConfig.from_dict(data, source="resolved", base_dir="/nonexistent") == cfg
    assert load_config(write_resolved_config(cfg, tmp_path / "run")) == cfg


def test_resolved_distill_mapping(project: Path, write_config: WriteConfig) -> None:
    cfg = load_config(write_config({"distill": VARIANTS[3]}))
    assert list(config_to_dict(cfg)) == ["model", "data", "optimizer", "scheduler", "distill", "training"]
    assert config_to_dict(cfg)["distill"] == {
        "teacher": None,
        "revision": None,
        "teachers": [
            {"path": str(project / "models" / "tiny"), "weight": 1.0, "revision": None},
            {"path": HUB, "weight": 3.0, "revision": "main"},
        ],
        "teacher_quantize": None,
        "loss": "tvd",
        "beta": None,
        "skew": None,
        "temperature": 1.0,
        "alpha": 0.5,
        "hidden": {"layers": [[0, 0], [1, 2]], "loss": "cosine", "weight": 0.1, "schedule": "progressive"},
        "cache": None,
        "cache_top_k": None,
    }  # derived `source` fields are not keys


# ------------------------------------------------------------------------------------------------- docs


def test_docs_have_a_row_for_every_nested_key_and_state_the_t_squared_rule() -> None:
    text = render_reference()
    for section in ("distill.hidden", "distill.teachers[i]"):
        assert f"\n### `{section}:`\n" in text
    for key in ("layers", "loss", "weight", "schedule"):
        assert f"| `distill.hidden.{key}` |" in text
    for key in ("path", "weight", "revision"):
        assert f"| `distill.teachers[i].{key}` |" in text
    assert "| `distill.teachers[i].source` |" not in text and "| `distill.source` |" not in text  # derived
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `distill.")}
    assert "the divergence is multiplied by T²" in rows["distill.temperature"]
    assert "Every one of them is multiplied by T² (`temperature` squared), as Hinton et al." in rows["distill.loss"]
    assert "`entrenar distill-cache` rebuilds it" in rows["distill.cache"]
    assert "they are normalised" in rows["distill.teachers[i].weight"]


# ------------------------------------------------------------------------------------------ entrenar validate


def _validate_config(folder: Path, student: Path, distill: dict[str, Any]) -> Path:
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"hello world {i}"}) + "\n" for i in range(8)))
    config = {
        "model": {"path": str(student)},
        "data": {"train_path": "train.jsonl", "seq_len": 32, "batch_size": 4},
        "lora": {"rank": 4},
        "distill": distill,
        "training": {"max_steps": 4},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_validate_accepts_a_tiny_teacher(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    distill = {"teacher": str(tiny_checkpoints["llama"]), "loss": "jsd", "hidden": {"layers": [[0, 1]]}}
    config = _validate_config(tmp_path, tiny_checkpoints["qwen2"], distill)
    code, out, err = run_cli(capsys, "validate", str(config), "distill.temperature=2")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"{config}: valid lora config"


def test_validate_reports_each_distill_problem_on_its_line_with_exit_code_2(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    distill = {
        "teacher": str(tiny_checkpoints["llama"]),
        "teachers": [{"path": str(tiny_checkpoints["qwen3"])}],
        "beta": 0.5,
        "hidden": {"loss": "mes"},
        "cache": "kd",
    }
    config = _validate_config(tmp_path, tiny_checkpoints["qwen2"], distill)
    code, out, err = run_cli(capsys, "validate", str(config), "distill.cache_top_k=0")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: {config}: distill.teachers: cannot be used with distill.teacher; keep one of the two",
        f"error: {config}: distill.teachers: a mixture needs at least two teachers, got 1; use distill.teacher",
        f"error: {config}: distill.beta: applies to distill.loss jsd only, not forward_kl; remove it",
        f"error: {config}: distill.hidden.loss: 'mes' is not one of mse, cosine; did you mean mse?",
        f"error: {config}: distill.cache_top_k: must be >= 1, got 0 (from the command line)",
    ]
