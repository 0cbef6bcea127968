"""Scoring backends behind one interface: lm-eval in-process, and scores imported from files."""

from evaluators._base import Evaluator, Progress, TaskEvaluator
from evaluators.external import ExternalScores, read_score_file
from evaluators.harness import LmEvalEvaluator, apply_offline_environment
from evaluators.registry import EVALUATORS, build_evaluator, evaluator_class

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "ExternalScores",
    "LmEvalEvaluator",
    "Progress",
    "TaskEvaluator",
    "apply_offline_environment",
    "build_evaluator",
    "evaluator_class",
    "read_score_file",
]
