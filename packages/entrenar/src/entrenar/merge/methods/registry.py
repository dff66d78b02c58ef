"""Name -> merge method (the config's ``merge_method``), a plain dict built from an explicit list."""

from __future__ import annotations

import difflib

from entrenar.errors import MergeError
from entrenar.merge.base import MergeMethod
from entrenar.merge.methods.linear import LINEAR
from entrenar.merge.methods.model_stock import MODEL_STOCK
from entrenar.merge.methods.nuslerp import NUSLERP
from entrenar.merge.methods.passthrough import PASSTHROUGH
from entrenar.merge.methods.slerp import SLERP
from entrenar.merge.methods.task_arithmetic import (
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    DARE_LINEAR,
    DARE_TIES,
    DELLA,
    DELLA_LINEAR,
    TASK_ARITHMETIC,
    TIES,
)

ALL_METHODS: tuple[MergeMethod, ...] = (
    LINEAR,
    TASK_ARITHMETIC,
    TIES,
    DARE_TIES,
    DARE_LINEAR,
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    DELLA,
    DELLA_LINEAR,
    SLERP,
    NUSLERP,
    MODEL_STOCK,
    PASSTHROUGH,
)

METHODS: dict[str, MergeMethod] = {method.name: method for method in ALL_METHODS}


def get_method(name: str) -> MergeMethod:
    """The method registered as `name`.

    Raises:
        MergeError: An unknown name (the message suggests the closest and lists all).
    """
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(str(name), list(METHODS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise MergeError(f"unknown merge_method {name!r}; {hint}choose one of: {', '.join(METHODS)}")
