"""A run in words: the labelled fields the dashboard shows, and the one-screen plain summary
``entrenar monitor`` prints when its output is not a terminal."""

from __future__ import annotations

import math
import textwrap
from datetime import datetime, timedelta

from entrenar.display import human_size, scientific
from entrenar.monitor.snapshot import Record, RunSnapshot
from entrenar.monitor.state import RUN_STATE_NAME

__all__ = ["fields", "plain_summary", "status_detail"]

NONE = "-"
SAMPLE_LINES = 3
"""Lines of a prompt or an answer the plain summary shows."""


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def status_detail(snap: RunSnapshot) -> str:
    """What goes with the status: the heartbeat's age (running or dead), the error (failed), or why it is
    unknown; empty otherwise."""
    state = snap.state
    if state is None:
        return f"no {RUN_STATE_NAME}"
    if state.error:
        return state.error
    if snap.status in ("running", "dead"):
        return f"heartbeat {snap.now - state.heartbeat:.1f} s ago"
    return ""


def _step(snap: RunSnapshot) -> str:
    state = snap.state
    if state is None or state.total_steps <= 0:
        return str(snap.step)
    epoch = f", epoch {state.epoch:.2f}"
    return f"{state.step}/{state.total_steps} ({100 * state.step / state.total_steps:.0f}%){epoch}"


def _tokens(snap: RunSnapshot) -> str:
    total = snap.state.total_tokens if snap.state is not None else None
    return f"{snap.tokens:,}" if total is None else f"{snap.tokens:,} / {total:,}"


def _elapsed(snap: RunSnapshot) -> str:
    state = snap.state
    try:
        start = datetime.fromisoformat(state.started_at).timestamp() if state is not None else None
    except ValueError:
        start = None
    if state is None or start is None:
        return NONE
    end = snap.now if snap.status == "running" else state.heartbeat
    return _duration(max(end - start, 0.0))


def _memory(snap: RunSnapshot) -> str:
    memory = snap.state.memory if snap.state is not None else {}
    rss, peak = memory.get("rss_bytes"), memory.get("peak_rss_bytes")
    allocated, reserved = memory.get("cuda_allocated_bytes"), memory.get("cuda_reserved_bytes")
    parts = []
    if rss is not None:
        parts.append(f"RSS {human_size(rss)}" + (f" (peak {human_size(peak)})" if peak is not None else ""))
    if allocated is not None and reserved is not None:
        parts.append(f"CUDA {human_size(allocated)} allocated, {human_size(reserved)} reserved")
    return "; ".join(parts) or NONE


def _eval(record: Record | None) -> str:
    if record is None:
        return NONE
    text = (
        f"step {record['step']}: loss {record['eval_loss']:.4f}, perplexity {record['eval_perplexity']:.2f}, "
        f"token accuracy {100 * record['eval_token_accuracy']:.1f}%"
    )
    if "eval_kl_to_teacher" in record:
        text += f", KL to teacher {record['eval_kl_to_teacher']:.4f}"
    return text


def _checkpoints(names: list[str]) -> str:
    if not names:
        return NONE
    shown = ", ".join(names[-3:])
    return shown if len(names) <= 3 else f"{len(names)}, the last {shown}"


def _alarms(alarms: list[Record]) -> str:
    if not alarms:
        return "none"
    shown = "; ".join(f"step {a['step']}: {a['what']}" for a in alarms[-3:])
    return shown if len(alarms) <= 3 else f"{len(alarms)}, the last {shown}"


def _model(snap: RunSnapshot) -> str:
    state = snap.state
    if state is None or not state.model:
        return NONE
    how = ", ".join([state.method, *[t for t in state.techniques if t != state.method]]) if state.method else ""
    return f"{state.model} ({how})" if how else state.model


def _final_model(final: Record | None) -> str:
    if final is None:
        return NONE
    return f"written ({final.get('stop_reason', '?')} after {final.get('steps', '?')} steps)"


def fields(snap: RunSnapshot) -> dict[str, str]:
    """The run's numbers as labelled text, in display order.

    Keys: status, step, loss, loss parts, lr, grad norm, tokens/s, tokens, ETA, elapsed, memory, last eval,
    checkpoints, alarms, model, final model; ``-`` marks what the files do not say (yet).
    """
    train = snap.last_train
    rate = snap.tokens_per_s()
    eta = snap.eta_seconds()
    parts = train.get("parts", {}) if train is not None else {}
    return {
        "status": f"{snap.status} ({detail})" if (detail := status_detail(snap)) else snap.status,
        "step": _step(snap),
        "loss": f"{train['loss']:.4f}" if train is not None else NONE,
        "loss parts": ", ".join(f"{name} {value:.4f}" for name, value in parts.items()) or NONE,
        "lr": scientific(train["lr"], 2) if train is not None and math.isfinite(train["lr"]) else NONE,
        "grad norm": f"{train['grad_norm']:.3f}" if train is not None else NONE,
        "tokens/s": f"{rate:,.0f}" if rate is not None else NONE,
        "tokens": _tokens(snap),
        "ETA": _duration(eta) if eta is not None else NONE,
        "elapsed": _elapsed(snap),
        "memory": _memory(snap),
        "last eval": _eval(snap.evals[-1] if snap.evals else None),
        "checkpoints": _checkpoints(snap.checkpoints),
        "alarms": _alarms(snap.alarms),
        "model": _model(snap),
        "final model": _final_model(snap.final_model),
    }


def _sample_lines(sample: Record, width: int) -> list[str]:
    """A sample record as ``prompt:`` and ``answer:`` lines wrapped to `width`, each cut to `SAMPLE_LINES`."""
    lines = [f"sample at step {sample['step']}:"]
    for label in ("prompt", "answer"):
        wrapped = textwrap.wrap(
            str(sample[label]),
            width=width,
            initial_indent=f"  {label}: ",
            subsequent_indent=" " * (len(label) + 4),
            max_lines=SAMPLE_LINES,
            placeholder=" ...",
        )
        lines += wrapped or [f"  {label}:"]
    return lines


def plain_summary(snap: RunSnapshot, width: int = 100) -> str:
    """The run on one screen of plain text: its fields, one a line, and the newest sample."""
    lines = [f"entrenar monitor: {snap.folder}"]
    lines += [f"{label + ':':<13}{value}" for label, value in fields(snap).items()]
    if snap.samples:
        lines += _sample_lines(snap.samples[-1], width)
    return "\n".join(lines) + "\n"
