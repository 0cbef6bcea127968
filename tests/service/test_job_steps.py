"""The job state machine in-process (workers.jobs) on a real PostgreSQL: no worker, no evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from soce.config import Settings
from soce.db import Candidate, Job, Suite, create_app_engine, session_scope
from soce.db.migrate import upgrade
from tests.db.conftest import postgres_url  # noqa: F401  (a fixture, used by name)
from workers.jobs import ResidentCache, run_job, run_step

SUITE = {"name": "s", "categories": [{"name": "a", "tasks": [{"name": "t_a"}]}]}


@pytest.fixture
def engine(postgres_url: str):  # noqa: F811
    engine = create_app_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def add_job(engine, folders: list[Path], *, state: str = "queued", recipe: dict | None = None) -> int:
    with session_scope(engine) as session:
        suite = session.scalar(select(Suite)) or Suite(name="s", spec=SUITE, content_hash="0" * 64)
        job = Job(
            name="j",
            suite=suite,
            recipe=recipe or {"n_trials": 3},
            state=state,
            candidates=[Candidate(name=p.name, path=str(p)) for p in folders],
        )
        session.add(job)
        session.flush()
        return job.id


def read(engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def test_missing_candidate_fails_the_job_with_its_name(engine, settings, tmp_path: Path):
    job_id = add_job(engine, [tmp_path / "gone-a", tmp_path / "gone-b"])
    assert run_job(job_id, settings=settings, engine=engine) == "failed"
    job = read(engine, job_id)
    assert job.error.startswith("start: ") and "gone-a" in job.error and job.finished_at


def test_incompatible_candidates_fail_at_start(engine, settings, make_checkpoints):
    a = make_checkpoints(1, hidden=32)
    b = make_checkpoints(1, hidden=64)
    job_id = add_job(engine, [*a, *b])
    assert run_step("soce.job.start", job_id, settings=settings, engine=engine) is None
    job = read(engine, job_id)
    assert job.state == "failed" and job.error


def test_bad_recipe_is_refused_naming_the_field(engine, settings, make_checkpoints):
    job_id = add_job(engine, make_checkpoints(2), recipe={"n_trials": 0})
    run_step("soce.job.start", job_id, settings=settings, engine=engine)
    job = read(engine, job_id)
    assert job.state == "failed" and "n_trials" in job.error


def test_start_moves_a_valid_job_to_scoring(engine, settings, make_checkpoints):
    job_id = add_job(engine, make_checkpoints(2))
    assert run_step("soce.job.start", job_id, settings=settings, engine=engine) == "soce.job.score"
    job = read(engine, job_id)
    assert job.state == "scoring" and job.started_at and job.error is None
    # run again (a redelivered message): nothing to do, unless redelivered after its commit
    assert run_step("soce.job.start", job_id, settings=settings, engine=engine) is None
    assert run_step("soce.job.start", job_id, redelivered=True, settings=settings, engine=engine) == (
        "soce.job.score"
    )
    assert read(engine, job_id).state == "scoring"


@pytest.mark.parametrize("task", ["soce.job.start", "soce.job.score", "soce.job.search"])
def test_cancelled_and_finished_jobs_are_left_alone(engine, settings, make_checkpoints, task):
    for state in ("cancelled", "done", "failed"):
        job_id = add_job(engine, make_checkpoints(2), state=state)
        assert run_step(task, job_id, redelivered=True, settings=settings, engine=engine) is None
        assert read(engine, job_id).state == state


def test_missing_job_is_nothing_to_do(engine, settings):
    assert run_step("soce.job.score", 123456, settings=settings, engine=engine) is None


class Fake:
    def __init__(self, nbytes: int) -> None:
        import torch

        self.tensors = {"x": {"w": torch.zeros(nbytes // 4)}}
        self.model = torch.nn.Linear(1, 1, bias=False)  # 4 bytes


def test_resident_cache_drops_least_recently_used_by_bytes():
    cache = ResidentCache(max_bytes=1000)
    built: list[str] = []

    def build(name: str, nbytes: int):
        def make():
            built.append(name)
            return Fake(nbytes)

        return make

    a = cache.get(("a",), build("a", 400))
    assert cache.get(("a",), build("a", 400)) is a
    cache.get(("b",), build("b", 400))
    cache.get(("a",), build("a", 400))  # a is now the most recent
    cache.get(("c",), build("c", 400))  # over 1000 bytes: b goes
    assert built == ["a", "b", "c"]
    cache.get(("a",), build("a", 400))
    cache.get(("b",), build("b", 400))
    assert built == ["a", "b", "c", "b"]
    cache.get(("big",), build("big", 4000))  # larger than the budget alone: kept, the rest dropped
    assert cache.nbytes == 4004 and (cache.hits, cache.misses) == (3, 5)
