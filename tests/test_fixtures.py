"""The tiny checkpoint fixtures load in transformers and hold exactly what tests downstream rely on."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

import fixtures
from fixtures import tiny_models
from fixtures.tiny_models import CORPUS_PATH, FAMILIES, SPECIAL_TOKENS

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "How many minutes are in an hour?"},
    {"role": "assistant", "content": "Sixty minutes."},
    {"role": "user", "content": "Und in einem Tag? 🙂"},
    {"role": "assistant", "content": "1440 Minuten, también 86 400 s."},
]

# Expected values written down from the recipe in the brief, not read back from fixtures.tiny_models.
EXPECTED_CONFIG: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": True, "head_dim": 16, "rms_norm_eps": 1e-5, "bos_token_id": 3, "eos_token_id": 6},
    "qwen2": {"tie_word_embeddings": False, "rms_norm_eps": 1e-6, "bos_token_id": 0, "eos_token_id": 2},
    "qwen3": {"tie_word_embeddings": True, "head_dim": 32, "rms_norm_eps": 1e-6, "bos_token_id": 0, "eos_token_id": 2},
    "mistral": {"tie_word_embeddings": False, "sliding_window": 16, "rms_norm_eps": 1e-5, "bos_token_id": 3},
}
CHATML = {"qwen2", "qwen3"}


def _corpus_lines() -> list[str]:
    return [line for line in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tensor_names(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_corpus_is_a_small_varied_text() -> None:
    text = CORPUS_PATH.read_text(encoding="utf-8")
    assert 20_000 <= len(text.encode()) <= 60_000
    for sample in ("é", "ñ", "ß", "ü", "def ", '{"', "    return", "🙂", "1,284"):
        assert sample in text


def test_tokenizer_dir_loads_and_is_the_chatml_flavour(tiny_tokenizer_dir: Path) -> None:
    assert sorted(p.name for p in tiny_tokenizer_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = json.loads((tiny_tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (None, "<|im_end|>", "<|endoftext|>", None)
    assert tok.model_max_length == 512
    assert 512 <= len(tok) <= 1024
    assert tok("Hello world")["input_ids"] == tok.encode("Hello world", add_special_tokens=False)  # no BOS


def test_tokenizer_round_trips_the_corpus_and_compresses_it(tiny_tokenizer_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    raw = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    lines = _corpus_lines()
    encoded = [tok.encode(line, add_special_tokens=False) for line in lines]
    assert [tok.decode(ids) for ids in encoded] == lines
    # transformers and the bare `tokenizers` library (what aprender.text reads) agree token for token.
    assert [raw.encode(line).ids for line in lines] == encoded
    # A trained BPE merges: fewer than 0.45 tokens per UTF-8 byte (measured ≈ 0.42; raw bytes would be 1.0).
    n_bytes = sum(len(line.encode()) for line in lines)
    assert sum(map(len, encoded)) / n_bytes < 0.45


def test_special_tokens_are_single_ids(tiny_checkpoint: tuple[str, Path]) -> None:
    _, folder = tiny_checkpoint
    tok = AutoTokenizer.from_pretrained(folder)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tok.encode(token, add_special_tokens=False) == [expected_id]
        assert tok.convert_ids_to_tokens(expected_id) == token
    ids = tok.encode("a<|im_end|>b<|eot_id|>", add_special_tokens=False)
    assert ids[1] == 2 and ids[-1] == 6 and len(ids) == 4
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_bos_is_added_on_encode_only_for_llama_style_tokenizers(tiny_checkpoint: tuple[str, Path]) -> None:
    family, folder = tiny_checkpoint
    tok = AutoTokenizer.from_pretrained(folder)
    plain = tok.encode("The harbour woke.", add_special_tokens=False)
    with_special = tok.encode("The harbour woke.")
    assert with_special == (plain if family in CHATML else [3, *plain])


def test_chatml_template_renders_conversation(tiny_checkpoints: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_checkpoints["qwen2"])
    # Written by hand from the ChatML format: <|im_start|>ROLE\nCONTENT<|im_end|>\n per message.
    expected = (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nHow many minutes are in an hour?<|im_end|>\n"
        "<|im_start|>assistant\nSixty minutes.<|im_end|>\n"
    )
    assert tok.apply_chat_template(CONVERSATION[:3], tokenize=False) == expected
    prompt = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHow many minutes are in an hour?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama3_template_renders_conversation(tiny_checkpoints: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_checkpoints["llama"])
    # Written by hand from the Llama 3 format: BOS, then <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>.
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    expected = (
        "<|begin_of_text|>"
        + header.format("system")
        + "Answer briefly.<|eot_id|>"
        + header.format("user")
        + "How many minutes are in an hour?<|eot_id|>"
    )
    assert tok.apply_chat_template(CONVERSATION[:2], tokenize=False) == expected
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected + header.format("assistant")


def _rendered_pieces(family: str) -> list[tuple[str, bool]]:
    """CONVERSATION as rendered by the family's template, cut at the token boundaries; True = assistant reply."""
    pieces = [] if family in CHATML else [("<|begin_of_text|>", False)]
    for message in CONVERSATION:
        role, reply = message["role"], message["role"] == "assistant"
        if family in CHATML:
            pieces += [(f"<|im_start|>{role}\n", False), (message["content"] + "<|im_end|>", reply), ("\n", False)]
        else:
            header = f"<|start_header_id|>{role}<|end_header_id|>\n\n"
            pieces += [(header, False), (message["content"] + "<|eot_id|>", reply)]
    return pieces


