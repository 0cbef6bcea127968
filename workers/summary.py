"""The final table of a run: the verdict, then test scores of every candidate, the baselines and the soup."""

from __future__ import annotations

from soce.schemas.report import Interval, Report


def _ci(iv: Interval | None) -> str:
    if iv is None:
        return ""
    return f"{iv.diff * 100:+.1f} [{iv.low * 100:+.1f}, {iv.high * 100:+.1f}]"


def _points(value: float | None) -> str:
    return f"{value * 100:11.1f}" if value is not None else f"{'n/a':>11s}"


def ensemble_line(report: Report) -> str:
    """The soup against the output ensemble of its ingredients: the interval and the share of the
    ensemble's gain over the best single that the soup keeps, or why there is none."""
    soup = report.soup
    parts = []
    if (iv := soup.intervals.get("vs_ensemble")) is not None:
        parts.append(f"soup vs output ensemble {_ci(iv)}")
    if soup.ensemble_gain_kept is not None:
        parts.append(f"the soup keeps {100 * soup.ensemble_gain_kept:.0f}% of its gain over the best single")
    elif soup.ensemble_note:
        parts.append(soup.ensemble_note)
    return "; ".join(parts)


def result_table(report: Report) -> str:
    """The verdict line, then rows: candidates, best single, uniform soups, greedy, the soup (test split,
    in points), and why the final model was chosen."""
    cats = list(report.categories)
    summaries = report.summaries  # the suite's summary columns, after the average

    def extra(model: str) -> list[float | None]:
        return [values.get(model) for values in summaries.values()]

    experts = set(report.expert_candidates)
    rows: list[tuple[str, list[float | None], float | None, str, list[float | None]]] = []
    for cand in report.candidates:
        mark = " *" if cand in experts else ""
        scores = report.test_scores[cand]
        rows.append(
            (f"{cand}{mark}", [scores.get(c) for c in cats], report.test_average.get(cand), "", extra(cand))
        )
    soup = report.soup
    intervals = soup.intervals
    base_rows = [
        (b.label, [b.test.get(c) for c in cats], b.test_average, "", extra(name))
        for name, b in report.baselines.items()
    ]
    soup_name = "SoCE soup" + (f" ({soup.label})" if soup.label else "")
    if not soup.recommended:
        soup_name += ", not recommended"
    soup_row = (
        soup_name,
        [soup.test.get(c) for c in cats],
        soup.test_average,
        f"vs best single {_ci(intervals.get('vs_best_single'))}; "
        f"vs uniform {_ci(intervals.get('vs_uniform'))}",
        extra("soup"),
    )
    width = max(len(r[0]) for r in [*rows, *base_rows, soup_row]) + 1
    columns = [*cats, "average", *summaries]
    head = f"{'test split (points)':{width}s}" + "".join(f"{c[:10]:>11s}" for c in columns)
    lines = [f"verdict: {report.verdict}", "", head, "-" * len(head)]

    def fmt(r: tuple[str, list[float | None], float | None, str, list[float | None]]) -> str:
        line = f"{r[0]:{width}s}" + "".join(_points(v) for v in [*r[1], r[2], *r[4]])
        return f"{line}   {r[3]}" if r[3] else line

    lines += [fmt(r) for r in rows]
    lines.append("-" * len(head))
    lines += [fmt(r) for r in base_rows]
    lines.append(fmt(soup_row))
    level = next(iter(intervals.values())).level if intervals else report.recipe.confidence
    lines.append(
        "* ingredient (category expert or best single); intervals: soup minus baseline, paired bootstrap, "
        f"{round(100 * level)}%"
    )
    lines.append(f"why: {report.decision.reason}")
    if "ensemble" in report.baselines or soup.ensemble_note:
        lines.append(f"ensemble: {ensemble_line(report)}")
    return "\n".join(lines)
