"""QLoRA forward on the real SmolLM2: an NF4 base (+ fresh LoRA adapters) stays close to the fp32 model.

Issue 6 asks for the logit error and the next-token agreement; both are measured here and printed in
the assertion messages. Measured when written: NF4 relative logit error 0.14-0.40 per prompt and
next-token agreement 0.68 (this 135M model's fp32 weights are themselves de-quantized from Q4_1, and
small models lose the most to 4-bit); int8 stays within a few percent. The bounds are loose multiples
of those figures; " Paris" must survive quantization.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aprender.text import Tokenizer
from entrenar.lora import LoraConfig, apply_lora, mark_only_lora_trainable
from entrenar.models import CausalLM, from_pretrained
from entrenar.quant import NF4Linear, quantize_linears

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village near the mountains, there lived",
]


def _compare(ref_model: CausalLM, model: CausalLM, tokenizer: Tokenizer) -> tuple[list[float], float, str]:
    """Relative logit error per prompt, next-token agreement, and the top token after the first prompt."""
    errors, agree, total = [], 0, 0
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tokenizer.encode(prompt)])
            ref, got = ref_model(ids), model(ids)
            errors.append(float((got - ref).norm() / ref.norm()))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            total += ids.shape[1]
        first = model(torch.tensor([tokenizer.encode(PROMPTS[0])]))[0, -1].argmax()
    return errors, agree / total, tokenizer.decode([int(first)])


@pytest.mark.slow
def test_nf4_base_with_lora_stays_close_to_fp32(smollm2_hf_dir: Path) -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_dir(smollm2_hf_dir)
    dense = from_pretrained(smollm2_hf_dir, dtype="float32").eval()
    qlora = from_pretrained(smollm2_hf_dir, dtype="float32").eval()
    replaced = quantize_linears(qlora, "nf4", double_quant=True)
    assert len(replaced) == 30 * 7 and "lm_head" not in replaced
    apply_lora(qlora, LoraConfig(rank=16, alpha=32, target_modules="all-linear"))
    counts = mark_only_lora_trainable(qlora)
    assert sum(isinstance(m, NF4Linear) for m in qlora.modules()) == 210
    # r * (in + out) per adapted linear: q and o 576+576, k and v 576+192, gate/up/down 576+1536
    per_layer = 16 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert counts.trainable == 30 * per_layer == 4_884_480
    errors, agreement, top = _compare(dense, qlora, tokenizer)
    report = f"NF4: relative logit error {[round(e, 3) for e in errors]}, next-token agreement {agreement:.2f}"
    assert max(errors) < 0.6, report
    assert agreement > 0.55, report
    assert top == " Paris", report
    int8 = from_pretrained(smollm2_hf_dir, dtype="float32").eval()
    quantize_linears(int8, "int8")
    errors8, agreement8, _ = _compare(dense, int8, tokenizer)
    report8 = f"int8: relative logit error {[round(e, 3) for e in errors8]}, agreement {agreement8:.2f}"
    assert max(errors8) < max(errors) / 3 and agreement8 >= agreement, report + "; " + report8
