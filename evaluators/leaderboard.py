"""Leaderboard tables (BFCL's data_overall.csv, data_live.csv, ...) read as the external evaluator's rows.

A leaderboard table is wide: a rank column, a model column, one column per category holding a
percentage ("85.50%" or 85.5; "N/A" or empty where the model was not scored there) and summary columns
(overall accuracy, cost, latency, organisation, license). Each model is a candidate. A column counts when
it maps to a category of the suite: BFCL's own headers have a built-in mapping (which depends on the
table, as data_live.csv and data_non_live.csv share header names), a header equal to a category's name
maps to it, and a user mapping {header: category} adds to both and takes a category over from them.
Percentages become fractions in [0, 1], the scale of lm-eval's accuracies and of every other score here.

Leaderboards publish one number per category, with no dev or test split: the rows carry no split, so,
as any external row without one, they count for both.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from soce.errors import ScoreFileError

log = logging.getLogger(__name__)

MODEL_COLUMNS = ("model", "model name", "model_name")  # detected case-insensitively
LONG_FORM_COLUMNS = ("candidate", "score")  # a table with either is a file of score rows
MISSING_CELLS = ("", "n/a", "na", "-")  # a model not scored in that category

# BFCL v4 (bfcl_eval/constants/column_headers.py): each table is known by its overall column, or by the
# file name eval_runner_helper.generate_leaderboard_csv gives it.
BFCL_TABLES = {
    "Overall Acc": "overall",
    "Non-Live Overall Acc": "non_live",
    "Live Overall Acc": "live",
    "Multi Turn Overall Acc": "multi_turn",
    "Agentic Overall Acc": "agentic",
}
BFCL_FILES = {
    "data_overall": "overall",
    "data_non_live": "non_live",
    "data_live": "live",
    "data_multi_turn": "multi_turn",
    "data_agentic": "agentic",
}
_MULTI_TURN = {
    "Base": "multi_turn_base",
    "Miss Func": "multi_turn_miss_func",
    "Miss Param": "multi_turn_miss_param",
    "Long Context": "multi_turn_long_context",
}
_AGENTIC = {
    "Web Search Base": "web_search_base",
    "Web Search No Snippet": "web_search_no_snippet",
    "Memory KV": "memory_kv",
    "Memory Vector": "memory_vector",
    "Memory Recursive Summarization": "memory_rec_sum",
}
# Header -> BFCL category, per table; only columns that are exactly one BFCL category's accuracy.
BFCL_COLUMNS: dict[str, dict[str, str]] = {
    "overall": {
        "Non-Live Multiple AST": "multiple",
        "Non-Live Parallel AST": "parallel",
        "Non-Live Parallel Multiple AST": "parallel_multiple",
        "Live Simple AST": "live_simple",
        "Live Multiple AST": "live_multiple",
        "Live Parallel AST": "live_parallel",
        "Live Parallel Multiple AST": "live_parallel_multiple",
        "Relevance Detection": "live_relevance",
        **{f"Multi Turn {h}": c for h, c in _MULTI_TURN.items()},
        **_AGENTIC,
    },
    "non_live": {
        "Python Simple AST": "simple_python",
        "Java Simple AST": "simple_java",
        "JavaScript Simple AST": "simple_javascript",
        "Multiple AST": "multiple",
        "Parallel AST": "parallel",
        "Parallel Multiple AST": "parallel_multiple",
        "Irrelevance Detection": "irrelevance",
    },
    "live": {
        "Python Simple AST": "live_simple",
        "Python Multiple AST": "live_multiple",
        "Python Parallel AST": "live_parallel",
        "Python Parallel Multiple AST": "live_parallel_multiple",
        "Irrelevance Detection": "live_irrelevance",
        "Relevance Detection": "live_relevance",
    },
    "multi_turn": dict(_MULTI_TURN),
    "agentic": dict(_AGENTIC),
}
# Columns that look like a category but average several: named when one of their categories is missing.
BFCL_AVERAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "overall": {
        "Non-Live Simple AST": ("simple_python", "simple_java", "simple_javascript"),
        "Irrelevance Detection": ("irrelevance", "live_irrelevance"),
    },
    "non_live": {"Simple AST": ("simple_python", "simple_java", "simple_javascript")},
}


@dataclass(frozen=True)
class LeaderboardTable:
    """One wide table as read: its headers, model column, BFCL table kind and cells by line number."""

    path: Path
    headers: list[str]
    model_column: str
    kind: str | None  # overall, non_live, live, multi_turn, agentic; None: not one of BFCL's
    lines: list[tuple[int, dict[str, str]]]

    @property
    def models(self) -> list[str]:
        return [cells[self.model_column] for _, cells in self.lines]

    def default_columns(self, categories: Sequence[str]) -> dict[str, str]:
        """Header -> category before any user mapping: BFCL's headers, and headers named as a category."""
        found = {h: c for h, c in BFCL_COLUMNS.get(self.kind or "", {}).items() if h in self.headers}
        found.update({h: h for h in self.headers if h in categories})
        return found


