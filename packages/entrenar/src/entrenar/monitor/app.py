"""The ``entrenar monitor`` dashboard: a textual app that follows a run's output folder.

It polls the folder every `POLL_SECONDS` (`RunFollower`), so it can be opened and closed at any time, on a
live run or a finished one. Views: ``1`` overview (status, alarm banner, train and eval loss curves,
lr / gradient norm / tokens/s histories, the numbers, memory, checkpoints), ``2`` samples (the newest
generated samples); ``tab`` cycles them, ``r`` refreshes now, ``q`` quits.

This module imports no torch: the monitor must start fast, on a machine without a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Footer, Header, Sparkline, Static

from entrenar.monitor.plot import BrailleCanvas, data_range
from entrenar.monitor.snapshot import RunFollower, RunSnapshot, Status
from entrenar.monitor.summary import fields, status_detail

__all__ = ["POLL_SECONDS", "STATUS_STYLES", "VIEWS", "LossPlot", "MonitorApp"]

POLL_SECONDS = 0.5
VIEWS = ("overview", "samples")
STATUS_STYLES: dict[Status, str] = {
    "running": "bold green",
    "finished": "bold dodger_blue1",
    "failed": "bold red",
    "dead": "bold red",
    "interrupted": "bold yellow",
    "unknown": "bold",
}
_TRAIN, _EVAL = 0, 1
_SERIES_STYLES = {_TRAIN: "cyan", _EVAL: "bold magenta"}
_AXIS_WIDTH = 9
_HISTORIES = {"lr": ("lr", "lr"), "grad-norm": ("grad_norm", "grad norm"), "tokens-per-s": ("tokens_per_s", "tokens/s")}
"""Sparkline id: the train record's key and the box title."""
_TRAINING_FIELDS = ("step", "loss", "loss parts", "lr", "grad norm", "tokens/s", "tokens", "ETA", "elapsed")
_RUN_FIELDS = ("model", "memory", "last eval", "checkpoints", "alarms", "final model")


def _axis_number(value: float) -> str:
    return f"{value:>{_AXIS_WIDTH - 1}.4g} "


