"""Inline SVG charts for reports and the dashboard, drawn with the standard library only.

Each function takes plain data (names, numbers or None) and returns one `<svg class="chart">` element
with a `data-chart` name, sized for its content, with no scripts and no external references. Every
name drawn is escaped, long names are shortened in the middle (the full name stays in a tooltip), and
a missing value is drawn as "n/a" instead of failing.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "MISSING_FILL",
    "BarSeries",
    "TrialPoint",
    "as_number",
    "format_number",
    "grouped_bars_svg",
    "heatmap_svg",
    "history_svg",
    "weights_svg",
]

MISSING_FILL = "#e0e0e0"  # a heatmap cell without a value
# Colour stops: sequential blues for scores, blue-white-red for correlations in -1..1.
_BLUES = ((0.0, (247, 251, 255)), (0.5, (107, 174, 214)), (1.0, (8, 48, 107)))
_DIVERGING = ((0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43)))
_CHAR_W = 6.6  # rough width of one character at the charts' 11px font, for layout only
_ROW_LABEL_CHARS = 32  # longer labels are shortened on charts; the full text stays in a tooltip
_COL_LABEL_CHARS = 24
_LEGEND_W = 300  # colour legend under the heatmaps: ten steps, the n/a swatch and its label


class TrialPoint(NamedTuple):
    """One search trial as the history chart draws it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, ...
    objective: float | None
    best_so_far: float | None


class BarSeries(NamedTuple):
    """One method in a grouped bar chart: a value (or None) per group."""

    name: str  # a CSS class suffix: series-<name>
    label: str
    colour: str
    values: Sequence[float | None]


