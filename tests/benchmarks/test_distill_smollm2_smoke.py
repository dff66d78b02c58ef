"""Smoke test of benchmarks/distill_smollm2.py on the tiny Llama, so the experiment cannot rot.

The split, the layer ranges, the configs and the reply similarity are checked as values; a ``--quick`` run of
`main` (the tiny Llama standing in for SmolLM2, the student its first layer) trains the LoRA teacher, folds it,
cuts the student, runs both student runs and answers the questions; a second with another alpha reuses the
teacher and the plain run. The measurements are checked against transformers: the student's validation
cross-entropy and KL to the teacher before training, recomputed in float64 sample by sample from the saved
models.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = "distill_smollm2.py"  # under benchmarks/, imported by the `bench` fixture (conftest.py)
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def quick_run(
    bench: ModuleType, tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """Two ``--quick`` runs of `main` on the tiny Llama, the second with alpha 1: the folder and its printout."""
    cache = tmp_path_factory.mktemp("distill-bench")
    shutil.copytree(tiny_checkpoints["llama"], cache / "smollm2")  # stands in for the converted SmolLM2 folder
    sys.path.insert(0, str(BENCHMARKS))  # as when run as a script: forward_backward is beside it
    try:
        with pytest.MonkeyPatch.context() as patch:
            printed: list[str] = []
            patch.setattr("builtins.print", lambda *args, **_: printed.append(" ".join(map(str, args))))
            bench.main(["--quick", "--layers", "0-1", "--threads", "1", "--cache", str(cache)])
            trained = {name: _mtime(cache / "distill-smollm2" / name) for name in ("plain", "distilled")}
            printed.clear()
            # Another alpha: the plain run (and the teacher) are reused, the distilled run trains again.
            bench.main(["--quick", "--layers", "0-1", "--threads", "1", "--cache", str(cache), "--alpha", "1"])
            assert _mtime(cache / "distill-smollm2" / "plain") == trained["plain"]
            assert _mtime(cache / "distill-smollm2" / "distilled") != trained["distilled"]
    finally:
        sys.path.remove(str(BENCHMARKS))
    return cache / "distill-smollm2", "\n".join(printed)


def _mtime(run: Path) -> int:
    return (run / "model.safetensors").stat().st_mtime_ns


def test_split_holds_out_one_phrasing(bench: ModuleType, tmp_path: Path) -> None:
    train, val = bench.split_demo_data(bench.DEMO_DATA, tmp_path)
    train_questions, val_questions = bench.questions(train), bench.questions(val)
    # The demo set: 15 facts x 5 phrasings, "I was wondering, ..." held out.
    assert (len(train_questions), len(val_questions)) == (60, 15)
    assert all(q.startswith(bench.HELD_OUT) for q in val_questions)
    assert not any(q.startswith(bench.HELD_OUT) for q in train_questions)
    assert set(bench.SHOWN) <= set(val_questions)


def test_layer_ranges_and_configs(bench: ModuleType) -> None:
    assert bench.parse_layers("0-6,24-30") == [(0, 6), (24, 30)]
    for bad in ("6-6", "0-6,x", "3"):
        with pytest.raises(SystemExit, match="--layers"):
            bench.parse_layers(bad)
    paths = [Path(p) for p in ("/s", "/t", "/train", "/val", "/out")]
    plain, distilled = (bench.student_config(*paths, steps=40, alpha=alpha) for alpha in (0.0, 0.5))
    # The two runs differ only in distill.alpha: same init, teacher, data, seed, steps and schedule.
    assert plain["distill"] | {"alpha": 0.5} == distilled["distill"]
    assert {k: v for k, v in plain.items() if k != "distill"} == {k: v for k, v in distilled.items() if k != "distill"}
    assert plain["distill"] == {"teacher": "/t", "loss": "forward_kl", "temperature": 1.0, "alpha": 0.0}
    assert plain["training"]["max_steps"] == 40 and plain["training"]["eval_every"] == 10
    assert plain["scheduler"] == {"name": "cosine", "warmup_steps": 4} and "lora" not in plain
    teacher = bench.teacher_config(*paths[:1], *paths[2:], steps=24)
    assert teacher["lora"]["rank"] == 64 and teacher["optimizer"]["lr"] == bench.TEACHER_LR
    with pytest.raises(SystemExit, match="--alpha"):
        bench.parse_args(["--alpha", "0"])


def test_reply_similarity(bench: ModuleType) -> None:
    # difflib's ratio over words: 2 * 3 matching words / (4 + 4) words.
    assert bench.similarity("Pico is a llama", "Pico is the llama") == 0.75
    assert bench.closeness(["a b", "c d"], ["a b", "x y"]) == (1, 0.5)
    assert bench.similarity("", "") == 1.0


def _reference(root: Path) -> tuple[float, float]:
    """The student's validation cross-entropy and KL(teacher || student) per reply token before training.

    From transformers in float64, one sample at a time (the validation batches are packed: ``seq_ids``
    names each row's samples).
    """
    from transformers import AutoModelForCausalLM

    from aprender.text import Tokenizer
    from entrenar.config import load_config
    from entrenar.data import DataLoader
    from entrenar.train.setup.data import load_data

    _, val = load_data(load_config(root / "plain.yaml"), Tokenizer.from_dir(root / "student-init"))
    assert val is not None
    teacher, student = (
        AutoModelForCausalLM.from_pretrained(root / name, dtype=torch.float64).eval()
        for name in ("teacher/model", "student-init")
    )
    ce = kl = 0.0
    tokens = 0
    for batch in DataLoader(val, batch_size=8, shuffle=False).batches(0):
        for row, seq_ids in enumerate(batch["seq_ids"]):
            for sample in seq_ids.unique()[seq_ids.unique() >= 0]:
                where = seq_ids == sample
                ids, labels = batch["input_ids"][row, where][None], batch["labels"][row, where]
                keep = labels != -100
                with torch.no_grad():
                    t, s = (m(input_ids=ids).logits[0, keep].log_softmax(-1) for m in (teacher, student))
                ce -= float(s.gather(-1, labels[keep][:, None]).sum())
                kl += float((t.exp() * (t - s)).sum())
                tokens += int(keep.sum())
    return ce / tokens, kl / tokens


def test_quick_run_measures_both_students(quick_run: tuple[Path, str]) -> None:
    root, out = quick_run
    results: dict[str, Any] = json.loads((root / "results.json").read_text())
    plain, distilled = (results["runs"][name]["evals"] for name in ("plain", "distilled"))
    # Step 0 (before training), then eval_every = 4 // 4: every step.
    assert [e["step"] for e in plain] == [e["step"] for e in distilled] == [0, 1, 2, 3, 4]
    assert plain[0] == distilled[0]  # the same init and data
    ce, kl = _reference(root)
    assert plain[0]["eval_loss"] == pytest.approx(ce, rel=1e-5)
    assert plain[0]["eval_kl_to_teacher"] == pytest.approx(kl, rel=1e-5)
    assert kl > 0.1  # the teacher's LoRA and the cut layers make them differ
    # The first step's warmup lr is 0; both runs then move toward the teacher, the distilled one (alpha 1, from
    # the second call) further (measured: 0.291 -> plain 0.284, distilled 0.272).
    metrics = ("eval_loss", "eval_kl_to_teacher", "eval_tokens")
    assert [plain[1][m] for m in metrics] == [distilled[1][m] for m in metrics] == [plain[0][m] for m in metrics]
    assert distilled[-1]["eval_kl_to_teacher"] < plain[-1]["eval_kl_to_teacher"] < plain[0]["eval_kl_to_teacher"]
    # The student is the base's first layer with its tokenizer; the teacher is the full base plus LoRA.
    config = json.loads((root / "student-init" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    student, teacher = (root / name / "tokenizer.json" for name in ("student-init", "teacher/model"))
    assert student.read_bytes() == teacher.read_bytes()
    answers = results["answers"]
    assert list(answers) == ["teacher", "student before", "plain", "distilled"]
    assert all(len(replies) == 15 for replies in answers.values())
    table = out.split("\n\n")[1]
    assert f"| student plain (alpha 0) | 4 | {plain[-1]['eval_kl_to_teacher']:.3f} |" in table
    assert f"| student distilled (alpha 1) | 4 | {distilled[-1]['eval_kl_to_teacher']:.3f} |" in table
    assert "| teacher (base + LoRA, 2 layers) | 4 | 0 |" in table
