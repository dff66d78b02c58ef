"""Turn examples into token ids and the mask of tokens the model is trained to produce.

Rules, by kind of example (`Encoder.encode`):

- **text**: `[BOS] + tokens(text) + [EOS]`. BOS is added when the tokenizer adds one on encode
  (`Tokenizer.add_bos_token`) and the text does not already start with it; every token is a target.
- **conversation, tokenizer with a chat template** (messages, ShareGPT, and prompt/completion or
  alpaca as one user → assistant turn): rendered with the template and tokenized exactly as rendered,
  with no BOS/EOS added by the tokenizer (`aprender.text.encode_chat`, like transformers'
  `apply_chat_template(tokenize=True)`); a template that writes `bos_token` therefore gives one BOS,
  not two. Targets are the assistant tokens (content and the end-of-turn token the template writes
  after it, as located by `{% generation %}` markers or by rendering prefixes).
- **single turn, tokenizer without a chat template**: `[BOS] + tokens(prompt) + tokens(completion) +
  [EOS]`, prompt and completion tokenized separately so their boundary is exact; targets are the
  completion and EOS. A multi-turn conversation without a template is an error.

EOS (`eos_token`) is appended unless it is already there: for text and plain turns when the ids do not
end with it; for conversations when it does not occur from the start of the last assistant reply on
(ChatML with `eos_token = <|im_end|>` closes the reply with it; a base model whose EOS differs from the
end-of-turn token gets it appended, as a target). A tokenizer without `eos_token` gets none.

`train_on="all"` makes every token a target (prompts and system turns included); "completion" trains
on the replies only, as in instruction tuning (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155;
on the choice, Shi et al. 2024, https://arxiv.org/abs/2405.14394). The first token is never a target:
nothing precedes it.

Truncation keeps the first `seq_len` tokens (the prompt and the start of the reply) and drops the rest,
EOS included; `EncodedSample.truncated` records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from aprender.errors import ChatTemplateError
from aprender.text import Tokenizer, encode_chat
from entrenar.constants import IGNORE_INDEX, TRAIN_ON
from entrenar.data.formats import Example
from entrenar.errors import DataError, InvalidRecordError

TrainOn = Literal["completion", "all"]


@dataclass(frozen=True, eq=False)
class EncodedSample:
    """One tokenized sample.

    Attributes:
        ids: token ids, shape (T,), int64.
        targets: True where the token is one the model is trained to produce, shape (T,), bool;
            `targets[0]` is always False.
        truncated: the sample was cut to `seq_len`.
    """

    ids: np.ndarray
    targets: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_targets(self) -> int:
        """Number of tokens that count in the loss."""
        return int(self.targets.sum())

    def labels(self) -> np.ndarray:
        """Labels aligned with positions: `labels[t]` is the token position t predicts, else -100.

        `labels[t] = ids[t + 1]` where `targets[t + 1]`, and the last position is -100, so a sample's
        labels never reach into whatever follows it (the next packed sample or padding).

        Returns:
            Shape (T,), int64.
        """
        labels = np.full(len(self), IGNORE_INDEX, dtype=np.int64)
        labels[:-1] = np.where(self.targets[1:], self.ids[1:], IGNORE_INDEX)
        return labels


class Encoder:
    """Encodes examples for one tokenizer, sequence length and training target (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, *, seq_len: int, train_on: TrainOn = "completion") -> None:
        """Check the options and look up the tokenizer's special tokens and chat template once.

        Args:
            tokenizer: the model's tokenizer.
            seq_len: the longest sample in tokens, >= 2.
            train_on: "completion" (replies only) or "all".

        Raises:
            DataError: `seq_len` below 2 or an unknown `train_on`.
            TokenizerError: the tokenizer has several chat templates and none named "default".
        """
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
            raise DataError(f"seq_len={seq_len!r}: must be an integer >= 2")
        if train_on not in TRAIN_ON:
            raise DataError(f"train_on={train_on!r}: expected one of {', '.join(TRAIN_ON)}")
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.train_on = train_on
        self.bos_id = tokenizer.bos_token_id if tokenizer.add_bos_token else None
        self.eos_id = tokenizer.eos_token_id
        self.template = tokenizer.get_chat_template() if tokenizer.chat_template is not None else None

    def encode(self, example: Example) -> EncodedSample:
        """Tokenize one example, mark its targets and truncate it to `seq_len`.

        Args:
            example: a normalised example.

        Returns:
            The sample.

        Raises:
            InvalidRecordError: the chat template rejects the conversation (names the record).
            DataError: a multi-turn conversation and a tokenizer without a chat template.
        """
        if example.text is not None:
            ids, targets = self._plain([], example.text)
        elif self.template is not None:
            ids, targets = self._chat(example)
        elif example.plain is not None:
            prompt, completion = example.plain
            ids, targets = self._plain(self.tokenizer.encode(prompt, add_special_tokens=False), completion)
        else:
            raise DataError(
                f"{example.location}: format {example.format!r} needs a tokenizer with a chat_template; "
                "add one to tokenizer_config.json or use the prompt_completion format"
            )
        if self.train_on == "all":
            targets = [True] * len(ids)
        truncated = len(ids) > self.seq_len
        ids, targets = ids[: self.seq_len], targets[: self.seq_len]
        target_array = np.array(targets, dtype=bool)
        target_array[0] = False
        return EncodedSample(np.array(ids, dtype=np.int64), target_array, truncated)

    def _plain(self, prompt_ids: list[int], completion: str) -> tuple[list[int], list[bool]]:
        """`[BOS] + prompt + completion + [EOS]`, with the completion (and EOS) as targets."""
        body = self.tokenizer.encode(completion, add_special_tokens=False)
        first = prompt_ids[:1] or body[:1]
        head = [self.bos_id] if self.bos_id is not None and first != [self.bos_id] else []
        ids = [*head, *prompt_ids, *body]
        targets = [False] * (len(head) + len(prompt_ids)) + [True] * len(body)
        if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
            ids.append(self.eos_id)
            targets.append(True)
        return ids, targets

    def _chat(self, example: Example) -> tuple[list[int], list[bool]]:
        try:
            encoding = encode_chat(self.tokenizer, list(example.messages), chat_template=self.template)
        except ChatTemplateError as err:
            raise InvalidRecordError(f"{example.location}: {err}") from err
        ids, targets = list(encoding.ids), [bool(m) for m in encoding.assistant_mask]
        if self.eos_id is not None and self.eos_id not in ids[_last_run_start(targets) :]:
            ids.append(self.eos_id)
            targets.append(True)
        return ids, targets


def _last_run_start(mask: Sequence[bool]) -> int:
    """Index of the first token of the last run of True values (len(mask) when there is none)."""
    end = len(mask)
    while end > 0 and not mask[end - 1]:
        end -= 1
    if end == 0:
        return len(mask)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return start