def as_number(value: Any) -> float | None:
    """The value as a finite float, or None for anything else (None, NaN, text, booleans)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def format_number(value: Any, *, digits: int = 3, signed: bool = False) -> str:
    """The value with `digits` decimals (and a sign when `signed`), or "n/a" if it is not a number."""
    number = as_number(value)
    if number is None:
        return "n/a"
    return f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"


def heatmap_svg(
    *,
    chart: str,
    title: str,
    rows: Sequence[str],
    cols: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    diverging: bool,
    digits: int,
    outlined: set[tuple[int, int]] | None = None,
    marked: set[int] | None = None,
    extra_column: tuple[str, Sequence[float | None]] | None = None,
) -> str:
    """A labelled matrix of coloured cells (class "cell") with their values written in.

    matrix: one list per row, one value per column. diverging: colours for -1..1 (correlations);
    otherwise sequential colours over the matrix's own range. outlined: (row, column) cells drawn with
    a frame (class "expert-outline"). marked: indexes whose row and column labels get a "*" and the
    class "weak". extra_column: (label, one value per row) set apart on the right (class "cell-extra").
    """
    outlined, marked = outlined or set(), marked or set()
    cell_w, cell_h = 62, 24
    label_w = _label_width(rows, _ROW_LABEL_CHARS) + 14
    col_chars = min(max(len(c) for c in cols) + 2, _COL_LABEL_CHARS)
    top = 30 + col_chars * _CHAR_W * 0.65  # labels are rotated by 40 degrees
    n_extra = 1 if extra_column else 0
    grid_w = (len(cols) + n_extra) * cell_w + (10 if extra_column else 0)
    width = max(label_w + grid_w + col_chars * _CHAR_W * 0.8 + 10, label_w + _LEGEND_W)
    height = top + len(rows) * cell_h + 56
    if diverging:
        lo, hi = -1.0, 1.0
    else:
        present = [v for row in matrix for v in row if v is not None]
        present += [v for v in (extra_column[1] if extra_column else []) if v is not None]
        lo, hi = (min(present), max(present)) if present else (0.0, 1.0)

    def colour(v: float | None) -> str:
        if v is None:
            return MISSING_FILL
        t = 0.5 if hi == lo else (v - lo) / (hi - lo)
        return _rgb(_interpolate(_DIVERGING if diverging else _BLUES, t))

    mark_room = 2 if marked else 0  # room for the "* " in front of marked labels
    short_rows = _short_labels(rows, _ROW_LABEL_CHARS - mark_room)
    short_cols = _short_labels(cols, _COL_LABEL_CHARS - mark_room)

    def label(short: list[str], index: int) -> str:
        return ("* " if index in marked else "") + short[index]

    parts = [f'<text class="title" x="4" y="16">{_e(title)}</text>']
    for j, col in enumerate(cols):
        x, y = label_w + (j + 0.5) * cell_w, top - 6
        cls = ' class="weak"' if j in marked else ""
        parts.append(
            f'<text{cls} x="{x:.1f}" y="{y:.1f}" transform="rotate(-40 {x:.1f} {y:.1f})">'
            f"<title>{_e(col)}</title>{_e(label(short_cols, j))}</text>"
        )
    if extra_column:
        x = label_w + (len(cols) + 0.5) * cell_w + 10
        parts.append(
            f'<text x="{x:.1f}" y="{top - 6:.1f}" transform="rotate(-40 {x:.1f} {top - 6:.1f})">'
            f"{_e(extra_column[0])}</text>"
        )
    for i, row in enumerate(rows):
        y = top + i * cell_h
        cls = ' class="weak"' if i in marked else ""
        parts.append(
            f'<text{cls} x="{label_w - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end">'
            f"<title>{_e(row)}</title>{_e(label(short_rows, i))}</text>"
        )
        cells = [(j, cols[j], matrix[i][j], "cell") for j in range(len(cols))]
        if extra_column:
            cells.append((len(cols), extra_column[0], extra_column[1][i], "cell-extra"))
        for j, col, value, cls in cells:
            x = label_w + j * cell_w + (10 if cls == "cell-extra" else 0)
            fill = colour(value)
            text = format_number(value, digits=digits)
            parts.append(
                f'<rect class="{cls}" x="{x}" y="{y:.1f}" width="{cell_w}" height="{cell_h}" '
                f'fill="{fill}" stroke="#fff"><title>{_e(row)} / {_e(col)}: {text}</title></rect>'
                f'<text x="{x + cell_w / 2:.1f}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="middle" '
                f'style="fill:{_text_colour(fill)}">{text}</text>'
            )
    for i, j in sorted(outlined):
        parts.append(
            f'<rect class="expert-outline" x="{label_w + j * cell_w + 1.5}" y="{top + i * cell_h + 1.5:.1f}" '
            f'width="{cell_w - 3}" height="{cell_h - 3}" fill="none" stroke="#111" stroke-width="2.5"/>'
        )
    parts.append(_colour_legend(label_w, top + len(rows) * cell_h + 16, lo, hi, colour, digits))
    return _svg(chart, title, width, height, parts)


def history_svg(trials: Sequence[TrialPoint], best_trial: int | None) -> str:
    """Objective per trial (class "trial"; pruned hollow, failed red) and the best so far as a step line.

    Trials without an objective are not drawn; at least one must have one. best_trial: the trial
    circled as the search's best (class "best-trial").
    """
    width, height = 980, 360
    left, right, top, bottom = 64, 20, 46, 52
    trials = sorted(trials, key=lambda t: t.number)
    points = [(t.number, t.objective, t.state.upper()) for t in trials if t.objective is not None]
    best = [(t.number, t.best_so_far) for t in trials if t.best_so_far is not None]
    numbers = [t.number for t in trials] or [0]
    x_lo, x_hi = min(numbers), max(numbers)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    values = [v for _, v, _ in points] + [v for _, v in best]
    y_lo, y_hi = min(values), max(values)
    pad = (y_hi - y_lo) * 0.06 or 0.01
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(n: float) -> float:
        return left + (n - x_lo) / (x_hi - x_lo) * plot_w

    def sy(v: float) -> float:
        return top + (1 - (v - y_lo) / (y_hi - y_lo)) * plot_h

    parts = [f'<text class="title" x="4" y="16">Dev objective per trial ({len(points)} with a value)</text>']
    parts += _axes(left, top, plot_w, plot_h, "trial", "dev objective (mean category score)")
    x_ticks = [t for t in _nice_ticks(x_lo, x_hi, 8) if t == int(t) and x_lo <= t <= x_hi]
    for t in x_ticks:
        parts.append(_tick(sx(t), top + plot_h, f"{int(t)}", vertical=True))
    for t in _nice_ticks(y_lo, y_hi, 6):
        if y_lo <= t <= y_hi:
            parts.append(_tick(left, sy(t), format_number(t), vertical=False, grid_to=left + plot_w))
    if best:
        d = f"M{sx(best[0][0]):.1f},{sy(best[0][1]):.1f}"
        for n, v in best[1:]:
            d += f" H{sx(n):.1f} V{sy(v):.1f}"
        d += f" H{sx(numbers[-1]):.1f}"
        parts.append(f'<path class="best-so-far" d="{d}" fill="none" stroke="#D55E00" stroke-width="2"/>')
    radius = 3.5 if len(points) <= 100 else 2.5
    for n, v, state in points:
        if state == "COMPLETE":
            style, cls = 'fill="#0072B2" fill-opacity="0.8"', "trial-complete"
        elif state == "PRUNED":
            style, cls = 'fill="none" stroke="#999" stroke-width="1.2"', "trial-pruned"
        else:
            style, cls = 'fill="none" stroke="#b2182b" stroke-width="1.2"', "trial-fail"
        parts.append(
            f'<circle class="trial {cls}" cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="{radius}" {style}>'
            f"<title>trial {n} ({_e(state.lower())}): {format_number(v)}</title></circle>"
        )
    for n, v, _ in points:
        if n == best_trial:
            parts.append(
                f'<circle class="best-trial" cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="7" fill="none" '
                f'stroke="#111" stroke-width="1.5"><title>best trial {n}: {format_number(v)}</title></circle>'
            )
            break
    # Legend, top right; its marks have their own class so they never count as trials.
    lx = left + plot_w - 310
    parts.append(
        f'<circle class="legend-mark" cx="{lx}" cy="12" r="3.5" fill="#0072B2"/>'
        f'<text x="{lx + 8}" y="16">complete</text>'
        f'<circle class="legend-mark" cx="{lx + 78}" cy="12" r="3.5" fill="none" stroke="#999"/>'
        f'<text x="{lx + 86}" y="16">pruned</text>'
        f'<circle class="legend-mark" cx="{lx + 146}" cy="12" r="3.5" fill="none" stroke="#b2182b"/>'
        f'<text x="{lx + 154}" y="16">failed</text>'
        f'<line class="legend-mark" x1="{lx + 206}" y1="12" x2="{lx + 226}" y2="12" stroke="#D55E00" '
        f'stroke-width="2"/><text x="{lx + 232}" y="16">best so far</text>'
    )
    return _svg("history", "Dev objective per trial", width, height, parts)


def weights_svg(weights: Mapping[str, float | None]) -> str:
    """Horizontal bars (class "bar"), one per expert, with the weight written at the end."""
    names = list(weights)
    bar_h, gap = 18, 6
    label_w = _label_width(names, _ROW_LABEL_CHARS) + 14
    plot_w, top = 420, 30
    height = top + len(names) * (bar_h + gap) + 40
    width = label_w + plot_w + 70
    w_max = max([v for v in weights.values() if v is not None] + [0.0])
    ticks = [t for t in _nice_ticks(0.0, w_max or 1.0, 5) if t >= 0]
    hi = max(ticks[-1], w_max) if ticks else 1.0
    parts = ['<text class="title" x="4" y="16">Weight per expert</text>']
    axis_y = top + len(names) * (bar_h + gap)
    for t in ticks:
        x = label_w + t / hi * plot_w
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{format_number(t, digits=2)}</text>'
        )
    short = _short_labels(names, _ROW_LABEL_CHARS)
    for i, name in enumerate(names):
        y = top + i * (bar_h + gap)
        value = weights[name]
        length = max(value or 0.0, 0.0) / hi * plot_w
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end"><title>{_e(name)}</title>'
            f"{_e(short[i])}</text>"
            f'<rect class="bar" x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="#D55E00">'
            f"<title>{_e(name)}: {format_number(value)}</title></rect>"
            f'<text x="{label_w + length + 5:.1f}" y="{y + bar_h / 2 + 4:.1f}">{format_number(value)}</text>'
        )
    parts.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{axis_y}" stroke="#333"/>')
    parts.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{axis_y + 30}" text-anchor="middle">weight</text>')
    return _svg("weights", "Weight per expert", width, height, parts)


def grouped_bars_svg(groups: Sequence[str], series: Sequence[BarSeries]) -> str:
    """Vertical bars (class "bar series-<name>"): a group per category, a bar per series in each group.

    The last group (the average over categories) is set apart by a dashed line and a bold label.
    """
    bar_w = 16 if len(groups) <= 7 else 11
    group_w = len(series) * bar_w + 18
    label_chars = min(max(len(g) for g in groups) + 1, _COL_LABEL_CHARS)
    # Group labels are rotated by 35 degrees and end under their group: the first may reach left.
    left = max(56.0, label_chars * _CHAR_W * 0.82 - group_w / 2 + 4)
    top, plot_h = 52, 240
    bottom = 24 + label_chars * _CHAR_W * 0.58
    plot_w = len(groups) * group_w
    legend = [_shorten(s.label, 28) for s in series]
    legend_x = list(itertools.accumulate((len(t) * _CHAR_W + 34 for t in legend), initial=left))
    width = max(left + plot_w + 30, legend_x[-1] + 10)
    height = top + plot_h + bottom
    present = [v for s in series for v in s.values if v is not None]
    ticks = _nice_ticks(0.0, max([*present, 0.0]) or 1.0, 5)
    hi = max(ticks[-1], *present) if present else 1.0

    def sy(v: float) -> float:
        return top + (1 - max(v, 0.0) / hi) * plot_h

    parts = ['<text class="title" x="4" y="16">Test score per category: soup and baselines</text>']
    for k, s in enumerate(series):
        x = legend_x[k]
        parts.append(
            f'<rect class="legend-swatch" x="{x:.1f}" y="26" width="12" height="12" fill="{_e(s.colour)}"/>'
            f'<text x="{x + 16:.1f}" y="36">{_e(legend[k])}</text>'
        )
    parts += _axes(left, top, plot_w, plot_h, None, "test score")
    for t in ticks:
        if t <= hi:
            parts.append(
                _tick(left, sy(t), format_number(t, digits=2), vertical=False, grid_to=left + plot_w)
            )
    short = _short_labels(groups, _COL_LABEL_CHARS)
    for g, group in enumerate(groups):
        gx = left + g * group_w + 9.0
        if g == len(groups) - 1 and len(groups) > 1:  # set the average apart from the categories
            parts.append(
                f'<line x1="{gx - 9}" y1="{top}" x2="{gx - 9}" y2="{top + plot_h}" stroke="#999" '
                'stroke-dasharray="4 3"/>'
            )
        for k, s in enumerate(series):
            value = s.values[g]
            if value is None:
                continue
            x, y = gx + k * bar_w, sy(value)
            parts.append(
                f'<rect class="bar series-{_e(s.name)}" x="{x}" y="{y:.1f}" width="{bar_w - 2}" '
                f'height="{top + plot_h - y:.1f}" fill="{_e(s.colour)}"><title>{_e(group)}, {_e(s.label)}: '
                f"{format_number(value)}</title></rect>"
            )
        lx, ly = gx + len(series) * bar_w / 2, top + plot_h + 14
        weight = ' font-weight="700"' if g == len(groups) - 1 else ""
        parts.append(
            f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="end" transform="rotate(-35 {lx:.1f} {ly:.1f})"'
            f"{weight}><title>{_e(group)}</title>{_e(short[g])}</text>"
        )
    return _svg("baselines", "Test score per category: soup and baselines", width, height, parts)


# ---------------------------------------------------------------------------------------------------------
# Drawing pieces


def _colour_legend(
    x0: float, y0: float, lo: float, hi: float, colour: Callable[[float], str], digits: int
) -> str:
    steps, step_w = 10, 22
    parts = []
    for k in range(steps):
        value = lo + (hi - lo) * (k + 0.5) / steps
        parts.append(
            f'<rect class="legend-step" x="{x0 + k * step_w:.1f}" y="{y0:.1f}" width="{step_w}" '
            f'height="10" fill="{colour(value)}"/>'
        )
    parts.append(f'<text x="{x0:.1f}" y="{y0 + 24:.1f}">{format_number(lo, digits=digits)}</text>')
    hi_x = x0 + steps * step_w
    parts.append(
        f'<text x="{hi_x:.1f}" y="{y0 + 24:.1f}" text-anchor="end">{format_number(hi, digits=digits)}</text>'
    )
    missing_x = x0 + steps * step_w + 20
    parts.append(
        f'<rect class="legend-step" x="{missing_x:.1f}" y="{y0:.1f}" width="{step_w}" height="10" '
        f'fill="{MISSING_FILL}"/><text x="{missing_x + step_w + 4:.1f}" y="{y0 + 9:.1f}">n/a</text>'
    )
    return "".join(parts)


def _axes(left: float, top: float, w: float, h: float, x_label: str | None, y_label: str) -> list[str]:
    parts = [
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#333"/>',
        f'<text x="14" y="{top + h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + h / 2:.1f})">{_e(y_label)}</text>',
    ]
    if x_label:
        parts.append(
            f'<text x="{left + w / 2:.1f}" y="{top + h + 38:.1f}" text-anchor="middle">{_e(x_label)}</text>'
        )
    return parts


def _tick(x: float, y: float, label: str, *, vertical: bool, grid_to: float | None = None) -> str:
    if vertical:  # a tick on the x axis
        return (
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + 5:.1f}" stroke="#333"/>'
            f'<text x="{x:.1f}" y="{y + 17:.1f}" text-anchor="middle">{_e(label)}</text>'
        )
    grid = (
        f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{grid_to:.1f}" y2="{y:.1f}" stroke="#eee"/>' if grid_to else ""
    )
    return (
        f'{grid}<line x1="{x - 5:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#333"/>'
        f'<text x="{x - 8:.1f}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>'
    )


def _svg(chart: str, title: str, width: float, height: float, parts: list[str]) -> str:
    w, h = math.ceil(width), math.ceil(height)
    return (
        f'<svg class="chart" data-chart="{_e(chart)}" role="img" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}"><title>{_e(title)}</title>' + "".join(parts) + "</svg>"
    )


def _nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering lo..hi."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _interpolate(stops: tuple[tuple[float, tuple[int, int, int]], ...], t: float) -> tuple[int, ...]:
    t = min(max(t, 0.0), 1.0)
    for (t0, c0), (t1, c1) in itertools.pairwise(stops):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(round(a + (b - a) * f) for a, b in zip(c0, c1, strict=True))
    return stops[-1][1]


def _rgb(c: tuple[int, ...]) -> str:
    return f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}"


def _text_colour(fill: str) -> str:
    r, g, b = (int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#111" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "#fff"


# ---------------------------------------------------------------------------------------------------------
# Labels


def _label_width(labels: Sequence[str], limit: int) -> float:
    return min(max((len(s) for s in labels), default=4), limit) * _CHAR_W


def _short_labels(labels: Sequence[str], limit: int) -> list[str]:
    """Labels of at most `limit` characters that keep apart what the full names tell apart.

    Fine-tune names often share a long start and end ("org/model-ft-task-3-lora-r64"): the cut goes into
    the shared part, so the part that differs stays visible.
    """
    if len(labels) < 2:
        return [_shorten(t, limit) for t in labels]
    prefix = _common_start(labels)
    suffix = _common_start([t[::-1] for t in labels])
    out = []
    for text in labels:
        if len(text) <= limit:
            out.append(text)
            continue
        p = min(prefix, len(text))
        s = min(suffix, len(text) - p)
        differing = len(text) - p - s
        # Keep one shared character before the differing part: "task-1-" and "task-11-" differ there.
        head = min((limit - 1) * 2 // 5, limit - 2 - differing - s)
        if head >= 1:  # one cut, inside the shared start
            out.append(text[:head] + "…" + text[len(text) - (limit - 1 - head) :])
        elif p + differing <= limit - 1:  # one cut, inside the shared end
            out.append(text[: limit - 1] + "…")
        else:
            out.append(_shorten(text, limit))
    return out


def _common_start(texts: Sequence[str]) -> int:
    n = 0
    for chars in zip(*texts, strict=False):
        if len(set(chars)) > 1:
            break
        n += 1
    return n


def _shorten(text: str, limit: int) -> str:
    """Cut the middle: fine-tune names often share a long prefix and differ near the end."""
    if len(text) <= limit:
        return text
    head = max((limit - 1) * 2 // 5, 1)
    tail = max(limit - 1 - head, 1)
    return text[:head] + "…" + text[-tail:]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)
