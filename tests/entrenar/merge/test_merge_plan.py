"""entrenar.merge.plan: which input tensors make each output tensor (mergekit's planner as oracle in the e2e tests)."""

from __future__ import annotations

import pytest

from entrenar.errors import MergeError
from entrenar.merge.plan import PlannedTensor, SliceSpec, plan_tensors

SUFFIXES = ("input_layernorm.weight", "self_attn.q_proj.weight")


def names(layers: int, head: bool = True) -> list[str]:
    per_layer = [f"model.layers.{i}.{suffix}" for i in range(layers) for suffix in SUFFIXES]
    return ["model.embed_tokens.weight", *per_layer, "model.norm.weight", *(["lm_head.weight"] if head else [])]


def test_models_form_is_one_slice_over_every_layer() -> None:
    plan, layers = plan_tensors([SliceSpec(((0, 0, 3), (1, 0, 3)))], {0: names(3), 1: names(3)}, {0: 3, 1: 3})
    assert layers == 3 and len(plan) == 3 * 2 + 3
    assert plan[0] == PlannedTensor(
        "model.embed_tokens.weight", ((0, "model.embed_tokens.weight"), (1, "model.embed_tokens.weight")), 0.0, 0, True
    )
    # t runs over the layers: 0, 0.5, 1; the final norm and the head are at t = 0, the head holds tokens
    assert [p.t for p in plan[1:7:2]] == [0.0, 0.5, 1.0]
    assert (plan[-2].name, plan[-2].t, plan[-2].vocab) == ("model.norm.weight", 0.0, False)
    assert (plan[-1].name, plan[-1].vocab) == ("lm_head.weight", True)


def test_slices_stack_layers_and_renumber_them() -> None:
    # layers 0-1 of input 0, then layers 2-3 of input 1, then layer 1 of input 0 again (a one-layer slice: t = 1)
    slices = [SliceSpec(((0, 0, 2),)), SliceSpec(((1, 2, 4),)), SliceSpec(((0, 1, 2),))]
    plan, layers = plan_tensors(slices, {0: names(4), 1: names(4)}, {0: 4, 1: 4})
    assert layers == 5
    layer_plan = [(p.name, p.sources, p.t, p.slice_index) for p in plan if "q_proj" in p.name]
    assert layer_plan == [
        ("model.layers.0.self_attn.q_proj.weight", ((0, "model.layers.0.self_attn.q_proj.weight"),), 0.0, 0),
        ("model.layers.1.self_attn.q_proj.weight", ((0, "model.layers.1.self_attn.q_proj.weight"),), 1.0, 0),
        ("model.layers.2.self_attn.q_proj.weight", ((1, "model.layers.2.self_attn.q_proj.weight"),), 0.0, 1),
        ("model.layers.3.self_attn.q_proj.weight", ((1, "model.layers.3.self_attn.q_proj.weight"),), 1.0, 1),
        ("model.layers.4.self_attn.q_proj.weight", ((0, "model.layers.1.self_attn.q_proj.weight"),), 1.0, 2),
    ]
    # the embedding comes from the first slice's sources, the head from the last's
    assert plan[0].sources == ((0, "model.embed_tokens.weight"),) and plan[-1].sources == ((0, "lm_head.weight"),)


@pytest.mark.parametrize(
    ("slices", "message"),
    [
        ([], "has no slices or models"),
        ([SliceSpec(((0, 0, 2), (1, 0, 3)))], r"slices\[0\]: its sources give \[2, 3\] layers"),
        ([SliceSpec(((0, 2, 5),))], r"slices\[0\]: layer_range \[2, 5\] is outside input 1's 4 layers"),
        ([SliceSpec(((0, 2, 2),))], r"layer_range \[2, 2\]"),
    ],
)
def test_bad_slices(slices: list[SliceSpec], message: str) -> None:
    with pytest.raises(MergeError, match=message):
        plan_tensors(slices, {0: names(4), 1: names(4)}, {0: 4, 1: 4})


def test_inputs_with_other_tensors_are_refused() -> None:
    with pytest.raises(MergeError, match=r"input 2 has other tensors than input 1 .*'lm_head\.weight'"):
        plan_tensors([SliceSpec(((0, 0, 2), (1, 0, 2)))], {0: names(2), 1: names(2, head=False)}, {0: 2, 1: 2})


def test_the_order_of_a_checkpoints_tensors_does_not_matter() -> None:
    # e.g. an `entrenar prune` output (written in sorted order) merged with the transformers-saved original
    slices = [SliceSpec(((0, 0, 2), (1, 0, 2)))]
    ordered, shuffled = names(2), sorted(names(2), reverse=True)
    assert plan_tensors(slices, {0: ordered, 1: shuffled}, {0: 2, 1: 2}) == plan_tensors(
        slices, {0: ordered, 1: ordered}, {0: 2, 1: 2}
    )
    with pytest.raises(MergeError, match=r"input 2 has other tensors than input 1"):  # still refused: one missing
        plan_tensors(
            slices, {0: ordered, 1: [n for n in ordered if n != "model.layers.0.input_layernorm.weight"]}, {0: 2, 1: 2}
        )
