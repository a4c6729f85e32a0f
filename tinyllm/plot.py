"""Loss curves as hand-written SVG: no matplotlib, just text a browser
(or any image viewer) can show.

An SVG image is XML: a ``<polyline points="x1,y1 x2,y2 ...">`` per curve, ``<line>`` and ``<text>``
for axes, grid and labels. The only real work is mapping data to pixels and choosing tick values a
person would choose ("nice numbers": 0, 0.5, 1, 1.5 rather than 0, 0.43, 0.86), so that is what this
file is mostly about.

    line_chart_svg  a chart of named (xs, ys) series -> SVG text
    plot_log        every numeric key of a ``log.jsonl`` (or the ones you name), one chart per key
    plot_run        the loss curves of a training run directory -> ``run_dir/loss.svg``
"""

from __future__ import annotations

import math
import os
from xml.sax.saxutils import escape

from .files import atomic_write, read_jsonl

__all__ = ["line_chart_svg", "nice_ticks", "plot_log", "plot_run"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
MAX_POINTS_PER_SERIES = 2000  # a 720 px wide chart cannot show more; longer series are thinned
MARKERS_UP_TO = 40  # series this short also get a dot per point, so single points stay visible
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def _nice_step(span: float, max_ticks: int) -> float:
    """The step in {1, 2, 2.5, 5} × 10^k that cuts ``span`` into at most ``max_ticks`` intervals."""
    raw = span / max_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10 * magnitude


def nice_ticks(low: float, high: float, max_ticks: int = 6) -> list[float]:
    """Round tick values covering [low, high]: the first at or below ``low``,
    the last at or above ``high``."""
    if high < low:
        low, high = high, low
    if high == low:  # a constant series: show a small band around it
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice_step(high - low, max_ticks)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    """Ticks for a log axis: powers of ten,
    or 1-2-5 × 10^k when the data spans less than about two decades."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for multiples in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0**k for k in range(first - 1, last + 2) for m in multiples]
        if sum(low <= t <= high for t in ticks) >= 3:
            break
    # One candidate at or beyond the data on each side; ``_axis`` keeps those inside its limits.
    below = max(t for t in ticks if t <= low)
    above = min(t for t in ticks if t >= high)
    return [t for t in ticks if below <= t <= above]


def _decimals_for(step: float) -> int:
    """Digits after the point needed to write multiples of ``step`` exactly (0.25 -> 2, 5 -> 0)."""
    for decimals in range(8):
        scaled = step * 10**decimals
        if abs(scaled - round(scaled)) < 1e-6 * max(1.0, scaled):
            return decimals
    return 8


def _format_tick(value: float, step: float | None = None) -> str:
    """As few digits as the tick spacing needs; k/M/G for big round numbers,
    e-notation for tiny ones.

    ``step=None`` (log axes, where spacing varies) formats each value on its own.
    """
    if value == 0:
        return "0"
    if step is None:
        return f"{value:g}".replace("e-0", "e-").replace("e+0", "e")
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= 10 * divisor and step >= divisor / 10:
            return _format_tick(value / divisor, step / divisor) + suffix
    if step < 1e-4:
        return f"{value:.2g}".replace("e-0", "e-")
    return f"{value:.{_decimals_for(step)}f}"


def _usable_points(xs, ys, log_y: bool) -> list[tuple[float, float]]:
    """Pairs with finite coordinates (and y > 0 on a log axis),
    thinned to ``MAX_POINTS_PER_SERIES``."""
    if len(xs) != len(ys):
        raise ValueError(f"a series has {len(xs)} x values but {len(ys)} y values")
    points = [
        (float(x), float(y))
        for x, y in zip(xs, ys)
        if math.isfinite(float(x)) and math.isfinite(float(y)) and (float(y) > 0 or not log_y)
    ]
    if len(points) > MAX_POINTS_PER_SERIES:
        stride = math.ceil(len(points) / MAX_POINTS_PER_SERIES)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    return points


def _axis(low: float, high: float, max_ticks: int,
          log: bool) -> tuple[float, float, list[float], list[str]]:
    """Limits and ticks for one axis showing data from ``low`` to ``high``.

    Returns (axis_low, axis_high, tick positions, tick labels), positions and limits in axis units
    (the value itself, or its log10 on a log axis). The limits leave a 4% margin around the data, so
    no point sits on the frame; the ticks are the round values that fall inside.
    """
    to_axis = math.log10 if log else float
    if log:
        candidates = _log_ticks(low, high) if low < high else _log_ticks(low / 2, high * 2)
    else:
        candidates = nice_ticks(low, high, max_ticks)
    axis_low, axis_high = to_axis(low), to_axis(high)
    pad = 0.04 * (axis_high - axis_low) or (0.3 if log else abs(low) * 0.1 or 1.0)
    axis_low, axis_high = axis_low - pad, axis_high + pad
    inside = lambda ticks: [t for t in ticks if axis_low - 1e-9 <= to_axis(t) <= axis_high + 1e-9]
    ticks, step = inside(candidates), None if log else candidates[1] - candidates[0]
    # the data spans less than a 1-1.5-2-3-5-7 step: evenly spaced round values read better
    if log and len(ticks) < 2:
        candidates = nice_ticks(10**axis_low, 10**axis_high, max_ticks)
        ticks, step = inside(candidates), candidates[1] - candidates[0]
    return axis_low, axis_high, [to_axis(t) for t in ticks], [_format_tick(t, step) for t in ticks]


def _trace(pixels: list[tuple[float, float]], spacing: float = 8.0) -> list[tuple[float, float]]:
    """Points along a polyline no more than about ``spacing`` pixels apart
    (its vertices plus fill-ins)."""
    traced = pixels[:1]
    for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
        pieces = max(1, int(math.hypot(x1 - x0, y1 - y0) // spacing))
        traced += [
            (x0 + (x1 - x0) * k / pieces, y0 + (y1 - y0) * k / pieces) for k in range(1, pieces + 1)
        ]
    return traced


def _legend_corner(traced: list[tuple[float, float]], frame: tuple[float, float, float, float],
                   size: tuple[float, float]):
    """Top-left (x, y) of the legend box: the corner of the plot frame whose box (plus a few pixels
    around it) covers the fewest points of the curves."""
    left, top, right, bottom = frame
    width, height = size
    corners = [(right - width - 8, top + 8), (left + 8, top + 8),
               (right - width - 8, bottom - height - 8), (left + 8, bottom - height - 8)]
    near = 6  # line width and marker radius
    covered = lambda c: sum(c[0] - near <= x <= c[0] + width + near and c[1] - near <= y <= c[1]
                            + height + near for x, y in traced)
    # ties: the first, top-right, where falling loss curves rarely are
    return min(corners, key=covered)


def line_chart_svg(
    series: dict[str, tuple[list, list]],
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    width: int = 720,
    height: int = 420,
    log_y: bool = False,
    styles: dict[str, dict] | None = None,
) -> str:
    """An SVG line chart with one polyline per named series ``{name: (xs, ys)}``, grid,
    ticks and legend.

    Points that are NaN or infinite (or not positive, with ``log_y``) are left out; a series left
    with no points is dropped. Series of at most ``MARKERS_UP_TO`` points also get a dot per point.
    Raises ValueError if nothing is left to draw. ``styles[name]`` may change a series' look:
    ``color``, ``width`` and ``opacity`` of its line, ``line=False`` (dots only), ``markers``
    (True/False).
    """
    usable = {name: _usable_points(xs, ys, log_y) for name, (xs, ys) in series.items()}
    usable = {name: points for name, points in usable.items() if points}
    if not usable:
        raise ValueError(f"nothing to plot in chart {title!r}: no series has a finite point"
                         + (" > 0" if log_y else ""))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    frame = _draw_frame(out, usable, (title, xlabel, ylabel), width, height, log_y)
    looks = {name: _style(i, len(points), (styles or {}).get(name))
             for i, (name, points) in enumerate(usable.items())}
    traced = []  # points along every curve, to find a free corner for the legend
    for name, points in usable.items():
        traced += _draw_series(out, name, points, looks[name], frame)
    _draw_legend(out, looks, traced, frame)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_text(out: list, x: float, y: float, content: str, attributes: str) -> None:
    out.append(f'<text x="{x:.1f}" y="{y:.1f}" {FONT} {attributes}>{escape(content)}</text>')


def _draw_frame(out, usable, labels, width, height, log_y) -> dict:
    """Grid, ticks, title and axis labels; returns the plot area and the data → pixel maps."""
    title, xlabel, ylabel = labels
    all_x = [x for points in usable.values() for x, _ in points]
    all_y = [y for points in usable.values() for _, y in points]
    x_low, x_high, x_ticks, x_labels = _axis(min(all_x), max(all_x), max(2, width // 110),
                                             log=False)
    y_low, y_high, y_ticks, y_labels = _axis(min(all_y), max(all_y), max(2, height // 70),
                                             log=log_y)
    # The plot area, leaving room for the title, the axis labels and the longest tick label.
    left = 36 + 7 * max(len(label) for label in y_labels)
    top, right, bottom = 44, width - 24, height - 52
    to_axis = math.log10 if log_y else float
    px = lambda x: left + (x - x_low) / (x_high - x_low) * (right - left)
    # SVG's y points down
    py = lambda y: bottom - (to_axis(y) - y_low) / (y_high - y_low) * (bottom - top)
    py_axis = lambda tick: bottom - (tick - y_low) / (y_high - y_low) * (bottom - top)
    grid = 'stroke="#e5e5e5"'
    for tick, label in zip(x_ticks, x_labels):
        out.append(f'<line x1="{px(tick):.1f}" y1="{top}" x2="{px(tick):.1f}" '
                   f'y2="{bottom}" {grid}/>')
        _svg_text(out, px(tick), bottom + 17, label,
                  'font-size="12" text-anchor="middle" fill="#444"')
    for tick, label in zip(y_ticks, y_labels):
        out.append(f'<line x1="{left}" y1="{py_axis(tick):.1f}" x2="{right}" '
                   f'y2="{py_axis(tick):.1f}" {grid}/>')
        _svg_text(out, left - 6, py_axis(tick) + 4, label,
                  'font-size="12" text-anchor="end" fill="#444"')
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" '
               f'height="{bottom - top}" fill="none" '
               'stroke="#888"/>')
    _svg_text(out, width / 2, 26, title, 'font-size="16" font-weight="bold" text-anchor="middle"')
    _svg_text(out, (left + right) / 2, height - 12, xlabel, 'font-size="13" text-anchor="middle"')
    middle = (top + bottom) / 2
    _svg_text(out, 18, middle, ylabel + (" (log scale)" if log_y else ""),
              f'font-size="13" text-anchor="middle" transform="rotate(-90 18 {middle:.1f})"')
    return {"box": (left, top, right, bottom), "px": px, "py": py}


def _draw_series(out, name, points, look, frame) -> list:
    """One series' polyline and/or dots; returns the pixels along it."""
    pixels = [(frame["px"](x), frame["py"](y)) for x, y in points]
    if look["line"]:
        coordinates = " ".join(f"{x:.1f},{y:.1f}" for x, y in pixels)
        out.append(f'<polyline fill="none" stroke="{look["color"]}" stroke-width="{look["width"]}" '
                   f'stroke-opacity="{look["opacity"]}" stroke-linejoin="round" '
                   f'points="{coordinates}"><title>{escape(name)}</title></polyline>')
    if look["markers"]:
        out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{look["color"]}" '
                   'stroke="white" '
                   f'stroke-width="0.8"/>' for x, y in pixels)
    return _trace(pixels) if look["line"] else pixels


