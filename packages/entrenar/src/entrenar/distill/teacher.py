"""The frozen teacher(s) of a distillation run, loaded next to the student.

Each teacher of ``distill:`` (``teacher``, or the ``teachers`` mixture) is resolved like ``model.path`` (a
folder, a ``.gguf`` file or a Hub id at its revision), its vocabulary checked against the student's
(`entrenar.distill.vocab.teacher_rows`), loaded in ``model.dtype`` on the student's device and frozen: eval
mode, no gradients. ``teacher_quantize`` stores its linear layers but the LM head in NF4 or int8
(`entrenar.quant.quantize_linears`), as QLoRA does for a base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aprender.reference import resolve_model_folder
from aprender.text import Tokenizer
from entrenar.config import DistillSection
from entrenar.distill.vocab import teacher_rows
from entrenar.models import CausalLM, ModelConfig, from_pretrained, read_config
from entrenar.quant import not_output_head, quantize_linears, release_checkpoint_pages

__all__ = ["Teacher", "load_teachers"]


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher.

    Attributes:
        name: How the config names it.
        model: The frozen model.
        weight: Its share of the mixture (the weights sum to 1).
        rows: The LM-head rows that are the student's tokens (None: all of them).
    """

    name: str
    model: CausalLM
    weight: float
    rows: int | None

    def head_weight(self) -> Tensor:
        """The LM-head matrix (V, H_t), cut to the student's tokens when the teacher pads beyond them."""
        weight = self.model.output_embeddings().weight
        assert isinstance(weight, Tensor)
        return weight if self.rows is None else weight[: self.rows]

    @property
    def note(self) -> str | None:
        """What the run says about this teacher once: the rows it drops, if any."""
        if self.rows is None:
            return None
        extra = self.model.config.vocab_size - self.rows
        return f"teacher {self.name}: its {extra} rows after the student's {self.rows} tokens are left out"


def load_teachers(
    section: DistillSection,
    student_tokenizer: Tokenizer,
    student_config: ModelConfig,
    *,
    device: torch.device,
    dtype: str,
) -> list[Teacher]:
    """Load every teacher of the section, frozen, on `device`.

    Args:
        section: ``distill:``.
        student_tokenizer: The student's tokenizer.
        student_config: The student's architecture (its vocabulary size).
        device: Where the student is.
        dtype: ``model.dtype`` (``auto`` keeps each teacher's).

    Returns:
        The teachers, in the config's order.

    Raises:
        ConfigError: A teacher's vocabulary does not fit the student's.
        AprenderError: A teacher cannot be resolved or loaded.
    """
    teachers = []
    for entry in section.teacher_models:
        folder = resolve_model_folder(entry.path, entry.revision if entry.source == "hub" else None)
        config = read_config(folder)
        rows = teacher_rows(
            student_tokenizer, student_config.vocab_size, Tokenizer.from_dir(folder), config.vocab_size, entry.path
        )
        model = from_pretrained(folder, dtype=dtype, device=device)
        if section.teacher_quantize is not None:
            quantize_linears(model, section.teacher_quantize, filter_fn=not_output_head)
            release_checkpoint_pages(model)
        model.requires_grad_(False)
        teachers.append(Teacher(entry.path, model.eval(), entry.weight, rows))
    return teachers
