"""The steps of a job that run once each: start, score, analyse, finalize (the search is workers.trials).

Each takes the job's Context and returns the columns to set as the job moves to its next state
(workers.flow commits them with the state change). A step is safe to run twice: scores are cached by
content, the soup folder is at a fixed path and replaced atomically, the Soup row is written once per
folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from soce.db import Candidate, Job, Soup, session_scope
from soce.errors import SoceError
from soce.schemas.report import Report, soup_scores
from workers.context import Context, resident_soup, run_inputs
from workers.jobrows import now
from workers.metrics import count_score_cache

log = logging.getLogger(__name__)


def start(ctx: Context) -> dict[str, Any]:
    """Check the candidates can be souped (the suite and recipe were checked reading the job)."""
    from workers.pipeline import ensure_soupable

    ensure_soupable(ctx.spec.paths.values())
    return {"started_at": now(), "error": None}


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
    """Store the content hash of the job's candidates that have none (registered by a schedule's glob
    or by a local run, or before the cpu queue's hashing finished); how many were stored.

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
    """Correlations on the search part of dev, weakly correlated categories, their experts."""
    from workers.pipeline import analyse_step

    started = time.perf_counter()
    matrices = ctx.matrices()
    result = analyse_step(matrices.search, ctx.spec.recipe, whole=matrices.dev).result()
    for warning in result.warnings:
        ctx.progress.note(f"warning: {warning}")
    weak = result.correlation.weak_categories
    ctx.progress.note(
        f"ingredients: {', '.join(result.expert_candidates)}"
        + (f" (weakly correlated: {', '.join(weak)})" if weak else "")
    )
    similarity, notes = basin_check(ctx.spec.paths)
    result = result.model_copy(update={"similarity": similarity, "warnings": [*result.warnings, *notes]})
    for warning in notes:
        ctx.progress.note(f"warning: {warning}")
    analysis, timings = ctx.stored()
    analysis.update(result.model_dump(mode="json"))
    return {"analysis": analysis, "timings": {**timings, "analyse": time.perf_counter() - started}}


def basin_check(paths: dict[str, Path]) -> tuple[Any, list[str]]:
    """The candidates' basin check (soce.merging.similarity), named by their labels, and its warnings;
    (None, []) for a single candidate. A check that cannot read a checkpoint is a warning, not a failed
    job: the merge reads the same files and says what is wrong with them."""
    from soce.merging.similarity import checkpoint_similarity

    if len(paths) < 2:
        return None, []
    labels = {Path(p).resolve(): label for label, p in paths.items()}
    try:
        result = checkpoint_similarity(list(paths.values()))
    except SoceError as e:
        log.warning("basin check failed: %s", e)
        return None, [f"the basin check could not run: {e}"]

    def name(path: str) -> str:
        return labels.get(Path(path).resolve(), path)

    warnings = []
    for warning in result.warnings:
        for path in result.candidates:
            warning = warning.replace(path, name(path))
        warnings.append(warning)
    return result.model_copy(
        update={
            "candidates": [name(c) for c in result.candidates],
            "basins": [[name(c) for c in b] for b in result.basins],
            "flagged": [name(c) for c in result.flagged],
            "warnings": warnings,
        }
    ), warnings


