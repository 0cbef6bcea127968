"""Reports and a page parser for the report tests: realistic report.json data of any size.

`make_report` builds what a run writes: its data validates as `soce.schemas.report.Report` and is
returned as `Report.as_json()` gives it (report.json's content), so it cannot drift from the schema.
Its parts agree with one another as the run's steps make them: correlations and experts on the search
part of dev, the best single candidate by dev average, the contenders and the chosen model on the
selection part, the verdict as `workers.finalize.verdict_line` words it.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Literal

from soce.schemas.report import Report
from soce.schemas.run import RunRecipe

VOID_TAGS = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"}
LAYER_GROUPS = ("embed", "blocks[0]", "blocks[1]", "norm", "head")  # a layerwise space, layer_groups=2
MIN_CANDIDATES = 4  # below this the run warns that correlations mean little
TAU, MAX_EXPERTS, LEVEL, ITERATIONS, FRACTION = 0.3, 3, 0.95, 2000, 0.5

Scores = dict[str, dict[str, float]]


def verdict_line(decision: dict[str, Any]) -> str:
    """The verdict as workers.finalize.verdict_line words it (a test checks they agree)."""
    if decision["kind"] == "soup":
        iv = decision["vs_best_single"]
        return (
            f"use the soup: {100 * iv['diff']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}] "
            f"over {decision['best_single']} on test"
        )
    where = "the selection split" if decision["selection_fraction"] else "dev (no selection split)"
    return f"keep {decision['name']}: no soup beat it on {where}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's r, None with fewer than 3 points or a constant side (as optimizer.correlation)."""
    if len(x) < 3:
        return None
    mx, my = _mean(x), _mean(y)
    dx, dy = [v - mx for v in x], [v - my for v in y]
    sx, sy = math.sqrt(sum(v * v for v in dx)), math.sqrt(sum(v * v for v in dy))
    if sx <= 1e-12 or sy <= 1e-12:
        return None
    return max(-1.0, min(1.0, sum(a * b for a, b in zip(dx, dy, strict=True)) / (sx * sy)))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def _correlation(candidates: list[str], categories: list[str], scores: Scores) -> dict[str, Any]:
    """The analyse step's correlations (method pearson, rho < tau) on the search part of dev."""
    cols = {k: [scores[c][k] for c in candidates] for k in categories}

    def table(fn: Any) -> dict[str, dict[str, float | None]]:
        return {
            a: {
                b: (1.0 if fn(cols[a], cols[a]) is not None else None) if a == b else fn(cols[a], cols[b])
                for b in categories
            }
            for a in categories
        }

    pearson = table(_pearson)
    spearman = table(lambda x, y: _pearson(_ranks(x), _ranks(y)))
    warnings = []
    if len(candidates) < MIN_CANDIDATES:
        warnings.append(
            f"only {len(candidates)} candidate(s): correlations between categories across fewer than "
            f"{MIN_CANDIDATES} candidates mean little; experts are still chosen per category"
        )
    constant = [k for k in categories if max(cols[k]) - min(cols[k]) <= 1e-12]
    warnings += [f"category {k!r} has the same score for every candidate: it has no expert" for k in constant]
    weak, reasons = [], []
    for a in categories:
        partners = [
            (b, pearson[a][b])
            for b in categories
            if b != a and pearson[a][b] is not None and pearson[a][b] < TAU
        ]
        if a not in constant and partners:
            weak.append(a)
            low = min(partners, key=lambda p: p[1])
            reasons.append(f"{a} (rho={low[1]:+.2f} with {low[0]})")
    rule = f"rho < {TAU:g}"
    explanation = (
        f"Pearson correlation across {len(candidates)} candidates; a category is weakly correlated when "
        f"{rule} with some other category: " + ", ".join(reasons) + "."
        if weak
        else f"Pearson correlation across {len(candidates)} candidates: no pair of categories has {rule}, "
        "so no category is weakly correlated."
    )
    return {
        "method": "pearson",
        "pearson": pearson,
        "spearman": spearman,
        "tau": TAU,
        "absolute": False,
        "weak_categories": weak,
        "constant_categories": constant,
        "explanation": explanation,
        "warnings": warnings,
    }


