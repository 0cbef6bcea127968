"""Pydantic specs shared by the CLI, the API and the workers (no heavy imports here)."""

from soce.schemas.merge import Ingredient, MergeRecipe, parse_size, pydantic_error_message
from soce.schemas.schedule import (
    CandidateSource,
    PromotionPolicy,
    RecipeTemplate,
    ScheduleCreate,
    ScheduleUpdate,
)
from soce.schemas.scores import CategoryScore, ScoreMatrix, SuiteScores, TaskScore
from soce.schemas.suite import CategorySpec, Split, SuiteSpec, TaskSpec

__all__ = [
    "CandidateSource",
    "CategoryScore",
    "CategorySpec",
    "Ingredient",
    "MergeRecipe",
    "PromotionPolicy",
    "RecipeTemplate",
    "ScheduleCreate",
    "ScheduleUpdate",
    "ScoreMatrix",
    "Split",
    "SuiteScores",
    "SuiteSpec",
    "TaskScore",
    "TaskSpec",
    "parse_size",
    "pydantic_error_message",
]
