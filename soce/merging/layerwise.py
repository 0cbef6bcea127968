"""Layer-wise soup: separate weights for the embeddings, depth buckets of blocks, final norm and head.

A tensor's weights come from the first `patterns` entry whose regular expression matches its
name, else from its group: `embed`, `blocks[g]` for block i of L with g = i * G // L, `norm`
or `head`; a group without weights (and any other tensor) uses the candidates' own weights.
With tied input and output embeddings there is no separate head tensor: `embed` sets both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from soce.errors import RecipeError
from soce.merging._base import MergeContext, MethodParams, coefficients, layer_index
from soce.merging.linear import Linear
from soce.schemas.merge import MergeRecipe

_EMBED = re.compile(r"(?:^|\.)(?:embed_tokens|wte|wpe|word_embeddings|embed_in|tok_embeddings)\.")
_HEAD = re.compile(r"^(?:lm_head|embed_out|output)\.")
_NORM = re.compile(r"(?:^|\.)(?:norm|ln_f|final_layernorm|final_layer_norm|final_norm)\.")


class PatternWeights(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: str
    weights: list[float]

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"{v!r} is not a regular expression ({e})") from None
        return v


class LayerwiseParams(MethodParams):
    groups: int = Field(1, ge=1, description="depth buckets G that the blocks are split into")
    embed: list[float] | None = None
    blocks: list[list[float]] | None = None
    norm: list[float] | None = None
    head: list[float] | None = None
    patterns: list[PatternWeights] = Field(default_factory=list)
    normalize: bool = True
    allow_negative_weights: bool = False


def tensor_group(name: str, num_layers: int, groups: int) -> str:
    """'embed', 'blocks[g]', 'norm', 'head' or 'other' for a tensor name."""
    layer = layer_index(name)
    if layer is not None:
        return f"blocks[{min(groups - 1, layer * groups // max(num_layers, 1))}]"
    if _HEAD.search(name):
        return "head"
    if _EMBED.search(name):
        return "embed"
    if _NORM.search(name):
        return "norm"
    return "other"


class Layerwise(Linear):
    name = "layerwise"
    summary = (
        "linear soup with separate weights for embeddings, G depth buckets of blocks, final norm and head"
    )
    Params = LayerwiseParams

    def __init__(self, recipe: MergeRecipe, context: MergeContext) -> None:
        super().__init__(recipe, context)
        p: LayerwiseParams = self.params  # type: ignore[assignment]
        n = len(recipe.candidates)

        def coeffs(values: Sequence[float], where: str) -> np.ndarray:
            if len(values) != n:
                raise RecipeError(
                    f"layerwise parameters.{where} has {len(values)} weights for {n} candidates"
                )
            return coefficients(
                values,
                labels=context.labels,
                normalize=p.normalize,
                allow_negative=p.allow_negative_weights,
                where=f"layerwise parameters.{where} weight",
            )

        self.group_coeffs: dict[str, np.ndarray] = {}
        for group in ("embed", "norm", "head"):
            values = getattr(p, group)
            if values is not None:
                self.group_coeffs[group] = coeffs(values, group)
        if p.blocks is not None:
            if len(p.blocks) != p.groups:
                raise RecipeError(
                    f"layerwise parameters.blocks has {len(p.blocks)} lists for groups: {p.groups}"
                )
            for g, values in enumerate(p.blocks):
                self.group_coeffs[f"blocks[{g}]"] = coeffs(values, f"blocks[{g}]")
        self.patterns = [
            (re.compile(pw.pattern), coeffs(pw.weights, f"patterns[{i}]")) for i, pw in enumerate(p.patterns)
        ]
        self.per_tensor = {name: self._resolve(name) for name in context.tensor_names}

    def _weights(self) -> list[float | None]:
        weights = [c.weight for c in self.recipe.candidates]
        if all(w is None for w in weights):
            return [1.0] * len(weights)  # groups without their own weights average uniformly
        return super()._weights()

    def _resolve(self, name: str) -> np.ndarray:
        for pattern, c in self.patterns:
            if pattern.search(name):
                return c
        group = tensor_group(name, self.context.num_layers, self.params.groups)  # type: ignore[attr-defined]
        return self.group_coeffs.get(group, self.coeffs)

    def coefficients_for(self, name: str) -> np.ndarray:
        try:
            return self.per_tensor[name]
        except KeyError:
            return self._resolve(name)

    def ingredient_weights(self) -> None:
        return None  # no single weight per ingredient; the card lists the groups instead

    def group_table(self) -> dict[str, list[float]]:
        table = {"default": [float(c) for c in self.coeffs]}
        table.update({g: [float(c) for c in v] for g, v in self.group_coeffs.items()})
        for i, (pattern, c) in enumerate(self.patterns):
            table[f"patterns[{i}] {pattern.pattern}"] = [float(x) for x in c]
        return table

    def mergekit_config(self, models: Sequence[str], base: str | None, dtype: str) -> dict[str, Any]:
        # mergekit picks the first filter that is a substring of the tensor name; full names,
        # longest first, select exactly one tensor each. Coefficients are already normalised.
        names = sorted(
            (n for n in self.context.tensor_names if self.per_tensor[n] is not self.coeffs),
            key=lambda n: (-len(n), n),
        )
        model_entries = []
        for i, m in enumerate(models):
            weight: list[dict[str, Any]] = [
                {"filter": n, "value": _short(self.per_tensor[n][i])} for n in names
            ]
            weight.append({"value": _short(self.coeffs[i])})
            model_entries.append({"model": m, "parameters": {"weight": weight}})
        return {
            "merge_method": "linear",
            "models": model_entries,
            "parameters": {"normalize": False},
            "dtype": "float32",
            "out_dtype": dtype,
        }


def _short(x: np.float32) -> float:
    # shortest decimal that rounds back to the same float32
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))