@dataclass(frozen=True)
class LeaderboardScore:
    """One cell read: a candidate's score in a category, as a fraction (the external evaluator's row)."""

    where: str  # "FILE, line 3, column 'Live Simple AST'"
    candidate: str
    category: str
    score: float
    source: Path


@dataclass(frozen=True)
class LeaderboardScores:
    """Tables turned into scores for one suite's categories."""

    scores: list[LeaderboardScore]  # one per (candidate, category) with a number, where first given
    missing: dict[tuple[str, str], str]  # (candidate, category) -> where its cell is N/A or empty
    columns: dict[str, list[tuple[Path, str]]]  # category -> the (file, header) columns read for it
    candidates: list[str]  # every model of the tables, in order of first appearance


def _header_cells(path: Path) -> list[str] | None:
    """The first line's cells, or None when the file cannot be read (the reader then says why)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            return [c.strip() for c in next(csv.reader([f.readline()]), [])]
    except (OSError, UnicodeDecodeError):
        return None


def model_column_of(headers: Sequence[str]) -> str | None:
    return next((h for h in headers if h.lower() in MODEL_COLUMNS), None)


def is_leaderboard(path: Path, *, model_column: str | None = None) -> bool:
    """Whether `path` is a wide table: a model column and neither `candidate` nor `score` (or a model
    column is named)."""
    if model_column is not None:
        return True
    if path.suffix.lower() == ".json":
        return False
    headers = _header_cells(path)
    if not headers:
        return False
    lower = {h.lower() for h in headers}
    return model_column_of(headers) is not None and not lower & set(LONG_FORM_COLUMNS)


def read_text(path: Path, what: str = "score file") -> str:
    """A score or mapping file's text (a BOM dropped); ScoreFileError names the file and why not."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScoreFileError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreFileError(f"{path}: cannot be read ({e})") from None


def read_leaderboard(path: Path, *, model_column: str | None = None) -> LeaderboardTable:
    """A wide CSV table; ScoreFileError names the file, line and column of what is wrong."""
    if path.suffix.lower() == ".json":
        raise ScoreFileError(f"{path}: a leaderboard table is a CSV file (a JSON file holds score rows)")
    text = read_text(path)
    reader = csv.reader(text.splitlines())
    headers = [h.strip() for h in next(reader, [])]
    if not any(headers):
        raise ScoreFileError(f"{path}: empty file; a leaderboard table starts with a header line")
    for i, h in enumerate(headers):
        if h and h in headers[:i]:
            raise ScoreFileError(f"{path}, line 1: column {h!r} appears twice")
    if model_column is None:
        model = model_column_of(headers)
    else:
        model = next((h for h in headers if h == model_column.strip()), None) or next(
            (h for h in headers if h.lower() == model_column.strip().lower()), None
        )
    if model is None:
        wanted = repr(model_column) if model_column else "'Model'"
        raise ScoreFileError(
            f"{path}, line 1: no model column {wanted} (columns: {', '.join(h for h in headers if h)})"
        )
    lines = []
    for record in reader:
        if not any(c.strip() for c in record):
            continue
        where = f"{path}, line {reader.line_num}"
        if len(record) > len(headers):
            raise ScoreFileError(f"{where}: {len(record)} values for {len(headers)} columns")
        padded = [c.strip() for c in record] + [""] * (len(headers) - len(record))  # short line: blanks
        cells = dict(zip(headers, padded, strict=True))
        if not cells[model]:
            raise ScoreFileError(f"{where}, column {model!r}: no model name")
        lines.append((reader.line_num, cells))
    if not lines:
        raise ScoreFileError(f"{path}: holds no models (only a header line)")
    kind = next((k for h, k in BFCL_TABLES.items() if h in headers), None) or BFCL_FILES.get(path.stem)
    return LeaderboardTable(path, headers, model, kind, lines)


def percentage(cell: str, where: str) -> float | None:
    """A cell as a fraction: "85.5%" and "85.5" are both 0.855; None for N/A or empty."""
    if cell.strip().lower() in MISSING_CELLS:
        return None
    text = cell.strip().removesuffix("%").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ScoreFileError(f"{where}: {cell!r} is not a percentage (such as 85.5% or 85.5) nor N/A")
    if not 0 <= value <= 100:
        raise ScoreFileError(f"{where}: {cell!r} is outside 0..100%")
    return value / 100


