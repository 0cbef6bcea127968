"""The `soce run` recipe: candidates, suite, expert choice, weight search, output folder."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from soce.errors import RunRecipeError
from soce.schemas.merge import pydantic_error_message

# What the database can hold, for the inputs that end up in its columns (soce/db/models.py).
MAX_ROW_ID = 2**31 - 1  # every id is a PostgreSQL integer column
MAX_NAME_LENGTH = 255  # names and tags are String(255) columns
MAX_PATH_LENGTH = 4096  # Linux's PATH_MAX: no longer path can be opened
MAX_CANDIDATES = 1000  # candidates registered by one request, or named by one job


def refuse_nul(value: str) -> str:
    """`value` itself, or a ValueError: PostgreSQL's text and JSONB columns cannot hold NUL (\\x00)."""
    if "\x00" in value:
        raise ValueError("holds a NUL character (\\x00), which no stored text may hold")
    return value


StoredStr = Annotated[str, AfterValidator(refuse_nul)]
"""A string the database can store: no NUL character."""
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
"""The id of a stored row: what an id column can hold."""
PathStr = Annotated[StoredStr, Field(min_length=1, max_length=MAX_PATH_LENGTH)]
"""A file or folder path (or glob) on the server."""


class RunRecipe(BaseModel):
    """Everything `soce run` needs; relative paths are relative to the recipe file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StoredStr = Field(
        "soce-soup",
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description="name of the soup (model card, reports; a job's name)",
    )
    candidates: list[PathStr] = Field(min_length=1, description="checkpoint folders or glob patterns")
    suite: PathStr = Field(description="suite YAML (categories of lm-eval tasks)")
    evaluator: Literal["lm_eval"] = Field("lm_eval", description="the evaluator that runs trials")
    # 4096 short requests of a small model already need ~50 GB for their logits alone (64 tokens x a
    # 49k vocabulary in float32): no GPU holds a larger batch
    batch_size: int | None = Field(
        None, ge=1, le=4096, description="evaluation batch size [SOCE_EVAL_BATCH_SIZE]"
    )
    correlation: Literal["pearson", "spearman"] = "pearson"
    tau: float = Field(
        0.5, ge=-1, le=1, description="a category is weakly correlated when rho < tau with another"
    )
    absolute: bool = Field(False, description="use |rho| < tau (the paper's formula) instead of rho < tau")
    # a cap above the number of candidates a job can name would cap nothing
    max_experts: int | None = Field(None, ge=2, le=MAX_CANDIDATES)
    sampler: Literal["grid", "tpe", "cmaes", "nsga2", "learned"] = "tpe"
    # each trial is a full evaluation on a GPU (seconds to minutes), and TPE's cost per ask grows with
    # the trials told: 10,000 is days of GPU time, far past where a search over a few weights converges
    n_trials: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="default: the whole grid, 6 points of the learned path, or 40 for the other samplers",
    )
    # each step is a forward and backward pass over the search part of dev, about three evaluations
    learned_steps: int = Field(
        30, ge=1, le=1000, description="sampler learned: Adam steps on the mixing logits (early stop)"
    )
    learned_lr: float = Field(0.1, gt=0, le=10, description="sampler learned: Adam's learning rate")
    parallel_trials: int = Field(1, ge=1, le=64)
    space: Literal["simplex", "layerwise"] = "simplex"
    # the deepest open models have fewer than 128 blocks; more groups than blocks leave groups empty,
    # and each group adds a weight per expert to the search
    layer_groups: int = Field(2, ge=1, le=128, description="depth buckets of blocks for the layerwise space")
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
    ensemble: bool = Field(
        True,
        description="also score the output ensemble of the soup's ingredients on test, as a baseline "
        "(k forward passes per token for k ingredients)",
    )
    # the seed goes to numpy's legacy RandomState inside Optuna's samplers, which takes 0 <= seed < 2**32
    seed: int = Field(0, ge=0, lt=2**32)
    # each bootstrap holds an (iterations x examples) array per task (10,000 resamples of 1,000 examples
    # are 80 MB); at 10,000 the Monte Carlo error of a 95% interval's ends is under 1% of its width
    bootstrap_iterations: int = Field(2000, ge=100, le=10_000)
    confidence: float = Field(0.95, gt=0, lt=1)
    # each point is one dev evaluation at finalize (the merge is in place); 101 is t in steps of 0.01
    interpolation_points: int = Field(
        5,
        ge=0,
        le=101,
        description="points of the report's dev curve between the soup's two largest ingredients "
        "(both ends included); 0: no curve",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    output: PathStr = Field("soce-out", description="folder for the soup and its report")

    @model_validator(mode="after")
    def _consistent(self) -> RunRecipe:
        if self.sampler == "grid" and self.space == "layerwise":
            raise ValueError(
                "sampler grid searches one simplex of weights; use tpe, cmaes or nsga2 with space layerwise"
            )
        if self.sampler == "nsga2" and self.pruning:
            raise ValueError("pruning needs one objective; sampler nsga2 has one per category")
        if self.interpolation_points == 1:
            raise ValueError("interpolation_points: one point is no curve; give 0 (no curve) or 2 or more")
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
