"""The loss curve: reading metrics.jsonl, nice tick values, and the hand-written SVG (checked as XML)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.errors import PublishError
from entrenar.publish.curve import LossPoints, loss_curve_svg, nice_ticks, read_loss_points

SVG = "{http://www.w3.org/2000/svg}"
# Plot box of the SVG (720 x 400 with margins left 72, right 24, top 40, bottom 52).
LEFT, RIGHT, TOP, BOTTOM = 72.0, 696.0, 40.0, 348.0


def _polylines(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    lines = {}
    for element in root.iter(f"{SVG}polyline"):
        pairs = [pair.split(",") for pair in element.attrib["points"].split()]
        lines[element.attrib["class"]] = [(float(x), float(y)) for x, y in pairs]
    return lines


def test_reads_training_and_evaluation_points(lora_output: Any, losses: tuple[list[float], list[Any]]) -> None:
    train, evals = losses
    points = read_loss_points(lora_output.output / "metrics.jsonl")
    assert points.train == [(float(step), loss) for step, loss in enumerate(train, start=1)]
    assert points.eval == [(float(step), loss) for step, loss in evals]


def test_ignores_blank_lines_and_lines_without_step_or_loss(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 1, "loss": 2.0}', "", '{"loss": 9.0}', '{"step": 2, "lr": 0.1}', '{"step": true, "loss": 1}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_loss_points(path) == LossPoints(train=[(1.0, 2.0)])


def test_non_finite_values_are_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": NaN}\n{"step": 2, "loss": 1.5}\n{"step": 3, "eval_loss": Infinity}\n')
    with caplog.at_level(logging.WARNING):
        points = read_loss_points(path)
    assert points == LossPoints(train=[(2.0, 1.5)])
    assert "2 non-finite loss values left out" in caplog.text


@pytest.mark.parametrize(
    ("line", "message"), [("{oops", r"metrics.jsonl:2: not JSON"), ("[1]", r":2: not a JSON object")]
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PublishError, match=message):
        read_loss_points(path)


def test_nice_ticks_hand_computed() -> None:
    # steps 1..12: raw spacing 11/4 = 2.75 -> 5; bounds rounded out to 0 and 15
    assert nice_ticks(1, 12) == [0, 5, 10, 15]
    # losses 1.65..3.2: raw spacing 0.3875 -> 0.5; bounds 1.5 and 3.5
    assert nice_ticks(1.65, 3.2) == [1.5, 2.0, 2.5, 3.0, 3.5]
    # one value: widened by 5% of it (2.0 +- 0.1), spacing 0.05
    assert nice_ticks(2.0, 2.0) == pytest.approx([1.9, 1.95, 2.0, 2.05, 2.1])
    assert nice_ticks(0.0, 0.0) == [-1.0, -0.5, 0.0, 0.5, 1.0]


@given(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
)
@settings(max_examples=300, deadline=None)
def test_nice_ticks_cover_the_range_with_even_round_spacing(lo: float, width: float) -> None:
    hi = lo + width
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0]
    tolerance = 1e-9 * max(1.0, abs(lo), abs(hi))
    assert ticks[0] <= lo + tolerance and ticks[-1] >= hi - tolerance
    assert 2 <= len(ticks) <= 7
    assert all(math.isclose(b - a, step, rel_tol=1e-4, abs_tol=tolerance) for a, b in itertools.pairwise(ticks))
    # the spacing is measured from two large, close numbers: allow for their rounding
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-4) for m in (1, 2, 5, 10))


def test_svg_maps_points_by_hand(lora_output: Any, losses: tuple[list[float], list[Any]]) -> None:
    train, evals = losses
    svg = loss_curve_svg(read_loss_points(lora_output.output / "metrics.jsonl"))
    lines = _polylines(svg)
    assert len(lines["train"]) == len(train) and len(lines["eval"]) == len(evals)
    # axes [0, 15] x [1.5, 3.5] (nice_ticks above) over the plot box 624 x 308 px:
    # step 1, loss 3.2 -> x = 72 + 1/15 * 624 = 113.6, y = 40 + (3.5 - 3.2)/2 * 308 = 86.2
    assert lines["train"][0] == pytest.approx((113.6, 86.2), abs=0.006)
    # step 12, eval loss 1.9 -> x = 72 + 12/15 * 624 = 571.2, y = 40 + 1.6/2 * 308 = 286.4
    assert lines["eval"][1] == pytest.approx((571.2, 286.4), abs=0.006)
    texts = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert {"Training loss", "step", "loss", "training loss", "evaluation loss", "15", "3.5"} <= set(texts)


def test_svg_without_evaluation_has_one_line_and_no_legend() -> None:
    svg = loss_curve_svg(LossPoints(train=[(5.0, 1.0)]))
    assert list(_polylines(svg)) == ["train"]
    assert "evaluation loss" not in svg
    # one point in the middle of the widened ranges [4.75, 5.25] x [0.95, 1.05]
    assert _polylines(svg)["train"] == [(384.0, 194.0)]


def test_svg_needs_a_training_point() -> None:
    with pytest.raises(PublishError, match="at least one training point"):
        loss_curve_svg(LossPoints(eval=[(1.0, 2.0)]))


_point = st.tuples(st.integers(0, 10**6), st.floats(-1e3, 1e3, allow_nan=False))


@given(st.lists(_point, min_size=1, max_size=60), st.lists(_point, max_size=10))
@settings(max_examples=150, deadline=None)
def test_svg_is_valid_xml_with_every_point_inside_the_plot(train: list[Any], evals: list[Any]) -> None:
    points = LossPoints(train=[(float(s), v) for s, v in train], eval=[(float(s), v) for s, v in evals])
    lines = _polylines(loss_curve_svg(points))
    assert len(lines["train"]) == len(train)
    assert len(lines.get("eval", [])) == len(evals)
    for x, y in lines["train"] + lines.get("eval", []):
        assert LEFT - 0.01 <= x <= RIGHT + 0.01 and TOP - 0.01 <= y <= BOTTOM + 0.01


def test_lower_loss_is_drawn_lower_on_the_page() -> None:
    line = _polylines(loss_curve_svg(LossPoints(train=[(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)])))["train"]
    assert line[0][1] < line[1][1] < line[2][1]  # SVG y grows downwards
    assert line[0][0] < line[1][0] < line[2][0]


def test_metrics_written_by_json_dumps_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": i, "loss": 1 / i} for i in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_loss_points(path).train == [(float(i), 1 / i) for i in range(1, 6)]