def test_assistant_mask_marks_exactly_the_assistant_replies(tiny_checkpoint: tuple[str, Path]) -> None:
    family, folder = tiny_checkpoint
    tok = AutoTokenizer.from_pretrained(folder)
    expected_ids: list[int] = []
    expected_mask: list[int] = []
    for text, reply in _rendered_pieces(family):
        ids = tok.encode(text, add_special_tokens=False)
        expected_ids += ids
        expected_mask += [int(reply)] * len(ids)
    out: Any = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert out["input_ids"] == expected_ids
    assert out["assistant_masks"] == expected_mask
    eos = tok.eos_token
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == f"Sixty minutes.{eos}1440 Minuten, también 86 400 s.{eos}"


def test_checkpoint_loads_with_all_weights_and_gives_finite_logits(tiny_checkpoint: tuple[str, Path]) -> None:
    _, folder = tiny_checkpoint
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    loaded: Any = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    model, info = loaded
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok.encode("The crust should sing as it cools: 1,284 crackles! 🍞")])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()
    # Not degenerate: with std 0.1 weights the logits spread (measured std ≈ 0.8) and the top token is far
    # likelier than uniform (measured mean top probability ≈ 10/1024).
    assert logits.std() > 0.3
    assert logits.softmax(-1).max(-1).values.mean() > 3 / len(tok)


def test_config_holds_the_shared_shape_and_family_settings(tiny_checkpoint: tuple[str, Path]) -> None:
    family, folder = tiny_checkpoint
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family
    shared = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    shared |= {"intermediate_size": 128, "max_position_embeddings": 512, "pad_token_id": 0}
    assert {k: config[k] for k in shared} == shared
    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(folder))
    assert {k: config[k] for k in EXPECTED_CONFIG[family]} == EXPECTED_CONFIG[family]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [config["eos_token_id"], 0]
    names = _tensor_names(folder)
    assert ("lm_head.weight" in names) is not config["tie_word_embeddings"]
    assert ("model.layers.0.self_attn.q_proj.bias" in names) is (family == "qwen2")
    assert ("model.layers.0.self_attn.q_norm.weight" in names) is (family == "qwen3")
    assert "model.layers.0.self_attn.o_proj.bias" not in names


def test_weights_have_gqa_shapes_and_perturbed_norms(tiny_checkpoint: tuple[str, Path]) -> None:
    family, folder = tiny_checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder)
    attn = model.model.layers[0].self_attn
    head_dim = 32 if family == "qwen3" else 16
    assert attn.q_proj.weight.shape == (4 * head_dim, 64)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (2 * head_dim, 64)
    assert attn.o_proj.weight.shape == (64, 4 * head_dim)
    norms = {n: p for n, p in model.named_parameters() if "norm" in n}
    # 2 per layer + the final norm, plus q_norm/k_norm per layer for qwen3.
    assert len(norms) == 5 + (4 if family == "qwen3" else 0)
    for name, weight in norms.items():
        assert (weight - 1).abs().max() > 0.05, name
    if family == "qwen2":
        assert attn.q_proj.bias.abs().min() > 0 and attn.k_proj.bias.std() > 0.05
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied is EXPECTED_CONFIG[family]["tie_word_embeddings"]


def test_llama_rope_uses_llama3_scaling(tiny_checkpoints: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    inv_freq = model.model.rotary_emb.inv_freq
    # Plain RoPE: theta^(-2i/d), d = 16, theta = 1e4. Llama 3 scaling (original context 128, factor 4,
    # low/high freq factors 1/4): wavelengths 2π/f below 128/4 = 32 stay (i = 0, 1: 6.3, 19.9), above 128
    # are divided by 4 (i >= 3: 199 ...), and i = 2 (62.8) is interpolated between the two.
    plain = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    assert [2 * math.pi / f for f in plain[:4].tolist()] == pytest.approx([6.283, 19.87, 62.83, 198.7], rel=1e-3)
    torch.testing.assert_close(inv_freq[:2], plain[:2])
    torch.testing.assert_close(inv_freq[3:], plain[3:] / 4)
    assert plain[2] / 4 < inv_freq[2] < plain[2]


def test_only_mistral_forgets_tokens_beyond_its_sliding_window(tiny_checkpoint: tuple[str, Path]) -> None:
    family, folder = tiny_checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.arange(10, 58).unsqueeze(0)  # 48 tokens
    changed = ids.clone()
    changed[0, 0] = 500
    with torch.no_grad():
        last, last_changed = model(ids).logits[0, -1], model(changed).logits[0, -1]
    # Two layers of a 16-token window reach at most 32 positions back, so position 47 cannot see token 0.
    if family == "mistral":
        torch.testing.assert_close(last, last_changed)
    else:
        assert (last - last_changed).abs().max() > 1e-4


def test_cache_is_reused_and_the_build_is_deterministic(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_root = tiny_checkpoints["llama"].parent
    builds = len(tiny_models.BUILDS)
    assert tiny_models.tiny_models_root() == session_root
    assert len(tiny_models.BUILDS) == builds  # the session cache was reused, not rebuilt

    monkeypatch.setattr(fixtures, "CACHE_ROOT", tmp_path)
    fresh = tiny_models.tiny_models_root()
    assert fresh.parent == tmp_path and fresh.name == session_root.name
    assert len(tiny_models.BUILDS) == builds + 1
    assert _tree_bytes(fresh) == _tree_bytes(session_root)  # same seed, same bytes
    stamp = fresh.stat().st_mtime_ns
    assert tiny_models.tiny_models_root() == fresh
    assert len(tiny_models.BUILDS) == builds + 1 and fresh.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in fresh.iterdir()) == sorted([*FAMILIES, "tokenizer"])
