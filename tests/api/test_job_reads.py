"""The job read paths: the same bodies the entities gave, in a fixed number of queries, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from api import job_reads
from api.schemas import CandidateBrief, JobDetail, JobPublic, SoupBrief, SuiteBrief
from soce.db import Candidate, Job, Soup, Suite, create_app_engine, session_scope
from soce.db.migrate import upgrade
from tests.api.conftest import TABLES
from tests.api.factories import STUDY, counted, fill_study


def fill(engine: Engine, *, jobs: int = 6) -> None:
    """A suite, four candidates and `jobs` jobs with different members; job 3 has two soups."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with session_scope(engine) as session:
        suite = Suite(name="mini", spec={"name": "mini", "categories": []}, content_hash="s" * 64)
        cands = [
            Candidate(
                name=f"c{i}", path=f"/ckpt/c{i}", content_hash=None if i == 3 else f"{i}" * 64, tags=["t"]
            )
            for i in range(4)
        ]
        session.add_all([suite, *cands])
        for n in range(jobs):
            job = Job(
                name=f"{'50%_done' if n == 4 else 'run'}-{n}",
                suite=suite,
                candidates=[cands[(n + k) % 4] for k in range(2 + n % 3)],
                recipe={"sampler": "grid", "tau": 0.3},
                state=("queued", "searching", "done")[n % 3],
                progress={"score": {"done": n, "total": 8}} if n % 2 else {},
                timings={"score": 1.5} if n % 2 else {},
                analysis={"experts": [{"category": "a", "candidate": "c0"}]} if n % 3 == 2 else None,
                error="boom" if n == 3 else None,
                created_at=now + timedelta(minutes=n),
                started_at=now + timedelta(minutes=n, seconds=5) if n else None,
            )
            session.add(job)
            session.flush()
            if n == 2:
                for weights in ({"c0": 1.0}, {"c2": 0.5, "c0": 0.5}):
                    session.add(
                        Soup(job_id=job.id, path=f"/soups/{len(weights)}", weights=weights, scores={})
                    )


def detail_of(job: Job) -> dict[str, Any]:
    """JobDetail's fields (but best trial and the analysis' parts) from the entity, as the API built them."""
    soup = job.soups[-1] if job.soups else None
    return {
        **JobPublic.fields_of(job),
        "recipe": dict(job.recipe),
        "suite": SuiteBrief(id=job.suite.id, name=job.suite.name),
        "candidates": [
            CandidateBrief(id=c.id, name=c.name, path=c.path, content_hash=c.content_hash)
            for c in job.candidates
        ],
        "timings": dict(job.timings or {}),
        "study_name": job.study_name,
        "analysis": dict(job.analysis) if job.analysis is not None else None,
        "soup": None
        if soup is None
        else SoupBrief(
            id=soup.id,
            path=soup.path,
            content_hash=soup.content_hash,
            weights=dict(soup.weights),
            scores=dict(soup.scores),
        ),
    }


