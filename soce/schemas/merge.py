"""The merge recipe: which candidates, which method, which weights, which output dtype."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(value: int | str) -> int:
    """Bytes from 5000000, '5GB' (decimal) or '2GiB' (binary)."""
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size; write e.g. 5GB, 500MB or 2GiB")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


def pydantic_error_message(err: ValidationError, where: str = "") -> str:
    """One line per problem, each naming the field path."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{where}{loc}: {e['msg']}")
    return "; ".join(lines)


class Ingredient(BaseModel):
    """One candidate of a soup, with its weight (and density for TIES/DARE) when the method uses them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    weight: float | None = None
    density: float | None = Field(None, gt=0, le=1)


class MergeRecipe(BaseModel):
    """Our merge recipe; `soce merge` also accepts mergekit's YAML and converts it to this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = "linear"
    candidates: list[Ingredient] = Field(min_length=1)
    base: str | None = Field(None, description="base model folder, for task_arithmetic, ties and dare")
    parameters: dict[str, Any] = Field(default_factory=dict, description="method parameters")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="output dtype; default: the candidates' own"
    )
    shard_size: int = Field(5 * 10**9, description="largest output shard, bytes (or '5GB', '2GiB')")
    allow_pickle: bool = False
    name: str | None = Field(None, description="model name for the card")
    base_model_id: str | None = Field(
        None, description="hub id of the base model, for the card's front matter"
    )

    @field_validator("candidates", mode="before")
    @classmethod
    def _paths_as_ingredients(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"path": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("shard_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)

    @model_validator(mode="after")
    def _distinct(self) -> MergeRecipe:
        seen: set[str] = set()
        for c in self.candidates:
            if c.path in seen:
                raise ValueError(f"candidate {c.path!r} is listed twice")
            seen.add(c.path)
        return self
