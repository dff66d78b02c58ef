"""Helpers shared by the training and CLI tests: tiny datasets, config files, subprocess runs.

Loaded by path from the conftest files of tests/entrenar/train and tests/entrenar/cli (test folders are
not importable packages).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# Prompt/completion pairs a tiny model memorises in a few dozen steps (words from the fixture corpus).
MEMORY = (
    ("Question: Who ran the bakery?\nAnswer:", " Marta ran the bakery for nineteen years."),
    ("Question: What colour is the buffer stop?\nAnswer:", " It is painted red and white."),
    ("Question: When was the lighthouse built?\nAnswer:", " The lighthouse was built in 1862."),
    ("Question: What does a good loaf need?\nAnswer:", " Flour, water, salt and time."),
)

CLI = [sys.executable, "-c", "from entrenar.cli import main; main()"]


def write_jsonl(path: Path, records: list[dict[str, Any]] | list[str]) -> Path:
    """Write records (dicts, or raw lines given as strings) as JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def memory_records(copies: int = 1) -> list[dict[str, str]]:
    """The `MEMORY` pairs as prompt_completion records, repeated `copies` times."""
    return [{"prompt": p, "completion": c} for _ in range(copies) for p, c in MEMORY]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_dict(model_dir: Path, train_path: Path, **sections: Any) -> dict[str, Any]:
    """A small, fast config (LoRA rank 8, constant lr, 10 steps, log every step), `sections` merged in.

    A section given as None is removed (``lora=None`` makes a full fine-tune).
    """
    base: dict[str, Any] = {
        "model": {"path": str(model_dir)},
        "data": {"train_path": str(train_path), "seq_len": 64, "batch_size": 4, "packing": False},
        "optimizer": {"name": "adamw", "lr": 1.0e-2},
        "scheduler": {"name": "constant"},
        "lora": {"rank": 8, "alpha": 16},
        "training": {
            "epochs": 1000,
            "max_steps": 10,
            "eval_every": 1000,
            "save_every": 1000,
            "log_every": 1,
            "seed": 0,
            "output_dir": "out",
        },
    }
    return _merge(base, sections)


def write_config(folder: Path, model_dir: Path, *, name: str = "config.yaml", **sections: Any) -> Path:
    """Write the memory dataset (when absent) and a `config_dict` config into `folder`; return the config path."""
    train = folder / "train.jsonl"
    if not train.exists():
        write_jsonl(train, memory_records(copies=2))
    path = folder / name
    path.write_text(yaml.safe_dump(config_dict(model_dir, train, **sections), sort_keys=False), encoding="utf-8")
    return path


def read_metrics(output_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    """The records of one kind in ``metrics.jsonl``."""
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def subprocess_env() -> dict[str, str]:
    """The environment for child processes: one torch thread (reproducible, fast on a busy machine)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``entrenar ARGS`` in a child process and capture its output."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, check=False, env=subprocess_env(), cwd=cwd, timeout=timeout
    )


class Killed(Exception):
    """Raised by `kill_after`: an in-process stand-in for a killed run (no checkpoint is saved on it)."""


def kill_after(step: int) -> Any:
    """A callback that raises `Killed` at the end of optimizer step `step`."""
    from entrenar.train import Callback, Trainer

    class KillAfter(Callback):
        def on_step_end(self, trainer: Trainer) -> None:
            if trainer.state.step == step:
                raise Killed

    return KillAfter()