@pytest.fixture(params=["postgresql", "sqlite"])
def app_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty, migrated app database on each backend."""
    if request.param == "postgresql":
        url = request.getfixturevalue("api_database_url")
        engine = create_app_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    else:
        engine = create_app_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
        upgrade(engine)
    yield engine
    engine.dispose()


def test_reads_give_what_the_entities_gave(app_engine: Engine) -> None:
    fill(app_engine)
    with Session(app_engine) as session:
        entities = {j.id: j for j in session.scalars(select(Job))}
        items, total = job_reads.job_page(session=session, limit=4, offset=1)
        assert total == 6
        assert [JobPublic(**i) for i in items] == [JobPublic.of(entities[i]) for i in (5, 4, 3, 2)]
        for job_id, job in entities.items():
            assert job_reads.job_detail(session=session, job_id=job_id) == detail_of(job)
        assert job_reads.job_detail(session=session, job_id=999) is None
        assert job_reads.job_detail(session=session, job_id=3)["soup"].weights == {"c2": 0.5, "c0": 0.5}

        by_state, total = job_reads.job_page(session=session, state="searching")
        assert total == 2 and [i["id"] for i in by_state] == [5, 2]
        # the name filter matches a substring in any case, with % and _ taken literally
        named, total = job_reads.job_page(session=session, name="50%_DONE")
        assert total == 1 and [i["name"] for i in named] == ["50%_done-4"]
        assert job_reads.job_page(session=session, name="50%x") == ([], 0)
        # past the end: no rows, the total all the same
        assert job_reads.job_page(session=session, limit=2, offset=10) == ([], 6)
        assert job_reads.job_page(session=session, state="failed") == ([], 0)


def test_a_page_is_one_query_and_a_job_two(app: FastAPI, client) -> None:
    fill(app.state.engine, jobs=40)
    with counted(app.state.engine) as statements:
        page = client.get("/v1/jobs", params={"limit": 30})
    assert page.status_code == 200 and len(page.json()["items"]) == 30
    assert len(statements) == 1  # rows, candidate ids and total together: no query per job
    with session_scope(app.state.engine) as session:
        expected = [
            JobPublic.of(j).model_dump(mode="json")
            for j in session.scalars(select(Job).order_by(Job.id.desc()))
        ]
    assert page.json() == {"items": expected[:30], "total": 40, "limit": 30, "offset": 0}

    with counted(app.state.engine) as statements:
        detail = client.get("/v1/jobs/3")
    assert detail.status_code == 200 and len(statements) == 2
    with session_scope(app.state.engine) as session:
        job = session.get(Job, 3)
        expected = JobDetail(**detail_of(job), experts=job.analysis["experts"]).model_dump(mode="json")
    assert detail.json() == expected

    with counted(app.state.engine) as statements:
        assert client.get("/v1/jobs/999").status_code == 404
    assert len(statements) == 1


def test_detail_takes_the_best_trial_the_search_recorded(app: FastAPI, client, settings) -> None:
    fill_study(settings)  # complete trials 0, 1, 2 with values 0.2, 0.8, 0.5
    fill(app.state.engine, jobs=2)
    with session_scope(app.state.engine) as session:
        finished, searching = session.get(Job, 1), session.get(Job, 2)
        finished.study_name = searching.study_name = STUDY
        finished.analysis = {"search": {"study": STUDY, "best_trial": 1, "best_dev_objective": 0.8}}
    optuna_engine = app.state.optuna.storage().engine

    with counted(optuna_engine) as statements:
        first = client.get("/v1/jobs/1").json()["best_trial"]
    with counted(optuna_engine) as again:
        assert client.get("/v1/jobs/1").json()["best_trial"] == first
    assert first["number"] == 1 and first["values"] == [0.8]
    assert first["user_attrs"] == {"category_scores": {"arithmetic": 0.8, "strings": 0.4}}
    # the study's finished trials are kept: read once, then only newer or unfinished ones are looked for
    assert any("trial_user_attributes" in s for s in statements)
    assert again and not any("trial_user_attributes" in s or "trial_values" in s for s in again)

    for _ in range(2):  # still searching: its best may change, so it is looked up each time
        with counted(optuna_engine) as statements:
            assert client.get("/v1/jobs/2").json()["best_trial"] == first
        assert any("trial_values" in s for s in statements)


def test_reads_survive_connections_the_server_dropped(app: FastAPI, client, api_database_url) -> None:
    """The API's engine does not ping connections at checkout: a read finding its connection dead
    (a database restart, an idle timeout) runs again on a new one instead of failing."""
    fill(app.state.engine, jobs=3)
    assert client.get("/v1/jobs").status_code == 200  # the pool now holds open connections
    assert client.get("/v1/jobs/2").status_code == 200
    with create_app_engine(api_database_url).connect() as conn:
        dropped = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).all()
    assert dropped
    assert client.get("/v1/jobs").json()["total"] == 3
    assert client.get("/v1/jobs/2").json()["id"] == 2
