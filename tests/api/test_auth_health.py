"""API keys on writes, error bodies, /healthz, /metrics and what the API process imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from soce.db import revoke_api_key, session_scope
from tests.api.factories import SUITE

REPO = Path(__file__).resolve().parents[2]


def test_writes_need_a_read_write_key(client: TestClient, keys, app) -> None:
    body = {"spec": SUITE}
    r = client.post("/v1/suites", json=body)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/suites", json=body, headers={"Authorization": "Bearer soce_not-a-real-key"})
    assert r.status_code == 401 and r.json() == {"detail": "the API key is unknown or revoked"}
    r = client.post("/v1/suites", json=body, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    r = client.post("/v1/suites", json=body, headers=keys["reader"])
    assert r.status_code == 403 and "'reader' is read-only" in r.json()["detail"]
    for path in ("/v1/candidates", "/v1/jobs", "/v1/jobs/1/cancel"):
        assert client.post(path, json={}, headers=keys["reader"]).status_code == 403
    assert client.post("/v1/suites", json=body, headers=keys["writer"]).status_code == 201
    assert client.get("/v1/suites").status_code == 200  # reads are open

    with session_scope(app.state.engine) as session:
        revoke_api_key(session=session, name="writer")
    assert client.post("/v1/suites", json=body, headers=keys["writer"]).status_code == 401


def test_unexpected_errors_are_a_generic_500(app, writer) -> None:
    def boom() -> list[str]:
        raise RuntimeError("secret internals")

    @app.get("/boom")
    def _boom() -> None:
        boom()

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and "secret" not in r.text
    assert r.json() == {"detail": "internal server error; the server log has the details"}


def test_healthz_reports_each_part(client, app) -> None:
    r = client.get("/healthz")  # the real probe: no worker runs in the tests
    assert r.status_code == 200
    body = r.json()
    assert body["database"]["ok"] and body["redis"]["ok"]
    assert body["workers"]["ok"] is False and body["status"] == "degraded"

    app.state.worker_probe = lambda: ["celery@gpu-1"]
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["workers"]["names"] == ["celery@gpu-1"]
    assert body["stalled_jobs"] == 0


def test_healthz_and_metrics_show_stalled_jobs(client, app) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from soce.db import Job, Suite

    app.state.worker_probe = lambda: ["celery@gpu-1"]
    stall = app.state.settings.stall_seconds()
    old = datetime.now(UTC) - timedelta(seconds=2 * stall)
    with session_scope(app.state.engine) as session:
        suite = Suite(name="s", spec={}, content_hash="f" * 64)
        jobs = [
            Job(name=f"j{i}", suite=suite, recipe={}, state=state)
            for i, state in enumerate(("searching", "scoring", "done"))
        ]
        session.add_all(jobs)
        session.flush()
        beating = jobs[1].id
    with session_scope(app.state.engine) as session:  # all three unchanged for two stall periods
        session.execute(update(Job).values(updated_at=old))
        session.execute(  # a worker runs the second job's step and beats for it
            update(Job).where(Job.id == beating).values(heartbeat_at=datetime.now(UTC), updated_at=old)
        )
    body = client.get("/healthz").json()
    assert body["stalled_jobs"] == 1 and body["status"] == "degraded"  # the lost one; done is over
    assert "soce_jobs_stalled 1" in client.get("/metrics").text


def test_healthz_is_503_when_the_database_is_down(settings) -> None:
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:5432/soce_no_such_database"}
    )
    with TestClient(create_app(down)) as client:
        r = client.get("/healthz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "down" and body["database"]["ok"] is False
        assert "soce_no_such_database" in body["database"]["detail"]
        assert client.get("/v1/jobs").status_code == 503  # not a 500


def test_healthz_when_redis_is_down(settings) -> None:
    with TestClient(
        create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    ) as client:
        body = client.get("/healthz").json()
    assert body["status"] == "degraded" and body["redis"]["ok"] is False
    assert body["workers"]["detail"].startswith("not asked")


def test_metrics_in_prometheus_format(client, writer, redis_db, make_checkpoints, settings) -> None:
    from tests.api.test_trials_soups import fill_study

    fill_study(settings)
    ids = [
        r["id"]
        for r in client.post(
            "/v1/candidates", json={"paths": [str(p) for p in make_checkpoints(2)]}, headers=writer
        ).json()
    ]
    suite_id = client.post("/v1/suites", json={"spec": SUITE}, headers=writer).json()["id"]
    client.post("/v1/jobs", json={"candidate_ids": ids, "suite_id": suite_id}, headers=writer)
    redis_db.rpush("gpu", "x", "y")
    redis_db.set("soce:metrics:score_cache_hits", 3)
    redis_db.set("soce:metrics:score_cache_misses", 1)

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(r.text.splitlines())
    assert "# TYPE soce_jobs gauge" in lines
    assert 'soce_jobs{state="queued"} 1' in lines and 'soce_jobs{state="done"} 0' in lines
    # the job's start message and the two candidates' hash messages
    assert 'soce_queue_depth{queue="cpu"} 3' in lines and 'soce_queue_depth{queue="gpu"} 2' in lines
    assert "# TYPE soce_trial_duration_seconds histogram" in lines
    assert 'soce_trial_duration_seconds_bucket{le="+Inf"} 3' in lines
    assert "soce_trial_duration_seconds_count 3" in lines
    assert "soce_score_cache_hits_total 3" in lines and "soce_score_cache_hit_ratio 0.75" in lines
    assert 'soce_up{component="database"} 1' in lines and 'soce_up{component="optuna"} 1' in lines


def test_openapi_lists_the_endpoints(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/candidates", "/v1/jobs/{job_id}/trials", "/v1/soups/{soup_id}", "/healthz", "/metrics"):
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_the_api_imports_no_torch_lm_eval_or_optuna() -> None:
    code = (
        "import json, sys\n"
        "from api.app import create_app\n"
        "from soce.checkpoints import Checkpoint, check_compatibility, checkpoint_hash\n"
        "create_app()\n"
        "heavy = ('torch', 'lm_eval', 'optuna', 'transformers')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_checkpoint_opening_and_hashing_need_only_numpy(make_checkpoints) -> None:
    paths = make_checkpoints(2)
    code = (
        "import json, sys\n"
        "from soce.checkpoints import Checkpoint, DigestCache, check_compatibility, checkpoint_hash\n"
        f"cks = [Checkpoint.open(p) for p in {[str(p) for p in paths]!r}]\n"
        "assert check_compatibility(cks).ok\n"
        "[checkpoint_hash(c, DigestCache(None)) for c in cks]\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'optuna'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
