"""Input conversion and validation shared by the metric modules (private).

Every metric accepts numpy arrays, (nested) python sequences and torch tensors. torch is never
imported here: a tensor can only exist if the caller already imported torch, so looking it up in
``sys.modules`` is enough to recognise one.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from aprender.errors import MetricInputError

ArrayLike = Any
"""A numpy array, a (nested) python sequence of numbers or labels, or a ``torch.Tensor``."""

_NUMERIC_KINDS = "biuf"
_LABEL_KINDS = "biufUSO"


def is_tensor(value: object) -> bool:
    """True when ``value`` is a ``torch.Tensor`` (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value: ArrayLike, name: str) -> npt.NDArray[Any]:
    """Convert ``value`` to a numpy array; tensors are detached and copied to the CPU.

    Raises:
        MetricInputError: ``value`` is ragged or holds complex numbers.
    """
    if is_tensor(value):
        tensor = value.detach()
        if tensor.dtype.is_complex:
            raise MetricInputError(f"{name}: complex tensors are not supported; pass real numbers")
        if tensor.dtype.is_floating_point and tensor.element_size() == 2:
            tensor = tensor.float()  # numpy has no bfloat16; float16 is widened the same way
        return np.asarray(tensor.cpu().numpy())
    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise MetricInputError(f"{name}: not a rectangular array ({exc}); pass rows of equal length") from None
    if array.dtype.kind == "c":
        raise MetricInputError(f"{name}: complex numbers are not supported; pass real numbers")
    return array


def as_float_array(value: ArrayLike, name: str) -> npt.NDArray[np.floating[Any]]:
    """A non-empty, finite, real-valued array (float16 widened to float32, integers to float64).

    Raises:
        MetricInputError: ``value`` is empty, non-numeric, or holds NaN or infinity.
    """
    array = to_numpy(value, name)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise MetricInputError(f"{name}: expected numbers, got dtype {array.dtype}; pass numeric values")
    if array.size == 0:
        raise MetricInputError(f"{name}: is empty; pass at least one value")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    elif array.dtype.itemsize < 4:
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise MetricInputError(f"{name}: contains NaN or infinity; pass finite values")
    return array


def as_label_array(value: ArrayLike, name: str) -> npt.NDArray[Any]:
    """A non-empty 1-D array of class labels (integers, booleans, strings or objects).

    Raises:
        MetricInputError: ``value`` is empty, not 1-D, or holds non-integral floats (scores, not labels).
    """
    array = to_numpy(value, name)
    if array.ndim != 1:
        raise MetricInputError(f"{name}: expected a 1-D array of class labels, got shape {array.shape}")
    if array.size == 0:
        raise MetricInputError(f"{name}: is empty; pass at least one label")
    if array.dtype.kind not in _LABEL_KINDS:
        raise MetricInputError(f"{name}: dtype {array.dtype} cannot hold class labels; pass ints or strings")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise MetricInputError(f"{name}: holds non-integral floats; pass class labels, not scores or probabilities")
    return array


def check_same_length(first: npt.NDArray[Any], second: npt.NDArray[Any], names: tuple[str, str]) -> None:
    """Raise when the two arrays differ in their first dimension."""
    if len(first) != len(second):
        raise MetricInputError(
            f"{names[0]} has {len(first)} entries but {names[1]} has {len(second)}; pass one entry per sample"
        )


def check_label_types(first: npt.NDArray[Any], second: npt.NDArray[Any], names: tuple[str, str]) -> None:
    """Raise when one array holds numeric labels and the other strings (they could never match)."""
    kinds = {_label_family(first), _label_family(second)}
    if kinds == {"number", "string"}:
        raise MetricInputError(
            f"{names[0]} ({first.dtype}) and {names[1]} ({second.dtype}) mix numeric and string labels; "
            "use one label type"
        )


def as_label_set(labels: ArrayLike, truth: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A caller's ``labels`` argument: a 1-D array of distinct labels of the same type as ``truth``.

    Raises:
        MetricInputError: ``labels`` is empty, has duplicates, or mixes numbers and strings with ``truth``.
    """
    label_array = as_label_array(labels, "labels")
    if len(np.unique(label_array)) != len(label_array):
        raise MetricInputError("labels: contains duplicates; list each label once")
    check_label_types(truth, label_array, ("y_true", "labels"))
    return label_array


def _label_family(array: npt.NDArray[Any]) -> str:
    if array.dtype.kind in _NUMERIC_KINDS:
        return "number"
    return "string" if array.dtype.kind in "US" else "object"


def encode_labels(values: npt.NDArray[Any], labels: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    """Index of each value in ``labels`` (shape of ``values``), -1 where a value is not a label."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    position = np.clip(np.searchsorted(sorted_labels, values), 0, len(labels) - 1)
    found = sorted_labels[position] == values
    return np.where(found, order[position], -1)


def check_k(k: object) -> int:
    """Validate a cut-off: a python or numpy integer >= 1 (booleans rejected).

    Raises:
        MetricInputError: ``k`` is not an integer or is below 1.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise MetricInputError(f"k={k!r} must be an integer >= 1")
    if k < 1:
        raise MetricInputError(f"k={k} must be >= 1; it is the number of top-ranked items to score")
    return int(k)


def as_backend_array(value: ArrayLike, name: str) -> Any:
    """``value`` itself (detached) when it is a tensor, else as a numpy array: no device transfer."""
    return value.detach() if is_tensor(value) else to_numpy(value, name)


def match_backend(reference: Any, value: ArrayLike, name: str) -> Any:
    """``value`` as a tensor on ``reference``'s device when ``reference`` is a tensor, else as numpy."""
    if not is_tensor(reference):
        return to_numpy(value, name)
    if is_tensor(value):
        return value.detach().to(reference.device)
    import torch

    return torch.as_tensor(to_numpy(value, name), device=reference.device)


def dtype_kind(array: Any) -> str:
    """numpy's dtype kind letter (``b``, ``i``/``u``, ``f``, ``c``, ...) for arrays and tensors alike."""
    if not is_tensor(array):
        return str(array.dtype.kind)
    if array.dtype.is_complex:
        return "c"
    if array.dtype.is_floating_point:
        return "f"
    return "b" if str(array.dtype) == "torch.bool" else "i"


def to_float64(array: Any) -> Any:
    """A float64 copy of a numpy array or tensor (tensors stay on their device)."""
    return array.double() if is_tensor(array) else array.astype(np.float64)
