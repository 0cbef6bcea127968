"""The final table of a run: the verdict, then test scores of every candidate, the baselines and the soup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _ci(iv: Mapping[str, float] | None) -> str:
    if not iv:
        return ""
    return f"{iv['diff'] * 100:+.1f} [{iv['low'] * 100:+.1f}, {iv['high'] * 100:+.1f}]"


def result_table(report: Mapping[str, Any]) -> str:
    """The verdict line, then rows: candidates, best single, uniform soups, greedy, the soup (test split,
    in points), and why the final model was chosen."""
    cats = list(report["categories"])
    experts = set(report.get("expert_candidates", []))
    rows: list[tuple[str, list[float], float, str]] = []
    for cand in report["candidates"]:
        mark = " *" if cand in experts else ""
        rows.append(
            (
                f"{cand}{mark}",
                [report["test_scores"][cand][c] for c in cats],
                report["test_average"][cand],
                "",
            )
        )
    intervals = report["soup"].get("intervals", {})
    base_rows = []
    for _name, b in report["baselines"].items():
        base_rows.append((b["label"], [b["test"][c] for c in cats], b["test_average"], ""))
    soup = report["soup"]
    soup_name = "SoCE soup" + (f" ({soup['label']})" if soup.get("label") else "")
    if soup.get("recommended") is False:
        soup_name += ", not recommended"
    soup_row = (
        soup_name,
        [soup["test"][c] for c in cats],
        soup["test_average"],
        f"vs best single {_ci(intervals.get('vs_best_single'))}; "
        f"vs uniform {_ci(intervals.get('vs_uniform'))}",
    )
    width = max(len(r[0]) for r in [*rows, *base_rows, soup_row]) + 1
    head = f"{'test split (points)':{width}s}" + "".join(f"{c[:10]:>11s}" for c in [*cats, "average"])
    lines = [f"verdict: {report['verdict']}", ""] if report.get("verdict") else []
    lines += [head, "-" * len(head)]

    def fmt(r: tuple[str, list[float], float, str]) -> str:
        line = f"{r[0]:{width}s}" + "".join(f"{v * 100:11.1f}" for v in [*r[1], r[2]])
        return f"{line}   {r[3]}" if r[3] else line

    lines += [fmt(r) for r in rows]
    lines.append("-" * len(head))
    lines += [fmt(r) for r in base_rows]
    lines.append(fmt(soup_row))
    lines.append(
        "* ingredient (category expert or best single); intervals: soup minus baseline, paired bootstrap, "
        f"{round(100 * next(iter(intervals.values()), {}).get('level', 0.95))}%"
    )
    decision = report.get("decision")
    if decision:
        lines.append(f"why: {decision['reason']}")
    return "\n".join(lines)
