"""Layer-wise transfer: student hidden states pulled toward the teacher's at matched layers.

``distill.hidden`` adds ``weight * hidden`` to the loss, where ``hidden`` is the mean over the active layer
pairs of a per-position distance between the student's output of layer i (projected to the teacher's width
by a learned linear map when the widths differ) and the teacher's output of its matched layer, summed over
the labelled positions like the other parts (so gradient accumulation normalises it by the step's tokens):

- ``mse``: mean over the hidden dimension of the squared difference (TinyBERT's hidden-state loss,
  Jiao et al. 2020, https://arxiv.org/abs/1909.10351);
- ``cosine``: ``1 - cos`` (DistilBERT's cosine embedding loss, Sanh et al. 2019,
  https://arxiv.org/abs/1910.01108).

``layers: auto`` maps each student layer to the teacher layer at the same relative depth: student layer i
(of L_s) to teacher layer ``(i + 1) * L_t // L_s - 1``, so the last layers match (TinyBERT's uniform
mapping). ``schedule: progressive`` starts with the lowest pair and adds the next one every
``total_steps / pairs`` steps, from the bottom up, until all pairs train (a function of the step alone,
so a resumed run picks up exactly where it was).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entrenar.config import DistillHidden
from entrenar.errors import ConfigError
from entrenar.models import ModelConfig

__all__ = [
    "HiddenTransfer",
    "active_pairs",
    "auto_pairs",
    "build_hidden_transfer",
    "check_pairs",
    "hidden_distance",
    "make_projection",
]


def auto_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Every student layer with the teacher layer at the same relative depth (module docstring)."""
    return [(i, (i + 1) * teacher_layers // student_layers - 1) for i in range(student_layers)]


def check_pairs(pairs: Sequence[tuple[int, int]], student_layers: int, teacher_layers: int) -> None:
    """Refuse pairs naming a layer the models do not have.

    Raises:
        ConfigError: One line naming the pair and the layer counts.
    """
    for student, teacher in pairs:
        if not (0 <= student < student_layers and 0 <= teacher < teacher_layers):
            raise ConfigError(
                f"distill.hidden.layers: pair [{student}, {teacher}] is outside the student's {student_layers} "
                f"or the teacher's {teacher_layers} layers (0-based)"
            )


def active_pairs(pairs: Sequence[tuple[int, int]], schedule: str, step: int, total_steps: int) -> int:
    """How many pairs (from the bottom) train at optimizer step `step` (0-based) of `total_steps`."""
    if schedule == "constant" or not pairs:
        return len(pairs)
    return min(len(pairs), 1 + step * len(pairs) // max(total_steps, 1))


def make_projection(student_width: int, teacher_width: int) -> nn.Module:
    """The learned map from the student's width to the teacher's: a bias-free linear, or identity when equal."""
    if student_width == teacher_width:
        return nn.Identity()
    projection = nn.Linear(student_width, teacher_width, bias=False)
    nn.init.normal_(projection.weight, std=student_width**-0.5)  # keeps the hidden states' scale at the start
    return projection


def hidden_distance(student: Tensor, teacher: Tensor, loss: str) -> Tensor:
    """Summed over positions, the per-position distance between (N, H) student and teacher states (float32).

    Args:
        student: The projected student states (N, H).
        teacher: The teacher states (N, H).
        loss: ``mse`` or ``cosine``.

    Returns:
        A float32 scalar.
    """
    s, t = student.float(), teacher.float()
    if loss == "mse":
        return F.mse_loss(s, t, reduction="none").mean(-1).sum()
    return (1 - F.cosine_similarity(s, t, dim=-1)).sum()


class HiddenTransfer(nn.Module):
    """The layer pairs of ``distill.hidden``, their learned projections and how many pairs train now.

    Args:
        pairs: (student layer, teacher layer) pairs, bottom first.
        projections: One module per pair mapping the student's width to the teacher's.
        loss: ``mse`` or ``cosine``.
        weight: The part's weight in the total.
        schedule: ``constant`` or ``progressive``.
        total_steps: The run's optimizer steps (stage lengths of the progressive schedule).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[int, int]],
        projections: Sequence[nn.Module],
        *,
        loss: str,
        weight: float,
        schedule: str,
        total_steps: int,
    ) -> None:
        super().__init__()
        self.pairs = list(pairs)
        self.projections = nn.ModuleList(projections)
        self.loss, self.weight, self.schedule, self.total_steps = loss, weight, schedule, total_steps
        self.active = active_pairs(self.pairs, schedule, 0, total_steps)

    def at_step(self, step: int) -> None:
        """Set the pairs that train at optimizer step `step` (0-based)."""
        self.active = active_pairs(self.pairs, self.schedule, step, self.total_steps)

    def distance(self, student: Mapping[int, Tensor], teacher: Mapping[int, Tensor]) -> Tensor:
        """The mean over the active pairs of the summed per-position distance."""
        terms = [
            hidden_distance(projection(student[s]), teacher[t], self.loss)
            for (s, t), projection in zip(self.pairs[: self.active], self.projections, strict=False)
        ]
        return torch.stack(terms).sum() / len(terms)


def build_hidden_transfer(
    section: DistillHidden, student: ModelConfig, teachers: Sequence[ModelConfig], total_steps: int = 1
) -> HiddenTransfer:
    """The layer pairs (``auto`` or the config's, checked against both models) and a projection per pair.

    Raises:
        ConfigError: Several teachers (hidden states cannot be mixed), or a pair outside the models.
    """
    if len(teachers) != 1:
        raise ConfigError("distill.hidden: layer-wise transfer takes one teacher; use distill.teacher, not teachers")
    teacher = teachers[0]
    pairs = (
        auto_pairs(student.num_layers, teacher.num_layers) if isinstance(section.layers, str) else list(section.layers)
    )
    check_pairs(pairs, student.num_layers, teacher.num_layers)
    projections = [make_projection(student.hidden_size, teacher.hidden_size) for _ in pairs]
    return HiddenTransfer(
        pairs, projections, loss=section.loss, weight=section.weight, schedule=section.schedule, total_steps=total_steps
    )
