"""`DistillLoss`: the trainer's loss step with a teacher, in parts ``ce``, ``kd`` and ``hidden``.

``total = (1 - alpha) * ce + alpha * kd + hidden.weight * hidden``, each part summed over the labelled
positions (gradient accumulation divides by the step's tokens):

- ``ce``: the student's cross-entropy on the data (`entrenar.models.head_loss`);
- ``kd``: the divergence between the teacher(s)' and the student's next-token distributions at the
  labelled positions (`aprender.loss.chunked_distillation_loss`: float32, in chunks of positions, never
  holding the full (tokens, vocab) logits of either model), computed inside the student's forward on its
  LM head's operands; the teachers run first, under ``torch.no_grad()``; several form a mixture;
- ``hidden`` (``distill.hidden``): `entrenar.distill.hidden`'s distance between paired layers.

With ``distill.cache`` no teacher runs: the teacher's top-k distribution at each labelled position comes
from the cache (`entrenar.distill.cache`, looked up by the batch's ``unit_ids``: the training split for
`loss_step`, the validation split for `kl_to_teacher`) and ``kd`` is the divergence over those k tokens
plus the tail bucket.

Temperature: both distributions are softened by T and the divergence is multiplied by T² (Hinton et al.
2015, https://arxiv.org/abs/1503.02531), for every divergence, so the gradient's size does not depend on T.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, cast

import torch
from torch import Tensor

from aprender.loss import TeacherHead, TopKTeacher, chunked_distillation_loss
from entrenar.autograd import LossParts
from entrenar.config import DistillSection
from entrenar.distill.cache import CacheSplit, TeacherCache
from entrenar.distill.hidden import HiddenTransfer
from entrenar.distill.teacher import Teacher
from entrenar.models import IGNORE_INDEX, LossOutput
from entrenar.train.loss import CausalLMLoss

__all__ = ["DistillLoss"]


@dataclass(frozen=True, eq=False)
class DistillLoss(CausalLMLoss):
    """`CausalLMLoss` plus a teacher's distribution (and hidden states) as targets.

    Attributes:
        teachers: The frozen teachers (mixture weights sum to 1); empty with `cache`.
        section: ``distill:`` (loss, temperature, alpha, beta, skew).
        hidden: Layer-wise transfer, or None.
        cache: The teacher cache that stands in for the teachers, or None.
    """

    name: ClassVar[str] = "distill"
    teachers: tuple[Teacher, ...] = ()
    section: DistillSection | None = None
    hidden: HiddenTransfer | None = field(default=None)
    cache: TeacherCache | None = None

    def at_step(self, step: int) -> None:
        """Layer-wise transfer's progressive schedule: the pairs that train at this step."""
        if self.hidden is not None:
            self.hidden.at_step(step)

    def loss_step(self, batch: Mapping[str, Tensor]) -> LossParts:
        """The summed total and its parts ``ce``, ``kd`` and (with ``distill.hidden``) ``hidden``."""
        section = self.section
        assert section is not None and (self.teachers or self.cache is not None)
        keep = batch["labels"] != IGNORE_INDEX
        teacher_layers = {t for _, t in self.hidden.pairs[: self.hidden.active]} if self.hidden else set()
        if self.cache is not None:
            teacher: list[TeacherHead] | TopKTeacher = self._cached(self.cache.train, batch)
            states: dict[int, Tensor] = {}
        else:
            teacher, states = self._teacher_pass(batch, keep, teacher_layers)
        output = self.forward_with_teacher(batch, teacher)
        assert output.kd is not None
        alpha = section.alpha
        total = (1 - alpha) * output.loss + alpha * output.kd
        parts = {"ce": output.loss, "kd": output.kd}
        if self.hidden is not None and output.hidden_states is not None:
            hidden = self.hidden.distance(output.hidden_states, states)
            total = total + self.hidden.weight * hidden
            parts["hidden"] = hidden
        return LossParts(total=total, parts=parts)

    def forward_with_teacher(self, batch: Mapping[str, Tensor], teacher: list[TeacherHead] | TopKTeacher) -> LossOutput:
        """The student's forward with labels and the divergence to the teacher's heads or cache entries inside it."""
        section = self.section
        assert section is not None

        def kd(x: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
            target = teacher
            if not isinstance(target, TopKTeacher):
                target = [h._replace(weight=h.weight.to(x.dtype), hidden=h.hidden.to(x.dtype)) for h in target]
            return chunked_distillation_loss(
                x,
                weight,
                target,
                labels,
                divergence=section.loss,  # type: ignore[arg-type]
                temperature=section.temperature,
                beta=section.beta if section.beta is not None else 0.5,
                skew=section.skew if section.skew is not None else 0.1,
                chunk_size=self.chunk_size,
            )

        student_layers = tuple(s for s, _ in self.hidden.pairs[: self.hidden.active]) if self.hidden else ()
        return self._forward(batch, reduction="sum", kd=kd, hidden_layers=student_layers)

    def _cached(self, split: CacheSplit, batch: Mapping[str, Tensor]) -> TopKTeacher:
        return split.lookup(batch["unit_ids"], batch["labels"].device)

    @torch.no_grad()
    def _teacher_pass(
        self, batch: Mapping[str, Tensor], keep: Tensor, layers: set[int]
    ) -> tuple[list[TeacherHead], dict[int, Tensor]]:
        """Each teacher's final hidden states at the labelled positions, and the first's requested layers."""
        heads, states = [], {}
        for index, teacher in enumerate(self.teachers):
            collect = cast(dict[int, Tensor], dict.fromkeys(layers)) if index == 0 and layers else None
            inputs = (batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"), batch.get("seq_ids"))
            hidden = teacher.model.forward_hidden(*inputs, collect=collect)
            heads.append(TeacherHead(hidden[keep], teacher.head_weight(), teacher.weight))
            if collect is not None:
                states = {layer: value[keep] for layer, value in collect.items()}
        return heads, states

    def kl_to_teacher(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The summed forward KL from the teachers to the student at T = 1 over the labelled positions (eval).

        From a cache: over its top-k tokens and tail (stored at T = 1 for validation), a lower bound of the
        dense KL, equal to it when k covers the vocabulary.
        """
        keep = batch["labels"] != IGNORE_INDEX
        if self.cache is not None:
            assert self.cache.validation is not None, "evaluation runs on the validation split the cache holds"
            teacher: list[TeacherHead] | TopKTeacher = self._cached(self.cache.validation, batch)
        else:
            teacher, _ = self._teacher_pass(batch, keep, set())
        plain = DistillLoss(self.model, self.chunk_size, teachers=self.teachers, section=_plain_kl(self.section))
        output = plain.forward_with_teacher(batch, teacher)
        assert output.kd is not None
        return output.kd


def _plain_kl(section: DistillSection | None) -> DistillSection:
    assert section is not None
    return replace(section, loss="forward_kl", temperature=1.0, beta=None, skew=None)
