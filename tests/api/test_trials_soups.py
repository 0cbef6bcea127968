"""Trials read from Optuna's database (filled here by optuna itself); soups with card and recipe."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from api.trials import OptunaStudies
from soce.db import Job, Soup, session_scope
from tests.api.factories import STUDY, fill_study, make_suite, register


def a_job(client, writer, make_checkpoints, app: FastAPI, study_name: str | None) -> int:
    ids = [r["id"] for r in register(client, writer, make_checkpoints(2))]
    suite_id = make_suite(client, writer)["id"]
    job_id = client.post(
        "/v1/jobs", json={"candidate_ids": ids, "suite_id": suite_id}, headers=writer
    ).json()["id"]
    with session_scope(app.state.engine) as session:
        session.get(Job, job_id).study_name = study_name
    return job_id


def test_trials_come_from_the_optuna_database(client, writer, make_checkpoints, app, settings) -> None:
    fill_study(settings)
    job_id = a_job(client, writer, make_checkpoints, app, STUDY)
    page = client.get(f"/v1/jobs/{job_id}/trials").json()
    assert page["study_name"] == STUDY and page["directions"] == ["maximize"] and page["total"] == 4
    first, *_, pruned = page["items"]
    assert [t["number"] for t in page["items"]] == [0, 1, 2, 3]
    assert first["state"] == "complete" and first["values"] == [0.2]
    assert set(first["params"]) == {"u0", "bucket", "space"}
    assert isinstance(first["params"]["bucket"], int) and first["params"]["space"] in ("simplex", "layerwise")
    assert first["user_attrs"] == {"category_scores": {"arithmetic": 0.2, "strings": 0.1}}
    assert first["duration_seconds"] >= 0
    assert first["datetime_start"].endswith("Z") and first["datetime_complete"].endswith("Z")  # UTC
    assert pruned["state"] == "pruned" and pruned["values"] is None

    complete = client.get(
        f"/v1/jobs/{job_id}/trials", params={"state": "COMPLETE", "limit": 2, "offset": 1}
    ).json()
    assert complete["total"] == 3 and [t["number"] for t in complete["items"]] == [1, 2]
    assert client.get(f"/v1/jobs/{job_id}/trials", params={"state": "bogus"}).status_code == 422

    best = client.get(f"/v1/jobs/{job_id}").json()["best_trial"]
    assert best["number"] == 1 and best["values"] == [0.8]


def test_a_job_without_a_study_has_no_trials(client, writer, make_checkpoints, app, settings) -> None:
    job_id = a_job(client, writer, make_checkpoints, app, None)
    page = client.get(f"/v1/jobs/{job_id}/trials").json()
    assert page["items"] == [] and page["total"] == 0
    assert not Path(settings.optuna_url().removeprefix("sqlite:///")).exists()  # never created by the API
    fill_study(settings)
    other = a_job(client, writer, make_checkpoints, app, "soce-not-started")
    assert client.get(f"/v1/jobs/{other}/trials").json()["items"] == []


def test_an_unreachable_optuna_database_is_503_for_trials_and_no_best_trial(
    client, writer, make_checkpoints, app, settings
) -> None:
    app.state.optuna = OptunaStudies("postgresql+psycopg://postgres@127.0.0.1:1/optuna")
    job_id = a_job(client, writer, make_checkpoints, app, STUDY)
    r = client.get(f"/v1/jobs/{job_id}/trials")
    assert r.status_code == 503 and r.json()["detail"].startswith("Optuna database postgresql+psycopg://")
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["best_trial"] is None  # the job is shown without it


def test_soup_with_card_and_recipe(client, app, tmp_path: Path) -> None:
    folder = tmp_path / "soup"
    folder.mkdir()
    (folder / "README.md").write_text("---\ntags: [merge, model-soup]\n---\n# my soup\n")
    (folder / "soce_recipe.yml").write_text("method: linear\n")
    with session_scope(app.state.engine) as session:
        soup = Soup(path=str(folder), weights={"a": 0.6, "b": 0.4}, scores={"test": {"average": 0.7}})
        session.add(soup)
        session.flush()
        soup_id = soup.id
        gone = Soup(path=str(tmp_path / "gone"), weights={})
        session.add(gone)
        session.flush()
        gone_id = gone.id
    got = client.get(f"/v1/soups/{soup_id}").json()
    assert got["card"].startswith("---\ntags: [merge, model-soup]") and got["recipe"] == "method: linear\n"
    assert got["weights"] == {"a": 0.6, "b": 0.4} and got["scores"]["test"]["average"] == 0.7
    missing = client.get(f"/v1/soups/{gone_id}").json()
    assert missing["card"] is None and missing["recipe"] is None
    assert client.get("/v1/soups/999").status_code == 404
