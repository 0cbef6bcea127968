"""Pydantic specs shared by the CLI, the API and the workers (no heavy imports here)."""

from soce.schemas.merge import Ingredient, MergeRecipe, parse_size, pydantic_error_message

__all__ = ["Ingredient", "MergeRecipe", "parse_size", "pydantic_error_message"]
