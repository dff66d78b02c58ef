"""entrenar.merge.config and entrenar.merge.params: mergekit's YAML and its parameter resolution.

Oracle: mergekit 0.1.5 on the same YAML texts. `MergeConfiguration` parses them, its planner's
``normalize_config`` builds the input list, ``ConfigReader`` + ``parameter_resolver.resolve_parameters`` give
the values of one tensor at one ``t``, and ``MergePlanner._plan`` gives the values of every tensor of a whole
merge (read from its tasks). Expected values are mergekit's, compared with ``==`` (the same float
arithmetic), never copied by hand. Models are tiny Llama folders (config.json + zero weights) so that
mergekit's planner runs offline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mergekit.architecture import get_architecture_info
from mergekit.config import ConfigReader, MergeConfiguration
from mergekit.io.tasks import LoaderCache
from mergekit.options import MergeOptions
from mergekit.parameter_resolver import resolve_parameters as mergekit_resolve
from mergekit.plan import MergePlanner
from safetensors.torch import save_file

from entrenar.config.schema import PublishSection
from entrenar.errors import ConfigError, MergeError
from entrenar.merge.base import MergeMethod, ParameterSpec
from entrenar.merge.config import DEFAULT_SEED, MergeConfig, ModelRef, load_merge_config
from entrenar.merge.methods import METHODS
from entrenar.merge.params import Condition, evaluate_setting, group_inputs, layer_t, resolve_parameters
from entrenar.merge.plan import SliceSpec, plan_tensors

LAYERS = 4
LAYER_TENSORS = {
    "input_layernorm.weight": (8,),
    "self_attn.q_proj.weight": (8, 8),
    "self_attn.k_proj.weight": (8, 8),
    "self_attn.v_proj.weight": (8, 8),
    "self_attn.o_proj.weight": (8, 8),
    "post_attention_layernorm.weight": (8,),
    "mlp.gate_proj.weight": (16, 8),
    "mlp.up_proj.weight": (16, 8),
    "mlp.down_proj.weight": (8, 16),
}
OUTSIDE = {"model.embed_tokens.weight": (16, 8), "model.norm.weight": (8,), "lm_head.weight": (16, 8)}
NAMES = ["model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight", "lm_head.weight"]


def tensor_names() -> list[str]:
    per_layer = [f"model.layers.{i}.{suffix}" for i in range(LAYERS) for suffix in LAYER_TENSORS]
    return ["model.embed_tokens.weight", *per_layer, "model.norm.weight", "lm_head.weight"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``a``, ``b``, ``c``, ``d``: tiny Llama folders (4 layers, zero weights) and ``lora``, an adapter folder."""
    root = tmp_path_factory.mktemp("merge-models")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": LAYERS,
        "vocab_size": 16,
        "tie_word_embeddings": False,
    }
    shapes = {**OUTSIDE, **{f"model.layers.{i}.{k}": v for i in range(LAYERS) for k, v in LAYER_TENSORS.items()}}
    for name in "abcd":
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(root / name / "model.safetensors"))
    (root / "lora").mkdir()
    (root / "lora" / "adapter_config.json").write_text("{}")
    return root


@pytest.fixture
def write(models: Path) -> Callable[[str], Path]:
    """Write YAML text (``{root}`` stands for the models folder) as ``<models>/merge.yaml``."""

    def write_text(text: str) -> Path:
        path = models / "merge.yaml"
        path.write_text(text.replace("{root}", str(models)))
        return path

    return write_text


def load(path: Path, *overrides: str) -> MergeConfig:
    return load_merge_config(path, overrides, methods=METHODS)


def problems(path: Path, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, *overrides)
    return str(info.value).splitlines()


# ------------------------------------------------------------------------------ mergekit as the oracle


def mergekit_config(path: Path) -> tuple[MergeConfiguration, MergePlanner]:
    config = MergeConfiguration.model_validate(yaml.safe_load(path.read_text()))
    options = MergeOptions()
    LoaderCache().setup(options)
    base = config.base_model or config.referenced_models()[0]
    planner = MergePlanner(config, get_architecture_info(config, options), options, base.config())
    return config, planner


