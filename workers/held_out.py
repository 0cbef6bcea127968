"""What finalize scores on the held-out test split beside the soup: each contender and baseline with
its per-example samples, paired intervals between them, extra baselines from folders (a schedule's
champion), the output ensemble of the soup's ingredients, and the suite's summary columns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from optimizer.bootstrap import Interval, paired_bootstrap
from optimizer.space import SoupWeights
from soce.checkpoints import Checkpoint, check_compatibility
from soce.errors import EvaluationError, SoceError
from soce.schemas.scores import ScoreMatrix, SuiteScores, TaskScore
from soce.schemas.suite import SuiteSpec
from workers.pipeline import RunInputs
from workers.resident import ResidentSoup

log = logging.getLogger(__name__)


@dataclass
class Evaluated:
    tasks: dict[str, TaskScore]
    scores: SuiteScores

    @property
    def categories(self) -> dict[str, float]:
        return {c: s.value for c, s in self.scores.categories.items()}


def test_scores(
    resident: ResidentSoup,
    weights: SoupWeights,
    suite: SuiteSpec,
    label: str,
    *,
    engine: Engine | None = None,
) -> Evaluated:
    """A soup's test scores with per-example values (for the intervals), from the score cache if stored."""
    tasks = resident.cached_scores(weights, "test", samples=True, engine=engine)
    return Evaluated(
        tasks, SuiteScores.aggregate(suite, "test", candidate=label, evaluator="soup", tasks=tasks)
    )


def intervals(
    a: Evaluated, b: Evaluated, suite: SuiteSpec, *, iterations: int, level: float, seed: int
) -> Interval:
    structure = [(c.weight, [(t.name, t.weight) for t in c.tasks]) for c in suite.categories]
    for ev in (a, b):
        for t in suite.tasks:
            if ev.tasks[t.name].samples is None:
                raise EvaluationError(
                    f"task {t.name!r}: the evaluator gave no per-example scores for the interval"
                )
    return paired_bootstrap(
        {t: s.samples for t, s in a.tasks.items()},  # type: ignore[misc]
        {t: s.samples for t, s in b.tasks.items()},  # type: ignore[misc]
        structure,
        iterations=iterations,
        level=level,
        seed=seed,
    )


def own_interval(ev: Evaluated, suite: SuiteSpec, *, iterations: int, level: float, seed: int) -> Interval:
    """Bootstrap interval of one model's test average (its per-example scores against zeros, paired)."""
    zeros = Evaluated(
        {
            name: s.model_copy(update={"samples": [0.0] * len(s.samples or [])})
            for name, s in ev.tasks.items()
        },
        ev.scores,
    )
    return intervals(ev, zeros, suite, iterations=iterations, level=level, seed=seed)


@dataclass
class ExtraBaseline:
    """A model folder scored on test beside the soup (a schedule's champion): its scores, or why not."""

    name: str
    path: Path
    scored: Evaluated | None = None
    error: str | None = None


def extra_test_scores(inputs: RunInputs, name: str, folder: Path) -> ExtraBaseline:
    """Score `folder` on test with per-example scores, as baselines are; a problem is returned, not raised.

    The folder must be a checkpoint of the candidates' architecture (dtype may differ: a soup may be
    stored in another one). It is loaded on its own, scored, and released.
    """
    import gc

    folder = Path(folder).expanduser()
    try:
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such folder")
        first = next(iter(inputs.paths.values()))
        with Checkpoint.open(first) as candidate, Checkpoint.open(folder) as ckpt:
            report = check_compatibility([candidate, ckpt], same_dtype=False)
        if not report.ok:
            raise EvaluationError(
                f"{folder}: not the candidates' architecture ("
                + "; ".join(p.message for p in report.problems[:3])
                + ")"
            )
        model, tokenizer = inputs.evaluator.load_checkpoint(folder)
        try:
            tasks = inputs.evaluator.evaluate_model(model, tokenizer, inputs.suite, "test", samples=True)
        finally:
            del model
            gc.collect()
            _release_accelerator_memory()
    except SoceError as e:
        log.warning("extra baseline %s (%s) not scored: %s", name, folder, e)
        return ExtraBaseline(name, folder, error=str(e))
    except Exception as e:  # a broken folder must not fail the run that reports on it
        log.exception("extra baseline %s (%s) not scored", name, folder)
        return ExtraBaseline(name, folder, error=f"{type(e).__name__}: {e}")
    scores = SuiteScores.aggregate(inputs.suite, "test", candidate=name, evaluator="extra", tasks=tasks)
    return ExtraBaseline(name, folder, scored=Evaluated(tasks, scores))


