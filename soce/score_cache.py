"""The score cache: a task's score is stored under the content it depends on and never computed twice.

The key is (checkpoint content hash, task spec hash, evaluator name and version, limit, few-shot,
seed, metric). A full hit opens the checkpoint's header, reads its remembered tensor digests and
queries the database: no model, torch or lm-eval is touched. Per-document values
(TaskScore.samples) are never stored: a score read from the cache has none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, Row, select

from soce.checkpoints import Checkpoint, checkpoint_hash
from soce.db import Score, add_scores, session_scope
from soce.schemas.scores import SuiteScores, TaskScore
from soce.schemas.suite import DevPart, Split, SuiteSpec, TaskSpec, canonical_hash

log = logging.getLogger(__name__)


class TaskScorer(Protocol):
    """What the cache needs from an evaluator (evaluators.TaskEvaluator is one).

    A scorer may also offer `suite_fingerprints(suite, split, part=None)`, every task's fingerprint
    at once. A part of dev (DevPart) is passed as `part=` only when one is asked for.
    """

    name: str

    @property
    def version(self) -> str: ...

    def task_fingerprint(self, suite: SuiteSpec, task: TaskSpec, split: Split) -> str: ...

    def score_tasks(
        self,
        checkpoint: Path,
        suite: SuiteSpec,
        split: Split,
        tasks: Sequence[TaskSpec],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, TaskScore]: ...


@dataclass(frozen=True)
class ScoreKey:
    checkpoint_hash: str
    task_spec_hash: str
    evaluator: str
    evaluator_version: str
    limit: int | None
    num_fewshot: int
    seed: int
    metric: str

    @property
    def digest(self) -> str:
        return canonical_hash(asdict(self))


def task_fingerprints(
    scorer: TaskScorer, suite: SuiteSpec, split: Split, part: DevPart | None = None
) -> list[str]:
    """Every task's fingerprint, in one call where the scorer offers it (one check of the files)."""
    kwargs = {"part": part} if part is not None else {}
    all_at_once = getattr(scorer, "suite_fingerprints", None)
    if all_at_once is not None:
        return list(all_at_once(suite, split, **kwargs))
    return [scorer.task_fingerprint(suite, t, split, **kwargs) for t in suite.tasks]


def score_keys(
    scorer: TaskScorer, ckpt_hash: str, suite: SuiteSpec, split: Split, part: DevPart | None = None
) -> dict[str, ScoreKey]:
    """The cache key of every task of the suite for one checkpoint content (and part of dev)."""
    fingerprints = task_fingerprints(scorer, suite, split, part)
    return {
        t.name: ScoreKey(
            checkpoint_hash=ckpt_hash,
            task_spec_hash=fingerprint,
            evaluator=scorer.name,
            evaluator_version=scorer.version,
            limit=suite.limit,
            num_fewshot=suite.num_fewshot,
            seed=suite.seed,
            metric=t.metric,
        )
        for t, fingerprint in zip(suite.tasks, fingerprints, strict=True)
    }


def stored_scores(engine: Engine | None, digests: list[str]) -> dict[str, Row]:
    """Stored (key, metric, value, stderr, n) rows by key digest.

    A plain select on the scores table: an ORM query would first configure every mapped class of
    the app database, which costs more than the rest of a cache hit in a fresh process.
    """
    table = Score.__table__
    query = select(table.c.key, table.c.metric, table.c.value, table.c.stderr, table.c.n).where(
        table.c.key.in_(digests)
    )
    with session_scope(engine) as session:
        return {row.key: row for row in session.execute(query)}


def score_checkpoint(
    scorer: TaskScorer,
    checkpoint: str | Path,
    suite: SuiteSpec,
    split: Split,
    *,
    engine: Engine | None = None,
    progress: Callable[[int], None] | None = None,
    use_cache: bool = True,
    part: DevPart | None = None,
) -> SuiteScores:
    """Scores of a checkpoint folder (on `part` of dev, if given): stored ones from the cache, the rest
    evaluated and stored."""
    with Checkpoint.open(checkpoint) as ckpt:
        ckpt_hash = checkpoint_hash(ckpt)
    keys = score_keys(scorer, ckpt_hash, suite, split, part)
    tasks: dict[str, TaskScore] = {}
    if use_cache:
        stored = stored_scores(engine, [k.digest for k in keys.values()])
        for name, key in keys.items():
            if (row := stored.get(key.digest)) is not None:
                tasks[name] = TaskScore(
                    task=name, metric=row.metric, value=row.value, stderr=row.stderr, n=row.n, cached=True
                )
        if progress and tasks:
            progress(len(tasks))
    missing = [t for t in suite.tasks if t.name not in tasks]
    if missing:
        log.info("%s: evaluating %d task(s), %d cached", checkpoint, len(missing), len(tasks))
        kwargs = {"part": part} if part is not None else {}
        fresh = scorer.score_tasks(Path(checkpoint), suite, split, missing, progress=progress, **kwargs)
        tasks.update(fresh)
        rows = [
            Score(
                key=keys[name].digest,
                split=suite.split_name(split) + (f":{part.key}" if part else ""),
                task=name,
                value=s.value,
                stderr=s.stderr,
                n=s.n,
                **asdict(keys[name]),
            )
            for name, s in fresh.items()
        ]
        with session_scope(engine) as session:
            add_scores(session=session, scores=rows)
    return SuiteScores.aggregate(
        suite,
        split,
        candidate=str(checkpoint),
        evaluator=scorer.name,
        tasks={t.name: tasks[t.name] for t in suite.tasks},
        part=part.name if part else None,
    )
