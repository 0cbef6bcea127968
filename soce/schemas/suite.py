"""A benchmark suite: categories of lm-eval tasks, each with a metric, and which split is dev or test."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from soce.errors import SuiteError
from soce.schemas.merge import pydantic_error_message

Split = Literal["dev", "test"]
PartName = Literal["search", "select"]


def example_position(example: object) -> float:
    """Where an example falls in [0, 1): a hash of its content, so the same example always lands there.

    It depends on the example alone (not on its row number or on the other examples), so a rerun, a
    reordered file or added examples keep every example in its part.
    """
    digest = hashlib.sha256(
        json.dumps(example, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class DevPart(BaseModel):
    """One part of the dev split's examples: `select` holds those whose position is below `fraction`.

    The search maximises on the `search` part; the final model is chosen on the `select` part, which
    nothing before that choice has seen.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: PartName
    fraction: float = Field(gt=0, lt=1, description="share of each task's dev examples in the select part")

    def holds(self, example: object) -> bool:
        inside = example_position(example) < self.fraction
        return inside if self.name == "select" else not inside

    @property
    def key(self) -> str:
        return f"{self.name}@{self.fraction:g}"

    @property
    def label(self) -> str:
        return f"dev {self.name} part"


class TaskSpec(BaseModel):
    """One lm-eval task and the metric key read from its results (e.g. 'acc,none')."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="lm-eval task name")
    metric: str = Field("acc,none", min_length=1, description="key in lm-eval's results for this task")
    weight: float = Field(1.0, gt=0, description="weight of this task in its category's mean")


class CategorySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    tasks: list[TaskSpec]
    weight: float = Field(1.0, gt=0, description="weight of this category in the overall objective")

    @model_validator(mode="after")
    def _not_empty(self) -> CategorySpec:
        if not self.tasks:
            raise ValueError(f"category {self.name!r} has no tasks")
        return self


class SummarySpec(BaseModel):
    """A named average over some categories, reported beside them (a leaderboard's summary columns,
    e.g. BFCL's "Non-Live AST" or "Live" accuracy): the plain mean of the category scores, or the mean
    weighted by each category's item count (`by_items`, as BFCL's live summary is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    categories: list[str] = Field(min_length=1)
    by_items: bool = Field(False, description="weight each category by its number of scored items")

    def value(self, scores: Mapping[str, float], counts: Mapping[str, int | None]) -> float | None:
        """The summary of one model's category `scores` (None when a category has no score, or by_items
        and a count is missing); `counts` are the categories' numbers of scored items."""
        values = [scores.get(c) for c in self.categories]
        if any(v is None for v in values):
            return None
        weights = [counts.get(c) if self.by_items else 1 for c in self.categories]
        if any(not w for w in weights):
            return None
        return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)  # type: ignore[operator,misc,arg-type]


class SuiteSpec(BaseModel):
    """Categories of tasks; `dev_split` is used to choose anything, `test_split` only to report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    include_path: str | None = Field(
        None, description="folder of lm-eval task YAMLs (relative to the suite file)"
    )
    dev_split: str = Field("validation", description="dataset split name used as dev")
    test_split: str = Field("test", description="dataset split name held out for reporting")
    limit: int | None = Field(None, gt=0, description="evaluate at most this many examples per task")
    num_fewshot: int = Field(0, ge=0)
    seed: int = 1234
    apply_chat_template: bool = Field(
        False,
        description="render each prompt with the model's own chat template (lm_eval --apply_chat_template)",
    )
    categories: list[CategorySpec]
    summaries: list[SummarySpec] = Field(
        default_factory=list, description="named averages over categories, reported beside them"
    )

    @model_validator(mode="after")
    def _consistent(self) -> SuiteSpec:
        if not self.categories:
            raise ValueError("a suite needs at least one category")
        seen: set[str] = set()
        for c in self.categories:
            if c.name in seen:
                raise ValueError(f"category name {c.name!r} is used twice")
            seen.add(c.name)
        owner: dict[str, str] = {}
        for c in self.categories:
            for t in c.tasks:
                if t.name in owner:
                    raise ValueError(f"task {t.name!r} appears twice (in {owner[t.name]!r} and {c.name!r})")
                owner[t.name] = c.name
        for summary in self.summaries:
            unknown = [c for c in summary.categories if c not in seen]
            if unknown:
                raise ValueError(
                    f"summary {summary.name!r} names unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                    f"{', '.join(map(repr, unknown))}"
                )
        if self.dev_split == self.test_split:
            raise ValueError(
                f"dev_split and test_split are both {self.dev_split!r}; the test split must be held out"
            )
        return self

    @property
    def tasks(self) -> list[TaskSpec]:
        return [t for c in self.categories for t in c.tasks]

    @property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def split_name(self, split: Split) -> str:
        return self.dev_split if split == "dev" else self.test_split

    def category_of(self, task: str) -> str:
        for c in self.categories:
            if any(t.name == task for t in c.tasks):
                return c.name
        raise KeyError(task)

    @classmethod
    def from_file(cls, path: str | Path) -> SuiteSpec:
        """Load a suite YAML; a relative include_path is resolved against the file's folder."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SuiteError(f"{path}: no such suite file") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise SuiteError(f"{path}: cannot be read as YAML ({_why_unreadable(e)})") from None
        if not isinstance(data, dict):
            raise SuiteError(f"{path}: a suite is a YAML mapping")
        if data.get("include_path"):
            inc = Path(str(data["include_path"])).expanduser()
            data["include_path"] = str(inc if inc.is_absolute() else (path.parent / inc).resolve())
        return cls.parse(data, where=f"{path}: ")

    @classmethod
    def parse(cls, data: dict, where: str = "") -> SuiteSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SuiteError(where + pydantic_error_message(e)) from None


def _why_unreadable(error: Exception) -> str:
    """Why a file could not be read as YAML, by position only: YAML's own messages can quote the file."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text at byte {error.start}"
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}"
    return "invalid YAML"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_hash(data: object) -> str:
    return hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()
