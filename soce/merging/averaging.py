"""Averaging the checkpoints of one training run: the last k (SWA-style) or an EMA of them.

The checkpoints are put in training order (`order_by_step`), each setting gives every checkpoint a
weight in closed form, and the average is one streamed linear merge (`write_average`), written like
any soup: weights, config, tokenizer, model card and replayable recipes. With a suite, settings are
compared on dev in one resident model (`ResidentRun`) and the best is written.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from soce.checkpoints import Checkpoint, ensure_compatible
from soce.errors import CheckpointError, RecipeError
from soce.merging.soup import ProgressFactory, Soup, write_soup
from soce.schemas.merge import MergeRecipe
from soce.schemas.scores import SuiteScores
from soce.schemas.suite import SuiteSpec

log = logging.getLogger(__name__)

__all__ = [
    "SEARCH_DECAYS",
    "SEARCH_LAST",
    "AveragingSetting",
    "ResidentRun",
    "RunOrder",
    "averaging_recipe",
    "choose_setting",
    "ema_weights",
    "last_k_weights",
    "order_by_step",
    "search_settings",
    "write_average",
]

TRAINER_STATE = "trainer_state.json"  # written by the transformers Trainer into each checkpoint folder
# the settings compared on dev: the last 1, 2, 4 and all checkpoints, and EMAs. An EMA over saved
# checkpoints (not steps) has few terms, so useful decays are lower than per-step ones: with 0.9 and 5
# checkpoints the first still weighs 0.66.
SEARCH_LAST = (1, 2, 4)
SEARCH_DECAYS = (0.25, 0.5, 0.75, 0.9)
_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last number in a name: checkpoint-500, run2-step1000

OrderSource = Literal["trainer_state", "name", "given"]


# --- order -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOrder:
    """The checkpoints of a run in training order, their steps, and where the order came from."""

    checkpoints: tuple[Path, ...]
    steps: tuple[int | None, ...]
    source: OrderSource

    def describe(self) -> str:
        if self.source == "given":
            return "as given (no trainer_state.json global_step or step number in every folder name)"
        where = "the step in the folder name"
        if self.source == "trainer_state":
            where = f"{TRAINER_STATE} global_step"
        return f"by {where}: " + ", ".join(str(s) for s in self.steps)


def _state_step(folder: Path) -> int | None:
    path = folder / TRAINER_STATE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON ({e})") from None
    step = data.get("global_step") if isinstance(data, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: field 'global_step' is {step!r}, not a step number")
    return step


def _name_step(path: Path) -> int | None:
    m = _NUMBER.search(path.name if path.is_dir() else path.stem)
    return int(m.group(1)) if m else None


def order_by_step(paths: Sequence[Path | str]) -> RunOrder:
    """Order checkpoints by trainer_state.json's global_step when every folder has one, else by the
    number in every folder name (checkpoint-500), else keep the order given."""
    given = [Path(p) for p in paths]
    if len(given) < 2:
        raise RecipeError(
            f"averaging needs at least two checkpoints of one run, got {len(given)} "
            "(one checkpoint is its own average)"
        )
    seen: dict[Path, Path] = {}
    for p in given:
        key = p.expanduser().resolve()
        if key in seen:
            raise RecipeError(f"checkpoint {p} is listed twice")
        seen[key] = p
    for p in given:
        if not p.exists():
            raise CheckpointError(f"{p}: no such file or folder")
    candidates: list[tuple[OrderSource, list[int | None]]] = [
        ("trainer_state", [_state_step(p) if p.is_dir() else None for p in given]),
        ("name", [_name_step(p) for p in given]),
    ]
    for source, steps in candidates:
        if any(s is None for s in steps):
            continue
        by_step: dict[int, Path] = {}
        for p, s in zip(given, steps, strict=True):
            assert s is not None
            if s in by_step:
                raise RecipeError(
                    f"{by_step[s]} and {p} are both at step {s} "
                    f"(from {TRAINER_STATE if source == 'trainer_state' else 'their names'}); "
                    "average the checkpoints of one run, each once"
                )
            by_step[s] = p
        ordered = sorted(by_step)
        return RunOrder(tuple(by_step[s] for s in ordered), tuple(ordered), source)
    return RunOrder(tuple(given), tuple(None for _ in given), "given")


# --- weights ---------------------------------------------------------------------------------------
def last_k_weights(n: int, k: int) -> list[float]:
    """Uniform weights on the last k of n ordered checkpoints (stochastic weight averaging)."""
    if not 1 <= k <= n:
        raise RecipeError(f"--last {k}: choose k between 1 and the {n} checkpoints given")
    return [0.0] * (n - k) + [1.0 / k] * k


def ema_weights(n: int, decay: float) -> list[float]:
    """Per-checkpoint weights of theta_ema = decay * theta_ema + (1 - decay) * theta_t over n ordered
    checkpoints, started at the first: w_1 = decay^(n-1), w_t = (1 - decay) * decay^(n-t) for t > 1.
    They sum to 1."""
    if not (isinstance(decay, int | float) and math.isfinite(decay) and 0.0 < decay < 1.0):
        raise RecipeError(f"--ema {decay}: the decay must lie strictly between 0 and 1")
    if n < 1:
        raise RecipeError("an EMA needs at least one checkpoint")
    return [decay ** (n - 1)] + [(1.0 - decay) * decay ** (n - t) for t in range(2, n + 1)]


@dataclass(frozen=True)
class AveragingSetting:
    """One way to average a run: `last` k checkpoints uniformly, or an `ema` with a decay."""

    kind: Literal["last", "ema"]
    value: float  # k for last, the decay for ema

    @classmethod
    def last(cls, k: int) -> AveragingSetting:
        return cls("last", int(k))

    @classmethod
    def ema(cls, decay: float) -> AveragingSetting:
        return cls("ema", float(decay))

    @property
    def label(self) -> str:
        return f"last {int(self.value)}" if self.kind == "last" else f"ema {self.value:g}"

    def weights(self, n: int) -> list[float]:
        if self.kind == "last":
            return last_k_weights(n, int(self.value))
        return ema_weights(n, self.value)

    def describe(self, n: int) -> str:
        if self.kind == "last":
            k = int(self.value)
            return "the last checkpoint alone" if k == 1 else f"uniform average of the last {k} of {n}"
        return f"EMA with decay {self.value:g} over all {n}, started at the first"


def search_settings(n: int, extra: Sequence[AveragingSetting] = ()) -> list[AveragingSetting]:
    """The settings compared on dev for n checkpoints: last 1, 2, 4 and all, EMAs, and `extra`;
    settings giving the same weights are kept once (the first)."""
    settings = [
        *(AveragingSetting.last(k) for k in (*SEARCH_LAST, n) if k <= n),
        *(AveragingSetting.ema(d) for d in SEARCH_DECAYS),
        *extra,
    ]
    out: list[AveragingSetting] = []
    seen: set[tuple[float, ...]] = set()
    for s in settings:
        key = tuple(round(w, 12) for w in s.weights(n))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


# --- writing ---------------------------------------------------------------------------------------
def averaging_recipe(
    order: RunOrder, setting: AveragingSetting, *, dtype: str | None = None, name: str | None = None
) -> MergeRecipe:
    """The linear recipe of a setting: checkpoints with a non-zero weight, in training order.

    A linear soup has at least two ingredients, so the last checkpoint alone (last 1) is written as
    the soup of it (weight 1) and the one before (weight 0): the same tensors as the checkpoint.
    """
    n = len(order.checkpoints)
    weights = setting.weights(n)
    keep = [i for i, w in enumerate(weights) if w > 0]
    if len(keep) == 1:
        keep = [max(keep[0] - 1, 0), keep[0]] if keep[0] > 0 else [0, 1]
    return MergeRecipe(
        method="linear",
        candidates=[{"path": str(order.checkpoints[i]), "weight": weights[i]} for i in keep],
        dtype=dtype,
        name=name,
    )


def _card_section(
    order: RunOrder, setting: AveragingSetting, table: Sequence[tuple[AveragingSetting, SuiteScores]]
) -> str:
    n = len(order.checkpoints)
    weights = setting.weights(n)
    lines = [
        "",
        "## Checkpoint averaging",
        "",
        f"{n} checkpoints of one run, ordered {order.describe()}; averaged as {setting.describe(n)}.",
        "",
        "| # | checkpoint | step | weight |",
        "|---|---|---|---|",
    ]
    for i, (path, step, w) in enumerate(zip(order.checkpoints, order.steps, weights, strict=True), start=1):
        lines.append(f"| {i} | `{path}` | {'-' if step is None else step} | {w:.6g} |")
    if table:
        lines += [
            "",
            "Settings compared on dev (the chosen one's dev score is optimistic: dev chose it):",
            "",
            "| setting | dev average |",
            "|---|---|",
        ]
        for s, scores in table:
            mark = " (chosen)" if s == setting else ""
            lines.append(f"| {s.label}{mark} | {scores.average:.4f} |")
    return "\n".join(lines) + "\n"


def write_average(
    order: RunOrder,
    setting: AveragingSetting,
    out: str | Path,
    *,
    force: bool = False,
    dtype: str | None = None,
    progress: ProgressFactory | None = None,
    table: Sequence[tuple[AveragingSetting, SuiteScores]] = (),
) -> Soup:
    """Write the average of a setting at `out` with write_soup (same folder, card and recipes as
    `soce merge`); the card also lists the order, every checkpoint's weight and the dev table."""
    recipe = averaging_recipe(order, setting, dtype=dtype)
    chosen = next((scores for s, scores in table if s == setting), None)
    scores: dict[str, Any] | None = None
    if chosen is not None:
        scores = {
            f"dev ({setting.label}, chosen on dev)": {c: v.value for c, v in chosen.categories.items()},
            "dev average": chosen.average,
        }
    soup = write_soup(recipe, out, force=force, progress=progress, scores=scores)
    card = soup.path / "README.md"
    card.write_text(card.read_text() + _card_section(order, setting, table))
    return soup


