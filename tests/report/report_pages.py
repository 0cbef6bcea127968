"""Reports and a page parser for the report tests: realistic report.json data of any size."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

VOID_TAGS = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"}


def make_report(
    n_candidates: int,
    n_categories: int,
    n_trials: int,
    *,
    seed: int = 0,
    candidate_names: list[str] | None = None,
    layer_weights: bool = False,
) -> dict[str, Any]:
    """A realistic report.json: scores near 0.6, three experts at most, a search history with pruning."""
    rng = random.Random(seed)
    candidates = candidate_names or [f"llama-3.1-8b-ft-{i:02d}" for i in range(n_candidates)]
    categories = [f"category_{k}_{'multi_turn' if k % 3 == 0 else 'live'}" for k in range(n_categories)]

    def matrix(shift: float) -> dict[str, dict[str, float]]:
        return {c: {k: round(rng.uniform(0.45, 0.8) + shift, 4) for k in categories} for c in candidates}

    dev, test = matrix(0.0), matrix(-0.02)
    dev_avg = {c: sum(dev[c].values()) / n_categories for c in candidates}
    test_avg = {c: sum(test[c].values()) / n_categories for c in candidates}
    pearson = {
        a: {b: 1.0 if a == b else round(rng.uniform(-0.6, 0.95), 3) for b in categories} for a in categories
    }
    spearman = {
        a: {b: 1.0 if a == b else round(rng.uniform(-0.6, 0.95), 3) for b in categories} for a in categories
    }
    if n_categories >= 3:  # a constant column gives no correlation
        pearson[categories[1]][categories[2]] = pearson[categories[2]][categories[1]] = None
    weak = categories[: min(3, n_categories)] if n_categories > 1 else []
    experts, expert_names = [], []
    for cat in weak or categories[:1]:
        ranked = sorted(candidates, key=lambda c: -dev[c][cat])
        runner = ranked[1] if len(ranked) > 1 else None
        experts.append(
            {
                "category": cat,
                "candidate": ranked[0],
                "score": dev[ranked[0]][cat],
                "runner_up": runner,
                "runner_up_score": dev[runner][cat] if runner else None,
                "margin": dev[ranked[0]][cat] - dev[runner][cat] if runner else None,
                "reason": "best dev score in a weakly correlated category",
            }
        )
        if ranked[0] not in expert_names:
            expert_names.append(ranked[0])
    raw = [rng.uniform(0.1, 1.0) for _ in expert_names]
    weights = {name: w / sum(raw) for name, w in zip(expert_names, raw, strict=True)}
    history, best = [], None
    for number in range(n_trials):
        state = rng.choice(["COMPLETE"] * 6 + ["PRUNED"] * 2 + ["FAIL"])
        objective = None if state == "FAIL" else round(rng.uniform(0.55, 0.72), 4)
        if state == "COMPLETE":
            best = objective if best is None else max(best, objective)
        history.append(
            {
                "number": number,
                "state": state,
                "objective": objective,
                "best_so_far": best,
                "weights": dict(weights),
                "category_scores": {k: rng.uniform(0.5, 0.8) for k in categories},
            }
        )
    best_trial = next(
        (t["number"] for t in history if t["state"] == "COMPLETE" and t["objective"] == best), None
    )

    def result(label: str, members: list[str], shift: float) -> dict[str, Any]:
        scores = {k: round(rng.uniform(0.5, 0.75) + shift, 4) for k in categories}
        return {
            "label": label,
            "members": members,
            "dev_average": round(rng.uniform(0.55, 0.75), 4),
            "test": scores,
            "test_average": sum(scores.values()) / n_categories,
        }

    soup = result("soup", expert_names, 0.03)
    soup_test = soup.pop("test_average")
    baselines = {
        "best_single": result("best single (dev)", [max(candidates, key=dev_avg.get)], 0.0),
        "uniform": result("uniform soup", candidates, -0.01),
        "uniform_experts": result("uniform soup of experts", expert_names, 0.0),
        "greedy": result("greedy soup", candidates[:2], 0.01),
    }

    def interval(baseline: float) -> dict[str, float]:
        diff = soup_test - baseline
        return {"diff": diff, "low": diff - 0.025, "high": diff + 0.025, "level": 0.95}

    report: dict[str, Any] = {
        "suite": "bfcl-v3",
        "created": "2025-11-22T11:00:00+00:00",
        "soce_version": "0.1.0",
        "candidates": candidates,
        "categories": categories,
        "dev_scores": dev,
        "dev_average": dev_avg,
        "test_scores": test,
        "test_average": test_avg,
        "correlation": {
            "pearson": pearson,
            "spearman": spearman,
            "tau": 0.3,
            "absolute": False,
            "weak_categories": weak,
            "explanation": "tau = 0.3: categories whose scores move apart across candidates get an expert.",
            "warnings": ["only 3 candidates: correlations are noisy"] if n_candidates <= 3 else [],
        },
        "experts": experts,
        "weights": weights,
        "search": {
            "sampler": "tpe",
            "space": "simplex",
            "n_trials": n_trials,
            "evaluations": n_trials + n_candidates * n_categories,
            "best_dev_objective": best,
            "best_trial": best_trial,
            "history": history,
        },
        "baselines": baselines,
        "soup": {
            "path": "/data/soups/bfcl-v3/job-17/soup",
            "dev_average": soup["dev_average"],
            "test": soup["test"],
            "test_average": soup_test,
            "intervals": {
                "vs_best_single": interval(baselines["best_single"]["test_average"]),
                "vs_uniform": interval(baselines["uniform"]["test_average"]),
            },
        },
        "warnings": ["the soup's test average is within the interval of the best single candidate"],
    }
    if layer_weights:
        report["layer_weights"] = {
            group: {name: 1 / len(expert_names) for name in expert_names}
            for group in ("embeddings", "blocks_0_7", "blocks_8_15", "head")
        }
    return report


@dataclass
class Chart:
    name: str
    width: int
    height: int
    tags: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


class Page(HTMLParser):
    """Parses the page, checks that every element is closed in order, and collects the charts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.charts: list[Chart] = []
        self.in_svg = False
        self.links: list[str] = []
        self.text_parts: list[str] = []
        self.tags: Counter = Counter()
        self.feed(text)
        self.close()
        if self.stack:
            self.problems.append(f"unclosed: {self.stack}")

    @property
    def text(self) -> str:
        return " ".join(self.text_parts)

    def chart(self, name: str) -> Chart:
        found = [c for c in self.charts if c.name == name]
        assert len(found) == 1, f"{len(found)} charts named {name!r}"
        return found[0]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]} at {self.getpos()}")
            return
        self.stack.pop()
        if tag == "svg":
            self.in_svg = False

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self.in_svg and self.stack[-1] == "text":
            self.charts[-1].texts.append(data)

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        self.links += [values[k] for k in ("src", "href", "xlink:href", "action") if k in values]
        if tag == "svg":
            assert not self.in_svg, "nested svg"
            self.in_svg = True
            size = (int(values["width"]), int(values["height"]))
            self.charts.append(Chart(values.get("data-chart", ""), *size))
        elif self.in_svg:
            chart = self.charts[-1]
            chart.tags[tag] += 1
            chart.elements.append((tag, values))
            for cls in values.get("class", "").split():
                chart.classes[cls] += 1
