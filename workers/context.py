"""What a job's step works with: its recipe, suite and candidates read from the rows, the evaluator, the
resident candidates, and the messages a step asks to send next.

Per process, evaluators (one per evaluator and options: lm-eval tasks build once) and resident
candidates (least recently used dropped first, by bytes) are kept between tasks, so the trials of a job
on one worker find its experts in memory.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from sqlalchemy import Engine

from soce.config import Settings
from soce.db import Job, session_scope
from soce.errors import JobError, RunRecipeError
from soce.schemas.run import RunRecipe
from soce.schemas.suite import SuiteSpec, canonical_hash
from workers.jobrows import JobProgress, stored_json
from workers.pipeline import BASELINES, Matrices, RunInputs, candidate_labels

if TYPE_CHECKING:
    from workers.resident import ResidentSoup

log = logging.getLogger(__name__)

EXTRA_BASELINES_KEY = "extra_baselines"  # in Job.recipe beside the search settings (schedules set it)


@dataclass(frozen=True)
class Message:
    """A task to send once the step that named it has committed: its name and arguments."""

    task: str
    args: tuple[int, ...]


@dataclass(frozen=True)
class JobSpec:
    """The job's recipe, suite and candidate folders, read from its rows."""

    job_id: int
    recipe: RunRecipe
    suite: SuiteSpec
    paths: dict[str, Path]  # label -> candidate folder
    extra_baselines: dict[str, Path] = field(default_factory=dict)  # name -> folder scored at finalize


def job_output(settings: Settings, job_id: int) -> Path:
    """Where a service job's soup and report go: the same folder every time the step runs."""
    return settings.data_dir / "soups" / f"job-{job_id}"


def read_job(engine: Engine, job_id: int, settings: Settings) -> JobSpec:
    """The job's recipe (search settings from Job.recipe; candidates and suite from the rows).

    The output folder is the job's folder under the data folder, unless Job.recipe names one: a local
    run (`soce run`) stores its recipe's; the API accepts no `output`.
    """
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobError(f"job {job_id} does not exist")
        candidates = [(c.name, Path(c.path)) for c in job.candidates]
        suite_spec = dict(job.suite.spec)
        stored = dict(job.recipe or {})
    if len(candidates) < 2:
        raise JobError(f"job {job_id}: a soup needs at least 2 candidates, the job has {len(candidates)}")
    missing = [str(p) for _, p in candidates if not p.is_dir()]
    if missing:
        raise JobError(f"job {job_id}: candidate folder(s) {', '.join(missing)} do not exist")
    names = [n for n, _ in candidates]
    if len(set(names)) == len(names):
        paths = dict(candidates)
    else:
        paths = candidate_labels([p for _, p in candidates])
    extra = extra_baselines(stored.pop(EXTRA_BASELINES_KEY, None), where=f"job {job_id}: ")
    ignored = sorted(set(stored) - set(RunRecipe.model_fields))
    if ignored:
        log.info("job %d: recipe keys %s are not search settings; ignored", job_id, ", ".join(ignored))
    fields = {k: v for k, v in stored.items() if k in RunRecipe.model_fields}
    fields.update(
        candidates=[str(p) for p in paths.values()],
        suite=f"suite of job {job_id}",  # the spec comes from the database, not from a file
    )
    fields.setdefault("output", str(job_output(settings, job_id)))
    fields.setdefault("name", f"job-{job_id}")
    try:
        recipe = RunRecipe.parse(fields, where=f"job {job_id}: ")
    except RunRecipeError as e:
        raise JobError(str(e)) from None
    suite = SuiteSpec.parse(suite_spec, where=f"job {job_id}: suite: ")
    return JobSpec(job_id, recipe, suite, paths, extra)


