"""tinyllm.plot: the SVG is well-formed XML with one polyline per series, and edge cases still draw."""

import math
import xml.etree.ElementTree as ET

import pytest

from tinyllm.files import append_jsonl
from tinyllm.plot import line_chart_svg, nice_ticks, plot_log, plot_run

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg_text: str) -> ET.Element:
    root = ET.fromstring(svg_text)
    assert root.tag == f"{SVG}svg", f"root element is {root.tag}"
    return root


def polylines(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{SVG}polyline"))


def points_of(polyline: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in polyline.get("points").split()]


def texts(root: ET.Element) -> list[str]:
    return [element.text for element in root.iter(f"{SVG}text")]


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(2.31, 4.87) == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert nice_ticks(3, 3)[0] < 3 < nice_ticks(3, 3)[-1], "a constant still gets a band around it"


def test_one_polyline_per_series_with_legend_and_labels():
    steps = list(range(0, 500, 10))
    series = {
        "train loss": (steps, [4 * math.exp(-s / 100) + 1 for s in steps]),
        "val loss": ([0, 250, 490], [5.0, 1.6, 1.2]),
    }
    root = parse(line_chart_svg(series, title="run <a&b>", xlabel="step", ylabel="loss"))
    lines = polylines(root)
    assert len(lines) == 2
    assert len(points_of(lines[0])) == len(steps) and len(points_of(lines[1])) == 3
    labels = texts(root)
    for expected in ("run <a&b>", "step", "loss", "train loss", "val loss"):
        assert expected in labels, f"{expected!r} missing from the chart's text"


def test_points_are_inside_the_canvas_and_loss_falls_downwards_on_screen():
    root = parse(line_chart_svg({"loss": ([0, 1, 2], [3.0, 2.0, 1.0])}, width=600, height=400))
    points = points_of(polylines(root)[0])
    assert all(0 < x < 600 and 0 < y < 400 for x, y in points)
    assert points[0][1] < points[1][1] < points[2][1], "larger values must be drawn higher (smaller SVG y)"


def test_single_point_and_constant_series_draw_with_markers():
    root = parse(line_chart_svg({"one point": ([5], [3.0]), "flat": ([0, 1, 2, 3], [2.0] * 4)}))
    lines = polylines(root)
    assert [len(points_of(line)) for line in lines] == [1, 4]
    assert len(list(root.iter(f"{SVG}circle"))) == 5, "short series get a marker per point"
    root = parse(line_chart_svg({"flat": ([0, 1], [7.0, 7.0])}))
    assert all(math.isfinite(v) for x_y in points_of(polylines(root)[0]) for v in x_y)


def test_non_finite_values_are_skipped_and_empty_charts_refused():
    root = parse(line_chart_svg({"loss": ([0, 1, 2, 3], [2.0, float("nan"), float("inf"), 1.0])}))
    assert len(points_of(polylines(root)[0])) == 2
    with pytest.raises(ValueError, match="nothing to plot"):
        line_chart_svg({"loss": ([0], [float("nan")])})
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        line_chart_svg({"loss": ([0, 1, 2], [1.0, 2.0])})


def test_log_axis_drops_non_positive_values_and_labels_decades():
    root = parse(line_chart_svg({"ppl": ([0, 1, 2, 3], [0.0, 5000.0, 50.0, 5.0])}, log_y=True))
    assert len(points_of(polylines(root)[0])) == 3
    assert {"10", "100", "1000"} <= set(texts(root))


def test_long_series_are_thinned_but_keep_their_ends():
    steps = list(range(100_000))
    root = parse(line_chart_svg({"loss": (steps, [1 / (1 + s) for s in steps])}))
    points = points_of(polylines(root)[0])
    assert 1000 <= len(points) <= 2001
    assert list(root.iter(f"{SVG}circle")) == [], "no markers on long series"


def write_training_log(run_dir):
    for step in range(0, 101, 10):
        append_jsonl(run_dir / "log.jsonl", {"kind": "train", "step": step, "loss": 5 - step / 40, "lr": 1e-3, "tokens_per_s": 5000.0})
        if step % 50 == 0:
            append_jsonl(run_dir / "log.jsonl", {"kind": "eval", "step": step, "val_loss": 5.2 - step / 45, "val_ppl": 80.0, "train_loss": 5 - step / 40})


def test_plot_run_writes_loss_svg_with_train_and_val_curves(tmp_path):
    write_training_log(tmp_path)
    out = plot_run(tmp_path)
    assert out == str(tmp_path / "loss.svg")
    root = parse((tmp_path / "loss.svg").read_text())
    raw, smoothed = polylines(root)          # each step's loss, faint, and its moving average on top
    assert len(points_of(raw)) == len(points_of(smoothed)) == 11
    assert float(raw.get("stroke-opacity")) < 0.5 and float(smoothed.get("stroke-opacity")) == 1
    dots = [c for c in root.iter(f"{SVG}circle")]
    assert len(dots) == 3 + 3 + 2, "evaluations are dots (3 val, 3 train), not joined by lines; 2 in the legend"
    assert {"train loss (each step)", "train loss (smoothed)", "val loss", "train loss (at eval)"} <= set(texts(root))


def test_smooth_is_a_debiased_moving_average():
    from tinyllm.plot import smooth
    assert smooth([4.0, 4.0, 4.0], window=10) == pytest.approx([4.0, 4.0, 4.0]), "no pull towards 0 at the start"
    noisy = [1.0 + (-1) ** i for i in range(200)]       # 2, 0, 2, 0, ...: mean 1
    assert abs(smooth(noisy, window=20)[-1] - 1.0) < 0.06
    assert smooth([3.0, 1.0], window=1) == [3.0, 1.0], "a window of one point is no smoothing"


def test_plot_run_explains_a_log_without_losses(tmp_path):
    append_jsonl(tmp_path / "log.jsonl", {"kind": "rl", "step": 1, "reward": 0.5})
    with pytest.raises(ValueError, match="log.jsonl has no train 'loss'"):
        plot_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no training log file at"):
        plot_run(tmp_path / "missing_run")


def test_plot_log_draws_one_chart_per_key(tmp_path):
    write_training_log(tmp_path)
    out = plot_log(tmp_path / "log.jsonl")
    assert out == str(tmp_path / "log.svg")
    root = parse((tmp_path / "log.svg").read_text())
    charts = root.findall(f"{SVG}svg")
    assert len(charts) == 6  # loss, lr, tokens_per_s, val_loss, val_ppl, train_loss
    assert [len(polylines(chart)) for chart in charts] == [1] * 6


def test_plot_log_with_chosen_keys_and_several_kinds(tmp_path):
    log = tmp_path / "log.jsonl"
    for step in range(5):
        append_jsonl(log, {"kind": "rollout", "step": step, "reward": step / 4, "kl": 0.01 * step})
        append_jsonl(log, {"kind": "eval", "step": step, "reward": step / 5})
    out = plot_log(log, out=tmp_path / "rl.svg", keys=["reward", "kl"])
    root = parse((tmp_path / "rl.svg").read_text())
    charts = root.findall(f"{SVG}svg")
    assert [len(polylines(chart)) for chart in charts] == [2, 1]  # reward from both kinds, kl from rollouts
    assert {"rollout reward", "eval reward"} <= set(texts(charts[0]))
    assert out == str(tmp_path / "rl.svg")
    with pytest.raises(ValueError, match="no numeric values"):
        plot_log(log, keys=["missing"])