def _release_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


ENSEMBLE_LABEL = "output ensemble of the soup's ingredients"


@dataclass
class EnsembleBaseline:
    """The output ensemble of the soup's ingredients on test: its scores, or why there are none."""

    members: list[str]
    scored: Evaluated | None = None
    note: str | None = None
    seconds: float = 0.0


def soup_ingredients(weights: SoupWeights) -> list[str]:
    """The experts a soup mixes: those with a nonzero weight (in any layer group, for a layer-wise soup)."""
    vectors = [weights.weights, *(weights.groups or {}).values()]
    return [e for i, e in enumerate(weights.experts) if any(v[i] > 0 for v in vectors)]


def ensemble_test_scores(
    resident: ResidentSoup, members: list[str], suite: SuiteSpec, *, enabled: bool, engine: Any = None
) -> EnsembleBaseline:
    """The output ensemble of `members` on test with per-example scores (evaluators.ensemble), or a note
    why not: the recipe turns it off, one ingredient (the ensemble is that model), or it failed (a
    problem is returned, never raised: the run reports on the soup either way)."""
    if not enabled:
        return EnsembleBaseline(members, note="the recipe turns the output ensemble off (ensemble: false)")
    if len(members) < 2:
        return EnsembleBaseline(
            members,
            note=f"the soup has one ingredient ({', '.join(members)}): its output ensemble is that model, "
            "so it is not scored",
        )
    started = time.perf_counter()
    try:
        tasks = resident.cached_ensemble_scores(members, "test", samples=True, engine=engine)
    except Exception as e:  # e.g. generation settings only model.generate does, or memory for k caches
        log.warning("the output ensemble of %s was not scored: %s", ", ".join(members), e)
        return EnsembleBaseline(members, note=f"the output ensemble was not scored: {e}")
    seconds = time.perf_counter() - started
    log.info("output ensemble of %d scored on test in %.2f s", len(members), seconds)
    scores = SuiteScores.aggregate(suite, "test", candidate="ensemble", evaluator="ensemble", tasks=tasks)
    return EnsembleBaseline(members, Evaluated(tasks, scores), seconds=seconds)


def ensemble_gain_kept(soup: float, best_single: float, ensemble: float) -> tuple[float | None, str | None]:
    """(soup - best single) / (ensemble - best single) on test averages, or None and why: the share of
    the ensemble's gain over the best single that the soup keeps (below 0: the soup is worse than the
    best single; above 1: it beats the ensemble)."""
    gain = ensemble - best_single
    if gain <= 0:
        return None, (
            f"the output ensemble ({ensemble:.4f}) does not beat the best single candidate "
            f"({best_single:.4f}) on the test average: it has no gain for the soup to keep"
        )
    return (soup - best_single) / gain, None


def suite_summaries(
    suite: SuiteSpec, candidates: ScoreMatrix, scored: Mapping[str, Evaluated]
) -> dict[str, dict[str, float | None]]:
    """The suite's summary columns on test: summary -> model -> value, for every candidate and every
    scored baseline and soup (each category's item count from the soup's test scores)."""
    if not suite.summaries:
        return {}
    first = next(iter(scored.values()), None)
    counts = {c: s.n for c, s in first.scores.categories.items()} if first else {}
    models = {
        name: dict(zip(candidates.categories, row, strict=True))
        for name, row in zip(candidates.candidates, candidates.values, strict=True)
    }
    models |= {name: ev.categories for name, ev in scored.items()}
    return {s.name: {m: s.value(v, counts) for m, v in models.items()} for s in suite.summaries}
