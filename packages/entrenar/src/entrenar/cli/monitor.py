"""``entrenar monitor OUTPUT_DIR``: watch a training run from its output folder.

On a terminal it opens the dashboard (`entrenar.monitor.app.MonitorApp`), which follows the run until ``q``;
elsewhere (a pipe, a file, CI) it prints a one-screen plain summary (`entrenar.monitor.summary`) and exits.
It reads only the folder's files, so it attaches to a live, finished, failed or dead run alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from entrenar.constants import METRICS_NAME
from entrenar.errors import EntrenarError
from entrenar.monitor.state import RUN_STATE_NAME

__all__ = ["monitor_command"]


def _run_folder(path: Path) -> Path:
    """`path` when it holds a run (``run_state.json`` or ``metrics.jsonl``); else an `EntrenarError`."""
    if not path.is_dir():
        raise EntrenarError(f"{path}: no such folder" if not path.exists() else f"{path}: not a folder")
    if not (path / RUN_STATE_NAME).is_file() and not (path / METRICS_NAME).is_file():
        raise EntrenarError(f"{path}: not a run's output folder (no {RUN_STATE_NAME} or {METRICS_NAME})")
    return path


def _is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stdin.isatty()


@click.command("monitor")
@click.argument("output_dir", type=click.Path(path_type=Path))
def monitor_command(output_dir: Path) -> None:
    """Watch the run in OUTPUT_DIR: a live dashboard on a terminal (q quits), a plain summary elsewhere."""
    folder = _run_folder(output_dir)
    if _is_terminal():
        from entrenar.monitor.app import MonitorApp

        MonitorApp(folder).run()
    else:
        from entrenar.monitor.snapshot import RunFollower
        from entrenar.monitor.summary import plain_summary

        click.echo(plain_summary(RunFollower(folder).poll()), nl=False)
