"""The run's fields in words: what each says, and what it says when the files do not tell."""

from __future__ import annotations

import json
from pathlib import Path

from entrenar.monitor.snapshot import RunFollower
from entrenar.monitor.summary import fields, plain_summary
from fixtures.run_folders import RunWriter, train_record


def test_cuda_memory_checkpoints_alarms_and_the_final_model_are_described(tmp_path: Path) -> None:
    run = RunWriter(tmp_path).steps(2)
    run.write_state(
        status="finished",
        memory={**run.state.memory, "cuda_allocated_bytes": 6_100_000_000, "cuda_reserved_bytes": 7_300_000_000},
        checkpoints=[f"checkpoints/step-{n}" for n in (1, 2, 3, 4)],
        alarms=[{"step": n, "what": "non-finite loss (nan)"} for n in (1, 2, 3, 4)],
    )
    (tmp_path / "final_model.json").write_text(json.dumps({"steps": 2, "stop_reason": "completed"}))
    values = fields(RunFollower(tmp_path).poll())
    assert values["status"] == "finished"
    assert values["memory"] == "RSS 1.2 GB (peak 1.5 GB); CUDA 6.1 GB allocated, 7.3 GB reserved"
    assert values["checkpoints"] == "4, the last checkpoints/step-2, checkpoints/step-3, checkpoints/step-4"
    assert values["alarms"].startswith("4, the last step 2: non-finite loss (nan); step 3: ")
    assert values["final model"] == "written (completed after 2 steps)"
    assert values["ETA"] == "-"


def test_a_failed_run_says_why_and_a_dead_one_how_long_ago_it_beat(tmp_path: Path) -> None:
    run = RunWriter(tmp_path).steps(1)
    run.write_state(status="failed", error="CUDA out of memory")
    assert fields(RunFollower(tmp_path).poll())["status"] == "failed (CUDA out of memory)"
    run.write_state(status="running", error=None)
    later = run.state.heartbeat + 30
    assert fields(RunFollower(tmp_path).poll(now=later))["status"] == "dead (heartbeat 30.0 s ago)"


def test_an_empty_run_says_dash_for_what_it_does_not_know(tmp_path: Path) -> None:
    RunWriter(tmp_path).write_state()
    values = fields(RunFollower(tmp_path).poll())
    assert values["step"] == "0/100 (0%), epoch 0.00"
    assert [values[k] for k in ("loss", "loss parts", "lr", "grad norm", "tokens/s", "last eval")] == ["-"] * 6


def test_the_plain_summary_cuts_a_long_sample(tmp_path: Path) -> None:
    run = RunWriter(tmp_path)
    run.append(train_record(1), {"kind": "sample", "step": 1, "prompt": "word " * 200, "answer": "ok"})
    lines = plain_summary(RunFollower(tmp_path).poll(), width=60).splitlines()
    prompt = lines[lines.index("sample at step 1:") + 1 :][:4]
    assert len(prompt[0]) <= 60 and prompt[2].endswith(" ...") and prompt[3] == "  answer: ok"
