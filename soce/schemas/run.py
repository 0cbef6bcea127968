"""The `soce run` recipe: candidates, suite, expert choice, weight search, output folder."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from soce.errors import RunRecipeError
from soce.schemas.merge import pydantic_error_message


class RunRecipe(BaseModel):
    """Everything `soce run` needs; relative paths are relative to the recipe file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("soce-soup", min_length=1, description="name of the soup (model card, reports)")
    candidates: list[str] = Field(min_length=1, description="checkpoint folders or glob patterns")
    suite: str = Field(min_length=1, description="suite YAML (categories of lm-eval tasks)")
    evaluator: Literal["lm_eval"] = Field("lm_eval", description="the evaluator that runs trials")
    batch_size: int | None = Field(None, ge=1, description="evaluation batch size [SOCE_EVAL_BATCH_SIZE]")
    correlation: Literal["pearson", "spearman"] = "pearson"
    tau: float = Field(
        0.5, ge=-1, le=1, description="a category is weakly correlated when rho < tau with another"
    )
    absolute: bool = Field(False, description="use |rho| < tau (the paper's formula) instead of rho < tau")
    max_experts: int | None = Field(None, ge=2)
    sampler: Literal["grid", "tpe", "cmaes", "nsga2"] = "tpe"
    n_trials: int | None = Field(
        None, ge=1, description="default: the whole grid, or 40 for the other samplers"
    )
    parallel_trials: int = Field(1, ge=1, le=64)
    space: Literal["simplex", "layerwise"] = "simplex"
    layer_groups: int = Field(2, ge=1, description="depth buckets of blocks for the layerwise space")
    pruning: bool = Field(False, description="score categories one at a time and stop hopeless trials")
    greedy_strict: bool = Field(False, description="greedy soup keeps a candidate only on a strict dev gain")
    include_best_single: bool = Field(
        True,
        description="the best single candidate by dev average joins the experts as an ingredient "
        "(false: the paper's experts-only pool)",
    )
    selection_fraction: float = Field(
        0.5,
        ge=0,
        le=0.9,
        description="share of each task's dev examples (chosen by a hash of the example) kept out of the "
        "search to choose the final model on; 0: choose on the examples the search maximised (the "
        "paper's way, biased towards the soup)",
    )
    selection_trials: int = Field(
        3, ge=1, le=20, description="the best trials compared on the selection part"
    )
    seed: int = 0
    bootstrap_iterations: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    output: str = Field("soce-out", min_length=1, description="folder for the soup and its report")

    @model_validator(mode="after")
    def _consistent(self) -> RunRecipe:
        if self.sampler == "grid" and self.space == "layerwise":
            raise ValueError(
                "sampler grid searches one simplex of weights; use tpe, cmaes or nsga2 with space layerwise"
            )
        if self.sampler == "nsga2" and self.pruning:
            raise ValueError("pruning needs one objective; sampler nsga2 has one per category")
        return self

    @classmethod
    def parse(cls, data: object, where: str = "") -> RunRecipe:
        if not isinstance(data, dict):
            raise RunRecipeError(f"{where}a run recipe is a YAML mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise RunRecipeError(pydantic_error_message(e, where)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> RunRecipe:
        """Load a recipe YAML; relative candidate, suite and output paths are resolved against its folder."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise RunRecipeError(f"{path}: no such recipe file") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunRecipeError(f"{path}: cannot be read as YAML ({first})") from None
        recipe = cls.parse(data, where=f"{path}: ")
        return recipe.relative_to(path.parent)

    def relative_to(self, folder: Path) -> RunRecipe:
        def ab(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (folder / q))

        return self.model_copy(
            update={
                "candidates": [ab(c) for c in self.candidates],
                "suite": ab(self.suite),
                "output": ab(self.output),
            }
        )

    def candidate_paths(self) -> list[Path]:
        """The candidate folders: each entry a folder, or a glob pattern matching folders (sorted)."""
        found: list[Path] = []
        for entry in self.candidates:
            if glob.has_magic(entry):
                matches = sorted(Path(p) for p in glob.glob(entry) if Path(p).is_dir())
                if not matches:
                    raise RunRecipeError(f"candidates: pattern {entry!r} matches no folder")
                found.extend(matches)
            else:
                p = Path(entry)
                if not p.is_dir():
                    raise RunRecipeError(f"candidates: {entry} is not a folder")
                found.append(p)
        resolved = [p.resolve() for p in found]
        dupes = sorted({str(p) for p in resolved if resolved.count(p) > 1})
        if dupes:
            raise RunRecipeError(f"candidates: {', '.join(dupes)} listed more than once")
        if len(resolved) < 2:
            raise RunRecipeError(
                f"candidates: a soup needs at least 2 checkpoints, the recipe gives {len(resolved)}"
            )
        return resolved