def _draw_legend(out, looks, traced, frame) -> None:
    """The legend box, in the corner of the plot area that the curves cross least."""
    size = (34 + 7 * max(len(name) for name in looks), 8 + 18 * len(looks))
    x0, y0 = _legend_corner(traced, frame["box"], size)
    out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{size[0]:.1f}" '
               f'height="{size[1]}" fill="white" '
               'fill-opacity="0.85" stroke="#ccc"/>')
    for i, (name, look) in enumerate(looks.items()):
        y = y0 + 13 + 18 * i
        if look["line"]:
            out.append(f'<line x1="{x0 + 6:.1f}" y1="{y:.1f}" x2="{x0 + 24:.1f}" y2="{y:.1f}" '
                       f'stroke="{look["color"]}" stroke-width="3" '
                       f'stroke-opacity="{max(look["opacity"], 0.4)}"/>')
        else:
            out.append(f'<circle cx="{x0 + 15:.1f}" cy="{y:.1f}" r="3.5" fill="{look["color"]}"/>')
        _svg_text(out, x0 + 30, y + 4, name, 'font-size="12"')


def _style(index: int, num_points: int, overrides: dict | None) -> dict:
    """How a series is drawn: the index-th color, a 1.8 px line, and dots when it has few points."""
    look = {"color": COLORS[index % len(COLORS)], "width": 1.8, "opacity": 1.0, "line": True,
            "markers": num_points <= MARKERS_UP_TO}
    unknown = set(overrides or {}) - set(look)
    if unknown:
        raise ValueError(f"unknown series style key(s) {sorted(unknown)}; expected some of "
                         f"{sorted(look)}")
    return {**look, **(overrides or {})}


