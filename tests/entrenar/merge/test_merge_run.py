"""`entrenar merge` end to end, with mergekit 0.1.5 as the oracle: the same YAML, every output tensor equal.

Fixtures: three "fine-tunes" of the tiny Llama (tied embeddings) and of the tiny Qwen2 (untied head, q/k/v
biases): the base plus a different random change of every tensor (std 0.02), so every method has deltas
to elect, prune and interpolate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from aprender.format.safetensors import load
from entrenar.errors import MergeError
from entrenar.merge.config import load_merge_config
from entrenar.merge.run import MERGE_CONFIG_NAME, run_merge
from fixtures.cli import run_cli
from fixtures.finetuned import finetuned_copy

TOLERANCE = 1e-5


def _variants(base: Path, root: Path, count: int) -> list[Path]:
    tensors = load(base)
    folders = []
    for seed in range(count):
        generator = torch.Generator().manual_seed(100 + seed)
        deltas = {name: 0.02 * torch.randn(t.shape, generator=generator) for name, t in tensors.items()}
        folders.append(finetuned_copy(base, root / f"ft{seed}", deltas))
    return folders


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> dict[str, list[Path]]:
    """family -> [base, ft0, ft1, ft2]."""
    root = tmp_path_factory.mktemp("merge-inputs")
    return {
        family: [tiny_checkpoints[family], *_variants(tiny_checkpoints[family], root / family, 3)]
        for family in ("llama", "qwen2")
    }


def _write(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "merge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _mergekit(config: dict[str, Any], out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run
    from mergekit.options import MergeOptions

    mergekit_run(MergeConfiguration.model_validate(config), str(out), MergeOptions(quiet=True, write_model_card=False))
    return load(out)


def _ours(config: dict[str, Any], folder: Path, *overrides: str) -> tuple[dict[str, torch.Tensor], Path]:
    out = folder / "ours"
    run_merge(load_merge_config(_write(folder, config), overrides), out, log=lambda line: None)
    return load(out), out


def _assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    worst = max(float((ours[name].float() - theirs[name].float()).abs().max()) for name in ours)
    assert worst <= TOLERANCE, worst


def _models(folders: list[Path], weights: list[Any] | None = None) -> list[dict[str, Any]]:
    return [
        {"model": str(folder), **({"parameters": {"weight": w}} if weights is not None else {})}
        for folder, w in zip(folders, weights or [None] * len(folders), strict=True)
    ]


# Deterministic methods and parameters mergekit and we share, incl. gradients and filters.
CASES: dict[str, dict[str, Any]] = {
    "linear": {"models": "ft", "weights": [0.5, 0.3, 0.2]},
    "linear-gradient-filter": {
        "method": "linear",
        "models": "ft",
        "weights": [[0.2, 0.8], [{"filter": "self_attn", "value": 0.7}, {"value": [1.0, 0.1, 0.5]}], 0.4],
        "parameters": {"normalize": False},
    },
    "task_arithmetic": {"base": True, "models": "ft", "weights": [0.5, 0.3, 1.0], "parameters": {"lambda": 0.8}},
    "ties": {
        "base": True,
        "models": "ft",
        "weights": [1.0, [0.2, 0.9], 0.5],
        "parameters": {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]},
    },
    "breadcrumbs_ties": {
        "base": True,
        "models": "ft",
        "weights": [1.0, 1.0, 1.0],
        "parameters": {"density": 0.8, "gamma": 0.05},
    },
    "slerp": {"base": True, "models": "ft1", "parameters": {"t": [0.0, 0.3, 0.7, 1.0]}},
    "nuslerp": {"models": "ft2", "weights": [0.4, 0.6]},
    "model_stock": {"base": True, "models": "ft"},
}


def _config(case: str, folders: list[Path]) -> dict[str, Any]:
    spec = CASES[case]
    base, fts = folders[0], folders[1:]
    chosen = {"ft": fts, "ft1": fts[:1], "ft2": fts[:2]}[spec["models"]]
    config: dict[str, Any] = {"merge_method": spec.get("method", case), "dtype": "float32"}
    if spec.get("base"):
        config["base_model"] = str(base)
    config["models"] = _models(chosen, spec.get("weights"))
    if "parameters" in spec:
        config["parameters"] = spec["parameters"]
    return config


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_tensor_equals_mergekits(
    family: str, case: str, family_models: dict[str, list[Path]], tmp_path: Path
) -> None:
    config = _config(case, family_models[family])
    ours, _ = _ours(config, tmp_path)
    _assert_same(ours, _mergekit(config, tmp_path / "theirs"))


def test_slices_stack_layers_like_mergekit(family_models: dict[str, list[Path]], tmp_path: Path) -> None:
    ft0, ft1 = family_models["llama"][1:3]
    config = {
        "merge_method": "passthrough",
        "dtype": "float32",
        "slices": [
            {"sources": [{"model": str(ft0), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(ft1), "layer_range": [1, 2]}]},
        ],
    }
    ours, out = _ours(config, tmp_path)
    _assert_same(ours, _mergekit(config, tmp_path / "theirs"))
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    # Qwen2's config lists each layer's attention type: the stacked model's list follows its layers (mergekit
    # 0.1.5 leaves it at 2 entries, which transformers refuses to load)
    base, ft0, ft1, _ = family_models["qwen2"]
    qwen = config | {"slices": [{"sources": [{"model": str(ft0), "layer_range": [0, 2]}]}, config["slices"][1]]}
    qwen["slices"][1] = {"sources": [{"model": str(ft1), "layer_range": [1, 2]}]}
    _, out = _ours(qwen, tmp_path / "qwen")
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).layer_types == ["full_attention"] * 3
    # slices with a base per merge: a ties slice over layer 0, another with its own weight over layer 1
    sliced = {
        "merge_method": "ties",
        "base_model": str(base),
        "dtype": "float32",
        "parameters": {"weight": 0.7, "density": 0.5},
        "slices": [
            {"sources": [{"model": str(base), "layer_range": [0, 1]}, {"model": str(ft0), "layer_range": [0, 1]}]},
            {
                "sources": [
                    {"model": str(base), "layer_range": [1, 2]},
                    {"model": str(ft1), "layer_range": [1, 2], "parameters": {"weight": 0.2}},
                ]
            },
        ],
    }
    ours, _ = _ours(sliced, tmp_path / "sliced")
    _assert_same(ours, _mergekit(sliced, tmp_path / "sliced-theirs"))


def test_properties(family_models: dict[str, list[Path]], tmp_path: Path) -> None:
    base, ft0, ft1, _ = family_models["llama"]
    same = {"merge_method": "linear", "models": _models([ft0, ft0 / ".." / "ft0"], [0.3, 0.7])}
    ours, _ = _ours(same | {"models": _models([ft0], [1.0])}, tmp_path / "one")
    _assert_same(ours, load(ft0))  # a linear merge of one model is that model
    for t, expected in ((0.0, base), (1.0, ft1)):
        slerp = {"merge_method": "slerp", "base_model": str(base), "models": _models([ft1]), "parameters": {"t": t}}
        ours, _ = _ours(slerp, tmp_path / f"slerp{t}")
        _assert_same(ours, load(expected))
    # TIES with one model and density 1 (no pruning, nothing to elect) is task arithmetic
    ties = {"merge_method": "ties", "base_model": str(base), "models": _models([ft0], [1.0])}
    task = {"merge_method": "task_arithmetic", "base_model": str(base), "models": _models([ft0], [1.0])}
    _assert_same(_ours(ties, tmp_path / "ties")[0], _ours(task, tmp_path / "task")[0])


def test_random_methods_repeat_with_a_seed(family_models: dict[str, list[Path]], tmp_path: Path) -> None:
    base, ft0, ft1, _ = family_models["qwen2"]
    config = {
        "merge_method": "dare_ties",
        "base_model": str(base),
        "models": _models([ft0, ft1], [1.0, 1.0]),
        "parameters": {"density": 0.5},
        "seed": 7,
    }
    first, _ = _ours(config, tmp_path / "a")
    again, _ = _ours(config, tmp_path / "b")
    other, _ = _ours(config | {"seed": 8}, tmp_path / "c")
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)
    # DARE keeps about half of each delta (rescaled): count the changed entries of a large tensor
    name = "model.layers.0.mlp.up_proj.weight"
    delta = first[name] - load(base)[name]
    kept = float((delta != 0).float().mean())
    assert 0.6 < kept < 0.85  # one of two deltas kept with p=0.5 each: 1 - 0.25 = 0.75 have some change


def test_the_output_folder(family_models: dict[str, list[Path]], tmp_path: Path) -> None:
    base, ft0, ft1, _ = family_models["qwen2"]
    config = {"merge_method": "ties", "base_model": str(base), "models": _models([ft0, ft1], [1.0, 0.5])}
    _, out = _ours(config, tmp_path)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [
            "README.md",
            "config.json",
            "final_model.json",
            "generation_config.json",
            MERGE_CONFIG_NAME,
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    record = json.loads((out / "final_model.json").read_text())
    assert (record["output"], record["techniques"]) == ("full", ["merge"])
    assert record["merge"]["method"] == "ties" and [i["model"] for i in record["merge"]["inputs"]] == [
        str(ft0),
        str(ft1),
        str(base),
    ]
    card = (out / "README.md").read_text()
    assert "was merged from 3 models" in card and "Method: [TIES](https://arxiv.org/abs/2306.01708)" in card
    assert yaml.safe_load((out / MERGE_CONFIG_NAME).read_text())["merge_method"] == "ties"
    # the output loads in transformers and the merge runs again into the same folder (an earlier merge)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)
    _ours(config | {"models": _models([ft0], [1.0])}, tmp_path)
    assert json.loads((out / "final_model.json").read_text())["merge"]["inputs"][0]["model"] == str(ft0)


def test_model_plus_adapter(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # mergekit's "model+adapter": the adapter is folded into its model first
    from entrenar.lora import LoraConfig, lora_linear_factory, save_adapter
    from entrenar.models import from_pretrained

    torch.manual_seed(0)
    lora = LoraConfig(rank=4, alpha=8, target_modules="all-linear", init="none")
    adapted = from_pretrained(tiny_checkpoints["qwen2"], linear_factory=lora_linear_factory(lora))
    save_adapter(adapted, tmp_path / "adapter", lora)
    base = str(tiny_checkpoints["qwen2"])
    config = {"merge_method": "linear", "models": _models([Path(f"{base}+{tmp_path / 'adapter'}")], [1.0])}
    ours, _ = _ours(config, tmp_path / "merged")
    from entrenar.lora import merge_adapter_into_checkpoint

    merge_adapter_into_checkpoint(base, tmp_path / "adapter", tmp_path / "folded")
    _assert_same(ours, load(tmp_path / "folded"))


def test_eval_data_scores_and_refuses_a_broken_merge(family_models: dict[str, list[Path]], tmp_path: Path) -> None:
    ft0, ft1 = family_models["llama"][1:3]
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n\nA second paragraph of plain text.\n")
    good = {"merge_method": "linear", "models": _models([ft0, ft1], [0.5, 0.5]), "eval_data": str(text)}
    lines: list[str] = []
    result = run_merge(load_merge_config(_write(tmp_path / "good", good)), tmp_path / "good-out", log=lines.append)
    assert [s.name for s in result.scores] == [str(ft0), str(ft1), "merged"]
    assert any(line.startswith("perplexity of merged on") for line in lines)
    record = json.loads((tmp_path / "good-out" / "final_model.json").read_text())
    assert [s["model"] for s in record["merge"]["perplexity"]] == [str(ft0), str(ft1), "merged"]
    assert "Perplexity on the evaluation text" in (tmp_path / "good-out" / "README.md").read_text()
    # a "merge" that scales every weight by 20 is gibberish: refused unless told to keep it
    broken = good | {"models": _models([ft0, ft1], [10.0, 10.0]), "parameters": {"normalize": False}}
    with pytest.raises(MergeError, match=r"perplexity .* is more than 1\.5x the worst input's"):
        run_merge(load_merge_config(_write(tmp_path / "bad", broken)), tmp_path / "bad-out", log=lines.append)
    assert not (tmp_path / "bad-out").exists()
    kept = run_merge(
        load_merge_config(_write(tmp_path / "bad", broken)), tmp_path / "bad-out", keep_worse=True, log=lines.append
    )
    assert kept.output_dir == tmp_path / "bad-out" and kept.scores[-1].perplexity > 1.5 * kept.scores[0].perplexity


def _wider(base: Path, tmp_path: Path) -> Path:
    """The tiny Llama with a narrower MLP (96 instead of 128): same type, other shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    config.intermediate_size = 96
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wider")
    return tmp_path / "wider"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c, f: c | {"merge_method": "frankenmerge"}, "merge_method"),
        (lambda c, f: c | {"modules": {}}, "modules"),
        (lambda c, f: {k: v for k, v in c.items() if k != "base_model"}, "base_model"),
        (lambda c, f: c | {"models": _models([f["other"]], [1.0])}, "has model_type 'llama' but .*qwen3 has 'qwen3'"),
        (lambda c, f: c | {"models": _models([f["wider"]], [1.0])}, "has intermediate_size 128 but .*wider has 96"),
        (lambda c, f: c | {"models": _models([f["missing"]], [1.0])}, "nope' is neither an existing file or folder"),
        (lambda c, f: c | {"parameters": {"density": "half"}}, "density"),
    ],
)
def test_bad_configs_are_one_line_exit_2_and_write_nothing(
    edit: Any,
    message: str,
    family_models: dict[str, list[Path]],
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, ft0, _, _ = family_models["llama"]
    folders = {"other": tiny_checkpoints["qwen3"], "missing": tmp_path / "nope", "wider": _wider(base, tmp_path)}
    config = edit({"merge_method": "ties", "base_model": str(base), "models": _models([ft0], [1.0])}, folders)
    capsys.readouterr()  # transformers' progress bar while saving the wider model
    code, _, err = run_cli(capsys, "merge", str(_write(tmp_path / "cfg", config)), "-o", str(tmp_path / "out"))
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_cli_merges_and_dry_runs(
    family_models: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, ft0, ft1, _ = family_models["qwen2"]
    path = _write(
        tmp_path, {"merge_method": "ties", "base_model": str(base), "models": _models([ft0, ft1], [1.0, 1.0])}
    )
    code, out, err = run_cli(capsys, "merge", str(path), "-o", str(tmp_path / "out"), "--dry-run")
    assert (code, err) == (0, "") and "TIES merge of 3 models" in out and not (tmp_path / "out").exists()
    code, out, err = run_cli(capsys, "merge", str(path), "-o", str(tmp_path / "out"), "parameters.density=0.5")
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "out" / MERGE_CONFIG_NAME).read_text())["parameters"]["density"] == 0.5
    # an output folder holding something else is never overwritten
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "merge", str(path), "-o", str(tmp_path / "taken"))
    assert code == 2 and "is not empty and holds no earlier merge" in err


