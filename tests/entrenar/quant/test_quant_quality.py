"""entrenar.quant.imatrix and entrenar.quant.quality on the tiny Llama, against quantities computed by hand.

- The importance matrix of a layer's first projections is the mean over every calibration token of the squared
  RMS-normed embedding (computed here without hooks), keyed by GGUF names; batching changes nothing.
- The comparison of a model with itself is zero KL and the same top token everywhere; against a perturbed copy,
  its perplexities equal `score_model`'s and its KL equals torch's ``kl_div`` over the full logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from entrenar.merge.evaluate import score_model
from entrenar.models import from_pretrained
from entrenar.quant.imatrix import collect_imatrix
from entrenar.quant.quality import compare_models

TEXT = "\n\n".join(
    f"Paragraph {i}: the harbour woke before the town did, and the bakery on the corner opened at six."
    for i in range(12)
)


@pytest.fixture
def eval_text(tmp_path: Path) -> Path:
    path = tmp_path / "eval.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_imatrix_is_the_mean_squared_input_of_each_column(tiny_checkpoints: dict[str, Path]) -> None:
    model = from_pretrained(tiny_checkpoints["llama"], dtype="float32").eval()
    windows = torch.randint(0, model.config.vocab_size, (5, 12), generator=torch.Generator().manual_seed(0))
    imatrix = collect_imatrix(model, windows, batch=2)
    layers = model.config.num_layers
    assert len(imatrix) == 7 * layers and "token_embd.weight" not in imatrix and "output.weight" not in imatrix
    with torch.no_grad():
        normed = model.model.layers[0].input_layernorm(model.model.embed_tokens(windows))
    expected = normed.reshape(-1, normed.shape[-1]).square().mean(dim=0)
    for role in ("attn_q", "attn_k", "attn_v"):
        torch.testing.assert_close(imatrix[f"blk.0.{role}.weight"], expected, rtol=1e-5, atol=1e-7)
    assert imatrix["blk.0.ffn_down.weight"].shape == (model.config.intermediate_size,)
    again = collect_imatrix(model, windows, batch=5)
    assert all(torch.allclose(again[name], imatrix[name], rtol=1e-5) for name in imatrix)


def test_a_model_against_itself(tiny_checkpoints: dict[str, Path], eval_text: Path) -> None:
    quality = compare_models(tiny_checkpoints["llama"], tiny_checkpoints["llama"], eval_text)
    assert quality.kl_mean == quality.kl_max == 0.0 and quality.same_top == 1.0
    assert quality.original_perplexity == quality.quantized_perplexity
    assert "mean KL 0 nats" in quality.line() and "same top token 100.00%" in quality.line()


def test_against_a_perturbed_copy(tiny_checkpoints: dict[str, Path], eval_text: Path, tmp_path: Path) -> None:
    original = tiny_checkpoints["llama"]
    noisy = tmp_path / "noisy"
    shutil.copytree(original, noisy)
    weights = load_file(noisy / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    save_file(
        {k: v + 0.05 * torch.randn(v.shape, generator=generator).to(v.dtype) for k, v in weights.items()},
        noisy / "model.safetensors",
    )
    quality = compare_models(original, noisy, eval_text)
    dense, perturbed = score_model("a", original, eval_text), score_model("b", noisy, eval_text)
    assert quality.tokens == dense.tokens
    assert quality.original_perplexity == pytest.approx(dense.perplexity, rel=1e-5)
    assert quality.quantized_perplexity == pytest.approx(perturbed.perplexity, rel=1e-5)
    # the KL over every labelled position, from full logits
    from aprender.text import Tokenizer
    from entrenar.data import DataLoader, build_datasets

    dataset, _ = build_datasets(
        eval_text, tokenizer=Tokenizer.from_dir(original), seq_len=512, train_on="all", packing=True
    )
    a, b = (from_pretrained(folder, dtype="float32").eval() for folder in (original, noisy))
    kls, same = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=1, shuffle=False).batches(0):
            keep = batch["labels"] != -100
            args = (batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"), batch.get("seq_ids"))
            pa, pb = (m(*args)[keep].log_softmax(-1) for m in (a, b))
            kls.append(torch.nn.functional.kl_div(pb, pa, log_target=True, reduction="none").sum(-1))
            same.append(pa.argmax(-1) == pb.argmax(-1))
    kl = torch.cat(kls)
    assert quality.kl_mean == pytest.approx(float(kl.mean()), rel=1e-4) and quality.kl_mean > 0
    assert quality.kl_max == pytest.approx(float(kl.max()), rel=1e-4)
    assert quality.kl_p99 == pytest.approx(float(torch.quantile(kl.double(), 0.99)), rel=1e-4)
    assert quality.same_top == float(torch.cat(same).double().mean()) < 1.0
