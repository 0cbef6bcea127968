"""The dashboard's pages, fragments and sign-in rules through TestClient (no browser)."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.dashboard_session import COOKIE
from soce.config import Settings
from soce.db import create_api_key, session_scope
from soce.db.models import Job, Schedule
from tests.api.dashboard_rows import REPORT, Jobs, make_jobs

ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture
def jobs(app: FastAPI, settings: Settings, tmp_path: Path) -> Jobs:
    return make_jobs(app.state.engine, settings, tmp_path / "soup")


@pytest.fixture
def raw_keys(app: FastAPI) -> dict[str, str]:
    with session_scope(app.state.engine) as session:
        _, writer = create_api_key(session=session, name="writer")
        _, reader = create_api_key(session=session, name="reader", read_only=True)
    return {"writer": writer, "reader": reader}


def _sign_in(client: TestClient, key: str) -> str:
    r = client.post("/signin", data={"key": key, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return r.cookies[COOKIE]


def _csrf(client: TestClient, job_id: int) -> str:
    page = client.get(f"/jobs/{job_id}").text
    marker = 'name="csrf" value="'
    start = page.index(marker, page.index('id="cancel-form"')) + len(marker)
    return page[start : page.index('"', start)]


def _state(app: FastAPI, job_id: int) -> str:
    with session_scope(app.state.engine) as session:
        return session.scalar(select(Job.state).where(Job.id == job_id))


def test_empty_states(client: TestClient) -> None:
    assert "No jobs yet" in client.get("/").text
    assert "No candidates registered" in client.get("/candidates").text
    assert "No schedules yet" in client.get("/schedules").text
    assert client.get("/static/htmx.min.js").status_code == 200
    assert client.get("/jobs/999").status_code == 404


def test_pages_show_the_jobs(client: TestClient, jobs: Jobs) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "nightly-mini" in page.text and "running-mini" in page.text
    assert "0.6600" in page.text  # the finished job's best dev objective
    assert "has no config.json" in page.text  # the failed job's error
    assert "/dashboard/jobs/rows" in page.text and "cdn" not in page.text.lower()
    assert client.get("/dashboard/jobs/rows").text.count("<tr data-job=") == 3

    done = client.get(f"/jobs/{jobs.done}").text
    for chart in ("scores-dev", "correlation-pearson", "history", "weights", "baselines"):
        assert f'data-chart="{chart}"' in done
    assert html.escape(REPORT["experts"][0]["reason"]) in done and "Model card" in done
    # the verdict opens the job page, before the charts; the final choice lists every contender
    assert done.index('id="verdict"') < done.index('data-chart="scores-dev"')
    assert html.escape(REPORT["verdict"]) in done  # the stored Report's, as the run wrote it
    chosen = next(c for c in REPORT["selection"]["contenders"] if c["name"] == REPORT["selection"]["chosen"])
    assert 'id="selection"' in done and html.escape(f"{chosen['label']} (chosen)") in done
    assert 'id="verdict"' not in client.get(f"/jobs/{jobs.running}").text  # no verdict before the end
    assert 'id="interpolation"' in done  # the report's curve section (the demo report predates the curve)
    assert 'id="interpolation"' not in client.get(f"/jobs/{jobs.running}").text
    assert "optuna-dashboard" not in done  # no URL set: no link
    assert client.get(f"/jobs/{jobs.done}/model-card").text.startswith("# soup")
    assert client.get(f"/jobs/{jobs.done}/report").status_code == 404  # no report written
    assert f'href="/jobs/{jobs.done}/soup/README.md"' in done  # small text files are links
    assert "/soup/model.safetensors" not in done  # weights are listed, not linked
    assert client.get(f"/jobs/{jobs.done}/soup/README.md").text.startswith("# soup")
    refused = client.get(f"/jobs/{jobs.done}/soup/model.safetensors")
    assert refused.status_code == 403 and "weights" in refused.json()["detail"]
    assert client.get(f"/jobs/{jobs.done}/soup/nope.json").status_code == 404
    assert client.get(f"/jobs/{jobs.done}/soup/..%2Fsecret.json").status_code == 404

    running = client.get(f"/dashboard/jobs/{jobs.running}/live").text
    assert 'hx-trigger="every 2s"' in running and "2/10" in running
    assert "every 2s" not in client.get(f"/dashboard/jobs/{jobs.done}/live").text  # finished: no polling
    failed = client.get(f"/jobs/{jobs.failed}").text
    assert 'id="job-error"' in failed and "has no config.json" in failed

    assert "LlamaForCausalLM (llama)" in client.get("/candidates").text


def test_schedules_listed(app: FastAPI, client: TestClient) -> None:
    with session_scope(app.state.engine) as session:
        session.add(
            Schedule(
                name="nightly",
                cron="0 3 * * *",
                recipe_template={},
                candidate_source={"tag": "ft"},
                promotion_policy={},
            )
        )
    page = client.get("/schedules").text
    assert "nightly" in page and "0 3 * * *" in page and "none yet" in page


def test_cancel_needs_a_signed_in_writer_and_the_csrf_token(
    app: FastAPI, client: TestClient, jobs: Jobs, raw_keys: dict[str, str]
) -> None:
    url = f"/jobs/{jobs.running}/cancel"
    assert client.post(url, data={"csrf": "x"}, headers=ORIGIN).status_code == 401
    assert "sign in with a read-write key" in client.get(f"/jobs/{jobs.running}").text

    r = client.post("/signin", data={"key": "soce_nope"})
    assert r.status_code == 401 and "unknown or revoked" in r.text

    _sign_in(client, raw_keys["reader"])
    assert 'id="cancel-form"' not in client.get(f"/jobs/{jobs.running}").text
    assert client.post(url, data={"csrf": "x"}, headers=ORIGIN).status_code == 403

    _sign_in(client, raw_keys["writer"])
    csrf = _csrf(client, jobs.running)
    assert client.post(url, data={"csrf": "wrong"}, headers=ORIGIN).status_code == 403
    other = {"Origin": "http://evil.example"}
    assert client.post(url, data={"csrf": csrf}, headers=other).status_code == 403
    assert _state(app, jobs.running) == "searching"
    r = client.post(url, data={"csrf": csrf}, headers=ORIGIN, follow_redirects=False)
    assert r.status_code == 303 and _state(app, jobs.running) == "cancelled"


def test_private_dashboard_asks_to_sign_in(settings: Settings, raw_keys: dict[str, str]) -> None:
    from api.app import create_app

    app = create_app(settings.model_copy(update={"dashboard_public_read": False}))
    with TestClient(app) as client:
        r = client.get("/candidates", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")
        assert client.get("/dashboard/jobs/rows").status_code == 401
        client.cookies.set(COOKIE, "1.forged.0.deadbeef")
        assert client.get("/dashboard/jobs/rows").status_code == 401
        client.cookies.clear()
        _sign_in(client, raw_keys["reader"])
        assert client.get("/candidates").status_code == 200


def test_optuna_dashboard_link_opens_the_jobs_study(app: FastAPI, client: TestClient, jobs: Jobs) -> None:
    import optuna

    from tests.api.dashboard_rows import STUDY

    app.state.settings = app.state.settings.model_copy(update={"optuna_dashboard_url": "http://optuna.test/"})
    storage = optuna.storages.RDBStorage(app.state.settings.optuna_url())
    study_id = storage.get_study_id_from_name(STUDY)
    page = client.get(f"/jobs/{jobs.done}").text
    assert f'href="http://optuna.test/dashboard/studies/{study_id}"' in page