# ------------------------------------------------------------------------------------------ vocabularies


def test_different_vocabularies_need_a_tokenizer_source(vocab_models: dict[str, Path], tmp_path: Path) -> None:
    config = {"merge_method": "linear", "models": _models([vocab_models["qwen2"], vocab_models["extra"]], [0.5, 0.5])}
    with pytest.raises(MergeError, match=r"vocabularies differ \(.*qwen2: 1024, .*extra: 1027\)"):
        _ours(config, tmp_path / "none")
    assert not (tmp_path / "none" / "ours").exists()


@pytest.mark.parametrize("source", ["base", "union"])
def test_vocabularies_rebuilt_as_mergekit_does(source: str, vocab_models: dict[str, Path], tmp_path: Path) -> None:
    qwen, extra = vocab_models["qwen2"], vocab_models["extra"]
    config = {
        "merge_method": "linear",
        "base_model": str(qwen),
        "dtype": "float32",
        "models": _models([qwen, extra], [0.5, 0.5]),
        "tokenizer_source": source,
    }
    ours, out = _ours(config, tmp_path)
    theirs = _mergekit(config, tmp_path / "theirs")
    from transformers import AutoTokenizer

    our_vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    their_vocab = AutoTokenizer.from_pretrained(tmp_path / "theirs").get_vocab()
    assert our_vocab.keys() == their_vocab.keys()  # union: mergekit's order of added tokens varies run to run
    assert json.loads((out / "config.json").read_text())["vocab_size"] == ours["lm_head.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        for token, index in our_vocab.items():
            torch.testing.assert_close(ours[name][index], theirs[name][their_vocab[token]], rtol=0, atol=TOLERANCE)
    ours.pop("model.embed_tokens.weight"), ours.pop("lm_head.weight")
    theirs.pop("model.embed_tokens.weight"), theirs.pop("lm_head.weight")
    _assert_same(ours, theirs)


# ------------------------------------------------------------------------------------ chat template, publish


def test_chat_template(family_models: dict[str, list[Path]], tmp_path: Path) -> None:
    from aprender.text import Tokenizer

    ft0, ft1 = family_models["llama"][1:3]
    config = {"merge_method": "linear", "models": _models([ft0, ft1], [0.5, 0.5])}
    own = Tokenizer.from_dir(ft0).chat_template
    _, out = _ours(config | {"chat_template": "auto"}, tmp_path / "auto")
    assert Tokenizer.from_dir(out).chat_template == own  # every input has it
    jinja = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    _, out = _ours(config | {"chat_template": jinja}, tmp_path / "jinja")
    assert Tokenizer.from_dir(out).chat_template == jinja
    with pytest.raises(MergeError, match="named templates are not built in"):
        _ours(config | {"chat_template": "chatml"}, tmp_path / "named")


def test_publish_takes_a_merge_output(
    family_models: dict[str, list[Path]],
    tmp_path: Path,
    local_hub: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import huggingface_hub

    base, ft0, ft1, _ = family_models["qwen2"]
    config = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": _models([ft0, ft1], [1.0, 1.0]),
        "publish": {"repo": "alice/tiny-ties"},
    }
    monkeypatch.setenv("HF_TOKEN", local_hub.tokens["alice"])
    code, out, err = run_cli(capsys, "merge", str(_write(tmp_path, config)), "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "published to" in out
    folder = Path(
        huggingface_hub.snapshot_download("alice/tiny-ties", endpoint=local_hub.url, token=local_hub.tokens["alice"])
    )
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert "was merged from 3 models" in (folder / "README.md").read_text()
    # `entrenar publish` takes the folder as well (a full model; dry run lists its files)
    code, out, err = run_cli(capsys, "publish", str(tmp_path / "out"), "--repo", "alice/again", "--dry-run")
    assert code == 0 and "model.safetensors" in out, err
