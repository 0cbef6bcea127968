"""The `external` evaluator: scores imported from a CSV or JSON file, as the SoCE paper took
candidates' scores from public leaderboards.

Each row (a CSV line, or an object in a JSON list or under "scores") has `candidate`, either `task`
or `category`, `score`, and optionally `stderr`, `n` and `split` (dev, test, or the suite's split
name; a row without one counts for every split). A candidate is matched by the name given on the
command line, by its folder's name, or by its path relative to the score file.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluators._base import Evaluator, Progress
from soce.errors import ScoreFileError
from soce.schemas.scores import CategoryScore, SuiteScores, TaskScore
from soce.schemas.suite import Split, SuiteSpec

REQUIRED = ("candidate", "score")
OPTIONAL = ("task", "category", "stderr", "n", "split")


@dataclass(frozen=True)
class ScoreRow:
    where: str  # "FILE, line 3" or "FILE, row 2": named in every error about this row
    candidate: str
    task: str | None
    category: str | None
    score: float
    stderr: float | None
    n: int | None
    split: str | None

    @property
    def target(self) -> tuple[str, str]:
        return ("task", self.task) if self.task else ("category", self.category or "")


def _number(raw: Any, where: str, name: str, *, integer: bool = False) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or (integer and (value != int(value) or value < 0)):
        kind = "a non-negative integer" if integer else "a finite number"
        raise ScoreFileError(f"{where}: field {name!r} is not {kind} ({raw!r})")
    return int(value) if integer else value


def _text(raw: Any) -> str | None:
    return (str(raw).strip() or None) if raw is not None else None


def _row(record: Any, where: str) -> ScoreRow:
    if not isinstance(record, dict):
        raise ScoreFileError(f"{where}: a score row is an object with fields {', '.join(REQUIRED)}")
    unknown = sorted(set(record) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ScoreFileError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    for name in REQUIRED:
        if _text(record.get(name)) is None:
            raise ScoreFileError(f"{where}: missing field {name!r}")
    task, category = _text(record.get("task")), _text(record.get("category"))
    if bool(task) == bool(category):
        raise ScoreFileError(f"{where}: give exactly one of the fields 'task' or 'category'")
    score = _number(record["score"], where, "score")
    return ScoreRow(
        where=where,
        candidate=str(_text(record["candidate"])),
        task=task,
        category=category,
        score=float(score),  # type: ignore[arg-type]
        stderr=_number(record.get("stderr"), where, "stderr"),
        n=_number(record.get("n"), where, "n", integer=True),  # type: ignore[arg-type]
        split=_text(record.get("split")),
    )


def read_score_file(path: Path) -> list[ScoreRow]:
    """Rows of a CSV or JSON score file; ScoreFileError names the file, row and field of a bad one."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScoreFileError(f"{path}: no such score file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreFileError(f"{path}: cannot be read ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScoreFileError(f"{path}: not valid JSON ({e})") from None
        records = data.get("scores") if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise ScoreFileError(f"{path}: expected a list of score rows (or an object with 'scores')")
        rows = [_row(r, f"{path}, row {i}") for i, r in enumerate(records, 1)]
    else:
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in columns]
        if "task" not in columns and "category" not in columns:
            missing.append("task or category")
        if missing:
            raise ScoreFileError(
                f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(columns) or 'none'})"
            )
        reader.fieldnames = columns
        rows = []
        for record in reader:
            if None in record:
                raise ScoreFileError(f"{path}, line {reader.line_num}: more values than columns")
            rows.append(_row(record, f"{path}, line {reader.line_num}"))
    if not rows:
        raise ScoreFileError(f"{path}: holds no score rows")
    seen: dict[tuple, ScoreRow] = {}
    for r in rows:
        key = (r.candidate, *r.target, r.split)
        if key in seen:
            raise ScoreFileError(
                f"{r.where}: duplicate score for {r.candidate!r} {r.target[0]} {r.target[1]!r} "
                f"(first given at {seen[key].where})"
            )
        seen[key] = r
    return rows


class ExternalScores(Evaluator):
    name = "external"
    summary = "scores imported from a CSV or JSON file (candidate, task or category, score, stderr, n)"

    def __init__(self, *, scores_file: str | Path | None = None) -> None:
        if scores_file is None:
            raise ScoreFileError("the external evaluator needs a score file (--scores FILE)")
        self.path = Path(scores_file)
        self.rows = read_score_file(self.path)

    def _check(self, suite: SuiteSpec) -> None:
        tasks, categories = {t.name for t in suite.tasks}, set(suite.category_names)
        splits = {"dev", "test", suite.dev_split, suite.test_split}
        for r in self.rows:
            kind, name = r.target
            if name not in (tasks if kind == "task" else categories):
                offered = ", ".join(sorted(tasks if kind == "task" else categories))
                raise ScoreFileError(
                    f"{r.where}: field {kind!r}: {name!r} is not a {kind} of suite {suite.name!r} "
                    f"(it has: {offered})"
                )
            if r.split is not None and r.split not in splits:
                raise ScoreFileError(
                    f"{r.where}: field 'split': {r.split!r} is none of {', '.join(sorted(splits))}"
                )

    def _matches(self, row: ScoreRow, candidate: str | Path) -> bool:
        given = Path(candidate)
        return row.candidate in (str(candidate), given.name) or (
            (self.path.parent / row.candidate).resolve() == given.resolve()
        )

    def score(
        self, candidate: str | Path, suite: SuiteSpec, split: Split, *, progress: Progress | None = None
    ) -> SuiteScores:
        self._check(suite)
        wanted = {split, suite.split_name(split), None}
        rows = [r for r in self.rows if r.split in wanted and self._matches(r, candidate)]
        if not rows:
            known = ", ".join(sorted({r.candidate for r in self.rows}))
            raise ScoreFileError(
                f"{self.path}: no {split} scores for candidate {str(candidate)!r} (it has: {known})"
            )
        by_target: dict[tuple[str, str], ScoreRow] = {}
        for r in rows:
            if r.target in by_target:
                raise ScoreFileError(
                    f"{r.where}: duplicate score for {str(candidate)!r} {r.target[0]} "
                    f"{r.target[1]!r} (also at {by_target[r.target].where})"
                )
            by_target[r.target] = r
        metric = {t.name: t.metric for t in suite.tasks}
        tasks = {
            name: TaskScore(task=name, metric=metric[name], value=r.score, stderr=r.stderr, n=r.n)
            for (kind, name), r in by_target.items()
            if kind == "task"
        }
        categories = {}
        for c in suite.categories:
            row = by_target.get(("category", c.name))
            given = [t.name for t in c.tasks if t.name in tasks]
            if row and given:
                raise ScoreFileError(
                    f"{row.where}: category {c.name!r} of {str(candidate)!r} is scored both "
                    f"directly and through its task(s) {', '.join(given)}"
                )
            if row:
                categories[c.name] = CategoryScore(
                    category=c.name, value=row.score, stderr=row.stderr, n=row.n
                )
            elif len(given) < len(c.tasks):
                missing = ", ".join(t.name for t in c.tasks if t.name not in tasks)
                raise ScoreFileError(
                    f"{self.path}: no {split} score for candidate {str(candidate)!r} in category "
                    f"{c.name!r} (neither the category nor its task(s) {missing})"
                )
        if progress:
            progress(len(suite.tasks))
        return SuiteScores.aggregate(
            suite, split, candidate=str(candidate), evaluator=self.name, tasks=tasks, categories=categories
        )
