"""Trial tasks run one by one in this process on PostgreSQL and Redis: fan-out, redelivery, cancel.

Every task is called as a worker would call it (workers.flow.run_task) and returns the messages it
would send, so the order of deliveries, a redelivery after a crash and a cancel in between are chosen
by the test. The tests run in order on one app database, one Optuna database and one Redis database.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import redis
from sqlalchemy import func, select, update

from soce.config import Settings
from soce.db import Job, Soup, create_app_engine, session_scope
from soce.schemas.suite import SuiteSpec
from tests.service.conftest import create_job
from workers.context import Message
from workers.flow import run_job, run_task
from workers.metrics import SCORE_CACHE_HITS_KEY, SCORE_CACHE_MISSES_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(service_databases, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    app_url, optuna_url = service_databases
    return Settings(
        database_url=app_url,
        optuna_storage_url=optuna_url,
        broker_url=redis_url,
        data_dir=tmp_path_factory.mktemp("trial-data"),
    )


@pytest.fixture(scope="module")
def engine(settings: Settings):
    engine = create_app_engine(settings.app_database_url())
    yield engine
    engine.dispose()


def counters(settings: Settings) -> tuple[int, int]:
    client = redis.Redis.from_url(settings.broker_url)
    try:
        hits, misses = client.mget([SCORE_CACHE_HITS_KEY, SCORE_CACHE_MISSES_KEY])
        return int(hits or 0), int(misses or 0)
    finally:
        client.close()


def read(engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def lookups(zoo: Path) -> int:
    """Candidate x task scores a job looks up: every candidate on every task, on dev, test and the
    search and selection parts of dev."""
    tasks = len(SuiteSpec.from_file(zoo / "suite.yaml").tasks)
    return 4 * tasks * len(list((zoo / "candidates").iterdir()))


def trial(job_id: int, number: int) -> Message:
    return Message("soce.job.trial", (job_id, number))


def test_trials_fan_out_and_survive_redelivery(tiny_zoo: Path, engine, settings: Settings):
    def run(message: Message, *, redelivered: bool = False) -> list[Message]:
        return run_task(message.task, message.args, redelivered=redelivered, settings=settings, engine=engine)

    job_id = create_job(engine, tiny_zoo, name="fan-out", seed=0, n_trials=4, parallel_trials=2)
    sent = [Message("soce.job.start", (job_id,))]
    for task in ("soce.job.start", "soce.job.score", "soce.job.analyse"):
        assert [m.task for m in sent] == [task]
        sent = run(sent[0])
    assert read(engine, job_id).state == "searching"
    assert counters(settings) == (0, lookups(tiny_zoo))  # every score evaluated: all misses

    search = sent[0]
    assert search == Message("soce.job.search", (job_id,))
    assert run(search) == [trial(job_id, 0), trial(job_id, 1)]  # P = 2 at once
    assert run(trial(job_id, 0)) == [trial(job_id, 2)]  # told, and the next one asked
    # delivered again after its tell (the worker died before acknowledging): it asks nothing new,
    # and sends again the trial it asked, whose message may never have left
    assert run(trial(job_id, 0), redelivered=True) == [trial(job_id, 2)]
    assert run(search, redelivered=True) == [trial(job_id, 1)]
    assert run(trial(job_id, 1)) == [trial(job_id, 3)]
    assert run(trial(job_id, 2)) == []  # 3 finished, 1 running: the budget of 4 is used up
    assert read(engine, job_id).progress["search"] == {"done": 3, "total": 4, "unit": "trial", "running": 1}
    assert run(trial(job_id, 3)) == [Message("soce.job.finalize", (job_id,))]
    job = read(engine, job_id)
    assert job.state == "finalizing" and job.analysis["search"]["finished_by"] == 3
    # only the task that moved the job on sends finalize again when redelivered
    assert run(trial(job_id, 3), redelivered=True) == [Message("soce.job.finalize", (job_id,))]
    assert run(trial(job_id, 2), redelivered=True) == []
    assert run(Message("soce.job.finalize", (job_id,))) == []

    job = read(engine, job_id)
    assert job.state == "done", job.error
    assert job.progress["search"]["done"] == job.progress["search"]["total"] == 4
    assert {"score", "analyse", "search", "finalize"} <= set(job.timings)
    study = optuna.load_study(study_name=job.study_name, storage=settings.optuna_url())
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert [t.user_attrs["asked_by"] for t in study.trials] == ["search", "search", 0, 1]
    categories = set(SuiteSpec.from_file(tiny_zoo / "suite.yaml").category_names)
    for t in study.trials:
        assert t.user_attrs["job"] == job_id and t.user_attrs["worker"]
        assert set(t.user_attrs["category_scores"]) == categories
        assert t.value == pytest.approx(t.user_attrs["objective"])
    uniform = list(study.trials[0].user_attrs["weights"].values())  # the search starts at the uniform soup
    assert uniform == pytest.approx([1 / len(uniform)] * len(uniform))
    assert job.analysis["search"]["best_dev_objective"] == pytest.approx(max(t.value for t in study.trials))


def test_a_second_job_scores_nothing_and_continues_the_study(tiny_zoo: Path, engine, settings: Settings):
    hits, misses = counters(settings)
    with session_scope(engine) as session:
        first = session.scalar(select(Job.study_name).where(Job.name == "fan-out"))
    job_id = create_job(engine, tiny_zoo, name="again", seed=0, n_trials=5, parallel_trials=2)
    assert run_job(job_id, settings=settings, engine=engine) == "done", read(engine, job_id).error
    assert counters(settings) == (hits + lookups(tiny_zoo), misses)  # every score from the cache
    job = read(engine, job_id)
    assert job.analysis["scores"]["evaluated_tasks"] == 0
    assert job.study_name == first  # the same search: the study goes on from 4 trials to 5
    study = optuna.load_study(study_name=job.study_name, storage=settings.optuna_url())
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert study.trials[4].user_attrs["job"] == job_id


def test_cancel_stops_new_trials(tiny_zoo: Path, engine, settings: Settings):
    job_id = create_job(engine, tiny_zoo, name="cancelled", seed=3, n_trials=6, parallel_trials=2)
    sent = [Message("soce.job.start", (job_id,))]
    while sent and sent[0].task != "soce.job.trial":
        sent = run_task(sent[0].task, sent[0].args, settings=settings, engine=engine)
    assert sent == [trial(job_id, 0), trial(job_id, 1)]
    with session_scope(engine) as session:  # as the API cancels: the state, nothing else
        session.execute(update(Job).where(Job.id == job_id).values(state="cancelled"))
    for message in sent:  # delivered after the cancel: not evaluated, nothing more asked
        assert run_task(message.task, message.args, settings=settings, engine=engine) == []
    job = read(engine, job_id)
    assert job.state == "cancelled" and job.error is None
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Soup).where(Soup.job_id == job_id)) == 0
    study = optuna.load_study(study_name=job.study_name, storage=settings.optuna_url())
    states = [t.state.name for t in study.trials]
    assert states[:2] == ["FAIL", "FAIL"] and "RUNNING" not in states and "COMPLETE" not in states
    assert study.trials[0].user_attrs["error"] == f"job {job_id} is cancelled"
    assert "category_scores" not in study.trials[0].user_attrs