def _stack_vertically(charts: list[str], width: int, height: int) -> str:
    """One SVG holding several same-sized charts one below the other (nested ``<svg>`` elements)."""
    body = [chart.replace("<svg ", f'<svg x="0" y="{i * height}" ', 1)
            for i, chart in enumerate(charts)]
    total = height * len(charts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" viewBox="0 '
            f'0 {width} {total}">\n') + "".join(body) + "</svg>\n"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_log(log_path, out=None, keys: list[str] | None = None, x: str = "step",
             title: str = "") -> str:
    """Plot a ``log.jsonl``: one chart per key, one series per record ``kind`` that has it;
    returns the SVG path.

    ``keys=None`` plots every numeric key in order of first appearance (except ``x``); records
    without a ``kind`` count as kind "log". A key whose values are all positive and span 100× or
    more is drawn on a log axis (learning-rate schedules, perplexities). The charts are stacked in
    one SVG, written to ``out`` (default: the log's name with ``.svg``).
    """
    log_path = os.fspath(log_path)
    records = [r for r in read_jsonl(log_path, what="training log") if isinstance(r, dict)]
    if keys is None:
        keys = list(
            dict.fromkeys(k for r in records for k, v in r.items() if k != x and _is_number(v))
        )
    charts, width, height = [], 720, 300
    for key in keys:
        by_kind: dict[str, list[tuple[float, float]]] = {}
        for index, record in enumerate(records):
            if _is_number(record.get(key)):
                step = record[x] if _is_number(record.get(x)) else index
                by_kind.setdefault(str(record.get("kind", "log")), []).append((step, record[key]))
        values = [v for points in by_kind.values() for _, v in points if math.isfinite(v)]
        if not values:
            continue
        log_y = min(values) > 0 and max(values) >= 100 * min(values)
        series = {f"{kind} {key}" if len(by_kind) > 1 else key: tuple(zip(*sorted(points)))
                  for kind, points in by_kind.items()}
        chart_title = f"{title}: {key}" if title else key
        charts.append(line_chart_svg(series, title=chart_title, xlabel=x, ylabel=key, width=width,
                                     height=height, log_y=log_y))
    if not charts:
        raise ValueError(f"training log {log_path} has no numeric values for {keys or 'any key'}")
    out = os.fspath(out) if out is not None else os.path.splitext(log_path)[0] + ".svg"
    atomic_write(out, _stack_vertically(charts, width, height))
    return out