def _experts(
    candidates: list[str],
    scores: Scores,
    averages: dict[str, float],
    weak: list[str],
    best: str,
    best_average: float,
) -> tuple[list[dict[str, Any]], list[str], bool, list[str]]:
    """The experts of the weak categories (max_experts 3, a fallback under 2) and the best single:
    (choices, ingredients, fallback, warnings), as optimizer.experts chooses them."""
    order = {c: i for i, c in enumerate(candidates)}
    choices: list[dict[str, Any]] = []
    warnings: list[str] = []
    for cat in weak:
        ranked = sorted(candidates, key=lambda c: (-scores[c][cat], -averages[c], order[c]))
        top, second = ranked[0], ranked[1]
        margin = scores[top][cat] - scores[second][cat]
        if margin:
            reason = (
                f"best in {cat} at {scores[top][cat]:.4f}, {margin:+.4f} ahead of {second} "
                f"({scores[second][cat]:.4f})"
            )
        else:
            why = "for its higher dev average" if averages[top] > averages[second] else "as listed first"
            reason = f"tied best in {cat} at {scores[top][cat]:.4f} with {second}; chosen {why}"
        choice = dict(category=cat, candidate=top, score=scores[top][cat], runner_up=second)
        choices.append({**choice, "runner_up_score": scores[second][cat], "margin": margin, "reason": reason})
    distinct = list(dict.fromkeys(ch["candidate"] for ch in choices))
    if len(distinct) > MAX_EXPERTS:
        keep = sorted(distinct, key=lambda c: (-averages[c], order[c]))[:MAX_EXPERTS]
        dropped = [c for c in distinct if c not in keep]
        warnings.append(
            f"{len(distinct)} experts, more than max_experts={MAX_EXPERTS}: kept the best by dev average, "
            f"dropped {', '.join(dropped)}"
        )
        distinct = [c for c in distinct if c in keep]
    fallback = len(distinct) < 2
    if fallback:
        ranked = sorted(candidates, key=lambda c: (-averages[c], order[c]))
        top = ranked[: max(2, min(3, len(ranked)))]
        warnings.append(
            f"{len(distinct)} distinct expert(s) from the weakly correlated categories; the soup falls back "
            f"to the top {len(top)} candidates by dev average"
        )
        for k, c in enumerate(top):
            choices.append(
                dict(category=None, candidate=c, score=averages[c], runner_up=None, runner_up_score=None)
                | {"margin": None, "reason": f"#{k + 1} by dev average"}
            )
        distinct = top
    if best in distinct:
        reason = f"also the best single candidate by dev average ({best_average:.4f})"
    else:
        reason = (
            f"the best single candidate by dev average ({best_average:.4f}), expert in no weakly correlated "
            "category: an ingredient so that the searched weights contain it"
        )
        distinct = [*distinct, best]
    choices.append(
        dict(category=None, candidate=best, score=best_average, runner_up=None, runner_up_score=None)
        | {"margin": None, "reason": reason}
    )
    return choices, distinct, fallback, warnings


