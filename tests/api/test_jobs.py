"""Jobs: created queued, one Celery message on the cpu queue after the commit, idempotency, lists, cancel."""

from __future__ import annotations

import json

import redis
from fastapi import FastAPI

from soce.db import Job, Soup, session_scope
from tests.api.dashboard_rows import REPORT
from tests.api.factories import make_suite, queued_messages, register


def start_messages(redis_db: redis.Redis) -> list[tuple[str, list]]:
    """The job start messages on the cpu queue (registering candidates also sends their hash messages)."""
    return [m for m in queued_messages(redis_db) if m[0] == "soce.job.start"]


def job_inputs(client, writer, make_checkpoints, *, tags=("nightly",)) -> tuple[list[int], int]:
    rows = register(client, writer, make_checkpoints(3), tags=list(tags))
    return [r["id"] for r in rows], make_suite(client, writer)["id"]


def test_create_job_enqueues_one_start_message(client, writer, make_checkpoints, redis_db) -> None:
    ids, suite_id = job_inputs(client, writer, make_checkpoints)
    body = {"name": "first", "candidate_ids": ids[:2], "suite_id": suite_id, "sampler": "grid", "tau": 0.3}
    r = client.post("/v1/jobs", json=body, headers=writer)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["candidate_ids"] == ids[:2] and job["suite_id"] == suite_id
    hashing = [("soce.candidates.hash", [i]) for i in ids]  # sent when the candidates were registered
    assert queued_messages(redis_db) == [*hashing, ("soce.job.start", [job["id"]])]
    assert redis_db.llen("gpu") == 0

    detail = client.get(f"/v1/jobs/{job['id']}").json()
    assert detail["recipe"]["sampler"] == "grid" and detail["recipe"]["tau"] == 0.3
    assert detail["recipe"]["n_trials"] is None and "candidates" not in detail["recipe"]
    assert detail["suite"]["name"] == "mini"
    assert [c["id"] for c in detail["candidates"]] == ids[:2]
    assert detail["best_trial"] is None and detail["soup"] is None


def test_candidates_by_tag(client, writer, make_checkpoints, redis_db) -> None:
    ids, suite_id = job_inputs(client, writer, make_checkpoints)
    r = client.post("/v1/jobs", json={"tag": "nightly", "suite_id": suite_id}, headers=writer)
    assert r.status_code == 201 and r.json()["candidate_ids"] == ids
    r = client.post("/v1/jobs", json={"tag": "nobody", "suite_id": suite_id}, headers=writer)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "tag"] and "'nobody' marks 0 candidate(s)" in err["msg"]


