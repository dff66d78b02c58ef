"""Check one tensor group against a method's input constraints before merging it."""

from __future__ import annotations

from entrenar.errors import MergeError
from entrenar.merge.base import MergeMethod, TensorGroup


def _check_count(
    group: TensorGroup, method: MergeMethod, noun: tuple[str, str], low: int, high: int | None, got: int
) -> None:
    """Raise unless ``low <= got <= high``; `noun` is the counted thing, singular and plural."""
    if got < low:
        bound, word = low, "at least"
    elif high is not None and got > high:
        bound, word = high, "at most"
    else:
        return
    expected = f"{'exactly' if low == high else word} {bound}"
    raise MergeError(
        f"{group.name}: merge_method {method.name} takes {expected} {noun[bound != 1]}, got {got}; "
        "change the models listed"
    )


def validate_group(method: MergeMethod, group: TensorGroup) -> None:
    """Check that `group` can go to ``method.merge``: the input count, the base where required, equal shapes.

    A method whose base policy is ``none`` treats the base as an ordinary input.

    Raises:
        MergeError: One line naming the tensor and what is wrong (for shapes, every input's shape).
    """
    has_base = group.base_index is not None and method.base != "none"
    if method.base == "required" and not has_base:
        raise MergeError(f"{group.name}: merge_method {method.name} needs a base model; set base_model")
    count = len(group.tensors)
    inputs = ("input model (base included)", "input models (base included)")
    _check_count(group, method, inputs, method.min_inputs, method.max_inputs, count)
    others = ("model besides the base", "models besides the base")
    _check_count(group, method, others, method.min_non_base, method.max_non_base, count - has_base)
    shapes = [tuple(tensor.shape) for tensor in group.tensors]
    if len(set(shapes)) > 1:
        listed = ", ".join(f"input {index}: {shape}" for index, shape in enumerate(shapes))
        raise MergeError(f"{group.name}: input shapes differ ({listed}); merge models of the same architecture")