# --- choosing on dev -------------------------------------------------------------------------------
Scorer = Callable[[Sequence[float]], SuiteScores]


def choose_setting(
    order: RunOrder, settings: Sequence[AveragingSetting], score: Scorer
) -> tuple[AveragingSetting, list[tuple[AveragingSetting, SuiteScores]]]:
    """Score every setting's average on dev with `score(weights)`; the best by dev average (the first
    listed among equals, so simpler settings win ties) and the whole table in the order given."""
    if not settings:
        raise RecipeError("no averaging settings to compare")
    n = len(order.checkpoints)
    table = [(s, score(s.weights(n))) for s in settings]
    best = max(range(len(table)), key=lambda i: (table[i][1].average, -i))
    return table[best][0], table


class ResidentRun:
    """Every checkpoint of a run resident, and one model that `merge_into` turns into any average of
    them in place, scored on dev by an evaluator with `load_checkpoint` and `evaluate_model` (lm_eval)."""

    def __init__(self, order: RunOrder, evaluator: Any, suite: SuiteSpec) -> None:
        from soce.merging.in_memory import load_experts

        for method in ("load_checkpoint", "evaluate_model"):
            if not callable(getattr(evaluator, method, None)):
                raise RecipeError(
                    f"evaluator {getattr(evaluator, 'name', evaluator)!r} cannot score an in-memory model "
                    "(it has no evaluate_model); choose settings with --evaluator lm_eval"
                )
        self.order = order
        self.evaluator = evaluator
        self.suite = suite
        ckpts = [Checkpoint.open(p) for p in order.checkpoints]
        try:
            ensure_compatible(ckpts)
            self.model, self.tokenizer = evaluator.load_checkpoint(order.checkpoints[-1])
            device = next(self.model.parameters()).device
            self.experts = load_experts(ckpts, device=device)
        finally:
            for c in ckpts:
                c.close()

    def __call__(self, weights: Sequence[float]) -> SuiteScores:
        from soce.merging.in_memory import merge_into

        merge_into(self.model, self.experts, list(weights))
        tasks = self.evaluator.evaluate_model(self.model, self.tokenizer, self.suite, "dev")
        return SuiteScores.aggregate(
            self.suite,
            "dev",
            candidate=str(self.order.checkpoints[-1].parent),
            evaluator=getattr(self.evaluator, "name", "evaluator"),
            tasks=tasks,
        )