def mergekit_values(path: Path, tensor_name: str, t: float, slice_index: int) -> tuple[list[str], dict[str, Any]]:
    """mergekit's inputs of a slice and its values for one tensor: shared, then per input (absent -> None)."""
    config, planner = mergekit_config(path)
    planner.normalize_config()
    assert config.modules is not None
    module = next(iter(config.modules.values()))
    assert module.slices is not None
    out = module.slices[slice_index]
    reader = ConfigReader(config=config, t=t, slice_out=out, module=module)
    spec = planner._method.spec
    shared, per_input = mergekit_resolve(
        spec,
        tensor_name=tensor_name,
        inputs={s.model: tensor_name for s in out.sources},
        sources=reader.parameter_sources,
        base_model=reader.base_model,
        t=t,
    )
    values: dict[str, Any] = dict(shared)
    for p in spec.input_parameters:
        values[p.name] = tuple(per_input[s.model].get(p.name) for s in out.sources)
    return [str(s.model) for s in out.sources], values


def our_values(path: Path, tensor_name: str, t: float, slice_index: int | None) -> tuple[list[str], dict[str, Any]]:
    config = load(path)
    inputs, base_index = group_inputs(config, slice_index)
    resolved = resolve_parameters(
        config,
        METHODS[config.merge_method],
        tensor_name=tensor_name,
        t=t,
        sources=inputs,
        slice_index=slice_index,
        base_index=base_index,
    )
    return [str(model) for model in inputs], {**resolved.shared, **resolved.per_input}


# (id, YAML text): each is resolved for every name in NAMES at every t in TS, by both.
SETTINGS = [
    ("scalar", "merge_method: linear\nmodels:\n- {model: {root}/a, parameters: {weight: 0.25}}\n- model: {root}/b\n"
     "parameters: {weight: 3}"),
    ("gradient-3", "merge_method: slerp\nbase_model: {root}/a\nmodels: [{model: {root}/a}, {model: {root}/b}]\n"
     "parameters: {t: [0, 0.5, 1]}"),
    ("gradient-5", "merge_method: slerp\nbase_model: {root}/a\nmodels: [{model: {root}/a}, {model: {root}/b}]\n"
     "parameters: {t: [0.1, 0.9, 0.2, 0.7, 0.4]}"),
    ("filters-with-star", "merge_method: slerp\nbase_model: {root}/a\nmodels: [{model: {root}/a}, {model: {root}/b}]\n"
     "parameters: {t: [{filter: self_attn, value: 0.2}, {filter: mlp, value: 0.6}, {filter: '*', value: 0.9}]}"),
    ("filters-without-star", "merge_method: linear\nmodels: [{model: {root}/a}, {model: {root}/b}]\n"
     "parameters: {weight: [{filter: mlp, value: 2}, {value: 1}], normalize: {filter: self_attn, value: false}}"),
    ("gradient-in-filter", "merge_method: ties\nbase_model: {root}/a\nmodels:\n- model: {root}/b\n  parameters:\n"
     "    weight: [{filter: mlp, value: [0, 1, 0.5]}, {value: [1, 0]}]\n    density: 0.5\n- model: {root}/c\n"
     "  parameters: {weight: 1, density: [0.2, 0.9]}"),
    ("bool-gradients", "merge_method: ties\nbase_model: {root}/a\nmodels: [{model: {root}/b}, {model: {root}/c}]\n"
     "parameters: {weight: 1, normalize: [true, false], int8_mask: [false, true, false], "
     "rescale: {filter: mlp, value: [true, false, true, false, true]}}"),
    ("precedence-models", "merge_method: dare_ties\nbase_model: {root}/a\nmodels:\n- {model: {root}/b, parameters: "
     "{weight: {filter: mlp, value: 0.7}}}\n- {model: {root}/c, parameters: {density: 0.3}}\n"
     "parameters: {weight: 0.4, density: 0.6, lambda: 1.5}"),
    ("base-appended", "merge_method: linear\nbase_model: {root}/c\nmodels:\n- {model: {root}/a, parameters: "
     "{weight: 2}}\n- {model: {root}/b, parameters: {weight: [1, 3]}}\nparameters: {weight: 0.5}"),
    ("nuslerp-base", "merge_method: nuslerp\nbase_model: {root}/a\nmodels:\n- {model: {root}/b, parameters: "
     "{weight: 0.3}}\n- {model: {root}/c, parameters: {weight: [0.7, 0.1]}}"),
]  # fmt: skip
TS = [0.0, 0.3, 0.5, 0.6, 1.0, layer_t(2, 7)]


