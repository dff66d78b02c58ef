"""Our GGUF files in llama.cpp itself (llama-cpp-python, built by `make llama-cpp`; skipped without it).

For each family we support, a model with the family's real tokenizer in its Hub layout is exported and
llama.cpp tokenizes llama.cpp's own tokenizer tests with it: the ids must be those transformers gives.
SmolLM2-135M-Instruct in its Hub layout is exported as f16 and q8_0, and llama.cpp's greedy text must be
ours: for f16 our model on the original weights, for q8_0 our model on the weights the file holds
(imported back by our GGUF reader), since llama.cpp computes with those. llama.cpp's q8_0 matrix products
also round the activations to 8 bits (its logits move by ~0.3), so there each of llama.cpp's greedy tokens
is checked on its own path: it must be our top token, or within `TIE_MARGIN` of it in our logits, and at
least `MIN_AGREED` of the `NEW_TOKENS` must be our top token.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from aprender.format.convert import convert_gguf_to_hf
from aprender.format.gguf_export import export_gguf
from aprender.format.llama_cpp_pre import LLAMA_CPP_PRE_NAMES
from aprender.text import Tokenizer
from entrenar.generation import generate
from entrenar.models import from_pretrained
from fixtures.llama_cpp import HUB_FAMILIES, hub_model_dir, vocab_tests
from fixtures.threads import torch_threads

NEW_TOKENS = 24
MIN_AGREED = 18
TIE_MARGIN = 0.5
PROMPTS = [
    "The capital of France is",
    "List the first five prime numbers: 2, 3,",
    "def fibonacci(n):\n    ",
]


def llama(module: ModuleType, path: Path, **kwargs: Any) -> Any:
    return module.Llama(str(path), n_ctx=512, n_threads=2, seed=0, verbose=False, **kwargs)


def gguf_metadata(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}


@pytest.mark.parametrize("family", sorted(HUB_FAMILIES))
def test_llama_cpp_tokenizes_each_family_like_transformers(
    family: str, tmp_path: Path, llama_cpp_module: ModuleType
) -> None:
    path = export_gguf(hub_model_dir(family), tmp_path / f"{family}.gguf")
    pre = gguf_metadata(path)["tokenizer.ggml.pre"]
    assert pre == HUB_FAMILIES[family][1] and pre in LLAMA_CPP_PRE_NAMES
    model = llama(llama_cpp_module, path, vocab_only=True)
    for text, expected in vocab_tests(HUB_FAMILIES[family][0]):
        assert model.tokenize(text.encode("utf-8"), add_bos=False, special=False) == expected, text


def llama_cpp_greedy(model: Any, prompt_ids: list[int]) -> list[int]:
    model.reset()
    out: list[int] = []
    for token in model.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        if token == model.token_eos() or len(out) == NEW_TOKENS:
            break
        out.append(token)
    return out


def our_greedy(model: Any, eos: int | None, prompt_ids: list[int]) -> list[int]:
    with torch.no_grad():
        (row,) = generate(model, [prompt_ids], max_new_tokens=NEW_TOKENS, eos_token_ids=[eos] if eos else ())
    return [token for token in row if token != eos]


def assert_llama_cpps_choices_are_ours(model: Any, prompt_ids: list[int], theirs: list[int]) -> None:
    """Along llama.cpp's greedy path, each token is our top token or all but tied with it."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + theirs]))[0, len(prompt_ids) - 1 : -1].float()
    ours = logits.argmax(-1)
    margins = logits.gather(1, ours[:, None]) - logits.gather(1, torch.tensor(theirs)[:, None])
    assert float(margins.max()) < TIE_MARGIN, margins.flatten().tolist()
    assert int((ours == torch.tensor(theirs)).sum()) >= MIN_AGREED, (ours.tolist(), theirs)


@pytest.mark.slow
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_smollm2_hub_layout_generates_our_text_in_llama_cpp(
    gguf_type: str, smollm2_hub_dir: Path, tmp_path: Path, llama_cpp_module: ModuleType
) -> None:
    path = export_gguf(smollm2_hub_dir, tmp_path / f"smollm2.{gguf_type}.gguf", gguf_type=gguf_type)
    assert gguf_metadata(path)["tokenizer.ggml.pre"] == "smollm"
    tokenizer = Tokenizer.from_dir(smollm2_hub_dir)
    reference = smollm2_hub_dir if gguf_type == "f16" else convert_gguf_to_hf(path, tmp_path / "imported")
    theirs_model = llama(llama_cpp_module, path)
    with torch_threads(2):
        ours_model = from_pretrained(reference, dtype="float32").eval()
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt)
            assert theirs_model.tokenize(prompt.encode(), add_bos=False, special=True) == ids, prompt
            theirs = llama_cpp_greedy(theirs_model, ids)
            assert len(theirs) == NEW_TOKENS
            if gguf_type == "f16":
                ours = our_greedy(ours_model, tokenizer.eos_token_id, ids)
                assert tokenizer.decode(theirs) == tokenizer.decode(ours), prompt
            else:
                assert_llama_cpps_choices_are_ours(ours_model, ids, theirs)
