"""The interpolation chart: scores along the line between two checkpoints, drawn as the other report
charts are (`soce.report.charts`: inline SVG, standard library only, names escaped and shortened, a
missing value drawn as a gap), and `standalone_svg` to save any of them as an .svg file of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from soce.report.charts import (
    _CHAR_W,
    _axes,
    _e,
    _nice_ticks,
    _short_labels,
    _svg,
    _tick,
    as_number,
    format_number,
)

__all__ = ["interpolation_svg", "standalone_svg"]

# Okabe-Ito colours for the categories' lines; the average takes the soup's vermillion.
_LINE_COLOURS = ("#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#999999", "#000000")


def interpolation_svg(
    ts: Sequence[float],
    categories: Mapping[str, Sequence[float | None]],
    average: Sequence[float | None],
    *,
    a: str,
    b: str,
    split: str = "dev",
) -> str:
    """Scores along theta(t) = (1-t)*A + t*B, t from 0 to 1: a thin line per category (class "curve"),
    the average bold (class "curve curve-average") with a dot per point (class "point"), the straight
    line between the average's two ends dashed (class "chord"), and the largest gap below it (the
    barrier) as a red segment (class "barrier") when there is one."""
    width, height = 760, 360
    left, top, bottom = 64, 40, 62
    names = ["average", *categories]
    legend = _short_labels(names, 22)
    right = 44 + max(len(t) for t in legend) * _CHAR_W
    plot_w, plot_h = width - left - right, height - top - bottom
    lines = [("average", average), *categories.items()]
    present = [v for _, values in lines for v in values if v is not None]
    y_lo, y_hi = (min(present), max(present)) if present else (0.0, 1.0)
    pad = (y_hi - y_lo) * 0.08 or 0.02
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def sx(t: float) -> float:
        return left + t * plot_w

    def sy(v: float) -> float:
        return top + (1 - (v - y_lo) / (y_hi - y_lo)) * plot_h

    title = f"{split} score along the line from A (t=0) to B (t=1)"
    parts = [f'<text class="title" x="4" y="16">{_e(title)}</text>']
    parts += _axes(left, top, plot_w, plot_h, "t: the model is (1-t)·A + t·B", f"{split} score")
    for t in _nice_ticks(0.0, 1.0, 5):
        parts.append(_tick(sx(t), top + plot_h, format_number(t, digits=1), vertical=True))
    for t in _nice_ticks(y_lo, y_hi, 6):
        if y_lo <= t <= y_hi:
            parts.append(_tick(left, sy(t), format_number(t), vertical=False, grid_to=left + plot_w))
    ends = _short_labels([a, b], 28)
    parts.append(
        f'<text x="{sx(0):.1f}" y="{top + plot_h + 50:.1f}"><title>{_e(a)}</title>A: {_e(ends[0])}</text>'
        f'<text x="{sx(1):.1f}" y="{top + plot_h + 50:.1f}" text-anchor="end"><title>{_e(b)}</title>'
        f"B: {_e(ends[1])}</text>"
    )
    first, last = (as_number(average[0]), as_number(average[-1])) if average else (None, None)
    legend_extra = [("straight line", 'stroke="#555" stroke-dasharray="5 4"')]
    if first is not None and last is not None:
        parts.append(
            f'<line class="chord" x1="{sx(0):.1f}" y1="{sy(first):.1f}" x2="{sx(1):.1f}" y2="{sy(last):.1f}" '
            'stroke="#555" stroke-width="1.2" stroke-dasharray="5 4"><title>straight line between the ends'
            "</title></line>"
        )
        gaps = [
            ((1 - t) * first + t * last - v, t, v)
            for t, v in zip(ts, (as_number(v) for v in average), strict=True)
            if v is not None
        ]
        gap, at, value = max(gaps, key=lambda g: g[0])
        if gap > 0:
            chord = (1 - at) * first + at * last
            parts.append(
                f'<line class="barrier" x1="{sx(at):.1f}" y1="{sy(chord):.1f}" x2="{sx(at):.1f}" '
                f'y2="{sy(value):.1f}" stroke="#b2182b" stroke-width="2.5"><title>barrier '
                f"{format_number(gap)} at t={format_number(at, digits=2)}</title></line>"
            )
            legend_extra.append(("barrier", 'stroke="#b2182b" stroke-width="2.5"'))
    for k, (name, values) in enumerate(reversed(lines)):  # the average last, on top
        is_average = k == len(lines) - 1
        colour = "#D55E00" if is_average else _LINE_COLOURS[(len(lines) - 2 - k) % len(_LINE_COLOURS)]
        cls = "curve curve-average" if is_average else "curve"
        for segment in _segments(ts, values):
            d = " ".join(f"{'L' if i else 'M'}{sx(t):.1f},{sy(v):.1f}" for i, (t, v) in enumerate(segment))
            d += " h0" if len(segment) == 1 else ""  # a lone point: a round dot of the line's width
            parts.append(
                f'<path class="{cls}" d="{d}" fill="none" stroke="{colour}" stroke-linecap="round" '
                f'stroke-width="{3 if is_average else 1.5}"><title>{_e(name)}</title></path>'
            )
        if is_average:
            for t, v in zip(ts, values, strict=True):
                number = as_number(v)
                if number is not None:
                    parts.append(
                        f'<circle class="point" cx="{sx(t):.1f}" cy="{sy(number):.1f}" r="3.5" '
                        f'fill="{colour}"><title>t={format_number(t, digits=2)}: {format_number(number)}'
                        "</title></circle>"
                    )
    lx = left + plot_w + 16
    for i, name in enumerate(names):
        y = top + 8 + i * 18
        colour = "#D55E00" if i == 0 else _LINE_COLOURS[(i - 1) % len(_LINE_COLOURS)]
        parts.append(
            f'<line class="legend-mark" x1="{lx}" y1="{y - 4}" x2="{lx + 18}" y2="{y - 4}" stroke="{colour}" '
            f'stroke-width="{3 if i == 0 else 1.5}"/><text x="{lx + 24}" y="{y}"><title>{_e(name)}</title>'
            f"{_e(legend[i])}</text>"
        )
    for i, (label, style) in enumerate(legend_extra, start=len(names)):
        y = top + 8 + i * 18
        parts.append(
            f'<line class="legend-mark" x1="{lx}" y1="{y - 4}" x2="{lx + 18}" y2="{y - 4}" {style}/>'
            f'<text x="{lx + 24}" y="{y}">{label}</text>'
        )
    return _svg("interpolation", title, width, height, parts)


def standalone_svg(svg: str) -> str:
    """A chart as an .svg file of its own: the SVG namespace and the report page's chart fonts."""
    style = (
        "<style>text { font: 11px system-ui, -apple-system, 'Segoe UI', sans-serif; fill: #1b1b1b; } "
        "text.title { font-size: 13px; font-weight: 600; }</style>"
    )
    head, rest = svg.split(">", 1)  # the <svg ...> tag, then its content
    head = head.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    return f'<?xml version="1.0" encoding="utf-8"?>\n{head}>{style}{rest}\n'


def _segments(ts: Sequence[float], values: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    """The runs of consecutive points with a value: a missing value breaks the line."""
    out: list[list[tuple[float, float]]] = [[]]
    for t, v in zip(ts, values, strict=True):
        number = as_number(v)
        if number is None:
            if out[-1]:
                out.append([])
        else:
            out[-1].append((t, number))
    return [s for s in out if s]