@pytest.mark.parametrize(("case", "text"), SETTINGS, ids=[case for case, _ in SETTINGS])
def test_models_settings_match_mergekit(case: str, text: str, write: Callable[[str], Path]) -> None:
    path = write(text)
    for name in NAMES:
        for t in TS:
            assert our_values(path, name, t, None) == mergekit_values(path, name, t, 0), (name, t)


SLICES = (
    "merge_method: ties\nbase_model: {root}/a\n"
    "slices:\n"
    "- sources:\n"
    "  - {model: {root}/a, layer_range: [0, 2]}\n"
    "  - model: {root}/b\n"
    "    layer_range: [1, 3]\n"
    "    parameters: {weight: [0, 1], density: [{filter: layers.2., value: 0.2}, {filter: mlp, value: 0.3}]}\n"
    "  - {model: {root}/c, layer_range: [2, 4]}\n"
    "  parameters:\n"
    "    {density: 0.7, weight: {filter: self_attn, value: 0.9}, normalize: {filter: layers.1., value: false}}\n"
    "- sources:\n"
    "  - {model: {root}/d, layer_range: [2, 4], parameters: {weight: 2}}\n"
    "  - {model: {root}/a, layer_range: [2, 4]}\n"
    "  base_model: {root}/a\n"
    "parameters: {weight: [0.25, 0.75], lambda: [1, 2]}\n"
)


def test_slice_settings_match_mergekit(write: Callable[[str], Path]) -> None:
    # precedence: a source's own setting, then its slice's, then the top level; a miss falls through
    path = write(SLICES)
    for slice_index in (0, 1):
        for name in NAMES:
            for t in TS:
                expected = mergekit_values(path, name, t, slice_index)
                assert our_values(path, name, t, slice_index) == expected, (slice_index, name, t)


def mergekit_plan(path: Path) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Every planned tensor's values in mergekit's whole-merge plan: name -> (inputs, shared + per input)."""
    _, planner = mergekit_config(path)
    planner._plan()
    result = {}
    for weight, task in planner._tensors:
        order = list(task.model_order)
        values: dict[str, Any] = dict(task.parameters.items())
        for p in planner._method.spec.input_parameters:
            values[p.name] = tuple(task.input_parameters[model].get(p.name) for model in order)
        result[weight.name] = ([str(model) for model in order], values)
    return result


def our_plan(path: Path) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Every tensor planned by `entrenar.merge.plan` and resolved by `resolve_parameters`."""
    config = load(path)
    referenced = list(config.referenced_models())
    if config.slices is None:
        inputs, _ = group_inputs(config, None)
        specs = [SliceSpec(tuple((referenced.index(model), 0, LAYERS) for model in inputs))]
    else:
        specs = [
            SliceSpec(tuple((referenced.index(s.model), *s.layer_range) for s in out.sources)) for out in config.slices
        ]
    names = dict.fromkeys(range(len(referenced)), tensor_names())
    planned, _ = plan_tensors(specs, names, dict.fromkeys(range(len(referenced)), LAYERS))
    result = {}
    for tensor in planned:
        sources = [referenced[index] for index, _ in tensor.sources]
        resolved = resolve_parameters(
            config,
            METHODS[config.merge_method],
            tensor_name=tensor.name,
            t=tensor.t,
            sources=sources,
            slice_index=tensor.slice_index if config.slices is not None else None,
            base_index=group_inputs(config, tensor.slice_index)[1],
            input_names=[name for _, name in tensor.sources],
        )
        result[tensor.name] = ([str(s) for s in sources], {**resolved.shared, **resolved.per_input})
    return result


