"""Shared setup of the search benchmarks: a zoo's candidates scored on dev, experts, a resident soup."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def quiet() -> None:
    import logging

    for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ[var] = "1"
    for name in ("lm_eval", "datasets", "transformers", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)


def ensure_zoo(zoo: Path | None, size: str) -> Path:
    """ZOO if given, else the zoo `soce demo` uses (built once under the data folder)."""
    if zoo is not None:
        return zoo
    from workers.demo import ensure_zoo as build
    from workers.progress import Stages

    return build(size, 0, Stages())


def prepare(zoo: Path, *, max_experts: int | None, tau: float = 0.5):
    """(inputs, dev matrix, analysis, resident soup) for the zoo's candidates."""
    from soce.schemas.run import RunRecipe
    from workers.pipeline import analyse_step, open_run, score_step
    from workers.progress import Stages
    from workers.resident import ResidentSoup

    recipe = RunRecipe(
        candidates=[str(zoo / "candidates" / "*")],
        suite=str(zoo / "suite.yaml"),
        max_experts=max_experts,
        tau=tau,
        output="/dev/null",
    )
    inputs = open_run(recipe)
    dev = score_step(inputs, "dev", stages=Stages())
    analysis = analyse_step(dev, recipe)
    resident = ResidentSoup(
        {k: inputs.paths[k] for k in inputs.paths}, inputs.evaluator, inputs.suite, groups=recipe.layer_groups
    )
    return inputs, dev, analysis, resident