def test_idempotency_key_returns_the_same_job_and_one_message(
    client, writer, make_checkpoints, redis_db
) -> None:
    ids, suite_id = job_inputs(client, writer, make_checkpoints)
    body = {"candidate_ids": ids, "suite_id": suite_id}
    headers = {**writer, "Idempotency-Key": "retry-me"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    second = client.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert len(start_messages(redis_db)) == 1
    assert client.get("/v1/jobs").json()["total"] == 1

    other = client.post("/v1/jobs", json={**body, "tau": 0.1}, headers=headers)
    assert other.status_code == 409 and "retry-me" in other.json()["detail"]
    fresh = client.post("/v1/jobs", json=body, headers={**writer, "Idempotency-Key": "another"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]


def test_bad_job_requests_are_422_naming_the_field(client, writer, make_checkpoints, redis_db) -> None:
    ids, suite_id = job_inputs(client, writer, make_checkpoints)

    def post(body: dict) -> dict:
        r = client.post("/v1/jobs", json=body, headers=writer)
        assert r.status_code == 422, r.text
        return r.json()["detail"][0]

    err = post({"candidate_ids": ids, "suite_id": 999})
    assert err["loc"] == ["body", "suite_id"] and "suite 999" in err["msg"]
    err = post({"candidate_ids": [ids[0], 12345], "suite_id": suite_id})
    assert err["loc"] == ["body", "candidate_ids"] and "12345" in err["msg"]
    err = post({"candidate_ids": ids, "suite_id": suite_id, "tau": 3})
    assert err["loc"] == ["body", "tau"]
    err = post({"candidate_ids": ids, "suite_id": suite_id, "sampler": "annealing"})
    assert err["loc"] == ["body", "sampler"]
    err = post({"candidate_ids": ids, "suite_id": suite_id, "selection_fraction": 0.95})
    assert err["loc"] == ["body", "selection_fraction"]
    err = post({"candidate_ids": ids, "suite_id": suite_id, "include_best_single": "maybe"})
    assert err["loc"] == ["body", "include_best_single"]
    err = post({"candidate_ids": ids, "suite_id": suite_id, "sampler": "grid", "space": "layerwise"})
    assert "use tpe, cmaes or nsga2 with space layerwise" in err["msg"]
    err = post({"candidate_ids": ids, "tag": "nightly", "suite_id": suite_id})
    assert "exactly one of 'candidate_ids' or 'tag'" in err["msg"]
    err = post({"candidate_ids": ids[:1], "suite_id": suite_id})
    assert err["loc"] == ["body", "candidate_ids"]
    assert start_messages(redis_db) == []


def test_list_filters_and_pagination(client, writer, make_checkpoints, app: FastAPI) -> None:
    ids, suite_id = job_inputs(client, writer, make_checkpoints)
    for i in range(5):
        body = {"name": f"{'nightly' if i % 2 else 'adhoc'}-{i}", "candidate_ids": ids, "suite_id": suite_id}
        assert client.post("/v1/jobs", json=body, headers=writer).status_code == 201
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["total"] == 5 and [j["name"] for j in page["items"]] == ["adhoc-4", "nightly-3"]
    page = client.get("/v1/jobs", params={"limit": 2, "offset": 4}).json()
    assert [j["name"] for j in page["items"]] == ["adhoc-0"] and page["offset"] == 4
    named = client.get("/v1/jobs", params={"name": "NIGHTLY"}).json()
    assert named["total"] == 2 and {j["name"] for j in named["items"]} == {"nightly-1", "nightly-3"}

    with session_scope(app.state.engine) as session:
        session.get(Job, 2).state = "searching"
    searching = client.get("/v1/jobs", params={"state": "searching"}).json()
    assert [j["id"] for j in searching["items"]] == [2]
    r = client.get("/v1/jobs", params={"state": "sleeping"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "state"]
    r = client.get("/v1/jobs", params={"limit": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]


def test_cancel(client, writer, make_checkpoints, app: FastAPI) -> None:
    ids, suite_id = job_inputs(client, writer, make_checkpoints)
    job_id = client.post(
        "/v1/jobs", json={"candidate_ids": ids, "suite_id": suite_id}, headers=writer
    ).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["finished_at"]
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)
    assert (
        again.status_code == 409
        and again.json()["detail"] == f"job {job_id} has already finished (cancelled)"
    )
    assert client.post("/v1/jobs/999/cancel", headers=writer).status_code == 404


def test_job_detail_shows_what_the_workers_wrote(
    client, writer, make_checkpoints, app: FastAPI, tmp_path
) -> None:
    ids, suite_id = job_inputs(client, writer, make_checkpoints)
    job_id = client.post(
        "/v1/jobs", json={"candidate_ids": ids, "suite_id": suite_id}, headers=writer
    ).json()["id"]
    # the keys the workers' steps write (workers/steps.py): score matrices, the analysis result
    dev = {"candidates": ["candidate-0"], "categories": ["arithmetic"], "values": [[0.5]]}
    analysis = {
        "scores": {"dev": dev, "test": dev},
        "correlation": REPORT["correlation"],
        "experts": REPORT["experts"],
    }
    with session_scope(app.state.engine) as session:
        job = session.get(Job, job_id)
        job.state, job.progress = "finalizing", {"scoring": {"done": 6, "total": 6}}
        job.analysis, job.timings = analysis, {"scoring": 12.5}
        session.add(Soup(job_id=job_id, path=str(tmp_path / "soup"), weights={"candidate-0": 1.0}, scores={}))
    detail = client.get(f"/v1/jobs/{job_id}").json()
    assert detail["state"] == "finalizing" and detail["progress"]["scoring"] == {"done": 6, "total": 6}
    assert detail["score_matrix"] == dev and detail["timings"] == {"scoring": 12.5}
    assert detail["correlations"] == REPORT["correlation"] and detail["experts"] == REPORT["experts"]
    assert detail["soup"]["weights"] == {"candidate-0": 1.0}
    assert detail["verdict"] is None and detail["decision"] is None and detail["report"] is None
    # a done job's detail opens with its verdict, then the decision, from the Report finalize stored
    with session_scope(app.state.engine) as session:
        job = session.get(Job, job_id)
        job.state, job.analysis = "done", {**analysis, "report": REPORT}
    response = client.get(f"/v1/jobs/{job_id}")
    detail = response.json()
    assert next(iter(detail)) == "verdict" and detail["verdict"] == REPORT["verdict"]
    assert detail["decision"] == REPORT["decision"] and detail["report"] == REPORT
    assert response.text.startswith('{"verdict":' + json.dumps(REPORT["verdict"]))
    # the Report's JSON Schema is published, and the OpenAPI document refers to it
    schema = client.get("/v1/schemas/report").json()
    assert schema["title"] == "Report" and set(schema["required"]) >= {"verdict", "decision", "soup"}
    assert "Report" in client.get("/openapi.json").json()["components"]["schemas"]
    assert client.get("/v1/jobs/999").status_code == 404
