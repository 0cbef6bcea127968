"""The one place evaluators are registered. Unknown names fail loudly."""

from __future__ import annotations

from typing import Any

from evaluators._base import Evaluator
from evaluators.external import ExternalScores
from evaluators.harness import LmEvalEvaluator
from soce.errors import EvaluationError

EVALUATORS: dict[str, type[Evaluator]] = {e.name: e for e in (LmEvalEvaluator, ExternalScores)}


def evaluator_class(name: str) -> type[Evaluator]:
    try:
        return EVALUATORS[name]
    except KeyError:
        raise EvaluationError(
            f"unknown evaluator {name!r}; available: {', '.join(sorted(EVALUATORS))}"
        ) from None


def build_evaluator(name: str, **options: Any) -> Evaluator:
    """An evaluator by registry name, with its keyword options (e.g. batch_size, scores_file)."""
    return evaluator_class(name)(**options)
