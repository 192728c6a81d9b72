"""A small hand-written SVG line chart: panels side by side, one line per series, no plotting
dependency. Enough for the benchmark's saturation curves; not a general plotting library."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Panel:
    title: str
    series: dict[str, list[tuple[float, float]]]  # name -> (x, y) points, in x order
    limit: float | None = None  # a dashed horizontal line (a target), labelled


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above value (1 for nothing positive)."""
    if value <= 0 or math.isnan(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    return f"{value:g}"


def line_chart(
    panels: Sequence[Panel],
    *,
    x_label: str,
    y_label: str,
    title: str,
    y_cap: float | None = None,
    width: int = 420,
    height: int = 300,
) -> str:
    """The SVG document: panels side by side, a shared legend below. The x ticks are the data's
    x values. Points above ``y_cap`` are drawn at the cap (labelled "≥"), below 0 at 0."""
    left, right, top, bottom = 56, 16, 46, 44
    names = list(dict.fromkeys(name for panel in panels for name in panel.series))
    colour = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
    legend_height = 28
    total_w, total_h = width * len(panels), height + legend_height
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
        f'viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{total_w}" height="{total_h}" fill="white"/>',
        f'<text x="{total_w / 2}" y="16" text-anchor="middle" font-size="13">'
        f"{escape(title)}</text>",
    ]
    for index, panel in enumerate(panels):
        x0 = index * width + left
        plot_w, plot_h = width - left - right, height - top - bottom
        xs = [x for points in panel.series.values() for x, _ in points]
        ys = [y for points in panel.series.values() for _, y in points if not math.isnan(y)]
        x_ticks = sorted({0.0, *xs})
        x_max = max(xs, default=1.0) * 1.08 or 1.0
        y_top = max(ys, default=1.0)
        capped = y_cap is not None and y_top > y_cap
        y_max = nice_ceiling(min(y_top, y_cap) if y_cap is not None else y_top)

        def px(x: float, x0: int = x0, plot_w: int = plot_w, x_max: float = x_max) -> float:
            return x0 + plot_w * x / x_max

        def py(y: float, plot_h: int = plot_h, y_max: float = y_max) -> float:
            return top + plot_h * (1 - max(0.0, min(y, y_max)) / y_max)

        out.append(
            f'<text x="{x0 + plot_w / 2}" y="{top - 10}" text-anchor="middle" font-size="12">'
            f"{escape(panel.title)}</text>"
        )
        for tick in range(6):
            y = y_max * tick / 5
            label = ("≥ " if capped and tick == 5 else "") + _number(y)
            out.append(
                f'<line x1="{x0}" y1="{py(y):.1f}" x2="{x0 + plot_w}" y2="{py(y):.1f}" '
                'stroke="#ddd"/>'
            )
            out.append(f'<text x="{x0 - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{label}</text>')
        for x in x_ticks:
            out.append(
                f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
                f"{_number(x)}</text>"
            )
        if panel.limit is not None and panel.limit <= y_max:
            y = py(panel.limit)
            out.append(
                f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + plot_w}" y2="{y:.1f}" stroke="#888" '
                'stroke-dasharray="5,4"/>'
            )
            out.append(
                f'<text x="{x0 + 4}" y="{y - 4:.1f}" fill="#666">'
                f"limit {_number(panel.limit)}</text>"
            )
        out.append(
            f'<rect x="{x0}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
            'stroke="#444"/>'
        )
        out.append(
            f'<text x="{x0 + plot_w / 2}" y="{top + plot_h + 32}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
        out.append(
            f'<text transform="translate({x0 - 40},{top + plot_h / 2}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )
        for name, points in panel.series.items():
            drawn = [(px(x), py(y)) for x, y in points if not math.isnan(y)]
            if not drawn:
                continue
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in drawn)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour[name]}" stroke-width="2"/>'
            )
            for x, y in drawn:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour[name]}"/>')
    x = 20.0
    for name in names:
        y = height + 14
        out.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{colour[name]}" '
            'stroke-width="3"/>'
        )
        out.append(f'<text x="{x + 22}" y="{y}">{escape(name)}</text>')
        x += 40 + 7 * len(name)
    out.append("</svg>")
    return "\n".join(out) + "\n"
