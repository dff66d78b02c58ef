"""Can a teacher's next-token distribution be compared with the student's, token for token?

Distillation compares the two models' probabilities of the same next token, so the teacher's rows must
mean the student's tokens. Three cases (checked before training):

- the same tokenizer (every id the same token, the same number of rows): nothing to do;
- a teacher that only pads beyond the student: every student id is the same token in the teacher, and the
  teacher has more rows (padding, or tokens the student never produces): its head is sliced to the
  student's rows (`teacher_rows`), reported once;
- anything else: an error naming both sizes and the first id whose token differs.
"""

from __future__ import annotations

from aprender.text import Tokenizer
from entrenar.errors import ConfigError

__all__ = ["teacher_rows"]


def teacher_rows(
    student: Tokenizer, student_rows: int, teacher: Tokenizer, teacher_rows_: int, teacher_name: str
) -> int | None:
    """How many of the teacher's head rows to keep: None for all (the same vocabulary), else the student's count.

    Args:
        student: The student's tokenizer.
        student_rows: Rows of the student's LM head (its config's vocab_size).
        teacher: The teacher's tokenizer.
        teacher_rows_: Rows of the teacher's LM head.
        teacher_name: How the config names the teacher (messages).

    Returns:
        None when nothing needs slicing; the student's row count when the teacher only pads beyond it.

    Raises:
        ConfigError: The vocabularies differ: both sizes and the first token that differs.
    """
    for token_id in range(min(student.vocab_size, teacher.vocab_size)):
        mine, theirs = student.id_to_token(token_id), teacher.id_to_token(token_id)
        if mine != theirs:
            raise ConfigError(
                f"distill: teacher {teacher_name} has {teacher_rows_} tokens and the student {student_rows}, and id "
                f"{token_id} is {theirs!r} in the teacher but {mine!r} in the student; distillation needs the "
                "student's tokenizer (or one that only adds tokens after it)"
            )
    if teacher.vocab_size < student.vocab_size or teacher_rows_ < student_rows:
        raise ConfigError(
            f"distill: teacher {teacher_name} has {teacher_rows_} tokens, fewer than the student's {student_rows}; "
            "distillation needs the student's tokenizer (or one that only adds tokens after it)"
        )
    return None if teacher_rows_ == student_rows else student_rows
