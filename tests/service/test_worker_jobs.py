"""Jobs through a real Celery worker on Redis, the app database and Optuna's on PostgreSQL.

One worker process serves the module; the tests run in order: a job to done, a second job over the
same candidates (no scoring again, then cancelled), a job whose worker is killed mid-search, and a
job whose messages Redis lost, taken on again by the sweep.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import optuna
import pytest
from sqlalchemy import func, inspect, select, update

from soce.db import JOB_FINISHED_STATES, Job, Score, Soup, create_app_engine, session_scope
from tests.service.conftest import Worker, create_job, wait_for

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 1200  # seconds: every evaluation takes seconds on a loaded 2-core machine
# trials of the jobs whose worker dies mid-trial: a tiny-zoo trial can take under a second, and the
# test must see one running before the search is over
CATCHABLE_TRIALS = 10


@pytest.fixture(scope="module")
def app_engine(service_databases):
    engine = create_app_engine(service_databases[0])
    yield engine
    engine.dispose()


def read_job(engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def finished(engine, job_id: int) -> Job | None:
    job = read_job(engine, job_id)
    return job if job.state in JOB_FINISHED_STATES else None


def score_rows(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Score))


def trials(optuna_url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study_name, storage=optuna_url).get_trials(deepcopy=False)


def trial_running(engine, optuna_url: str, job_id: int) -> bool:
    """The job searches and one of its trials runs (its study may not exist yet)."""
    job = read_job(engine, job_id)
    assert job.state not in JOB_FINISHED_STATES, f"{job.state}: {job.error}"
    if job.state != "searching" or not job.study_name:
        return False
    try:
        return any(t.state.name == "RUNNING" for t in trials(optuna_url, job.study_name))
    except KeyError:  # the study is not created yet
        return False


def test_job_runs_to_done(tiny_zoo, app_engine, service_databases, worker: Worker, producer):
    started = time.monotonic()
    job_id = create_job(app_engine, tiny_zoo, name="first", seed=0)
    producer.send_task("soce.job.start", args=[job_id], queue="cpu")
    job = wait_for(lambda: finished(app_engine, job_id), timeout=JOB_TIMEOUT, what="job 1", worker=worker)
    print(f"job {job_id} done in {time.monotonic() - started:.0f} s; timings {job.timings}")
    assert job.state == "done", f"{job.state}: {job.error}\n{worker.log_tail()}"
    assert job.error is None and job.started_at and job.finished_at
    # progress per stage, every stage complete
    assert {"score dev", "score test", "search", "baselines", "test"} <= set(job.progress)
    assert all(p["done"] == p["total"] for p in job.progress.values()), job.progress
    assert {"score", "analyse", "search", "finalize"} <= set(job.timings)
    assert job.analysis["scores"]["evaluated_tasks"] > 0
    assert len(job.analysis["expert_candidates"]) >= 2

    # the Soup row and its folder, which loads
    with session_scope(app_engine) as session:
        soups = list(session.scalars(select(Soup).where(Soup.job_id == job_id)))
        assert len(soups) == 1
        soup = soups[0]
        session.expunge(soup)
    folder = Path(soup.path)
    assert folder.parent.name == f"job-{job_id}"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(folder / "model.safetensors", "pt") as f:
        assert len(list(f.keys())) > 0
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) > 0
    # the soup written: the chosen one, or the best on the selection part, over candidates of the job
    assert set(soup.weights["weights"]) <= set(job.analysis["scores"]["dev"]["candidates"])
    stored = job.analysis["report"]  # the typed Report, as report.json holds it
    assert soup.scores["decision"] == stored["decision"] and stored["verdict"]
    selection = stored["selection"]
    written = selection["chosen"] if stored["decision"]["kind"] == "soup" else selection["best_soup"]
    assert soup.lineage["source"] == written
    assert sum(soup.weights["weights"].values()) == pytest.approx(1.0)
    assert soup.content_hash and len(soup.lineage["ingredients"]) == len(soup.weights["weights"])
    assert soup.lineage["study"] == job.study_name
    report = json.loads(Path(job.analysis["files"]["json"]).read_text())
    assert report == stored
    assert report["soup"]["test_average"] == pytest.approx(soup.scores["test_average"])

    # the trials are in Optuna's own database, read with Optuna's own API
    optuna_url = service_databases[1]
    assert job.study_name in optuna.get_all_study_names(storage=optuna_url)
    done = [t for t in trials(optuna_url, job.study_name) if t.state.name == "COMPLETE"]
    assert len(done) == 3
    categories = set(report["categories"])
    for t in done:
        assert set(t.user_attrs["category_scores"]) == categories
        assert all(0.0 <= v <= 1.0 for v in t.user_attrs["category_scores"].values())
        assert t.value == pytest.approx(t.user_attrs["objective"])
    assert max(t.value for t in done) == pytest.approx(job.analysis["search"]["best_dev_objective"])
    # and the two databases share no tables
    optuna_engine = create_app_engine(optuna_url)
    try:
        assert not inspect(optuna_engine).has_table("jobs")
        assert inspect(optuna_engine).has_table("studies")
    finally:
        optuna_engine.dispose()
    assert not inspect(app_engine).has_table("studies")


def test_second_job_scores_nothing_again_and_cancel_stops_it(
    tiny_zoo, app_engine, service_databases, worker: Worker, producer
):
    before = score_rows(app_engine)
    assert before > 0
    job_id = create_job(app_engine, tiny_zoo, name="second", seed=1, n_trials=40)
    producer.send_task("soce.job.start", args=[job_id], queue="cpu")

    def searching() -> Job | None:
        job = read_job(app_engine, job_id)
        assert job.state not in JOB_FINISHED_STATES, f"{job.state}: {job.error}"
        return job if "search" in job.progress and job.progress["search"]["done"] >= 1 else None

    job = wait_for(searching, timeout=JOB_TIMEOUT, what="job 2 to search", worker=worker)
    assert score_rows(app_engine) == before, "the second job scored candidates again"
    assert job.analysis["scores"]["evaluated_tasks"] == 0
    assert job.analysis["scores"]["cached_tasks"] > 0

    # cancel as the API does: the state, nothing else
    with session_scope(app_engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.not_in(JOB_FINISHED_STATES))
            .values(state="cancelled")
        )
    optuna_url = service_databases[1]

    def settled() -> int | None:
        found = trials(optuna_url, job.study_name)
        return len(found) if not any(t.state.name == "RUNNING" for t in found) else None

    count = wait_for(settled, timeout=300, what="the running trial to end", worker=worker)
    time.sleep(15)  # time for more trials, were the search still going
    assert len(trials(optuna_url, job.study_name)) == count < 40
    job = read_job(app_engine, job_id)
    assert job.state == "cancelled" and job.error is None
    with session_scope(app_engine) as session:
        assert session.scalar(select(func.count()).select_from(Soup).where(Soup.job_id == job_id)) == 0


def test_killed_worker_has_its_task_redelivered(
    tiny_zoo, app_engine, service_databases, worker: Worker, producer
):
    job_id = create_job(app_engine, tiny_zoo, name="killed", seed=2, n_trials=CATCHABLE_TRIALS)
    producer.send_task("soce.job.start", args=[job_id], queue="cpu")
    optuna_url = service_databases[1]

    wait_for(
        lambda: trial_running(app_engine, optuna_url, job_id),
        timeout=JOB_TIMEOUT,
        what="job 3's first trial",
        worker=worker,
        every=0.1,
    )
    worker.kill()
    killed_at = time.monotonic()
    worker.start()
    job = wait_for(lambda: finished(app_engine, job_id), timeout=JOB_TIMEOUT, what="job 3", worker=worker)
    print(f"job {job_id} done {time.monotonic() - killed_at:.0f} s after its worker was killed")
    assert job.state == "done", f"{job.state}: {job.error}\n{worker.log_tail()}"
    assert "soce.job.trial" in worker.log_tail(10**6), "the new worker did not get the trial task"
    states = [t.state.name for t in trials(optuna_url, job.study_name)]
    assert states.count("COMPLETE") == CATCHABLE_TRIALS, states
    assert "RUNNING" not in states
    with session_scope(app_engine) as session:
        assert session.scalar(select(func.count()).select_from(Soup).where(Soup.job_id == job_id)) == 1


def test_a_job_whose_messages_were_lost_is_finished_after_the_sweep(
    tiny_zoo, app_engine, service_databases, redis_url: str, worker: Worker, producer
):
    import redis

    from soce.config import Settings
    from workers.sweep import sweep

    job_id = create_job(app_engine, tiny_zoo, name="lost", seed=3, n_trials=CATCHABLE_TRIALS)
    producer.send_task("soce.job.start", args=[job_id], queue="cpu")
    optuna_url = service_databases[1]

    wait_for(
        lambda: trial_running(app_engine, optuna_url, job_id),
        timeout=JOB_TIMEOUT,
        what="job 4's first trial",
        worker=worker,
        every=0.1,
    )
    # the worker dies and Redis loses every message, delivered or not: nothing would ever come back
    worker.kill()
    redis.Redis.from_url(redis_url).flushdb()
    worker.start()
    time.sleep(5)
    job = read_job(app_engine, job_id)
    assert job.state == "searching", f"{job.state}: {job.error}"
    running = [t.number for t in trials(optuna_url, job.study_name) if t.state.name == "RUNNING"]
    assert running, "the killed worker's trial should still be running in the study"

    settings = Settings(optuna_storage_url=optuna_url)
    sent = sweep(
        app_engine,
        datetime.now(UTC) + timedelta(seconds=2),
        settings=settings,
        send=lambda task, args: producer.send_task(task, args=args),
        stall_seconds=1,
    )
    assert sent == [(job_id, "soce.job.trial")] * len(running)
    job = wait_for(lambda: finished(app_engine, job_id), timeout=JOB_TIMEOUT, what="job 4", worker=worker)
    assert job.state == "done", f"{job.state}: {job.error}\n{worker.log_tail()}"
    assert job.progress["sweep"]["count"] == 1
    states = [t.state.name for t in trials(optuna_url, job.study_name)]
    assert states.count("COMPLETE") == CATCHABLE_TRIALS and "RUNNING" not in states, states
