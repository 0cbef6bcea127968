"""What every merge method is: a small class over float32 numpy arrays, built from a recipe."""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from soce.errors import RecipeError
from soce.schemas.merge import MergeRecipe, pydantic_error_message

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


@dataclass(frozen=True)
class MergeContext:
    """Facts about the candidates a method may need: tensor names and the number of blocks."""

    tensor_names: tuple[str, ...]
    num_layers: int
    labels: tuple[str, ...]  # one per candidate, for messages (usually its path)


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to, from names like model.layers.7.mlp.up_proj.weight."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def count_layers(tensor_names: Sequence[str], config: dict[str, Any] | None) -> int:
    from_names = max((i for n in tensor_names if (i := layer_index(n)) is not None), default=-1) + 1
    from_config = (config or {}).get("num_hidden_layers")
    return int(from_config) if isinstance(from_config, int) and from_config >= from_names else from_names


class MethodParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def coefficients(
    weights: Sequence[float | None],
    *,
    labels: Sequence[str],
    normalize: bool,
    allow_negative: bool,
    where: str = "weight",
) -> np.ndarray:
    """Validated float32 coefficients; normalised to sum to 1 when asked.

    Both the on-disk and the in-memory merge use these exact float32 values, which is what
    makes their outputs identical bit for bit.
    """
    if any(w is None for w in weights):
        missing = [labels[i] for i, w in enumerate(weights) if w is None]
        raise RecipeError(f"{where} missing for candidate(s): {', '.join(missing)}")
    values = [float(w) for w in weights]  # type: ignore[arg-type]
    for label, w in zip(labels, values, strict=True):
        if not math.isfinite(w):
            raise RecipeError(f"{where} of candidate {label} is {w}; weights must be finite numbers")
        if w < 0 and not allow_negative:
            raise RecipeError(
                f"{where} of candidate {label} is {w}; negative weights extrapolate rather than average "
                "(set parameters.allow_negative_weights: true to allow them)"
            )
    total = math.fsum(values)
    if all(w == 0 for w in values):
        raise RecipeError(f"every {where} is zero; a soup needs at least one non-zero weight")
    if normalize:
        if abs(total) < 1e-12:
            raise RecipeError(f"{where}s sum to {total}; they cannot be normalised to sum to 1")
        values = [w / total for w in values]
    return np.array(values, dtype=np.float32)


def weighted_sum(tensors: Sequence[np.ndarray], coeffs: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = sum_i coeffs[i] * tensors[i] in float32, one multiply then one add per input.

    Separate multiply and add (no fused multiply-add) so torch gives the same bits. The
    inputs are scratch and get overwritten.
    """
    np.multiply(tensors[0], coeffs[0], out=out)
    for t, c in zip(tensors[1:], coeffs[1:], strict=True):
        np.multiply(t, c, out=t)
        np.add(out, t, out=out)
    return out


class MergeMethod(ABC):
    """A merge method. Subclasses set the class facts and implement `merge`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_base: ClassVar[bool] = False
    min_candidates: ClassVar[int] = 2
    # True when an output element depends only on the same element of the inputs, so the
    # engine may stream tensors in chunks; False gives `merge` whole tensors.
    elementwise: ClassVar[bool] = True

    def __init__(self, recipe: MergeRecipe, context: MergeContext) -> None:
        self.recipe = recipe
        self.context = context
        try:
            self.params = self.Params(**recipe.parameters)
        except ValidationError as e:
            raise RecipeError(pydantic_error_message(e, where=f"{self.name} parameters.")) from None
        n = len(recipe.candidates)
        if n < self.min_candidates:
            raise RecipeError(
                f"method {self.name!r} needs at least {self.min_candidates} candidates, got {n}"
                + (" (a soup of one model is that model)" if self.min_candidates == 2 else "")
            )
        if self.needs_base and recipe.base is None:
            raise RecipeError(f"method {self.name!r} needs a base model: set 'base' to its folder")
        if not self.needs_base and recipe.base is not None:
            raise RecipeError(f"method {self.name!r} does not use a base model; remove 'base'")

    @abstractmethod
    def merge(self, name: str, tensors: list[np.ndarray], base: np.ndarray | None, out: np.ndarray) -> None:
        """Write the merged float32 values of tensor `name` (or a chunk of it) into `out`.

        `tensors` and `base` are float32 scratch arrays of out's shape and may be overwritten.
        """

    def ingredient_weights(self) -> dict[str, float] | None:
        """Per-candidate scalar weights for the model card, when the method has them."""
        return None

    def mergekit_config(self, models: Sequence[str], base: str | None, dtype: str) -> dict[str, Any] | None:
        """A mergekit-yaml config that reproduces this soup, or None when mergekit has no equivalent."""
        return None