def smooth(values: list[float], window: int) -> list[float]:
    """Exponential moving average over about ``window`` points, debiased as in Adam: each output is
    the weighted mean of the points so far, weights (1 - 1/window)^age, so the first ones are not
    pulled to 0."""
    decay, average, weight, smoothed = 1.0 - 1.0 / max(window, 1), 0.0, 0.0, []
    for value in values:
        average = decay * average + (1.0 - decay) * value
        weight = decay * weight + (1.0 - decay)
        smoothed.append(average / weight)
    return smoothed


def plot_run(run_dir, out=None) -> str:
    """Draw train and validation loss against step from ``run_dir/log.jsonl`` into
    ``run_dir/loss.svg``.

    Reads ``{"kind": "train", "step", "loss"}`` records and ``{"kind": "eval", "step", "val_loss",
    "train_loss"}`` records; returns the path written. The loss of each step's batch is noisy, so it
    is drawn faint with its moving average (``smooth``, over a 50th of the run) on top. The
    evaluations are drawn as dots, not joined: between two of them nothing was measured.
    """
    run_dir = os.fspath(run_dir)
    log_path = os.path.join(run_dir, "log.jsonl")
    records = [r
               for r in read_jsonl(log_path,
                                   what="training "
                                        "log") if isinstance(r, dict) and _is_number(r.get("step"))]

    def points(kind, key):
        return sorted(
            (r["step"], r[key]) for r in records if r.get("kind") == kind and _is_number(r.get(key))
        )

    train, val, train_at_eval = points("train",
                                       "loss"), points("eval", "val_loss"), points("eval",
                                                                                   "train_loss")
    series, styles = {}, {}
    if train:
        steps, losses = zip(*train)
        series["train loss (each step)"] = (steps, losses)
        styles["train loss (each step)"] = {"color": COLORS[0], "width": 1, "opacity": 0.3,
                                            "markers": False}
        window = min(max(len(losses) // 50, 1), 50)
        series["train loss (smoothed)"] = (steps, smooth(list(losses), window))
        styles["train loss (smoothed)"] = {"color": COLORS[0], "width": 2.2, "markers": False}
    for name, found, color in (("train loss (at eval)", train_at_eval, COLORS[2]),
                               ("val loss", val, COLORS[1])):
        if found:
            series[name] = tuple(zip(*found))
            styles[name] = {"color": color, "line": False, "markers": True}
    if not series:
        raise ValueError(f"training log {log_path} has no train 'loss' or eval 'val_loss' "
                         "records to plot")
    svg = line_chart_svg(series, title=os.path.basename(os.path.normpath(run_dir)), xlabel="step",
                         ylabel="loss",
                         styles=styles)
    out = os.fspath(out) if out is not None else os.path.join(run_dir, "loss.svg")
    atomic_write(out, svg)
    return out