def finalize(ctx: Context) -> dict[str, Any]:
    """Baselines, the final choice, the soup written to the job's folder, test scores and the Report;
    the Soup row."""
    from workers.finalize import finalize_step
    from workers.pipeline import baselines_step
    from workers.selecting import select_step
    from workers.trials import open_search

    started = time.perf_counter()
    inputs = run_inputs(ctx.spec, ctx.settings)
    resident = resident_soup(inputs, ctx.settings)
    inputs = replace(inputs, evaluator=resident.evaluator)
    matrices = ctx.matrices()
    analysis, search = open_search(ctx, inputs, resident)
    result = search.result()  # every trial has finished: the job left `searching` only then
    t = time.perf_counter()
    baselines = baselines_step(
        inputs, matrices.search, analysis, resident, stages=ctx.progress, engine=ctx.engine
    )
    selected = select_step(
        inputs, analysis, result, baselines, resident, stages=ctx.progress, engine=ctx.engine
    )
    stored, timings = ctx.stored()
    timings["select"] = time.perf_counter() - t
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
        similarity=stored.get("similarity"),
        engine=ctx.engine,
        finalize_started=started,
        job_started=job_started(ctx.engine, ctx.job_id),
    )
    store_soup(ctx, run.report, run.soup_path, study=result.study_name, trial=selected.trials)
    stored["files"] = {"json": str(run.report_json), "html": str(run.report_html)}
    stored["report"] = run.report.as_json()
    timings = {**timings, "finalize": time.perf_counter() - started}
    return {"analysis": stored, "timings": timings, "finished_at": now()}


def job_started(engine: Engine, job_id: int) -> datetime | None:
    """When the job's start step ran (else when it was queued): where the report's total time begins,
    whichever workers ran its tasks."""
    with session_scope(engine) as session:
        row = session.execute(select(Job.started_at, Job.created_at).where(Job.id == job_id)).first()
    return None if row is None else (row.started_at or row.created_at)


def store_soup(ctx: Context, report: Report, soup_path: Path, *, study: str, trial: dict[str, int]) -> None:
    """The Soup row of the folder the job wrote: its weights, scores from the report, and lineage."""
    from soce.checkpoints import Checkpoint, checkpoint_hash

    soup = report.soup
    with Checkpoint.open(soup_path) as ckpt:
        soup_hash = checkpoint_hash(ckpt)
    ingredients = []
    for label, w in report.weights.items():
        path = ctx.spec.paths[label]
        with Checkpoint.open(path) as ckpt:
            ingredients.append(
                {"label": label, "path": str(path), "content_hash": checkpoint_hash(ckpt), "weight": w}
            )
    weights: dict[str, Any] = {"weights": report.weights}
    if report.layer_weights:
        weights["layer_weights"] = report.layer_weights
    values = {
        "content_hash": soup_hash,
        "weights": weights,
        "scores": soup_scores(report),
        "lineage": {
            "method": soup.method,
            "dtype": soup.dtype,
            "ingredients": ingredients,
            "study": study,
            "trial": trial.get(soup.source),
            "source": soup.source,
            "report": str(Path(report.soup.path).parent / "report.json"),
        },
    }
    with session_scope(ctx.engine) as session:  # one row per job and folder, also when run twice
        values["scores"].update(_extra_baseline_scores(session, report, ctx.spec.extra_baselines))
        row = session.scalar(select(Soup).where(Soup.job_id == ctx.job_id, Soup.path == str(soup_path)))
        if row is None:
            session.add(Soup(job_id=ctx.job_id, path=str(soup_path), **values))
        else:
            for k, v in values.items():
                setattr(row, k, v)


def _extra_baseline_scores(session: Any, report: Report, extra: dict[str, Path]) -> dict[str, Any]:
    """`vs_<name>` per extra baseline (a schedule's champion): the paired soup-minus-it interval, or why not.

    `soup_id` is the Soup row stored at that folder (None if it is no soup of ours): the promotion gate
    uses the interval only when it is the schedule's champion still.
    """
    out: dict[str, Any] = {}
    for name, folder in extra.items():
        where = Soup.path == str(folder)
        soup_id = session.scalar(select(Soup.id).where(where).order_by(Soup.id.desc()).limit(1))
        entry: dict[str, Any] = {"path": str(folder), "soup_id": soup_id}
        interval = report.soup.intervals.get(f"vs_{name}")
        if interval is None:
            missing = report.baselines_not_scored.get(name)
            entry["error"] = missing.error if missing else "not scored"
        else:
            entry.update(
                difference=interval.diff,
                interval=[interval.low, interval.high],
                level=interval.level,
                test_average=report.baselines[name].test_average,
            )
        out[f"vs_{name}"] = entry
    return out