def read_column_mapping(path: Path) -> dict[str, str]:
    """A YAML or JSON file {header: category}; ScoreFileError names the file and the entry."""
    text = read_text(path, "column mapping file")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ScoreFileError(f"{path}: not valid JSON ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScoreFileError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict) or not data:
        raise ScoreFileError(f"{path}: a column mapping is a mapping {{header: category}}")
    mapping = {}
    for header, category in data.items():
        if not isinstance(category, str) or not category.strip():
            raise ScoreFileError(f"{path}: entry {str(header)!r}: the category is a name, not {category!r}")
        mapping[str(header).strip()] = category.strip()
    return mapping


def parse_column_options(options: Sequence[str]) -> dict[str, str]:
    """`--column "Header=category"` options as {header: category} (a header may itself hold '=')."""
    mapping = {}
    for option in options:
        header, eq, category = option.rpartition("=")
        if not eq or not header.strip() or not category.strip():
            raise ScoreFileError(
                f"--column {option!r}: expected HEADER=CATEGORY, e.g. 'Live Simple AST=live_simple'"
            )
        mapping[header.strip()] = category.strip()
    return mapping


def user_columns(file: Path | None = None, options: Sequence[str] = ()) -> dict[str, str]:
    """The user's mapping: a mapping file's entries, then `--column` options (which win)."""
    return {**(read_column_mapping(file) if file else {}), **parse_column_options(options)}


def _missing_category(category: str, tables: Sequence[LeaderboardTable]) -> ScoreFileError:
    offered = list(
        dict.fromkeys(h for t in tables for h in t.headers if h and h not in (t.model_column, "Rank"))
    )
    hints = [
        f"{t.path.name}'s {header!r} averages {', '.join(parts)}, so it is not {category} alone"
        for t in tables
        for header, parts in BFCL_AVERAGES.get(t.kind or "", {}).items()
        if category in parts and header in t.headers
    ]
    hints += [
        f"BFCL gives {category} alone in data_{kind}.csv, column {header!r}"
        for kind, mapping in BFCL_COLUMNS.items()
        for header, c in mapping.items()
        if c == category and kind != "overall" and not any(t.kind == kind for t in tables)
    ]
    hint = f" ({'; '.join(hints)})" if hints else ""
    files = ", ".join(str(t.path) for t in tables)
    return ScoreFileError(
        f"{files}: no column for category {category!r} of the suite{hint}; columns offered: "
        f"{', '.join(map(repr, offered))}. Map one with --column 'HEADER={category}' or a --columns file"
    )


def leaderboard_scores(
    tables: Sequence[LeaderboardTable],
    categories: Sequence[str],
    *,
    columns: Mapping[str, str] | None = None,
) -> LeaderboardScores:
    """Scores of `tables` in `categories` (the suite's); columns of no category are ignored.

    columns: the user's {header: category}; a category it names is read from its columns only.
    Every category needs a column; a model scored twice in a category (two tables, two columns, two
    lines) must have the same score in both places.
    """
    user = dict(columns or {})
    unused = [h for h in user if not any(h in t.headers for t in tables)]
    if unused:
        log.warning("no leaderboard table has the mapped column(s) %s", ", ".join(map(repr, unused)))
    taken = {c for h, c in user.items() if h not in unused}  # read from the user's columns only
    mappings = []
    for t in tables:
        found = {h: c for h, c in t.default_columns(categories).items() if c not in taken}
        found.update({h: c for h, c in user.items() if h in t.headers})
        mappings.append({h: found[h] for h in t.headers if h in found and found[h] in categories})
    read: dict[str, list[tuple[Path, str]]] = {c: [] for c in categories}
    for t, mapping in zip(tables, mappings, strict=True):
        for h, c in mapping.items():
            read[c].append((t.path, h))
    for c in categories:
        if not read[c]:
            raise _missing_category(c, tables)
    given: dict[tuple[str, str], LeaderboardScore] = {}
    missing: dict[tuple[str, str], str] = {}
    for t, mapping in zip(tables, mappings, strict=True):
        for line, cells in t.lines:
            model = cells[t.model_column]
            for header, category in mapping.items():
                where = f"{t.path}, line {line}, column {header!r}"
                value = percentage(cells[header], where)
                key = (model, category)
                if value is None:
                    missing.setdefault(key, where)
                    continue
                first = given.get(key)
                if first is None:
                    given[key] = LeaderboardScore(where, model, category, value, t.path)
                elif abs(first.score - value) > 1e-9:
                    raise ScoreFileError(
                        f"{where}: {model!r} scores {value:.2%} in category {category!r}, but "
                        f"{first.score:.2%} at {first.where}"
                    )
    for key in given:
        missing.pop(key, None)
    for t, mapping in zip(tables, mappings, strict=True):
        used = [v for _, cells in t.lines for h, v in cells.items() if h in mapping and v]
        numbers = [v.removesuffix("%") for v in used if v.lower() not in MISSING_CELLS]
        if numbers and not any(v.endswith("%") for v in used) and all(float(v) <= 1 for v in numbers):
            log.warning(
                "%s: every score read is at most 1; they are read as percentages (0.9 is 0.9%%, a fraction "
                "0.009): if the table holds fractions, multiply them by 100",
                t.path,
            )
    names = list(dict.fromkeys(m for t in tables for m in t.models))
    return LeaderboardScores(list(given.values()), missing, read, names)
