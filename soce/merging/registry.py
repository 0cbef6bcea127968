"""The one place merge methods are registered. Unknown names fail loudly."""

from __future__ import annotations

from soce.errors import UnknownMergeMethodError
from soce.merging._base import MergeContext, MergeMethod
from soce.merging.dare import Dare
from soce.merging.layerwise import Layerwise
from soce.merging.linear import Linear
from soce.merging.task_arithmetic import TaskArithmetic
from soce.merging.ties import Ties
from soce.merging.uniform import Uniform
from soce.schemas.merge import MergeRecipe

METHODS: dict[str, type[MergeMethod]] = {
    m.name: m for m in (Linear, Uniform, Layerwise, TaskArithmetic, Ties, Dare)
}


def method_class(name: str) -> type[MergeMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMergeMethodError(
            f"unknown merge method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None


def build_method(recipe: MergeRecipe, context: MergeContext) -> MergeMethod:
    """The configured method for a recipe; RecipeError names any bad parameter."""
    return method_class(recipe.method)(recipe, context)
