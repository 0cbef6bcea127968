"""What every evaluator is: something that scores a candidate on a split of a suite."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from soce.schemas.scores import SuiteScores, TaskScore
from soce.schemas.suite import DevPart, Split, SuiteSpec, TaskSpec

Progress = Callable[[int], None]  # advance a progress bar by this many tasks


class Evaluator(ABC):
    """Scores candidates on a suite split; `name` is its registry key."""

    name: ClassVar[str]
    summary: ClassVar[str]
    cacheable: ClassVar[bool] = False  # True: per-task scores may be stored by content (see TaskEvaluator)

    @property
    def version(self) -> str:
        """Changes whenever the same inputs could give different scores."""
        return "1"

    @abstractmethod
    def score(
        self, candidate: str | Path, suite: SuiteSpec, split: Split, *, progress: Progress | None = None
    ) -> SuiteScores:
        """Scores of `candidate` (a checkpoint folder or a name the evaluator knows) on `split`."""


class TaskEvaluator(Evaluator):
    """Runs each task on a checkpoint: one score per task, the unit the score cache stores."""

    cacheable = True

    @abstractmethod
    def task_fingerprint(
        self, suite: SuiteSpec, task: TaskSpec, split: Split, *, part: DevPart | None = None
    ) -> str:
        """Content hash of what defines `task` on `split` (its files, the split name and the part)."""

    @abstractmethod
    def score_tasks(
        self,
        checkpoint: Path,
        suite: SuiteSpec,
        split: Split,
        tasks: Sequence[TaskSpec],
        *,
        progress: Progress | None = None,
        part: DevPart | None = None,
    ) -> dict[str, TaskScore]:
        """Evaluate the checkpoint folder on `tasks` only (on the examples of `part` of dev, if given)."""

    def score(
        self, candidate: str | Path, suite: SuiteSpec, split: Split, *, progress: Progress | None = None
    ) -> SuiteScores:
        tasks = self.score_tasks(Path(candidate), suite, split, suite.tasks, progress=progress)
        return SuiteScores.aggregate(suite, split, candidate=str(candidate), evaluator=self.name, tasks=tasks)
