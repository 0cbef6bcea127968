"""A job through its states, one step at a time: what each Celery task (or an in-process runner) calls.

queued -> scoring -> analysing -> searching -> finalizing -> done; or failed, or cancelled (by the API).
Every step re-reads the job, runs only in the state it belongs to, commits, and names the next task;
the caller enqueues it after the commit. A step is safe to run twice: scores are cached by content,
the study continues (finished trials are never run again), the soup folder is at a fixed path and
replaced atomically, the Soup row is written once per folder. State changes are conditional updates
(`WHERE state = ...`), so a job the API cancelled is never moved on.

The search is not one step: while the job is `searching`, its trials run as separate trial tasks,
up to `parallel_trials` at once (workers.trials); the last one to finish moves the job on.
`run_task` runs any task by name and returns the messages to send; `run_job` runs them all here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select, update

from soce.config import Settings, get_settings
from soce.db import JOB_FINISHED_STATES, Candidate, Job, Soup, get_engine, session_scope
from soce.errors import SoceError
from soce.schemas.run import RunRecipe
from soce.schemas.suite import SuiteSpec, canonical_hash
from workers.metrics import count_score_cache
from workers.progress import Advance, Stages

if TYPE_CHECKING:
    from workers.pipeline import Matrices

log = logging.getLogger(__name__)


class JobError(SoceError):
    """A job that cannot run as submitted (its message is stored on the job)."""


class JobCancelled(Exception):
    """The job was cancelled while a step ran: the step stops and leaves the state as it is."""


@dataclass(frozen=True)
class Step:
    task: str  # the Celery task name
    state: str  # the state it runs in
    next_state: str
    next_task: str | None


SEARCH_TASK = "soce.job.search"  # searching: names the study, asks the first trials
TRIAL_TASK = "soce.job.trial"  # searching: one trial; the last one moves the job to finalizing
FINALIZE_TASK = "soce.job.finalize"

# The steps that run once each and move the job on by themselves.
STEPS: dict[str, Step] = {
    s.task: s
    for s in (
        Step("soce.job.start", "queued", "scoring", "soce.job.score"),
        Step("soce.job.score", "scoring", "analysing", "soce.job.analyse"),
        Step("soce.job.analyse", "analysing", "searching", SEARCH_TASK),
        Step(FINALIZE_TASK, "finalizing", "done", None),
    )
}


@dataclass(frozen=True)
class Message:
    """A task to send once the step that named it has committed: its name and arguments."""

    task: str
    args: tuple[int, ...]


def _now() -> datetime:
    return datetime.now(UTC)


def _message(error: BaseException) -> str:
    text = str(error).strip()
    return text if isinstance(error, SoceError) and text else f"{type(error).__name__}: {text}"


# --- state --------------------------------------------------------------------------------------
def job_state(engine: Engine, job_id: int) -> str | None:
    with session_scope(engine) as session:
        return session.scalar(select(Job.state).where(Job.id == job_id))


def move_job(engine: Engine, job_id: int, *, from_state: str, to_state: str, **values: Any) -> bool:
    """Set the state (and other columns) only if the job is still in `from_state`; whether it was."""
    with session_scope(engine) as session:
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.state == from_state).values(state=to_state, **values)
        )
        return result.rowcount == 1


def fail_job(engine: Engine, job_id: int, message: str) -> bool:
    """Mark a job failed with `message`, unless it already finished (done, failed or cancelled)."""
    with session_scope(engine) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.not_in(JOB_FINISHED_STATES))
            .values(state="failed", error=message, finished_at=_now())
        )
        return result.rowcount == 1


def _merge_json(engine: Engine, job_id: int, column: str, values: dict[str, Any]) -> None:
    """Set top-level keys of a JSON column (read, merge, write: only this job's chain writes them)."""
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is not None:
            setattr(job, column, {**(getattr(job, column) or {}), **values})


class JobProgress(Stages):
    """Progress per stage in Job.progress ({stage: {done, total, unit}}); stops a cancelled job."""

    def __init__(self, engine: Engine, job_id: int, *, every: float = 0.5) -> None:
        super().__init__(quiet=True)
        self.engine, self.job_id, self.every = engine, job_id, every

    def cancelled(self) -> bool:
        return job_state(self.engine, self.job_id) == "cancelled"

    def check(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    @staticmethod
    def key(desc: str) -> str:
        return desc if desc.startswith("score") else desc.split()[0]  # "search tpe" -> "search"

    @contextmanager
    def stage(self, desc: str, total: int | None, unit: str = "step") -> Iterator[Advance]:
        self.check()
        key, done, last = self.key(desc), 0, 0.0

        def write() -> None:
            _merge_json(
                self.engine, self.job_id, "progress", {key: {"done": done, "total": total, "unit": unit}}
            )

        def advance(n: int = 1) -> None:
            nonlocal done, last
            done += n
            if time.monotonic() - last >= self.every or (total is not None and done >= total):
                last = time.monotonic()
                write()
                self.check()  # between tasks or trials, never inside an evaluation

        write()
        yield advance
        write()

    def note(self, message: str) -> None:
        log.info("job %d: %s", self.job_id, message)


# --- what a job is made of ------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """The job's recipe, suite and candidate folders, read from its rows."""

    job_id: int
    recipe: RunRecipe
    suite: SuiteSpec
    paths: dict[str, Path]  # label -> candidate folder
    extra_baselines: dict[str, Path] = field(default_factory=dict)  # name -> folder scored at finalize


def job_output(settings: Settings, job_id: int) -> Path:
    """Where a job's soup and report go: the same folder every time the step runs."""
    return settings.data_dir / "soups" / f"job-{job_id}"


def read_job(engine: Engine, job_id: int, settings: Settings) -> JobSpec:
    """The job's recipe (search settings from Job.recipe; candidates, suite and output from the rows)."""
    from soce.errors import RunRecipeError
    from workers.pipeline import candidate_labels

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
        output=str(job_output(settings, job_id)),
    )
    fields.setdefault("name", f"job-{job_id}")
    try:
        recipe = RunRecipe.parse(fields, where=f"job {job_id}: ")
    except RunRecipeError as e:
        raise JobError(str(e)) from None
    suite = SuiteSpec.parse(suite_spec, where=f"job {job_id}: suite: ")
    return JobSpec(job_id, recipe, suite, paths, extra)


EXTRA_BASELINES_KEY = "extra_baselines"  # in Job.recipe beside the search settings (schedules set it)


def extra_baselines(value: Any, *, where: str = "") -> dict[str, Path]:
    """Job.recipe's extra baselines, {name: model folder}, checked (the folders are checked at finalize)."""
    from workers.pipeline import BASELINES

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


_evaluators: dict[tuple, Any] = {}
_evaluators_lock = threading.Lock()


def run_inputs(spec: JobSpec, settings: Settings) -> Any:
    """The pipeline's RunInputs, with one evaluator per process and options (lm-eval tasks build once)."""
    from evaluators import apply_offline_environment, build_evaluator
    from workers.pipeline import RunInputs

    apply_offline_environment(settings)
    key = (spec.recipe.evaluator, spec.recipe.batch_size)
    with _evaluators_lock:
        evaluator = _evaluators.get(key)
        if evaluator is None:
            evaluator = build_evaluator(
                spec.recipe.evaluator, batch_size=spec.recipe.batch_size, settings=settings
            )
            _evaluators[key] = evaluator
    return RunInputs(spec.recipe, spec.suite, spec.paths, evaluator)


# --- resident candidates, kept between tasks -------------------------------------------------------
def _nbytes(resident: Any) -> int:
    experts = sum(t.numel() * t.element_size() for ts in resident.tensors.values() for t in ts.values())
    model = sum(p.numel() * p.element_size() for p in resident.model.parameters())
    return experts + model


class ResidentCache:
    """The process's resident soups, least recently used dropped first once over `max_bytes`.

    The newest entry is kept even when it alone is larger: the task that asked for it is using it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            value = build()
            self._items[key] = (value, _nbytes(value))
            while len(self._items) > 1 and sum(n for _, n in self._items.values()) > self.max_bytes:
                dropped, _ = self._items.popitem(last=False)
                log.info("resident cache: dropped %s", dropped[0][:2])
            return value

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_resident_cache: ResidentCache | None = None


def resident_cache(settings: Settings) -> ResidentCache:
    """This process's cache, its budget read from the settings (resident_cache_gib) on first use."""
    global _resident_cache
    if _resident_cache is None:
        _resident_cache = ResidentCache(int(settings.resident_cache_gib * (1 << 30)))
    return _resident_cache


def resident_soup(inputs: Any, settings: Settings) -> Any:
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
    return resident_cache(settings).get(
        key, lambda: ResidentSoup(inputs.paths, ev, inputs.suite, groups=inputs.recipe.layer_groups)
    )


# --- the steps ---------------------------------------------------------------------------------
@dataclass
class Context:
    engine: Engine
    settings: Settings
    job_id: int
    spec: JobSpec
    progress: JobProgress

    def stored(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job's analysis and timings as stored now."""
        with session_scope(self.engine) as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            return dict(job.analysis or {}), dict(job.timings or {})

    def matrices(self) -> Matrices:
        """The candidates' score matrices the score step stored: dev, test and the parts of dev."""
        from workers.pipeline import Matrices

        analysis, _ = self.stored()
        scores = analysis.get("scores") or {}
        if "dev" not in scores or "test" not in scores:
            raise JobError(f"job {self.job_id}: no stored score matrices (the score step did not finish)")
        return Matrices.from_dict(scores)


def start(ctx: Context) -> dict[str, Any]:
    """Check the candidates can be souped and the suite and recipe are valid."""
    from soce.checkpoints import Checkpoint, ensure_compatible

    ckpts = [Checkpoint.open(p) for p in ctx.spec.paths.values()]
    try:
        ensure_compatible(ckpts)
    finally:
        for c in ckpts:
            c.close()
    return {"started_at": _now(), "error": None}


def score(ctx: Context) -> dict[str, Any]:
    """Every candidate on dev and test, through the score cache."""
    from workers.pipeline import score_all

    started = time.perf_counter()
    inputs = run_inputs(ctx.spec, ctx.settings)
    matrices = score_all(inputs, engine=ctx.engine, stages=ctx.progress)
    record_candidate_hashes(ctx.engine, ctx.spec.job_id)
    analysis, timings = ctx.stored()
    cached = sum(s.cached_tasks for m in matrices.all for s in m.scores)
    evaluated = sum(len(s.tasks) for m in matrices.all for s in m.scores) - cached
    count_score_cache(ctx.settings.broker_url, hits=cached, misses=evaluated)
    analysis["scores"] = {**matrices.as_dict(), "cached_tasks": cached, "evaluated_tasks": evaluated}
    return {"analysis": analysis, "timings": {**timings, "score": time.perf_counter() - started}}


def record_candidate_hashes(engine: Engine, job_id: int) -> int:
    """Store the content hash of the job's candidates that have none (registered by a schedule's glob,
    or before the API's background hashing finished); how many were stored.

    Scoring hashed every tensor already, so the digests come from the digest cache. A folder whose
    hash does not match the one stored is left alone: the API hashes again on re-registration.
    """
    from soce.checkpoints import Checkpoint, checkpoint_hash

    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        todo = [(c.id, c.path) for c in job.candidates if c.content_hash is None and c.error is None]
    stored = 0
    for candidate_id, path in todo:
        try:
            with Checkpoint.open(path) as ckpt:
                digest = checkpoint_hash(ckpt)
        except SoceError as e:  # it was scored a moment ago; a hash is a label, never a reason to fail
            log.warning("job %d: candidate %d (%s) could not be hashed: %s", job_id, candidate_id, path, e)
            continue
        with session_scope(engine) as session:
            stored += (
                session.execute(
                    update(Candidate)
                    .where(Candidate.id == candidate_id, Candidate.content_hash.is_(None))
                    .values(content_hash=digest)
                ).rowcount
                or 0
            )
    return stored


def analyse(ctx: Context) -> dict[str, Any]:
    """Correlations on dev, weakly correlated categories and their experts."""
    from workers.pipeline import analyse_step

    started = time.perf_counter()
    matrices = ctx.matrices()
    result = analyse_step(matrices.search, ctx.spec.recipe, whole=matrices.dev)
    analysis, timings = ctx.stored()
    analysis.update(
        correlation=result.correlation.as_dict(),
        experts=[c.as_dict() for c in result.experts.choices],
        expert_candidates=list(result.experts.candidates),
        experts_fallback=result.experts.fallback,
        best_single=result.best_single,
        warnings=[*result.correlation.warnings, *result.experts.warnings],
    )
    return {"analysis": analysis, "timings": {**timings, "analyse": time.perf_counter() - started}}


def finalize(ctx: Context) -> dict[str, Any]:
    """Baselines, the soup written to the job's folder, test scores, report; the Soup row."""
    from soce.checkpoints import Checkpoint, checkpoint_hash
    from workers.pipeline import baselines_step, finalize_step, select_step
    from workers.trials import open_search

    started = time.perf_counter()
    inputs = run_inputs(ctx.spec, ctx.settings)
    resident = resident_soup(inputs, ctx.settings)
    inputs = replace(inputs, evaluator=resident.evaluator)
    matrices = ctx.matrices()
    analysis, search = open_search(ctx, inputs, resident)
    result = search.result()  # every trial has finished: the job left `searching` only then
    baselines = baselines_step(inputs, matrices.search, analysis, resident, stages=ctx.progress)
    selected = select_step(inputs, analysis, result, baselines, resident, stages=ctx.progress)
    stored, timings = ctx.stored()
    run = finalize_step(
        inputs,
        matrices,
        analysis,
        result,
        baselines,
        selected,
        resident,
        stages=ctx.progress,
        seconds=timings,
        extra_baselines=ctx.spec.extra_baselines,
    )
    soup_name = selected.soup_name
    assert soup_name is not None  # finalize_step refuses a selection without a soup
    weights = selected.weights[soup_name]
    with Checkpoint.open(run.soup_path) as ckpt:
        soup_hash = checkpoint_hash(ckpt)
    ingredients = []
    for label, w in zip(weights.experts, weights.weights, strict=True):
        with Checkpoint.open(inputs.paths[label]) as ckpt:
            ingredients.append(
                {
                    "label": label,
                    "path": str(inputs.paths[label]),
                    "content_hash": checkpoint_hash(ckpt),
                    "weight": w,
                }
            )
    soup = run.report["soup"]
    values = {
        "content_hash": soup_hash,
        "weights": weights.as_dict(),
        "scores": {
            "verdict": run.report["verdict"],
            "decision": run.report["decision"],
            "recommended": soup["recommended"],
            "dev_average": soup["dev_average"],
            "selection_average": soup["selection_average"],
            "test": soup["test"],
            "test_average": soup["test_average"],
            "test_average_interval": soup["test_average_interval"],
            "test_average_from_disk": soup["test_average_from_disk"],
            "intervals": soup["intervals"],
            "baselines": {
                name: {"test_average": b["test_average"], "dev_average": b["dev_average"]}
                for name, b in run.report["baselines"].items()
            },
        },
        "lineage": {
            "method": soup["method"],
            "dtype": soup["dtype"],
            "ingredients": ingredients,
            "study": result.study_name,
            "trial": selected.trials.get(soup_name),
            "source": soup["source"],
            "report": str(run.report_json),
        },
    }
    with session_scope(ctx.engine) as session:  # one row per job and folder, also when run twice
        values["scores"].update(_extra_baseline_scores(session, run.report, ctx.spec.extra_baselines))
        row = session.scalar(select(Soup).where(Soup.job_id == ctx.job_id, Soup.path == str(run.soup_path)))
        if row is None:
            session.add(Soup(job_id=ctx.job_id, path=str(run.soup_path), **values))
        else:
            for k, v in values.items():
                setattr(row, k, v)
    stored["report"] = {"json": str(run.report_json), "html": str(run.report_html)}
    stored["verdict"] = run.report["verdict"]
    stored["decision"] = run.report["decision"]
    stored["selection"] = run.report["selection"]
    stored["warnings"] = run.report["warnings"]
    timings = {**timings, "finalize": time.perf_counter() - started}
    return {"analysis": stored, "timings": timings, "finished_at": _now()}


def _extra_baseline_scores(session: Any, report: dict[str, Any], extra: dict[str, Path]) -> dict[str, Any]:
    """`vs_<name>` per extra baseline (a schedule's champion): the paired soup-minus-it interval, or why not.

    `soup_id` is the Soup row stored at that folder (None if it is no soup of ours): the promotion gate
    uses the interval only when it is the schedule's champion still.
    """
    out: dict[str, Any] = {}
    for name, folder in extra.items():
        where = Soup.path == str(folder)
        soup_id = session.scalar(select(Soup.id).where(where).order_by(Soup.id.desc()).limit(1))
        entry: dict[str, Any] = {"path": str(folder), "soup_id": soup_id}
        interval = report["soup"]["intervals"].get(f"vs_{name}")
        if interval is None:
            entry["error"] = report["baselines_not_scored"].get(name, {}).get("error", "not scored")
        else:
            entry.update(
                difference=interval["diff"],
                interval=[interval["low"], interval["high"]],
                level=interval["level"],
                test_average=report["baselines"][name]["test_average"],
            )
        out[f"vs_{name}"] = entry
    return out


STEP_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "soce.job.start": start,
    "soce.job.score": score,
    "soce.job.analyse": analyse,
    "soce.job.finalize": finalize,
}


def run_step(
    task: str,
    job_id: int,
    *,
    redelivered: bool = False,
    settings: Settings | None = None,
    engine: Engine | None = None,
) -> str | None:
    """Run one step of a job if the job is in its state; the task to enqueue next (after this commit).

    A redelivered message for a job already past this step enqueues the next step again: the worker
    that ran it may have died between its commit and its enqueue (the next step is idempotent).
    """
    settings = settings or get_settings()
    engine = engine or get_engine(settings.app_database_url())
    step = STEPS[task]
    state = job_state(engine, job_id)
    if state != step.state:
        if state == step.next_state and redelivered and step.next_task:
            log.warning(
                "job %d: %s redelivered after its commit; enqueuing %s again", job_id, task, step.next_task
            )
            return step.next_task
        log.info("job %d is %s; %s has nothing to do", job_id, state or "missing", task)
        return None
    progress = JobProgress(engine, job_id)
    try:
        spec = read_job(engine, job_id, settings)
        values = STEP_FUNCTIONS[task](Context(engine, settings, job_id, spec, progress))
    except JobCancelled:
        log.info("job %d: cancelled during %s", job_id, task)
        return None
    except Exception as e:
        if progress.cancelled():  # whatever broke, the job was cancelled: that is its outcome
            log.info("job %d: cancelled during %s (%s)", job_id, task, _message(e))
            return None
        log.exception("job %d: %s failed", job_id, task)
        fail_job(engine, job_id, f"{task.removeprefix('soce.job.')}: {_message(e)}")
        return None
    if not move_job(engine, job_id, from_state=step.state, to_state=step.next_state, **values):
        log.info("job %d left %s while %s ran (now %s)", job_id, step.state, task, job_state(engine, job_id))
        return None
    return step.next_task


def run_task(
    task: str,
    args: Sequence[int],
    *,
    redelivered: bool = False,
    settings: Settings | None = None,
    engine: Engine | None = None,
) -> list[Message]:
    """Run the task `task` of a job (args: job id, then a trial number); the messages to send next."""
    from workers.trials import run_trial, start_search

    settings = settings or get_settings()
    engine = engine or get_engine(settings.app_database_url())
    job_id = int(args[0])
    if task == SEARCH_TASK:
        return start_search(job_id, redelivered=redelivered, settings=settings, engine=engine)
    if task == TRIAL_TASK:
        number = int(args[1])
        return run_trial(job_id, number, redelivered=redelivered, settings=settings, engine=engine)
    following = run_step(task, job_id, redelivered=redelivered, settings=settings, engine=engine)
    return [Message(following, (job_id,))] if following else []


def run_job(job_id: int, *, settings: Settings | None = None, engine: Engine | None = None) -> str | None:
    """Every task of a job in this process, one at a time in the order sent (embedded mode); its state."""
    settings = settings or get_settings()
    engine = engine or get_engine(settings.app_database_url())
    pending = deque([Message("soce.job.start", (job_id,))])
    while pending:
        message = pending.popleft()
        pending.extend(run_task(message.task, message.args, settings=settings, engine=engine))
    return job_state(engine, job_id)