class LossPlot(Widget):
    """The loss curves, train and eval, drawn with braille dots to fit the widget."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []

    def show(self, snap: RunSnapshot) -> None:
        """Draw `snap`'s losses."""
        self.losses, self.eval_losses = snap.losses, snap.eval_losses
        self.refresh()

    def render(self) -> RenderableType:
        """The curves, `_AXIS_WIDTH` columns of loss labels on the left and a step axis below."""
        points = self.losses + self.eval_losses
        y_range = data_range([loss for _, loss in points])
        width, height = self.size.width - _AXIS_WIDTH, self.size.height - 1
        if y_range is None or width < 2 or height < 2:
            return Text("no losses yet" if y_range is None else "", style="dim")
        steps = [step for step, _ in points]
        x_range = (float(min(steps)), float(max(steps)))
        canvas = BrailleCanvas(width, height, x_range, y_range)
        canvas.line(self.losses, _TRAIN)
        canvas.line(self.eval_losses, _EVAL)
        text = Text()
        for index, row in enumerate(canvas.cells()):
            label = {0: y_range[1], height - 1: y_range[0]}.get(index)
            text.append(_axis_number(label) if label is not None else " " * _AXIS_WIDTH, style="dim")
            for char, owner in row:
                text.append(char, style=_SERIES_STYLES.get(owner, "") if owner is not None else "")
            text.append("\n")
        first, last = f"step {x_range[0]:.0f}", f"{x_range[1]:.0f}"
        legend = Text.assemble(("━ train", _SERIES_STYLES[_TRAIN]), "  ", ("━ eval", _SERIES_STYLES[_EVAL]))
        gap = max(width - len(first) - len(last) - legend.cell_len, 2)
        text.append(" " * _AXIS_WIDTH + first + " " * (gap // 2), style="dim")
        text.append_text(legend)
        text.append(" " * (gap - gap // 2) + last, style="dim")
        return text


def _panel(values: dict[str, str], labels: tuple[str, ...]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    for label in labels:
        table.add_row(label, values[label])
    return table


def _status_line(snap: RunSnapshot, values: dict[str, str]) -> Text:
    return Text.assemble(
        (f"● {snap.status.upper()}", STATUS_STYLES[snap.status]),
        "  step ",
        (values["step"], "bold"),
        "  ",
        (status_detail(snap), "dim" if snap.status != "failed" else STATUS_STYLES["failed"]),
    )


def _samples_table(snap: RunSnapshot) -> RenderableType:
    if not snap.samples:
        return Text("no samples yet (a run writes them to metrics.jsonl as it evaluates)", style="dim")
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    for sample in reversed(snap.samples):
        table.add_row(Text(f"step {sample['step']}", style="bold"), "")
        table.add_row("prompt", str(sample["prompt"]).rstrip())
        table.add_row("answer", str(sample["answer"]).rstrip())
        table.add_row("", "")
    return table


class MonitorApp(App[None]):
    """The dashboard of the run in `folder`.

    Args:
        folder: The run's output folder (validated by the caller).
        poll_seconds: Seconds between two looks at the folder.
    """

    TITLE = "entrenar monitor"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #status { height: 1; padding: 0 1; }
    #alarm { height: auto; padding: 0 1; background: $error; color: $text; text-style: bold; display: none; }
    #alarm.raised { display: block; }
    #views, #overview { height: 1fr; }
    #plot { height: 1fr; min-height: 8; border: round $primary; padding: 0 1; }
    #histories { height: 3; }
    .history { width: 1fr; border: round $primary-darken-2; padding: 0 1; }
    #panels { height: auto; }
    #training, #run { width: 1fr; height: auto; border: round $primary-darken-2; padding: 0 1; }
    #samples { border: round $primary; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "show('overview')", "Overview"),
        Binding("2", "show('samples')", "Samples"),
        Binding("tab", "next_view", "Next view", priority=True),
        Binding("r", "refresh_now", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, folder: Path, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__()
        self.folder = folder
        self.poll_seconds = poll_seconds
        self.follower = RunFollower(folder)
        self.sub_title = str(folder)

    def compose(self) -> ComposeResult:
        """Header, status line, alarm banner, the views, footer."""
        yield Header()
        yield Static(id="status")
        yield Static(id="alarm")
        with ContentSwitcher(initial="overview", id="views"):
            with Vertical(id="overview"):
                yield LossPlot(id="plot")
                with Horizontal(id="histories"):
                    for name in _HISTORIES:
                        with Vertical(classes="history", id=f"{name}-box"):
                            yield Sparkline([], id=name)
                with Horizontal(id="panels"):
                    yield Static(id="training")
                    yield Static(id="run")
            with VerticalScroll(id="samples"):
                yield Static(id="samples-text")
        yield Footer()

    def on_mount(self) -> None:
        """Title the boxes, look at the folder, and keep looking."""
        self.query_one("#plot").border_title = "loss"
        self.query_one("#samples").border_title = "recent samples, newest first"
        self.query_one("#training").border_title = "training"
        self.query_one("#run").border_title = "run"
        for name, (_, title) in _HISTORIES.items():
            self.query_one(f"#{name}-box").border_title = title
        self.action_refresh_now()
        self.set_interval(self.poll_seconds, self.action_refresh_now)

    def action_refresh_now(self) -> None:
        """Read the folder and redraw."""
        if not self.is_running:  # a last tick while the app shuts down, its widgets already gone
            return
        snap = self.follower.poll()
        values = fields(snap)
        self.query_one("#status", Static).update(_status_line(snap, values))
        alarm = self.query_one("#alarm", Static)
        alarm.set_class(bool(snap.alarms), "raised")
        alarm.update(f"⚠ ALARM: {values['alarms']}" if snap.alarms else "")
        self.query_one(LossPlot).show(snap)
        for name, (key, _) in _HISTORIES.items():
            history = [float(r[key]) for r in snap.recent_train]
            self.query_one(f"#{name}", Sparkline).data = [v for v in history if math.isfinite(v)]
        self.query_one("#training", Static).update(_panel(values, _TRAINING_FIELDS))
        self.query_one("#run", Static).update(_panel(values, _RUN_FIELDS))
        self.query_one("#samples-text", Static).update(_samples_table(snap))

    def action_show(self, view: str) -> None:
        """Switch to `view` (one of `VIEWS`)."""
        self.query_one(ContentSwitcher).current = view

    def action_next_view(self) -> None:
        """Switch to the next view."""
        current = self.query_one(ContentSwitcher).current or VIEWS[0]
        self.action_show(VIEWS[(VIEWS.index(current) + 1) % len(VIEWS)])