@pytest.mark.parametrize("text", [SLICES, SETTINGS[5][1], SETTINGS[8][1]], ids=["slices", "ties", "linear"])
def test_whole_merge_plan_matches_mergekit(text: str, write: Callable[[str], Path]) -> None:
    # per tensor: its t within its slice (0 outside the layers); per-input filters on each input's own tensor
    # name (output layer 1 is b's layer 2: 'layers.2.' matches it), shared ones on the output's name; the first
    # slice's inputs and settings for the embedding, the last slice's for the final norm and the LM head
    path = write(text)
    assert our_plan(path) == mergekit_plan(path)


def test_layer_t_is_mergekits_position() -> None:
    # mergekit plan_slice: idx / (num_layers - 1), and 1 for a one-layer slice
    assert [layer_t(i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert layer_t(0, 1) == 1.0


def test_filters_that_miss_a_required_parameter(write: Callable[[str], Path]) -> None:
    path = write(
        "merge_method: linear\nmodels: [{model: {root}/a}, {model: {root}/b}]\n"
        "parameters: {weight: {filter: mlp, value: 1}}"
    )
    with pytest.raises(RuntimeError, match="Missing required parameter weight"):
        mergekit_values(path, "model.layers.0.self_attn.q_proj.weight", 0.0, 0)
    with pytest.raises(MergeError, match=r"^.*/a: model\.layers\.0\.self_attn\.q_proj\.weight: linear needs weight"):
        our_values(path, "model.layers.0.self_attn.q_proj.weight", 0.0, None)
    assert our_values(path, "model.layers.0.mlp.up_proj.weight", 0.0, None)[1]["weight"] == (1.0, 1.0)


def test_evaluate_setting_by_hand() -> None:
    # [0, 10] at t = 0.3: 0.7 * 0 + 0.3 * 10; booleans pick index int(t * (len - 1)); no match: None
    assert evaluate_setting((Condition((0.0, 10.0)),), "x", 0.3) == 0.3 * 10.0
    assert evaluate_setting((Condition((True, False, True)),), "x", 0.99) is False
    assert evaluate_setting((Condition(1.0, "mlp"),), "model.layers.0.self_attn.q_proj.weight", 0.0) is None
    assert evaluate_setting((Condition(1.0, "mlp"),), "", 0.0) is None


# ------------------------------------------------------------------------------ what the loader gives


def test_loads_models_with_references_and_our_keys(
    write: Callable[[str], Path], models: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (models / "eval.jsonl").write_text('{"text": "hi"}\n')
    path = write(
        "merge_method: dare_ties\n"
        "base_model: ./a\n"
        "models:\n"
        "  - model: b+lora\n"
        "  - model: org/model@v1.0+org/adapter\n"
        "    parameters: {weight: 0.5}\n"
        "parameters: {weight: 1, density: 0.5}\n"
        "dtype: bfloat16\n"
        "out_dtype: float16\n"
        "tokenizer_source: union\n"
        "chat_template: chatml\n"
        "eval_data: eval.jsonl\n"
        "publish: {repo: me/merged}\n"
    )
    monkeypatch.chdir(tmp_path)  # relative paths start at the YAML file's folder, not the working directory
    config = load(path)
    assert config.base_model == ModelRef(str(models / "a"))
    assert config.models is not None
    assert [entry.model for entry in config.models] == [
        ModelRef(str(models / "b"), None, str(models / "lora")),
        ModelRef("org/model", "v1.0", "org/adapter"),
    ]
    assert str(config.models[1].model) == "org/model@v1.0+org/adapter"
    assert (config.dtype, config.out_dtype, config.tokenizer_source, config.chat_template) == (
        "bfloat16",
        "float16",
        "union",
        "chatml",
    )
    assert (config.eval_data, config.keep_worse, config.seed) == (str(models / "eval.jsonl"), False, DEFAULT_SEED)
    assert config.publish == PublishSection(repo="me/merged")
    assert group_inputs(config, None) == ((*[m.model for m in config.models], config.base_model), 2)
    assert config.referenced_models() == (*[m.model for m in config.models], config.base_model)


def test_seed_only_for_random_methods(write: Callable[[str], Path]) -> None:
    text = "merge_method: {method}\nbase_model: {root}/a\nmodels: [{model: {root}/b}]\nparameters: {weight: 1}\n"
    assert load(write(text.replace("{method}", "della") + "seed: 7")).seed == 7
    assert load(write(text.replace("{method}", "ties"))).seed is None
    assert problems(write(text.replace("{method}", "ties") + "seed: 7")) == [
        f"{write('')}: seed: ties draws no random numbers; remove seed"
    ]


def test_overrides_apply_before_the_checks(write: Callable[[str], Path], models: Path) -> None:
    path = write("merge_method: linear\nmodels: [{model: {root}/a}, {model: {root}/b}]\nparameters: {weight: 1}")
    config = load(path, "parameters.normalize=false", "base_model=d", "parameters.weight=[1, 2]")
    assert config.parameters == {"weight": (Condition((1.0, 2.0)),), "normalize": (Condition(False),)}
    assert config.base_model == ModelRef(str(models / "d"))


def test_to_yaml_round_trips_and_mergekit_reads_it(write: Callable[[str], Path], models: Path) -> None:
    (models / "eval.txt").write_text("hello\n")
    path = write(SLICES + "eval_data: eval.txt\nkeep_worse: true\nchat_template: auto\npublish: {repo: me/x}\n")
    config = load(path)
    text = config.to_yaml()
    again = write(text)
    assert load(again) == config
    # mergekit reads the resolved file (ignoring our keys) and resolves the same values
    assert mergekit_values(again, NAMES[0], 0.5, 0) == our_values(again, NAMES[0], 0.5, 0)
    assert yaml.safe_load(text)["publish"] == {
        "repo": "me/x",
        "private": False,
        "model_card": True,
        "format": "safetensors",
    }


def test_methods_come_from_the_registry_or_the_caller(write: Callable[[str], Path]) -> None:
    def merge(*_: object) -> torch.Tensor:
        raise AssertionError("not called")

    fake = MergeMethod(
        "fake", "Fake", "https://example.com", "none", (ParameterSpec("flag", bool, True, False),), False, merge
    )
    path = write("merge_method: fake\nmodels: [{model: {root}/a, parameters: {flag: [false, true]}}]")
    config = load_merge_config(path, methods={"fake": fake})
    assert config.models is not None and config.models[0].parameters == {"flag": (Condition((False, True)),)}
    assert "unknown merge method 'fake'" in problems(path)[0]
    assert load_merge_config(write(SLICES)).merge_method == "ties"  # the default is entrenar.merge.methods' registry


# ------------------------------------------------------------------------------ errors


TWO = "models: [{model: {root}/a}, {model: {root}/b}]\n"
REF_LIKE = "is not a model reference like org/name, ./folder, org/name@revision or model+adapter"
LAYER_RANGE = "expected [start, end] with 0 <= start < end (layers start..end-1), got a list"
# (id, YAML text, the expected lines after '<file>: ', in document order; {root} is the models folder)
ERRORS: list[tuple[str, str, list[str]]] = [
    (
        "unknown-top-key",
        "merge_methd: linear\n" + TWO,
        [
            "merge_methd: unknown key; did you mean merge_method?",
            "merge_method: missing required key; one of: " + ", ".join(sorted(METHODS)),
        ],
    ),
    (
        "unsupported-keys",
        "merge_method: linear\n" + TWO + "parameters: {weight: 1}\nmodules: {}\ntokenizer: {}\n",
        [
            "modules: mergekit's modules syntax (multi-module models) is not supported; use models or slices",
            "tokenizer: mergekit's tokenizer block is not supported; use tokenizer_source: base, union or a model",
        ],
    ),
    ("unknown-method", "merge_method: tie\n" + TWO, ["merge_method: unknown merge method 'tie'; did you mean ties?"]),
    (
        "unknown-parameter",
        "merge_method: ties\nbase_model: {root}/a\n" + TWO + "parameters: {wieght: 1}\n",
        ["parameters.wieght: ties has no parameter 'wieght'; did you mean weight?"],
    ),
    (
        "wrong-types",
        "merge_method: ties\nbase_model: {root}/a\n"
        "models:\n- model: {root}/b\n  parameters: {weight: abc, density: [], normalize: true}\n"
        "- {model: {root}/a, parameters: {density: 0.5}}\n"
        "parameters: {weight: [1, true], normalize: 1, lambda: [{filter: 3, value: 1}], rescale: '0.5',\n"
        "  int8_mask: [true, {value: false}]}\n",
        [
            "models[0].parameters.weight: weight takes a number, got 'abc'",
            "models[0].parameters.density: empty list; give a value or a gradient like [0, 0.5, 1] for density",
            "models[0].parameters.normalize: normalize is one value for all inputs of ties; set it under parameters",
            "models[1].parameters.density: ties takes no density for the base model {root}/a; remove it",
            "parameters.weight[1]: weight takes a number, got true",
            "parameters.normalize: normalize takes true or false, got 1",
            "parameters.lambda[0].filter: expected part of a tensor name like mlp or self_attn, got 3; "
            "leave filter out (or write '*') to match every tensor",
            "parameters.rescale: rescale takes true or false, got '0.5'",
            "parameters.int8_mask: mixes values and {filter, value} entries; write a gradient or a list of conditions",
        ],
    ),
    (
        "models-and-slices",
        "merge_method: linear\n" + TWO + "slices: []\n",
        ["slices: cannot be used with models; keep one of the two"],
    ),
    (
        "neither",
        "merge_method: linear\n",
        ["models: missing; list the models to merge under models (or layer ranges under slices)"],
    ),
    (
        "missing-base",
        "merge_method: ties\n" + TWO + "parameters: {weight: 1}\n",
        ["base_model: missing; ties needs a base model (the one the others are compared to)"],
    ),
    (
        "base-not-a-source",
        "merge_method: slerp\nbase_model: {root}/c\nparameters: {t: 0.5}\nslices:\n"
        "- sources: [{model: {root}/a, layer_range: [0, 2]}, {model: {root}/b, layer_range: [0, 2]}]\n",
        ["slices[0].sources: the base model {root}/c is not among them; add it as a source"],
    ),
    (
        "layer-ranges",
        "merge_method: linear\nparameters: {weight: 1}\nslices:\n"
        "- sources: [{model: {root}/a, layer_range: [2, 1]}, {model: {root}/b, layer_range: [0]}]\n"
        "- sources: [{model: {root}/a, layer_range: [0, 2]}, {model: {root}/b, layer_range: [0, 3]}]\n"
        "  residual_weight: 0.5\n",
        [
            f"slices[0].sources[0].layer_range: {LAYER_RANGE}",
            f"slices[0].sources[1].layer_range: {LAYER_RANGE}",
            "slices[1].residual_weight: mergekit's residual_weight is not supported; remove it",
            "slices[1].sources: layer ranges of [2, 3] layers; every source of a slice gives the same number of layers",
        ],
    ),
    (
        "references",
        "merge_method: linear\nparameters: {weight: 1}\nmodels:\n"
        "- model: a+b+c\n- model: org/x@\n- model: a@main\n- model: nowhere\n- model: a+b\n- model: a\n",
        [
            "models[0].model: 'a+b+c' has more than one '+'; write model+adapter",
            f"models[1].model: 'org/x@' {REF_LIKE}",
            "models[2].model: @main applies to Hub repo ids only, and a is the local path {root}/a",
            "models[3].model: 'nowhere' is neither an existing file or folder ({root}/nowhere) "
            "nor a Hub repo id like 'Qwen/Qwen2.5-0.5B'",
            "models[4].model: the adapter folder {root}/b has no adapter_config.json; pass a PEFT adapter folder",
        ],
    ),
    (
        "duplicates",
        "merge_method: slerp\nbase_model: {root}/a\nparameters: {t: 0.5}\n"
        "models: [{model: {root}/a}, {model: {root}/b}, {model: ./c}, {model: {root}/c}]\n",
        ["models[3].model: {root}/c is already models[2].model; list each model once"],
    ),
    (
        "count",
        "merge_method: slerp\nbase_model: {root}/a\nparameters: {t: 0.5}\n"
        "models: [{model: {root}/b}, {model: {root}/c}]\n",
        ["models: slerp merges exactly 2 models (the base included), got 3"],
    ),
    (
        "count-besides-the-base",
        "merge_method: nuslerp\nparameters: {weight: 1}\n"
        "models: [{model: {root}/b}, {model: {root}/c}, {model: {root}/d}]\n",
        ["models: nuslerp merges exactly 2 models (besides the base), got 3"],
    ),
    (
        "required-shared",
        "merge_method: slerp\nbase_model: {root}/a\n" + TWO + "chat_template: chatm\n",
        [
            "chat_template: 'chatm' is no template name nor Jinja template; did you mean chatml?",
            "parameters: missing t; slerp needs it (set parameters.t)",
        ],
    ),
    (
        "required-for-the-appended-base",
        "merge_method: linear\nbase_model: {root}/c\nmodels: [{model: {root}/a, parameters: {weight: 1}}]\n",
        ["base_model: no weight; linear needs one per input: set it here or under parameters"],
    ),
    (
        "our-keys",
        "merge_method: linear\n" + TWO + "parameters: {weight: 1}\nkeep_worse: true\nseed: -1\n"
        "tokenizer_source: base\nchat_template: '{% for m in messages %}{{ m }'\n"
        "publish: {repo: 'not a repo', merge_adapters: true}\n",
        [
            "keep_worse: applies with eval_data only (the perplexity check); set eval_data or remove it",
            "seed: must be in [0, 4294967295], got -1",
            "tokenizer_source: base needs base_model (its tokenizer); set base_model or name a model",
            "chat_template: chat template line 1: unexpected '}'; fix the template syntax",
            "publish.repo: ",
            "publish.merge_adapters: a merge writes a full model, with no adapters to merge; remove it",
        ],
    ),
    (
        "eval-data",
        "merge_method: linear\n" + TWO + "parameters: {weight: 1}\neval_data: a\nkeep_worse: true\n",
        ["eval_data: {root}/a is a folder; pass a .txt or .jsonl file (relative paths start at the config's folder)"],
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), ERRORS, ids=[case for case, _, _ in ERRORS])
def test_errors_one_line_each_with_the_key_path(
    case: str, text: str, expected: list[str], write: Callable[[str], Path], models: Path
) -> None:
    path = write(text)
    lines = problems(path)
    wanted = [f"{path}: {line.replace('{root}', str(models))}" for line in expected]
    assert len(lines) == len(wanted), lines
    for line, start in zip(lines, wanted, strict=True):
        assert line.startswith(start) if start.endswith(": ") else line == start, (line, start)


def test_override_errors_say_so(write: Callable[[str], Path]) -> None:
    path = write("merge_method: linear\nmodels: [{model: {root}/a}]\nparameters: {weight: 1}")
    assert problems(path, "seed", "models.model=x", "parameters.weight=abc", "out_dtype=float8") == [
        f"{path}: override 'seed': expected key=value, e.g. training.max_steps=10 (from the command line)",
        f"{path}: models.model: models is a list, not a section; set models=... instead (from the command line)",
        f"{path}: parameters.weight: weight takes a number, got 'abc' (from the command line)",
        f"{path}: out_dtype: 'float8' is not one of float32, bfloat16, float16; did you mean float32? "
        "(from the command line)",
    ]
    assert problems(path, "merge_method=slurp") == [
        f"{path}: merge_method: unknown merge method 'slurp'; did you mean slerp? (from the command line)"
    ]


def test_file_problems_are_one_line(tmp_path: Path) -> None:
    for text, message in [
        (None, "no such file; check the path of the merge config"),
        ("", "the file is empty; it needs merge_method and models (or slices)"),
        ("- a\n", "expected a mapping of keys (merge_method, base_model, models, slices"),
        ("a: [\n", "invalid YAML"),
    ]:
        path = tmp_path / "m.yaml"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(path)
