"""Following a run folder: metrics appended while it is read, alarms, ETA, folders from before run_state.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entrenar.monitor.snapshot import MetricsTail, RunFollower
from fixtures.run_folders import TOKENS_PER_S, TOKENS_PER_STEP, TOTAL_STEPS, RunWriter, eval_record, train_record


def test_the_tail_reads_only_complete_lines_and_skips_broken_ones(tmp_path: Path) -> None:
    run = RunWriter(tmp_path)
    tail = MetricsTail(tmp_path / "metrics.jsonl")
    tail.read()  # no file yet
    run.append(train_record(1), "not json\n", '{"kind": "train", "step": 2}\n', json.dumps(train_record(3))[:20])
    tail.read()
    assert tail.losses == [(1, 2.9)]  # a line without its keys is skipped too
    run.append(json.dumps(train_record(3))[20:] + "\n", eval_record(3))
    tail.read()
    assert tail.losses == [(1, 2.9), (3, 2.7)]
    assert tail.eval_losses == [(3, 2.9)]


def test_the_tail_starts_over_when_the_file_is_replaced_or_shrinks(tmp_path: Path) -> None:
    run = RunWriter(tmp_path)
    run.append(train_record(1), train_record(2))
    tail = MetricsTail(tmp_path / "metrics.jsonl")
    tail.read()
    # A resumed run rewrites the file from its checkpoint's records (atomically: a new file) and appends.
    replacement = tmp_path / "metrics.jsonl.new"
    replacement.write_text("".join(json.dumps(train_record(step)) + "\n" for step in (1, 5, 6)))  # a longer file
    replacement.replace(tmp_path / "metrics.jsonl")
    tail.read()
    assert tail.losses == [(1, 2.9), (5, 2.5), (6, 2.4)]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(train_record(7)) + "\n")  # in place, shorter
    tail.read()
    assert tail.losses == [(7, 2.3)]


def test_a_snapshot_of_a_live_run_has_its_step_rate_and_eta(tmp_path: Path) -> None:
    RunWriter(tmp_path).steps(12)
    snap = RunFollower(tmp_path).poll()
    assert snap.status == "running"
    assert (snap.step, snap.tokens) == (12, 12 * TOKENS_PER_STEP)
    assert snap.last_train is not None and snap.last_train["step"] == 12
    assert [step for step, _ in snap.eval_losses] == [5, 10]
    assert [sample["answer"] for sample in snap.samples] == ["4 (5)", "4 (10)"]
    assert snap.tokens_per_s() == TOKENS_PER_S
    assert snap.eta_seconds() == pytest.approx((TOTAL_STEPS - 12) * TOKENS_PER_STEP / TOKENS_PER_S)


def test_a_finished_run_has_no_eta(tmp_path: Path) -> None:
    RunWriter(tmp_path).steps(3).write_state(status="finished")
    snap = RunFollower(tmp_path).poll()
    assert snap.status == "finished"
    assert snap.eta_seconds() is None


def test_non_finite_metrics_raise_alarms_unless_the_state_has_one_for_that_step(tmp_path: Path) -> None:
    run = RunWriter(tmp_path)
    run.append(train_record(1, loss=float("nan")), train_record(2, grad_norm=float("inf")))
    run.write_state(step=2, alarms=[{"step": 1, "what": "non-finite loss (nan), step skipped"}])
    assert RunFollower(tmp_path).poll().alarms == [
        {"step": 1, "what": "non-finite loss (nan), step skipped"},
        {"step": 2, "what": "non-finite gradient norm (inf)"},
    ]


def test_a_folder_without_run_state_shows_its_metrics_with_status_unknown(tmp_path: Path) -> None:
    RunWriter(tmp_path).append(train_record(1), train_record(2))
    for step in (10, 2):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    (tmp_path / "final_model.json").write_text(json.dumps({"steps": 2, "stop_reason": "completed"}))
    snap = RunFollower(tmp_path).poll()
    assert (snap.state, snap.status, snap.step, snap.tokens) == (None, "unknown", 2, 2 * TOKENS_PER_STEP)
    assert snap.checkpoints == ["checkpoints/step-2", "checkpoints/step-10"]
    assert snap.final_model == {"steps": 2, "stop_reason": "completed"}
    assert snap.eta_seconds() is None