def extra_baselines(value: Any, *, where: str = "") -> dict[str, Path]:
    """Job.recipe's extra baselines, {name: model folder}, checked (the folders are checked at finalize)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobError(
            f"{where}{EXTRA_BASELINES_KEY} must map names to model folders, not {type(value).__name__}"
        )
    out = {}
    for name, folder in value.items():
        if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
            raise JobError(f"{where}{EXTRA_BASELINES_KEY}: {name!r} is not a lower-case identifier")
        if name in BASELINES:
            raise JobError(f"{where}{EXTRA_BASELINES_KEY}: {name!r} is a built-in baseline's name")
        if not isinstance(folder, str) or not folder.strip():
            raise JobError(f"{where}{EXTRA_BASELINES_KEY}: {name!r} must name a model folder")
        out[name] = Path(folder)
    return out


# --- per process: evaluators and resident candidates -----------------------------------------------
_evaluators: dict[tuple, Any] = {}
_lock = threading.Lock()


def run_inputs(spec: JobSpec, settings: Settings) -> RunInputs:
    """The pipeline's RunInputs, with one evaluator per process and options (lm-eval tasks build once)."""
    from evaluators import apply_offline_environment, build_evaluator

    apply_offline_environment(settings)
    key = (spec.recipe.evaluator, spec.recipe.batch_size)
    with _lock:
        evaluator = _evaluators.get(key)
        if evaluator is None:
            evaluator = build_evaluator(
                spec.recipe.evaluator, batch_size=spec.recipe.batch_size, settings=settings
            )
            _evaluators[key] = evaluator
    return RunInputs(spec.recipe, spec.suite, spec.paths, evaluator)


def resident_bytes(resident: ResidentSoup) -> int:
    """Memory a resident soup holds: its candidates' tensors and the model they are merged into."""
    experts = sum(t.numel() * t.element_size() for ts in resident.tensors.values() for t in ts.values())
    model = sum(p.numel() * p.element_size() for p in resident.model.parameters())
    return experts + model


class ResidentCache(LRUCache):
    """The process's resident soups by bytes, least recently used dropped first.

    The newest entry is kept even when it alone is larger than the budget: the task that asked for it
    is using it (its size counts as the whole budget, which drops every other entry).
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(maxsize=max(max_bytes, 1), getsizeof=lambda v: min(resident_bytes(v), self.maxsize))
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def get_or_build(self, key: tuple, build: Any) -> Any:
        with self._lock:
            try:
                value = self[key]
            except KeyError:
                self.misses += 1
                value = build()
                self[key] = value
                return value
            self.hits += 1
            return value

    def popitem(self) -> Any:
        key, value = super().popitem()
        log.info("resident cache: dropped %s", key[0][:2])
        return key, value

    @property
    def nbytes(self) -> int:
        """Bytes held as counted against the budget (an entry over the budget counts as the budget)."""
        return int(self.currsize)

    @property
    def max_bytes(self) -> int:
        return int(self.maxsize)


_resident_cache: ResidentCache | None = None


def resident_cache(settings: Settings) -> ResidentCache:
    """This process's cache, its budget read from the settings (resident_cache_gib) on first use."""
    global _resident_cache
    with _lock:
        if _resident_cache is None:
            _resident_cache = ResidentCache(int(settings.resident_cache_gib * (1 << 30)))
        return _resident_cache


def resident_soup(inputs: RunInputs, settings: Settings) -> ResidentSoup:
    """The job's candidates resident in this process: built once per candidate content and suite."""
    from soce.checkpoints import Checkpoint, checkpoint_hash
    from workers.resident import ResidentSoup

    contents = []
    for label, path in inputs.paths.items():
        with Checkpoint.open(path) as ckpt:
            contents.append((label, checkpoint_hash(ckpt)))
    ev = inputs.evaluator
    key = (
        tuple(contents),
        canonical_hash(inputs.suite.model_dump(mode="json")),
        ev.name,
        ev.version,
        inputs.recipe.layer_groups,
        inputs.recipe.batch_size,
    )
    return resident_cache(settings).get_or_build(
        key, lambda: ResidentSoup(inputs.paths, ev, inputs.suite, groups=inputs.recipe.layer_groups)
    )


# --- a step's context ----------------------------------------------------------------------------------
@dataclass
class Context:
    engine: Engine
    settings: Settings
    job_id: int
    spec: JobSpec
    progress: JobProgress

    def stored(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job's analysis and timings as stored now."""
        return stored_json(self.engine, self.job_id)

    def matrices(self) -> Matrices:
        """The candidates' score matrices the score step stored: dev, test and the parts of dev."""
        analysis, _ = self.stored()
        scores = analysis.get("scores") or {}
        if "dev" not in scores or "test" not in scores:
            raise JobError(f"job {self.job_id}: no stored score matrices (the score step did not finish)")
        return Matrices.from_dict(scores)
