"""The score cache: a task's score is stored under the content it depends on and never computed twice.

The key is (checkpoint content hash, task spec hash, evaluator name and version, limit, few-shot,
seed, metric). A full hit opens the checkpoint's header, reads its remembered tensor digests and
queries the database: no model, torch or lm-eval is touched.

A soup merged in memory (never written) is keyed the same way, its content hash standing in for a
checkpoint's: `soup_hash` of its ingredients' content hashes, weights, merge method and dtype
(`score_soup`). Per-document values (TaskScore.samples) are stored where the caller asked for them
(a soup's test scores feed paired bootstrap intervals); a stored score without them does not answer a
request that needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, Row, select, update

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
    """Stored (key, metric, value, stderr, n, samples) rows by key digest.

    A plain select on the scores table: an ORM query would first configure every mapped class of
    the app database, which costs more than the rest of a cache hit in a fresh process.
    """
    table = Score.__table__
    query = select(
        table.c.key, table.c.metric, table.c.value, table.c.stderr, table.c.n, table.c.samples
    ).where(table.c.key.in_(digests))
    with session_scope(engine) as session:
        return {row.key: row for row in session.execute(query)}


def cached_tasks(
    engine: Engine | None, keys: Mapping[str, ScoreKey], *, samples: bool = False
) -> dict[str, TaskScore]:
    """The stored scores of the tasks keyed in `keys` (task -> key); with `samples`, only those stored
    with their per-document values (the others must be evaluated again)."""
    stored = stored_scores(engine, [k.digest for k in keys.values()])
    out = {}
    for name, key in keys.items():
        row = stored.get(key.digest)
        if row is None or (samples and row.samples is None):
            continue
        values = tuple(row.samples) if samples else None
        out[name] = TaskScore(
            task=name,
            metric=row.metric,
            value=row.value,
            stderr=row.stderr,
            n=row.n,
            cached=True,
            samples=values,
        )
    return out


def store_tasks(
    engine: Engine | None,
    keys: Mapping[str, ScoreKey],
    fresh: Mapping[str, TaskScore],
    split_label: str,
) -> None:
    """Store freshly evaluated scores (with their per-document values, if they have them); a stored
    score that lacks values gains them."""
    rows = [
        Score(
            key=keys[name].digest,
            split=split_label,
            task=name,
            value=s.value,
            stderr=s.stderr,
            n=s.n,
            samples=list(s.samples) if s.samples is not None else None,
            **asdict(keys[name]),
        )
        for name, s in fresh.items()
    ]
    table = Score.__table__
    with session_scope(engine) as session:
        add_scores(session=session, scores=rows)
        for row in rows:
            if row.samples is not None:  # stored before without them (say by a caller that needed none)
                session.execute(
                    update(table)
                    .where(table.c.key == row.key, table.c.samples.is_(None))
                    .values(samples=row.samples)
                )


def _split_label(suite: SuiteSpec, split: Split, part: DevPart | None) -> str:
    return suite.split_name(split) + (f":{part.key}" if part else "")


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
        tasks = cached_tasks(engine, keys)
        if progress and tasks:
            progress(len(tasks))
    missing = [t for t in suite.tasks if t.name not in tasks]
    if missing:
        log.info("%s: evaluating %d task(s), %d cached", checkpoint, len(missing), len(tasks))
        kwargs = {"part": part} if part is not None else {}
        fresh = scorer.score_tasks(Path(checkpoint), suite, split, missing, progress=progress, **kwargs)
        tasks.update(fresh)
        store_tasks(engine, keys, fresh, _split_label(suite, split, part))
    return SuiteScores.aggregate(
        suite,
        split,
        candidate=str(checkpoint),
        evaluator=scorer.name,
        tasks={t.name: tasks[t.name] for t in suite.tasks},
        part=part.name if part else None,
    )


def soup_hash(
    *,
    ingredients: Sequence[str],
    weights: Sequence[float],
    groups: Mapping[str, Sequence[float]] | None = None,
    layer_groups: int | None = None,
    dtype: str,
    model: str,
    digits: int = 12,
) -> str:
    """The identity of a soup merged in memory, in place of a checkpoint's content hash.

    ingredients: the content hashes of the experts, in the order `weights` (and each layer group's
    weights in `groups`, a layer-wise soup) weigh them; layer_groups: how many depth groups the blocks
    are split into (layer-wise only); dtype: the dtype it is merged and run in; model: the content hash
    of the checkpoint the model was built from (its config and buffers). Weights are rounded to `digits`
    places, as the resident model decides it already holds a soup.
    """
    rounded = {g: [round(float(x), digits) for x in v] for g, v in sorted((groups or {}).items())}
    data = {
        "soup": "in-memory",  # never equal to a checkpoint's content hash
        "ingredients": list(ingredients),
        "weights": [round(float(w), digits) for w in weights],
        "method": "layerwise" if groups else "linear",
        "groups": rounded or None,
        "layer_groups": layer_groups if groups else None,
        "dtype": dtype,
        "model": model,
    }
    return canonical_hash(data)


def score_soup(
    scorer: TaskScorer,
    soup: str,
    suite: SuiteSpec,
    split: Split,
    evaluate: Callable[[Sequence[TaskSpec]], Mapping[str, TaskScore]],
    *,
    engine: Engine | None = None,
    samples: bool = False,
    part: DevPart | None = None,
    use_cache: bool = True,
) -> dict[str, TaskScore]:
    """Task scores of a soup merged in memory (`soup`: its soup_hash) on `split` (on `part` of dev, if
    given): stored ones from the cache, the others from `evaluate(tasks)` and stored.

    With `samples`, every score comes with its per-document values: a stored one without them is
    evaluated again (and stored with them).
    """
    keys = score_keys(scorer, soup, suite, split, part)
    tasks = cached_tasks(engine, keys, samples=samples) if use_cache else {}
    missing = [t for t in suite.tasks if t.name not in tasks]
    if missing:
        log.info("soup %s: evaluating %d task(s), %d cached", soup[:12], len(missing), len(tasks))
        fresh = dict(evaluate(missing))
        tasks.update(fresh)
        store_tasks(engine, keys, fresh, _split_label(suite, split, part))
    return {t.name: tasks[t.name] for t in suite.tasks}
