"""Our GGUF files in llama.cpp itself (llama-cpp-python, built by `make llama-cpp`; skipped without it).

For each family we support, a model with the family's real tokenizer in its Hub layout is exported and
llama.cpp tokenizes llama.cpp's own tokenizer tests with it: the ids must be those transformers gives.
SmolLM2-135M-Instruct in its Hub layout is exported as f16, q8_0 and q4_k_m, and llama.cpp's greedy text must be
ours: for f16 our model on the original weights, for the quantized types our model on the weights the file holds
(imported back by our GGUF reader), since llama.cpp computes with those. llama.cpp's quantized matrix products
also round the activations to 8 bits (its q8_0 logits move by ~0.3), so there each of llama.cpp's greedy tokens
(its EOS too, where it stops early) is checked on its own path: it must be our top token, or within `TIE_MARGIN`
of it in our logits, and at least `MIN_AGREED_SHARE` of them must be our top token.

Our q4_k_m file is also compared with what llama.cpp's own quantizer (`llama_model_quantize`, llama-quantize)
makes from our f16 and f32 exports of SmolLM2: the same tensors with the same types, the same size within 1%,
and the bytes of every tensor equal where both quantized the same values (from f16, llama-quantize quantizes the
f16-rounded weights, so ours must match it when made from those).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from aprender.format.convert import convert_gguf_to_hf
from aprender.format.gguf_export import export_gguf
from aprender.format.gguf_mixtures import file_type
from aprender.format.llama_cpp_pre import LLAMA_CPP_PRE_NAMES
from aprender.text import Tokenizer
from entrenar.generation import generate
from entrenar.models import from_pretrained
from fixtures.llama_cpp import HUB_FAMILIES, hub_model_dir, vocab_tests
from fixtures.threads import torch_threads

NEW_TOKENS = 24
MIN_AGREED_SHARE = 0.75
TIE_MARGIN = 0.5
PROMPTS = [
    "The capital of France is",
    "List the first five prime numbers: 2, 3,",
    "def fibonacci(n):\n    ",
    "The three primary colors are",
    "Once upon a time, there was a",
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
    """llama.cpp's `NEW_TOKENS` greedy tokens, or fewer ending with its EOS."""
    model.reset()
    out: list[int] = []
    for token in model.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        out.append(token)
        if token == model.token_eos() or len(out) == NEW_TOKENS:
            break
    return out


def our_greedy(model: Any, eos: int | None, prompt_ids: list[int]) -> list[int]:
    """Our `NEW_TOKENS` greedy tokens, or fewer ending with the EOS."""
    with torch.no_grad():
        (row,) = generate(model, [prompt_ids], max_new_tokens=NEW_TOKENS, eos_token_ids=[eos] if eos else ())
    return list(row)


def assert_llama_cpps_choices_are_ours(model: Any, prompt_ids: list[int], theirs: list[int]) -> None:
    """Along llama.cpp's greedy path, each token is our top token or all but tied with it."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + theirs]))[0, len(prompt_ids) - 1 : -1].float()
    ours = logits.argmax(-1)
    margins = logits.gather(1, ours[:, None]) - logits.gather(1, torch.tensor(theirs)[:, None])
    assert float(margins.max()) < TIE_MARGIN, margins.flatten().tolist()
    assert int((ours == torch.tensor(theirs)).sum()) >= MIN_AGREED_SHARE * len(theirs), (ours.tolist(), theirs)


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_k_m"])
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
            if gguf_type == "f16":
                ours = our_greedy(ours_model, tokenizer.eos_token_id, ids)
                assert theirs == ours, (prompt, tokenizer.decode(theirs), tokenizer.decode(ours))
            else:
                assert_llama_cpps_choices_are_ours(ours_model, ids, theirs)


def llama_quantize(module: ModuleType, source: Path, out: Path, gguf_type: str) -> Path:
    """llama.cpp's llama-quantize (`llama_model_quantize`, one thread) of `source` to `gguf_type`, into `out`."""
    params = module.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(file_type(gguf_type).ftype), 1
    assert module.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


def tensor_blocks(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    """Each tensor of a GGUF file: name -> (GGML type, its bytes as one row per quantization block)."""
    import gguf

    tensors = {}
    for tensor in gguf.GGUFReader(path).tensors:
        block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type][1]
        tensors[tensor.name] = (
            int(tensor.tensor_type),
            np.asarray(tensor.data).view(np.uint8).reshape(-1, block_bytes),
        )
    return tensors


def differing_blocks(ours: Path, theirs: Path) -> dict[str, tuple[int, int]]:
    """Tensors whose bytes differ between two files with the same tensors: name -> (blocks that differ, blocks)."""
    a, b = tensor_blocks(ours), tensor_blocks(theirs)
    return {
        name: (int((blocks != b[name][1]).any(axis=1).sum()), len(blocks))
        for name, (_, blocks) in a.items()
        if not np.array_equal(blocks, b[name][1])
    }


@pytest.mark.slow
@pytest.mark.llamacpp
def test_smollm2_q4_k_m_is_what_llama_quantize_makes(
    smollm2_hf_dir: Path, tmp_path: Path, llama_cpp_module: ModuleType
) -> None:
    ours = export_gguf(smollm2_hf_dir, tmp_path / "ours.gguf", gguf_type="q4_k_m")
    theirs = {
        source: llama_quantize(
            llama_cpp_module,
            export_gguf(smollm2_hf_dir, tmp_path / f"{source}.gguf", gguf_type=source),
            tmp_path / f"llama-quantize-{source}.gguf",
            "q4_k_m",
        )
        for source in ("f16", "f32")
    }
    types = {name: ggml_type for name, (ggml_type, _) in tensor_blocks(ours).items()}
    for path in theirs.values():
        assert {name: ggml_type for name, (ggml_type, _) in tensor_blocks(path).items()} == types
        assert abs(ours.stat().st_size - path.stat().st_size) <= 0.01 * path.stat().st_size
    # From f32 llama-quantize quantizes the weights we do: every tensor is byte for byte ours.
    assert differing_blocks(ours, theirs["f32"]) == {}
    # From f16 it quantizes the f16-rounded weights (blocks of ours differ there): ours from those is byte for byte it.
    f16_weights = convert_gguf_to_hf(tmp_path / "f16.gguf", tmp_path / "f16-weights")
    from_f16 = export_gguf(f16_weights, tmp_path / "ours-from-f16.gguf", gguf_type="q4_k_m")
    assert differing_blocks(from_f16, theirs["f16"]) == {}