def make_report(
    n_candidates: int,
    n_categories: int,
    n_trials: int,
    *,
    seed: int = 0,
    candidate_names: list[str] | None = None,
    layer_weights: bool = False,
    kind: Literal["soup", "single"] = "soup",
) -> dict[str, Any]:
    """A realistic report.json (validated as a `Report`): scores near 0.6, three experts at most plus
    the best single candidate, a search history with pruned, failed and reused trials.

    kind: "soup" chooses the best trial's soup; "single" keeps the best single candidate, no soup
    passing on the selection part (the best soup is then written, not recommended).
    layer_weights: a layerwise search space, so the trials and the soup have weights per layer group.
    n_candidates >= 2 and n_trials >= 1: a run needs two candidates and ends with a finished trial.
    With three categories or more the second one has the same score for every candidate on dev.
    """
    rng = random.Random(seed)
    candidates = list(candidate_names or [f"llama-3.1-8b-ft-{i:02d}" for i in range(n_candidates)])
    n_candidates = len(candidates)
    if n_candidates < 2 or n_categories < 1 or n_trials < 1:
        raise ValueError("a run has 2 candidates or more, a category or more, and a finished trial")
    categories = [f"category_{k}_{'multi_turn' if k % 3 == 0 else 'live'}" for k in range(n_categories)]
    constant = categories[1] if n_categories >= 3 else None

    def score(shift: float = 0.0) -> float:
        return round(rng.uniform(0.45, 0.8) + shift, 4)

    def average(scores: dict[str, float]) -> float:
        return sum(scores[k] for k in categories) / n_categories

    # --- scores: dev's search and selection parts, all of dev, test ---------------------------------
    search_s = {c: {k: 0.9 if k == constant else score() for k in categories} for c in candidates}
    select_s = {c: {k: 0.9 if k == constant else score() for k in categories} for c in candidates}
    dev = {c: {k: (search_s[c][k] + select_s[c][k]) / 2 for k in categories} for c in candidates}
    test = {c: {k: 0.9 if k == constant else score(-0.02) for k in categories} for c in candidates}
    search_avg, select_avg = ({c: average(s[c]) for c in candidates} for s in (search_s, select_s))
    dev_avg, test_avg = ({c: average(s[c]) for c in candidates} for s in (dev, test))
    order = {c: i for i, c in enumerate(candidates)}
    best = min(candidates, key=lambda c: (-dev_avg[c], order[c]))

    # --- analyse ------------------------------------------------------------------------------------
    correlation = _correlation(candidates, categories, search_s)
    experts, ingredients, fallback, expert_warnings = _experts(
        candidates, search_s, search_avg, correlation["weak_categories"], best, dev_avg[best]
    )

    # --- search -------------------------------------------------------------------------------------
    def simplex(names: list[str]) -> dict[str, float]:
        raw = [rng.uniform(0.05, 1.0) for _ in names]
        return {n: w / sum(raw) for n, w in zip(names, raw, strict=True)}

    def trial_weights() -> dict[str, Any]:
        if not layer_weights:
            return {"weights": simplex(ingredients), "layer_weights": None}
        groups = {g: simplex(ingredients) for g in LAYER_GROUPS}
        mean = {n: sum(groups[g][n] for g in LAYER_GROUPS) / len(LAYER_GROUPS) for n in ingredients}
        return {"weights": mean, "layer_weights": groups}

    history: list[dict[str, Any]] = []
    best_so_far: float | None = None
    for number in range(n_trials):
        state = rng.choice(["COMPLETE"] * 6 + ["PRUNED"] * 2 + ["FAIL"])
        if state == "PRUNED" and (best_so_far is None or n_categories == 1):
            state = "COMPLETE"  # pruning needs a best trial to fall behind, and a category left to score
        if best_so_far is None and number == n_trials - 1:
            state = "COMPLETE"  # a finished search has a complete trial
        done = [t for t in history if t["state"] == "COMPLETE" and t["evaluated"]]
        if state == "COMPLETE" and done and rng.random() < 0.08:  # weights tried before: reused
            earlier = rng.choice(done)
            trial = {k: earlier[k] for k in ("weights", "layer_weights", "category_scores", "objective")}
            trial |= {"evaluated": False, "timings": {"total": round(rng.uniform(0.001, 0.01), 4)}}
        else:
            trial = trial_weights()
            cats = {k: round(rng.uniform(0.5, 0.8), 4) for k in categories}
            if state == "PRUNED":  # scored one category at a time, stopped when it could not win
                cats = dict(list(cats.items())[: rng.randint(1, n_categories - 1)])
            elif state == "FAIL":  # an evaluation error, from an earlier attempt of the run
                cats = {}
            merge, evaluate = round(rng.uniform(0.5, 3.0), 3), round(rng.uniform(20, 90), 3)
            timings = {"merge": merge, "evaluate": evaluate, "total": round(merge + evaluate + 0.01, 3)}
            trial |= {
                "category_scores": cats,
                "objective": average(cats) if state == "COMPLETE" else None,
                "evaluated": True,
                "timings": timings if cats else {},
            }
        if state == "COMPLETE":
            best_so_far = trial["objective"] if best_so_far is None else max(best_so_far, trial["objective"])
        history.append({"number": number, "state": state, **trial, "best_so_far": best_so_far})
    complete = [t for t in history if t["state"] == "COMPLETE"]
    top_trial = max(complete, key=lambda t: (t["objective"], -t["number"]))
    finished = sum(t["state"] in ("COMPLETE", "PRUNED") for t in history)
    study = f"soce-tpe-{rng.getrandbits(64):016x}"

    # --- baselines on dev's search part, and their test scores ----------------------------------------
    def uniform(names: list[str]) -> dict[str, float]:
        return {n: 1 / len(names) for n in names}

    def test_result(shift: float) -> dict[str, float]:  # a soup on test: near the best single, or above
        return {k: round(min(1.0, test[best][k] + rng.uniform(-0.03, 0.05) + shift), 4) for k in categories}

    by_avg = sorted(candidates, key=lambda c: (-search_avg[c], order[c]))
    steps, members, objective = [], [], None
    for c in by_avg:  # greedy soup: add the next best candidate if the soup's dev average does not drop
        value = search_avg[c] if not members else round(objective + rng.uniform(-0.02, 0.03), 4)
        kept = objective is None or value >= objective
        steps.append({"candidate": c, "objective": value, "kept": kept})
        if kept:
            members, objective = [*members, c], value
    baseline_data = {
        "best_single": (f"best single ({best})", [best], {best: 1.0}, search_avg[best], test[best]),
        "uniform": ("uniform soup (all)", candidates, uniform(candidates), score(0.05), test_result(0.0)),
        "uniform_experts": (
            "uniform soup (ingredients)",
            ingredients,
            uniform(ingredients),
            score(0.08),
            test_result(0.02),
        ),
        "greedy": ("greedy soup", members, uniform(members), objective, test_result(0.01)),
    }
    baselines = {
        name: {
            "label": label,
            "members": list(names),
            "weights": weights,
            "dev_average": dev_average,
            "test": dict(scores),
            "test_average": average(scores),
            **({"steps": steps, "evaluations": len(steps) - 1} if name == "greedy" else {}),
        }
        for name, (label, names, weights, dev_average, scores) in baseline_data.items()
    }

    # --- select: contenders on dev's selection part -------------------------------------------------
    top_trials = sorted(complete, key=lambda t: (-t["objective"], t["number"]))[:3]
    contenders: dict[str, dict[str, Any]] = {}
    test_of: dict[str, dict[str, float]] = {}
    seen: set[tuple] = set()

    def add(
        name: str,
        label: str,
        weights: dict[str, Any],
        search_average: float | None,
        trial: int | None,
        scores: dict[str, float],
    ) -> None:
        key = (
            tuple((e, round(w, 12)) for e, w in weights["weights"].items() if w > 0),
            tuple(sorted((g, tuple(v.values())) for g, v in (weights["layer_weights"] or {}).items())),
        )
        if key not in seen:  # a contender with the weights of a simpler one is compared once
            seen.add(key)
            contenders[name] = {
                "name": name,
                "label": label,
                "kind": "single" if name == "best_single" else "soup",
                "search_average": search_average,
                "trial": trial,
                **weights,
            }
            test_of[name] = scores

    for name, b in baselines.items():
        add(
            name,
            b["label"],
            {"weights": b["weights"], "layer_weights": None},
            b["dev_average"],
            None,
            b["test"],
        )
    chosen_soup = f"trial_{top_trial['number']}"  # the best trial: first of the top trials, never a dupe
    for t in top_trials:
        weights = {"weights": t["weights"], "layer_weights": t["layer_weights"]}
        add(
            f"trial_{t['number']}",
            f"trial {t['number']}",
            weights,
            t["objective"],
            t["number"],
            test_result(0.04 if kind == "soup" and f"trial_{t['number']}" == chosen_soup else 0.0),
        )
    reference = select_avg[best]
    for name, c in contenders.items():
        if name == "best_single":
            c.update(average=reference, diff=0.0, low=0.0, passed=False)
            continue
        # the best trial is the best soup on the selection part: it passes unless kind is "single"
        gain = rng.uniform(0.01, 0.04) if name == chosen_soup else rng.uniform(-0.02, 0.008)
        if kind == "soup":
            low = gain * rng.uniform(0.3, 0.8) if name == chosen_soup else gain - rng.uniform(0.005, 0.03)
        else:
            low = gain - rng.uniform(0.045, 0.06)
        c.update(average=reference + gain, diff=gain, low=low, passed=low > 0 and gain > 0)
    soups = [c for c in contenders.values() if c["kind"] == "soup"]
    best_soup = max(soups, key=lambda c: c["average"])
    pct = f"{round(100 * LEVEL)}%"
    ref = contenders["best_single"]
    if kind == "soup":
        chosen = best_soup
        reason = (
            f"{chosen['label']} is ahead of {ref['label']} on the selection part by "
            f"{100 * chosen['diff']:+.1f} points (simultaneous {pct} lower bound {100 * chosen['low']:+.1f} "
            f"over the {len(soups)} soup(s) compared)"
        )
    else:
        chosen = ref
        reason = (
            f"no soup beat {ref['label']} on the selection part: the best, {best_soup['label']}, is "
            f"{100 * best_soup['diff']:+.1f} points with a simultaneous {pct} lower bound of "
            f"{100 * best_soup['low']:+.1f}"
        )
    for name, c in contenders.items():
        c["test_average"] = average(test_of[name])
    selection = {
        "chosen": chosen["name"],
        "kind": kind,
        "reference": "best_single",
        "best_soup": best_soup["name"],
        "level": LEVEL,
        "iterations": ITERATIONS,
        "min_gain": 0.0,
        "reason": reason,
        "contenders": list(contenders.values()),
        "fraction": FRACTION,
    }

    # --- finalize: the soup written, its test intervals, the decision --------------------------------
    written = best_soup
    soup_test = test_of[written["name"]]
    soup_avg = average(soup_test)

    def interval(diff: float, half: float) -> dict[str, Any]:
        return {
            "diff": diff,
            "low": diff - half,
            "high": diff + half,
            "level": LEVEL,
            "iterations": ITERATIONS,
        }

    intervals = {
        f"vs_{name}": interval(soup_avg - b["test_average"], rng.uniform(0.008, 0.03))
        for name, b in baselines.items()
    }
    recipe = RunRecipe(
        name="bfcl-v3-soup",
        candidates=[f"/data/candidates/{c}" for c in candidates],
        suite="/data/suites/bfcl-v3.yaml",
        tau=TAU,
        max_experts=MAX_EXPERTS,
        n_trials=finished,
        space="layerwise" if layer_weights else "simplex",
        pruning=True,
        selection_fraction=FRACTION,
        bootstrap_iterations=ITERATIONS,
        confidence=LEVEL,
        dtype="bfloat16",
        output="/data/soups/bfcl-v3/job-17",
    )
    soup_path = f"{recipe.output}/soup"
    decision = {
        "kind": kind,
        "name": recipe.name if kind == "soup" else best,
        "source": chosen["label"],
        "model": soup_path if kind == "soup" else recipe.candidates[order[best]],
        "test_average": soup_avg if kind == "soup" else test_avg[best],
        "vs_best_single": intervals["vs_best_single"] if kind == "soup" else interval(0.0, 0.0),
        "best_single": best,
        "reason": reason,
        "selection_fraction": FRACTION,
    }
    data: dict[str, Any] = {
        "verdict": verdict_line(decision),
        "decision": decision,
        "name": recipe.name,
        "suite": "bfcl-v3",
        "created": "2025-11-22T11:00:00+00:00",
        "soce_version": "0.1.0",
        "recipe": recipe.model_dump(mode="json"),
        "candidates": candidates,
        "candidate_paths": dict(zip(candidates, recipe.candidates, strict=True)),
        "categories": categories,
        "dev_scores": dev,
        "dev_average": dev_avg,
        "dev_parts": {
            "search_scores": search_s,
            "search_average": search_avg,
            "select_scores": select_s,
            "select_average": select_avg,
        },
        "test_scores": test,
        "test_average": test_avg,
        "correlation": correlation,
        "experts": experts,
        "expert_candidates": ingredients,
        "experts_fallback": fallback,
        "best_single": best,
        "weights": written["weights"],
        "layer_weights": written["layer_weights"],
        "search": {
            "study": study,
            "sampler": recipe.sampler,
            "space": recipe.space,
            "n_trials": finished,
            "evaluations": sum(t["evaluated"] and bool(t["category_scores"]) for t in history),
            "best_dev_objective": top_trial["objective"],
            "best_trial": top_trial["number"],
            "history": history,
        },
        "selection": selection,
        "baselines": baselines,
        "baselines_not_scored": {},
        "soup": {
            "path": soup_path,
            "source": written["name"],
            "label": written["label"],
            "recommended": kind == "soup",
            "method": "layerwise" if written["layer_weights"] else "linear",
            "dtype": "bfloat16",
            "dev_average": written["search_average"],
            "selection_average": written["average"],
            "test": soup_test,
            "test_average": soup_avg,
            "test_average_interval": (soup_avg - 0.015, soup_avg + 0.015),
            "test_average_from_disk": soup_avg,
            "intervals": intervals,
        },
        "seconds": {"score": 1840.2, "analyse": 0.01, "baselines": 412.7, "search": 5213.9, "select": 388.4},
        "warnings": [*correlation["warnings"], *expert_warnings],
    }
    return Report.model_validate(data).as_json()


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
