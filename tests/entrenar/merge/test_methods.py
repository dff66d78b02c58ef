"""entrenar.merge.methods: every deterministic method against mergekit 0.1.5's own method objects (the oracle:
``registry.get(name)([TensorGroup.from_tensors(...)], parameters=...)``), declared parameters and input
constraints against mergekit's specs, properties of each method, the registry and `validate_group`."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mergekit.merge_methods import registry as mergekit_registry
from mergekit.merge_methods.base import MISSING, BasePolicy, ParameterScope
from mergekit.merge_methods.base import TensorGroup as MergekitGroup

from entrenar.errors import MergeError
from entrenar.merge.base import MergeMethod, ResolvedParameters, TensorGroup
from entrenar.merge.methods import ALL_METHODS, METHODS, get_method, validate_group

# The methods issue 14 documents for `entrenar merge` (README, docs), in registry order.
DOCUMENTED = [
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "slerp",
    "nuslerp",
    "model_stock",
    "passthrough",
]
SHAPES = [(7,), (6, 10), (40, 3)]  # a norm, a projection, a tall embedding-like matrix
TOLERANCE = 1e-5


def tensors(count: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator) for _ in range(count))


def resolve(method: MergeMethod, count: int, base_index: int | None, values: dict[str, Any]) -> ResolvedParameters:
    """Our parameters from mergekit-form `values`: shared scalars, per-input lists in scope order (the inputs other
    than the base for base-aware methods, every input otherwise) or scalars for all; defaults fill the rest."""
    targets = [i for i in range(count) if method.base == "none" or i != base_index]
    shared: dict[str, Any] = {}
    per_input: dict[str, tuple[Any, ...]] = {}
    for spec in method.parameters:
        value = values.get(spec.name, spec.default)
        if not spec.per_input:
            shared[spec.name] = value
            continue
        listed = value if isinstance(value, list) else [value] * len(targets)
        full: list[Any] = [None] * count
        for index, item in zip(targets, listed, strict=True):
            full[index] = item
        per_input[spec.name] = tuple(full)
    return ResolvedParameters(shared, per_input)


def ours(name: str, inputs: tuple[torch.Tensor, ...], base_index: int | None, values: dict[str, Any]) -> torch.Tensor:
    method = METHODS[name]
    group = TensorGroup("model.layers.0.mlp.up_proj.weight", inputs, base_index)
    validate_group(method, group)
    parameters = resolve(method, len(inputs), base_index, values)
    generator = torch.Generator().manual_seed(0) if method.random else None
    result = method.merge(group, parameters, generator)
    assert result.dtype == torch.float32 and result.shape == inputs[0].shape
    return result


def theirs(name: str, inputs: tuple[torch.Tensor, ...], base_index: int | None, values: dict[str, Any]) -> torch.Tensor:
    group = MergekitGroup.from_tensors(inputs, base_index=base_index)
    result: torch.Tensor = mergekit_registry.get(name)([group], parameters=values)[0]
    return result


# (method, number of inputs, base position, parameters in mergekit's form)
CASES: list[tuple[str, int, int | None, dict[str, Any]]] = [
    ("linear", 3, None, {"weight": [0.3, 0.5, 0.9]}),
    ("linear", 3, None, {"weight": [0.3, -0.5, 0.9], "normalize": False}),
    ("linear", 2, None, {"weight": [2.0, 1.0]}),
    ("task_arithmetic", 3, 2, {"weight": [0.7, -0.4]}),
    ("task_arithmetic", 3, 0, {"weight": [0.7, 0.4], "normalize": True, "lambda": 0.6}),
    ("task_arithmetic", 4, 1, {"weight": [0.5, 0.2, 1.3], "lambda": 1.5}),
    ("ties", 3, 2, {"weight": [1.0, 0.3], "density": [0.5, 0.8]}),
    ("ties", 4, 3, {"weight": [0.6, 0.3, 0.9], "density": 0.3, "normalize": False, "lambda": 0.5}),
    ("ties", 4, 0, {"weight": [0.6, 0.3, 0.9], "density": 0.7, "int8_mask": True, "rescale": True}),
    ("ties", 3, 2, {"weight": [1.0, 0.5]}),
    ("breadcrumbs", 3, 2, {"weight": [0.8, 0.6], "density": 0.6}),
    ("breadcrumbs", 3, 2, {"weight": [0.8, 0.6], "density": [0.6, 0.4], "gamma": [0.1, 0.2], "rescale": True}),
    ("breadcrumbs_ties", 4, 3, {"weight": [0.8, 0.6, 0.5], "density": 0.6, "gamma": 0.1, "normalize": True}),
    ("breadcrumbs_ties", 3, 1, {"weight": [0.8, 0.6], "density": 0.5, "int8_mask": True, "lambda": 0.7}),
    # density 1 turns the random methods deterministic: their election, normalize and lambda stay to compare
    ("dare_ties", 3, 2, {"weight": [0.8, 0.6], "normalize": True, "lambda": 0.9}),
    ("dare_linear", 3, 2, {"weight": [0.8, 0.6]}),
    ("della", 3, 2, {"weight": [0.8, 0.6]}),
    ("della_linear", 3, 0, {"weight": [0.8, 0.6], "lambda": 1.2}),
    ("slerp", 2, 0, {"t": 0.0}),
    ("slerp", 2, 0, {"t": 0.3}),
    ("slerp", 2, 1, {"t": 0.3}),
    ("slerp", 2, 0, {"t": 1.0}),
    ("nuslerp", 2, None, {"weight": [0.3, 0.7]}),
    ("nuslerp", 2, None, {"weight": [0.3, 0.7], "nuslerp_flatten": False}),
    ("nuslerp", 2, None, {"weight": [0.3, 0.7], "nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ("nuslerp", 3, 2, {"weight": [0.6, 0.2]}),
    ("nuslerp", 3, 0, {"weight": [1.0, -1.0], "nuslerp_flatten": False}),
    ("nuslerp", 3, 1, {"weight": [0.5, 0.9], "nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ("model_stock", 3, 2, {}),
    ("model_stock", 4, 0, {}),
    ("model_stock", 4, 3, {"filter_wise": True}),
    ("passthrough", 1, None, {}),
    ("passthrough", 1, None, {"scale": 0.5}),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("name", "count", "base_index", "values"), CASES)
def test_matches_mergekit(
    name: str, count: int, base_index: int | None, values: dict[str, Any], shape: tuple[int, ...]
) -> None:
    inputs = tensors(count, shape)
    expected = theirs(name, inputs, base_index, values)
    assert (ours(name, inputs, base_index, values) - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("scale", [1.5, -2.0])
def test_slerp_nearly_parallel_falls_back_to_lerp_as_mergekit(t: float, scale: float) -> None:
    # cos = ±(1 - ~1e-8) > 0.9995: both take the linear branch, (1 - t) * base + t * other
    base, noise = tensors(2, (6, 10))
    other = scale * base + 1e-4 * noise
    lerp = (1 - t) * base + t * other
    assert torch.allclose(ours("slerp", (base, other), 0, {"t": t}), lerp, atol=1e-6)
    assert (ours("slerp", (base, other), 0, {"t": t}) - theirs("slerp", (base, other), 0, {"t": t})).abs().max() <= 1e-6


def test_zero_tensors_as_mergekit() -> None:
    # zero norms, zero task vectors, zero denominators: the guards give finite values equal to mergekit's
    zero = torch.zeros(4, 5)
    (one,) = tensors(1, (4, 5))
    for name, inputs, base, values in [
        ("slerp", (zero, one), 0, {"t": 0.4}),
        ("nuslerp", (zero, one), None, {"weight": [0.5, 0.5], "nuslerp_flatten": False}),
        ("model_stock", (one, one, one), 0, {}),
        ("ties", (one, one, one), 0, {"weight": [0.5, 0.5], "density": 0.5}),
        ("task_arithmetic", (one, zero, one), 0, {"weight": [0.5, -0.5], "normalize": True}),
    ]:
        result = ours(name, inputs, base, values)
        assert torch.isfinite(result).all()
        assert torch.allclose(result, theirs(name, inputs, base, values), atol=1e-6), name


@pytest.mark.parametrize("name", DOCUMENTED)
def test_parameters_and_defaults_are_mergekit_s(name: str) -> None:
    spec = mergekit_registry.get(name).spec
    method = METHODS[name]
    expected = {
        p.name: (p.value_type, p.scope != ParameterScope.SHARED, None if p.default is MISSING else p.default)
        for p in spec.parameters
    }
    if name == "passthrough":  # mergekit: Optional[float] defaulting to None, i.e. unscaled
        assert expected.pop("scale")[1:] == (True, None)
        expected["scale"] = (float, True, 1.0)
    assert {p.name: (p.kind, p.per_input, p.default) for p in method.parameters} == expected
    # mergekit's per-input scope is NON_BASE for base-aware methods and INPUT where the base is ignored
    for p in spec.parameters:
        if p.scope != ParameterScope.SHARED:
            assert (p.scope == ParameterScope.INPUT) == (method.base == "none")
    policy = {BasePolicy.REQUIRED: "required", BasePolicy.OPTIONAL: "optional", BasePolicy.IGNORED: "none"}
    assert method.base == policy[spec.contract.base]
    assert (method.title, method.reference) == (
        spec.pretty_name or method.title,
        spec.reference_url or method.reference,
    )


@pytest.mark.parametrize("name", DOCUMENTED)
def test_input_constraints_are_mergekit_s(name: str) -> None:
    # every group of 1-4 inputs with and without a base: ours rejects exactly what mergekit's contract rejects
    contract = mergekit_registry.get(name).spec.contract
    method = METHODS[name]
    for count in range(1, 5):
        for base_index in [None, *range(count)]:
            try:
                contract.validate_ids(list(range(count)), base_index)
                accepted = True
            except ValueError:
                accepted = False
            group = TensorGroup("w", tuple(torch.zeros(2) for _ in range(count)), base_index)
            try:
                validate_group(method, group)
                assert accepted, (count, base_index)
            except MergeError:
                assert not accepted, (count, base_index)


def test_registry_is_the_documented_list_with_unique_names() -> None:
    names = [method.name for method in ALL_METHODS]
    assert len(set(names)) == len(names)
    assert names == DOCUMENTED == list(METHODS)
    assert all(method.reference.startswith("https://") for method in ALL_METHODS)
    assert [m.name for m in ALL_METHODS if m.random] == ["dare_ties", "dare_linear", "della", "della_linear"]


def test_get_method_suggests_the_closest_name() -> None:
    assert get_method("ties") is METHODS["ties"]
    with pytest.raises(MergeError, match=r"unknown merge_method 'slrep'; did you mean 'slerp'\? choose one of: linear"):
        get_method("slrep")


def test_linear_of_identical_tensors_is_that_tensor() -> None:
    (tensor,) = tensors(1, (6, 10))
    result = ours("linear", (tensor, tensor, tensor), None, {"weight": [0.2, 0.3, 1.1]})
    assert torch.allclose(result, tensor, rtol=1e-6, atol=0)


def test_linear_rejects_weights_summing_to_zero_with_normalize() -> None:
    inputs = tensors(2, (3,))
    with pytest.raises(MergeError, match=r"model.layers.0.mlp.up_proj.weight: linear weights sum to 0"):
        ours("linear", inputs, None, {"weight": [1.0, -1.0]})


def test_slerp_endpoints_are_the_inputs() -> None:
    base, other = tensors(2, (6, 10))
    assert torch.equal(ours("slerp", (other, base), 1, {"t": 0.0}), base)
    assert torch.allclose(ours("slerp", (other, base), 1, {"t": 1.0}), other, atol=1e-6)


def test_slerp_keeps_the_norm_of_unit_vectors() -> None:
    # two orthogonal unit vectors: every point on the arc between them has norm 1 (a lerp midpoint has 1/sqrt(2))
    base, other = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    result = ours("slerp", (base, other), 0, {"t": 0.5})
    assert torch.allclose(result, torch.tensor([0.5**0.5, 0.5**0.5]))


def test_ties_with_one_model_and_full_density_is_task_arithmetic() -> None:
    base, model = tensors(2, (6, 10))
    values = {"weight": [0.7], "normalize": False, "lambda": 0.8}
    assert torch.equal(ours("ties", (model, base), 1, values), ours("task_arithmetic", (model, base), 1, values))


def test_ties_keeps_only_the_elected_sign() -> None:
    # column 0: deltas +2 and -1 sum to +1, so only +2 survives (normalized by its weight 1: +2);
    # column 1: -3 and +1 sum to -2, only -3 survives; column 2: 0 and 0 -> 0 (divisor guard 0 -> 1)
    base = torch.zeros(3)
    a, b = torch.tensor([2.0, -3.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0])
    result = ours("ties", (a, b, base), 2, {"weight": [1.0, 1.0]})
    assert result.tolist() == [2.0, -3.0, 0.0]


def test_model_stock_of_orthogonal_task_vectors_stays_near_the_base() -> None:
    # two orthogonal task vectors: cos = 0, t = 2 * 0 / (1 + 0) = 0 -> the base exactly
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert torch.equal(ours("model_stock", (base, a, b), 0, {}), base)
    # parallel ones: cos = 1, t = 1 -> their average
    assert torch.equal(ours("model_stock", (base, a, 3 * a), 0, {}), 2 * a)


def test_passthrough_returns_the_input_scaled() -> None:
    (tensor,) = tensors(1, (4, 5))
    assert torch.equal(ours("passthrough", (tensor,), None, {}), tensor)
    assert torch.equal(ours("passthrough", (tensor,), None, {"scale": 0.5}), tensor * 0.5)


def test_validate_group_messages() -> None:
    a, b, c = (torch.zeros(2, 3),) * 3
    with pytest.raises(MergeError, match=r"^lm_head.weight: merge_method slerp takes exactly 2 input models"):
        validate_group(METHODS["slerp"], TensorGroup("lm_head.weight", (a, b, c), 0))
    with pytest.raises(MergeError, match=r"^w: merge_method ties needs a base model; set base_model$"):
        validate_group(METHODS["ties"], TensorGroup("w", (a, b), None))
    with pytest.raises(MergeError, match=r"nuslerp takes exactly 2 models besides the base, got 3"):
        validate_group(METHODS["nuslerp"], TensorGroup("w", (a, b, c), None))
    with pytest.raises(MergeError, match=r"model_stock takes at least 3 input models \(base included\), got 2"):
        validate_group(METHODS["model_stock"], TensorGroup("w", (a, b), 0))
    with pytest.raises(
        MergeError, match=r"passthrough takes exactly 1 input model \(base included\), got 2; change the models listed$"
    ):
        validate_group(METHODS["passthrough"], TensorGroup("w", (a, b), None))
    with pytest.raises(
        MergeError, match=r"^model.embed_tokens.weight: input shapes differ \(input 0: \(2, 3\), input 1: \(4, 3\)\)"
    ):
        validate_group(METHODS["linear"], TensorGroup("model.embed_tokens.weight", (a, torch.zeros(4, 3)), None))
