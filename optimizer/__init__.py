"""The decisions: correlations, category experts, weight search, greedy soup, intervals, the final choice.

Evaluation reaches this package as a callable; it never imports evaluators, Celery or the database.
"""

from optimizer.bootstrap import Interval, paired_bootstrap
from optimizer.correlation import Correlation, analyse_correlation
from optimizer.experts import ExpertChoice, Experts, choose_experts
from optimizer.greedy import GreedySoup, greedy_soup
from optimizer.learned import LearnedPath, LearnedSettings
from optimizer.records import Scored, SearchResult, TrialRecord
from optimizer.samplers import SAMPLERS, SearchConfig
from optimizer.search import WeightSearch
from optimizer.space import SearchSpace, SoupWeights, grid_points, stick_breaking

__all__ = [
    "SAMPLERS",
    "Correlation",
    "ExpertChoice",
    "Experts",
    "GreedySoup",
    "Interval",
    "LearnedPath",
    "LearnedSettings",
    "Scored",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "SoupWeights",
    "TrialRecord",
    "WeightSearch",
    "analyse_correlation",
    "choose_experts",
    "greedy_soup",
    "grid_points",
    "paired_bootstrap",
    "stick_breaking",
]
