"""The `external` evaluator: scores imported from CSV or JSON files, as the SoCE paper took
candidates' scores from public leaderboards.

A file of score rows (a CSV line, or an object in a JSON list or under "scores") gives `candidate`,
either `task` or `category`, `score`, and optionally `stderr`, `n` and `split` (dev, test, or the suite's
split name; a row without one counts for every split). A CSV with a model column and neither `candidate`
nor `score` is a leaderboard table (BFCL's data_overall.csv, ...), read by evaluators.leaderboard into
such rows, without a split. Several files may be given together. A candidate is matched by the name
given on the command line, by its folder's name, or by its path relative to the score file.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evaluators._base import Evaluator, Progress
from evaluators.leaderboard import (
    LeaderboardScores,
    LeaderboardTable,
    is_leaderboard,
    leaderboard_scores,
    model_column_of,
    read_leaderboard,
    read_text,
)
from soce.errors import ScoreFileError
from soce.schemas.scores import CategoryScore, SuiteScores, TaskScore
from soce.schemas.suite import Split, SuiteSpec

log = logging.getLogger(__name__)

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
    source: Path | None = None  # the file it came from: a candidate's path is relative to its folder

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
    text = read_text(path)
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
            wide = model_column_of(columns) is not None
            hint = "; a leaderboard table? name its model column with --model-column" if wide else ""
            raise ScoreFileError(
                f"{path}: missing column(s) {', '.join(missing)} "
                f"(columns: {', '.join(columns) or 'none'}){hint}"
            )
        reader.fieldnames = columns
        rows = []
        for record in reader:
            if None in record:
                raise ScoreFileError(f"{path}, line {reader.line_num}: more values than columns")
            rows.append(_row(record, f"{path}, line {reader.line_num}"))
    rows = [replace(r, source=path) for r in rows]
    if not rows:
        raise ScoreFileError(f"{path}: holds no score rows")
    refuse_duplicates(rows)
    return rows


def refuse_duplicates(rows: Sequence[ScoreRow]) -> None:
    """ScoreFileError at the second score for one (candidate, task or category, split)."""
    seen: dict[tuple, ScoreRow] = {}
    for r in rows:
        key = (r.candidate, *r.target, r.split)
        if key in seen:
            raise ScoreFileError(
                f"{r.where}: duplicate score for {r.candidate!r} {r.target[0]} {r.target[1]!r} "
                f"(first given at {seen[key].where})"
            )
        seen[key] = r


class ExternalScores(Evaluator):
    name = "external"
    summary = (
        "scores imported from files: score rows (candidate, task or category, score, stderr, n) or "
        "leaderboard tables (a model column and a column per category)"
    )

    def __init__(
        self,
        *,
        scores_file: str | Path | Sequence[str | Path] | None = None,
        columns: Mapping[str, str] | None = None,
        model_column: str | None = None,
    ) -> None:
        """scores_file: one file or several; columns: {header: category} for leaderboard tables, beside
        the built-in BFCL mapping; model_column: read every CSV as a leaderboard with this model column."""
        files = [scores_file] if isinstance(scores_file, str | Path) else list(scores_file or [])
        if not files:
            raise ScoreFileError("the external evaluator needs a score file (--scores FILE)")
        self.paths = [Path(f) for f in files]
        self.path = self.paths[0]
        self.rows: list[ScoreRow] = []  # score rows; a leaderboard's rows depend on the suite
        self.tables: list[LeaderboardTable] = []
        for path in self.paths:
            if is_leaderboard(path, model_column=model_column):
                self.tables.append(read_leaderboard(path, model_column=model_column))
            else:
                self.rows.extend(read_score_file(path))
        refuse_duplicates(self.rows)  # across the files
        self.columns = dict(columns or {})
        if self.columns and not self.tables:
            raise ScoreFileError(
                f"{', '.join(map(str, self.paths))}: column mappings are for leaderboard tables (a model "
                "column and a column per category); these files hold score rows"
            )
        if self.tables:
            log.warning(
                "%s: a leaderboard has no dev or test split; its scores count for both, so test scores "
                "from it are not held out",
                ", ".join(str(t.path) for t in self.tables),
            )
        self._boards: dict[tuple[str, ...], tuple[LeaderboardScores, list[ScoreRow]]] = {}
        self._resolved: dict[tuple[Path, str], Path] = {}

    def _board(self, suite: SuiteSpec) -> tuple[LeaderboardScores, list[ScoreRow]] | None:
        """The tables read for the categories of `suite` that no score row names, and their rows."""
        if not self.tables:
            return None
        suite_tasks = {t.name for t in suite.tasks}
        named = {r.category for r in self.rows if r.category}
        named |= {suite.category_of(r.task) for r in self.rows if r.task and r.task in suite_tasks}
        wanted = tuple(c for c in suite.category_names if c not in named)
        if wanted not in self._boards:
            board = leaderboard_scores(self.tables, wanted, columns=self.columns)
            rows = [
                ScoreRow(s.where, s.candidate, None, s.category, s.score, None, None, None, s.source)
                for s in board.scores
            ]
            self._boards[wanted] = (board, rows)
        return self._boards[wanted]

    def leaderboard(self, suite: SuiteSpec) -> LeaderboardScores | None:
        """The leaderboard tables read for `suite`, or None without tables."""
        got = self._board(suite)
        return got[0] if got else None

    def _all_rows(self, suite: SuiteSpec) -> list[ScoreRow]:
        got = self._board(suite)
        return self.rows + (got[1] if got else [])

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

    def _matching(self, rows: Sequence[ScoreRow], candidate: str | Path) -> list[ScoreRow]:
        """The rows of `candidate`: by its name, its folder's name, or its path from the score file."""
        given = Path(candidate)
        names, target = {str(candidate), given.name}, given.resolve()
        found = []
        for r in rows:
            key = ((r.source or self.path).parent, r.candidate)
            if key not in self._resolved:  # a leaderboard repeats each name once per category
                self._resolved[key] = (key[0] / key[1]).resolve()
            if r.candidate in names or self._resolved[key] == target:
                found.append(r)
        return found

    def candidates(self, suite: SuiteSpec, split: Split) -> tuple[list[str], dict[str, str]]:
        """Every candidate the files name, in order: those scored in every category of `suite` on
        `split`, and the others, each with what it lacks."""
        self._check(suite)
        rows = self._all_rows(suite)
        wanted = {split, suite.split_name(split), None}
        board = self.leaderboard(suite)
        names = list(dict.fromkeys([r.candidate for r in self.rows] + (board.candidates if board else [])))
        have: dict[str, set[tuple[str, str]]] = {n: set() for n in names}
        for r in rows:
            if r.split in wanted:
                have[r.candidate].add(r.target)
        complete, lacking = [], {}
        for name in names:
            gaps = [
                c.name
                for c in suite.categories
                if ("category", c.name) not in have[name]
                and not all(("task", t.name) in have[name] for t in c.tasks)
            ]
            if gaps:
                where = {c: board.missing[(name, c)] for c in gaps if board and (name, c) in board.missing}
                lacking[name] = "no score in " + ", ".join(
                    f"{c} (N/A at {where[c]})" if c in where else c for c in gaps
                )
            else:
                complete.append(name)
        return complete, lacking

    def _unknown(self, candidate: str | Path, split: Split, known: Sequence[str]) -> ScoreFileError:
        files = ", ".join(map(str, self.paths))
        if len(known) <= 10:
            return ScoreFileError(
                f"{files}: no {split} scores for candidate {str(candidate)!r} "
                f"(it has: {', '.join(sorted(known))})"
            )
        close = difflib.get_close_matches(str(candidate), known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        return ScoreFileError(
            f"{files}: no {split} scores for candidate {str(candidate)!r} among its {len(known)} "
            f"candidates{hint}"
        )

    def score(
        self, candidate: str | Path, suite: SuiteSpec, split: Split, *, progress: Progress | None = None
    ) -> SuiteScores:
        self._check(suite)
        board = self.leaderboard(suite)
        every = self._all_rows(suite)
        wanted = {split, suite.split_name(split), None}
        rows = self._matching([r for r in every if r.split in wanted], candidate)
        if not rows:
            blanks = board.missing if board else {}
            blank = next((w for (m, _), w in blanks.items() if m == str(candidate)), None)
            if blank:  # a model of the table with N/A in every category of the suite
                raise ScoreFileError(
                    f"{blank}: no score for candidate {str(candidate)!r} (the cell is N/A or empty)"
                )
            known = [r.candidate for r in every] + (board.candidates if board else [])
            raise self._unknown(candidate, split, list(dict.fromkeys(known)))
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
        matched = {r.candidate for r in rows}
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
                blanks = board.missing if board else {}
                blank = next((blanks[(m, c.name)] for m in matched if (m, c.name) in blanks), None)
                if blank:
                    raise ScoreFileError(
                        f"{blank}: no score for candidate {str(candidate)!r} in category {c.name!r} "
                        "(the cell is N/A or empty)"
                    )
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
