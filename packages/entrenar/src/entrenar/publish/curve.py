"""The loss curve of a training run, read from ``metrics.jsonl`` and drawn as ``loss_curve.svg``.

``metrics.jsonl`` lines read: ``{"step": N, "loss": x, ...}`` (training) and ``{"step": N, "eval_loss": x}``
(evaluation), as transformers' ``Trainer`` logs them; other lines are ignored.

The SVG is written by hand (no plotting library): a white background, axes whose bounds are rounded out
to "nice" tick values (steps of 1, 2 or 5 times a power of ten, Heckbert's "Nice numbers for graph
labels", Graphics Gems 1990), labelled ticks, a title, axis labels, one ``<polyline>`` per series
(SVG 1.1, https://www.w3.org/TR/SVG11/shapes.html#PolylineElement) and a legend when there are two.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from entrenar.errors import PublishError

__all__ = ["LOSS_CURVE_NAME", "LossPoints", "loss_curve_svg", "nice_ticks", "read_loss_points"]

LOSS_CURVE_NAME = "loss_curve.svg"
_LOG = logging.getLogger(__name__)
_WIDTH, _HEIGHT = 720, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 24, 40, 52
_TICKS = 5
_COLOURS = {"train": "#1f77b4", "eval": "#d62728"}


@dataclass(frozen=True)
class LossPoints:
    """The loss series of ``metrics.jsonl``.

    Attributes:
        train: ``(step, loss)`` of the training lines, in file order.
        eval: ``(step, eval_loss)`` of the evaluation lines, in file order.
    """

    train: list[tuple[float, float]] = field(default_factory=list)
    eval: list[tuple[float, float]] = field(default_factory=list)


def read_loss_points(path: Path) -> LossPoints:
    """Read the loss series from ``metrics.jsonl``.

    Lines with a numeric ``loss`` are training points, lines with a numeric ``eval_loss`` evaluation
    points (both need a numeric ``step``). Non-finite values are left out with a warning: they cannot
    be drawn.

    Args:
        path: The ``metrics.jsonl`` file.

    Returns:
        The points.

    Raises:
        PublishError: A line is not a JSON object (the message names file:line).
    """
    points = LossPoints()
    dropped = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PublishError(f"{path}:{number}: not JSON ({exc.msg}); fix the line or pass --no-model-card") from exc
        if not isinstance(entry, dict):
            raise PublishError(f"{path}:{number}: not a JSON object; fix the line or pass --no-model-card")
        step = entry.get("step")
        if not is_number(step):
            continue
        for key, series in (("loss", points.train), ("eval_loss", points.eval)):
            value = entry.get(key)
            if not is_number(value):
                continue
            if math.isfinite(value) and math.isfinite(step):
                series.append((float(step), float(value)))
            else:
                dropped += 1
    if dropped:
        _LOG.warning("%s: %d non-finite loss values left out of the loss curve", path, dropped)
    return points


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def nice_ticks(lo: float, hi: float, count: int = _TICKS) -> list[float]:
    """Tick values covering [lo, hi], spaced by 1, 2 or 5 times a power of ten.

    Args:
        lo: Smallest value to cover.
        hi: Largest value to cover; a range narrower than 1e-9 (relative beyond 1) is widened by 5% around `lo`.
        count: About how many ticks (at least 2).

    Returns:
        Ascending ticks; the first is <= lo and the last >= hi.

    Example:
        >>> nice_ticks(1.65, 3.2)
        [1.5, 2.0, 2.5, 3.0, 3.5]
    """
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1.0):  # one value, as far as a plot can tell: widen around it
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / (count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    # the 1e-9 slack keeps float noise (1.9 / 0.05 = 37.99...) from adding a tick beyond a bound that is one
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def loss_curve_svg(points: LossPoints) -> str:
    """Draw the loss curve as a standalone SVG document.

    Args:
        points: Training points (one polyline) and evaluation points (a second polyline, when any).

    Returns:
        The SVG text: labelled axes, a ``<polyline class="train">`` with one ``x,y`` pair per training
        point (and ``class="eval"`` likewise), a title and, with evaluation points, a legend.

    Raises:
        PublishError: There are no training points.
    """
    if not points.train:
        raise PublishError("the loss curve needs at least one training point (a metrics.jsonl line with step and loss)")
    every = points.train + points.eval
    x_ticks = nice_ticks(min(s for s, _ in every), max(s for s, _ in every))
    y_ticks = nice_ticks(min(v for _, v in every), max(v for _, v in every))
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def to_x(step: float) -> float:
        return _LEFT + (step - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def to_y(loss: float) -> float:
        return _TOP + (y_ticks[-1] - loss) / (y_ticks[-1] - y_ticks[0]) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>',
        f'<text x="{_WIDTH // 2}" y="22" text-anchor="middle" font-size="15">Training loss</text>',
        *_axes(x_ticks, y_ticks, to_x, to_y),
    ]
    for name, series in (("train", points.train), ("eval", points.eval)):
        if series:
            coords = " ".join(f"{to_x(step):.2f},{to_y(loss):.2f}" for step, loss in series)
            parts.append(
                f'<polyline class="{name}" fill="none" stroke="{_COLOURS[name]}" stroke-width="1.5" points="{coords}"/>'
            )
    if points.eval:
        parts += _legend()
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _axes(
    x_ticks: Sequence[float], y_ticks: Sequence[float], to_x: Callable[[float], float], to_y: Callable[[float], float]
) -> list[str]:
    bottom, right, middle_y = _HEIGHT - _BOTTOM, _WIDTH - _RIGHT, (_TOP + _HEIGHT - _BOTTOM) // 2
    out = [
        f'<line x1="{_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{bottom}" stroke="black"/>',
    ]
    for tick in x_ticks:
        x = to_x(tick)
        out += [
            f'<line x1="{x:.2f}" y1="{bottom}" x2="{x:.2f}" y2="{bottom + 5}" stroke="black"/>',
            f'<text x="{x:.2f}" y="{bottom + 18}" text-anchor="middle">{tick:g}</text>',
        ]
    for tick in y_ticks:
        y = to_y(tick)
        out += [
            f'<line x1="{_LEFT - 5}" y1="{y:.2f}" x2="{right}" y2="{y:.2f}" stroke="#dddddd"/>',
            f'<text x="{_LEFT - 8}" y="{y + 4:.2f}" text-anchor="end">{tick:g}</text>',
        ]
    out += [
        f'<text x="{(_LEFT + right) // 2}" y="{_HEIGHT - 12}" text-anchor="middle">step</text>',
        f'<text x="18" y="{middle_y}" text-anchor="middle" transform="rotate(-90 18 {middle_y})">loss</text>',
    ]
    return out


def _legend() -> list[str]:
    x, y = _WIDTH - _RIGHT - 130, _TOP + 8
    out = []
    for i, (name, label) in enumerate((("train", "training loss"), ("eval", "evaluation loss"))):
        row = y + 18 * i
        out += [
            f'<line x1="{x}" y1="{row}" x2="{x + 24}" y2="{row}" stroke="{_COLOURS[name]}" stroke-width="2"/>',
            f'<text x="{x + 30}" y="{row + 4}">{label}</text>',
        ]
    return out
