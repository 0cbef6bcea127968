"""BFCL v4's single-turn data, read from the bfcl-eval wheel (or its unpacked folder) without importing it.

The wheel holds `bfcl_eval/data/BFCL_v4_<category>.json` (JSON lines: id, question, function) and, for
the categories BFCL checks against answers, `bfcl_eval/data/possible_answer/BFCL_v4_<category>.json`
(id, ground_truth), in the same order as the questions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soce.config import get_settings
from soce.errors import EvaluationError, SuiteError

logger = logging.getLogger(__name__)

BFCL_EVAL_VERSION = "2026.3.23"
# BFCL's "python" collection: the single-turn categories its AST checks and relevance rules score
CATEGORIES: tuple[str, ...] = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
)
# categories judged only by whether the answer holds a call: BFCL ships no answers for them
RELEVANCE_CATEGORIES: tuple[str, ...] = ("irrelevance", "live_irrelevance", "live_relevance")

_PREFIX = "BFCL_v4_"
_WHEEL_DATA = "bfcl_eval/data"
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class BfclItem:
    """One BFCL question: its chat messages, the functions offered, and the acceptable calls.

    ground_truth: [{function name: {parameter: [acceptable values]}}], one entry per expected call;
    None for the relevance categories. An acceptable value "" marks an optional parameter.
    """

    id: str
    category: str
    messages: list[dict[str, str]]
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "messages": self.messages,
            "functions": self.functions,
            "ground_truth": self.ground_truth,
        }

    @classmethod
    def from_json(cls, data: Any) -> BfclItem:
        """The item `to_json` wrote; a missing or malformed field raises EvaluationError naming it."""
        if not isinstance(data, dict):
            raise EvaluationError(f"a BFCL item must be a JSON object, not {type(data).__name__}")
        where = f"BFCL item {data.get('id')!r}"
        for field in ("id", "category", "messages", "functions", "ground_truth"):
            if field not in data:
                raise EvaluationError(f"{where} has no field {field!r}")
        if not isinstance(data["id"], str):
            raise EvaluationError(f"{where}: field 'id' must be a string")
        if data["category"] not in CATEGORIES:
            raise EvaluationError(f"{where}: unknown category {data['category']!r}")
        _check_messages(data["messages"], where)
        _check_functions(data["functions"], where)
        if data["ground_truth"] is not None:
            _check_ground_truth(data["ground_truth"], where)
        return cls(data["id"], data["category"], data["messages"], data["functions"], data["ground_truth"])


class BfclData:
    """BFCL's data files in a wheel (read with zipfile) or in a folder."""

    def __init__(self, source: Path, *, archive: bool, root: str) -> None:
        self.source = source
        self._archive = archive
        self._root = root  # the data folder: a member prefix in the wheel, or a path

    def describe(self) -> str:
        kind = "wheel" if self._archive else "folder"
        return f"bfcl-eval data, {kind} {self.source}"

    def items(self, category: str) -> list[BfclItem]:
        """Every item of `category`, in BFCL's order, with its acceptable answers where BFCL has them."""
        if category not in CATEGORIES:
            raise SuiteError(
                f"unknown BFCL category {category!r} (single-turn categories: {', '.join(CATEGORIES)})"
            )
        questions_name = f"{_PREFIX}{category}.json"
        questions = self._lines(questions_name)
        if category in RELEVANCE_CATEGORIES:
            return [_item(category, q, None, where) for where, q in questions]
        answers = self._lines(f"possible_answer/{questions_name}")
        if len(answers) != len(questions):
            raise EvaluationError(
                f"{self._name(questions_name)} has {len(questions)} items but "
                f"{self._name('possible_answer/' + questions_name)} has {len(answers)} answers"
            )
        items = []
        for (where, question), (answer_where, answer) in zip(questions, answers, strict=True):
            if answer.get("id") != question.get("id"):
                raise EvaluationError(
                    f"{answer_where}: answer id {answer.get('id')!r}, expected {question.get('id')!r}"
                )
            if "ground_truth" not in answer:
                raise EvaluationError(f"{answer_where}: no field 'ground_truth'")
            _check_ground_truth(answer["ground_truth"], answer_where)
            items.append(_item(category, question, answer["ground_truth"], where))
        return items

    def _name(self, relative: str) -> str:
        if self._archive:
            return f"{self.source}:{self._root}/{relative}"
        return str(Path(self._root) / relative)

    def _read(self, relative: str) -> str:
        name = self._name(relative)
        try:
            if self._archive:
                with zipfile.ZipFile(self.source) as archive:
                    raw = archive.read(f"{self._root}/{relative}")
            else:
                raw = (Path(self._root) / relative).read_bytes()
            return raw.decode("utf-8")
        except (KeyError, FileNotFoundError):
            raise EvaluationError(f"{name} is missing from the BFCL data") from None
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as error:
            raise EvaluationError(f"{name} cannot be read: {error}") from None
        except UnicodeDecodeError as error:
            raise EvaluationError(f"{name} is not UTF-8 text: {error}") from None

    def _lines(self, relative: str) -> list[tuple[str, dict[str, Any]]]:
        """(file:line, object) for each non-blank line of a JSON-lines file."""
        name = self._name(relative)
        rows = []
        for number, line in enumerate(self._read(relative).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvaluationError(f"{where}: not JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise EvaluationError(f"{where}: expected a JSON object, got {type(row).__name__}")
            rows.append((where, row))
        if not rows:
            raise EvaluationError(f"{name} holds no items")
        return rows


def find_bfcl_data(source: Path | None = None) -> BfclData:
    """BFCL's data in `source`: the bfcl-eval wheel, an unpacked folder holding bfcl_eval/data, or the
    data folder itself. None: the wheel cached under the data folder, downloaded with pip if absent."""
    if source is None:
        return _open_wheel(_cached_wheel())
    source = Path(source).expanduser()
    if not source.exists():
        raise EvaluationError(
            f"BFCL data {source} does not exist (expected the bfcl-eval wheel or its folder)"
        )
    if source.is_dir():
        marker = f"{_PREFIX}simple_python.json"
        for root in (source / _WHEEL_DATA, source / "data", source):
            if (root / marker).is_file():
                return BfclData(source, archive=False, root=str(root))
        raise EvaluationError(f"{source} holds no BFCL data (looked for {_WHEEL_DATA}/{marker} and {marker})")
    return _open_wheel(source)


def _open_wheel(path: Path) -> BfclData:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile) as error:
        raise EvaluationError(f"{path} is not a readable wheel (zip) file: {error}") from None
    if f"{_WHEEL_DATA}/{_PREFIX}simple_python.json" not in names:
        raise EvaluationError(f"{path} holds no {_WHEEL_DATA}/{_PREFIX}*.json: is it the bfcl-eval wheel?")
    return BfclData(path, archive=True, root=_WHEEL_DATA)


def _cached_wheel() -> Path:
    cache = get_settings().data_dir / "bfcl"
    pattern = f"bfcl_eval-{BFCL_EVAL_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    requirement = f"bfcl-eval=={BFCL_EVAL_VERSION}"
    logger.info("downloading %s into %s", requirement, cache)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            requirement,
            "-d",
            str(staging),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            failure = (
                None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            failure = str(error)
        wheels = sorted(staging.glob(pattern))
        if failure is not None or not wheels:
            raise EvaluationError(
                f"could not download {requirement} into {cache} ({failure or 'pip gave no wheel'}); "
                "pass --data WHEEL: the bfcl-eval wheel or its unpacked folder"
            )
        target = cache / wheels[0].name
        os.replace(wheels[0], target)  # whole files only: an interrupted download leaves no wheel here
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _item(category: str, question: dict[str, Any], ground_truth: Any, where: str) -> BfclItem:
    for field in ("id", "question", "function"):
        if field not in question:
            raise EvaluationError(f"{where}: no field {field!r}")
    if not isinstance(question["id"], str):
        raise EvaluationError(f"{where}: field 'id' must be a string")
    turns = question["question"]
    if not isinstance(turns, list) or len(turns) != 1:
        raise EvaluationError(
            f"{where}: field 'question' must hold exactly one turn (a single-turn category)"
        )
    _check_messages(turns[0], where)
    _check_functions(question["function"], where)
    return BfclItem(question["id"], category, turns[0], question["function"], ground_truth)


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise EvaluationError(f"{where}: the question must be a non-empty list of messages")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise EvaluationError(
                f"{where}: message {index} must have a role ({', '.join(_ROLES)}) and a string content"
            )


def _check_functions(functions: Any, where: str) -> None:
    if not isinstance(functions, list):
        raise EvaluationError(f"{where}: field 'function' must be a list of function documents")
    for index, doc in enumerate(functions):
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise EvaluationError(f"{where}: function {index} has no string 'name'")
        if not isinstance(doc.get("description"), str):
            raise EvaluationError(f"{where}: function {doc['name']!r} has no string 'description'")
        parameters = doc.get("parameters")
        if not isinstance(parameters, dict) or not isinstance(parameters.get("properties"), dict):
            raise EvaluationError(f"{where}: function {doc['name']!r} has no 'parameters' with 'properties'")


def _check_ground_truth(ground_truth: Any, where: str) -> None:
    if not isinstance(ground_truth, list) or not ground_truth:
        raise EvaluationError(f"{where}: 'ground_truth' must be a non-empty list of calls")
    for index, call in enumerate(ground_truth):
        if not isinstance(call, dict) or len(call) != 1:
            raise EvaluationError(
                f"{where}: ground truth call {index} must be one {{name: parameters}} object"
            )
        ((name, parameters),) = call.items()
        if not isinstance(parameters, dict) or not all(isinstance(v, list) for v in parameters.values()):
            raise EvaluationError(
                f"{where}: ground truth call {index} ({name!r}) must map each parameter to a list of values"
            )
