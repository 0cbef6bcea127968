"""Schedules through the API: create, list, read with runs, change (PATCH), validation errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from soce.config import get_settings
from tests.api.factories import make_suite


def _body(suite_id: int, **over: object) -> dict:
    body = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
        "recipe_template": {"suite_id": suite_id, "sampler": "grid"},
        "candidate_source": {"tag": "nightly"},
        "promotion_policy": {"metric": "test_average", "min_improvement": 0.01},
    }
    return {**body, **over}


@pytest.fixture
def checkpoints_root(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """/checkpoints as the checkpoint root, in the app's settings and in the environment's."""
    update = {"checkpoint_roots": [Path("/checkpoints")]}
    app.state.settings = app.state.settings.model_copy(update=update)
    monkeypatch.setenv("SOCE_CHECKPOINT_ROOTS", "/checkpoints")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _error_locs(response) -> list[list]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


def test_create_list_get_and_disable(client: TestClient, writer: dict[str, str]) -> None:
    suite = make_suite(client, writer)
    r = client.post("/v1/schedules", json=_body(suite["id"]), headers=writer)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["enabled"] and created["next_run_at"] is not None
    assert created["candidate_source"] == {"tag": "nightly"}
    assert created["recipe_template"]["suite_id"] == suite["id"]

    listed = client.get("/v1/schedules", headers=writer).json()
    assert [s["name"] for s in listed] == ["nightly"]
    detail = client.get(f"/v1/schedules/{created['id']}", headers=writer).json()
    assert detail["champion"] is None and detail["runs"] == []

    r = client.patch(f"/v1/schedules/{created['id']}", json={"enabled": False}, headers=writer)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert client.get("/v1/schedules/999", headers=writer).status_code == 404
    again = client.post("/v1/schedules", json=_body(suite["id"]), headers=writer)
    assert again.status_code == 409


def test_validation_names_the_field(client: TestClient, writer: dict[str, str]) -> None:
    suite = make_suite(client, writer)
    sid = suite["id"]
    bad_cron = client.post("/v1/schedules", json=_body(sid, cron="61 * * * *"), headers=writer)
    assert _error_locs(bad_cron) == [["body", "cron"]]
    assert "minute" in bad_cron.json()["detail"][0]["msg"]
    assert _error_locs(client.post("/v1/schedules", json=_body(sid, cron="* * *"), headers=writer)) == [
        ["body", "cron"]
    ]
    bad_tz = client.post("/v1/schedules", json=_body(sid, timezone="Mars/Base"), headers=writer)
    assert _error_locs(bad_tz) == [["body", "timezone"]]
    assert "Mars/Base" in bad_tz.json()["detail"][0]["msg"]
    both = {"tag": "x", "glob": "/data/*"}
    assert _error_locs(
        client.post("/v1/schedules", json=_body(sid, candidate_source=both), headers=writer)
    ) == [["body", "candidate_source"]]
    recipe = {"suite_id": sid, "sampler": "nope"}
    assert _error_locs(
        client.post("/v1/schedules", json=_body(sid, recipe_template=recipe), headers=writer)
    ) == [["body", "recipe_template"]]
    missing = {"suite_id": 999}
    assert _error_locs(
        client.post("/v1/schedules", json=_body(sid, recipe_template=missing), headers=writer)
    ) == [["body", "recipe_template", "suite_id"]]


def test_reader_cannot_create(client: TestClient, keys: dict[str, dict[str, str]]) -> None:
    suite = make_suite(client, keys["writer"])
    r = client.post("/v1/schedules", json=_body(suite["id"]), headers=keys["reader"])
    assert r.status_code == 403


def test_patch_changes_only_the_given_fields(
    client: TestClient, writer: dict[str, str], checkpoints_root: None
) -> None:
    suite = make_suite(client, writer)
    created = client.post("/v1/schedules", json=_body(suite["id"]), headers=writer).json()
    url = f"/v1/schedules/{created['id']}"

    r = client.patch(url, json={"cron": "30 5 * * 1", "timezone": "UTC"}, headers=writer)
    assert r.status_code == 200, r.text
    changed = r.json()
    assert (changed["cron"], changed["timezone"]) == ("30 5 * * 1", "UTC")
    assert changed["next_run_at"] != created["next_run_at"]  # planned again from the new cron
    next_run = datetime.fromisoformat(changed["next_run_at"])
    assert (next_run.weekday(), next_run.hour, next_run.minute) == (0, 5, 30)  # a Monday, 05:30 UTC
    assert changed["recipe_template"] == created["recipe_template"]  # untouched

    r = client.patch(
        url,
        json={
            "recipe_template": {"suite_id": suite["id"], "sampler": "tpe", "n_trials": 12},
            "candidate_source": {"glob": "/checkpoints/run-*"},
            "promotion_policy": {"min_improvement": 0.02},
            "webhook_url": "https://ci.example/hook",
        },
        headers=writer,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe_template"]["sampler"] == "tpe" and body["recipe_template"]["n_trials"] == 12
    assert body["candidate_source"] == {"glob": "/checkpoints/run-*"}
    assert body["promotion_policy"] == {"metric": "test_average", "min_improvement": 0.02}
    assert body["next_run_at"] == changed["next_run_at"]  # neither cron nor time zone changed
    r = client.patch(url, json={"webhook_url": None}, headers=writer)
    assert r.status_code == 200 and r.json()["webhook_url"] is None


def test_patch_validation_names_the_field_and_changes_nothing(
    client: TestClient, writer: dict[str, str]
) -> None:
    suite = make_suite(client, writer)
    created = client.post("/v1/schedules", json=_body(suite["id"]), headers=writer).json()
    url = f"/v1/schedules/{created['id']}"
    assert _error_locs(client.patch(url, json={"cron": "* * 32 * *"}, headers=writer)) == [["body", "cron"]]
    assert _error_locs(client.patch(url, json={"timezone": "Mars/Base"}, headers=writer)) == [
        ["body", "timezone"]
    ]
    assert _error_locs(client.patch(url, json={"recipe_template": {"suite_id": 999}}, headers=writer)) == [
        ["body", "recipe_template", "suite_id"]
    ]
    assert _error_locs(client.patch(url, json={"name": "renamed"}, headers=writer)) == [["body", "name"]]
    empty = client.patch(url, json={}, headers=writer)
    assert _error_locs(empty) == [["body"]] and "at least one field" in empty.text
    assert "only allowed for webhook_url" in client.patch(url, json={"cron": None}, headers=writer).text
    assert client.get(url, headers=writer).json()["cron"] == created["cron"]
    assert client.patch("/v1/schedules/999", json={"enabled": True}, headers=writer).status_code == 404


def test_cron_takes_month_and_day_names_and_shortcuts(client: TestClient, writer: dict[str, str]) -> None:
    suite = make_suite(client, writer)
    r = client.post("/v1/schedules", json=_body(suite["id"], cron="@daily", timezone="UTC"), headers=writer)
    assert r.status_code == 201, r.text
    created = r.json()
    next_run = datetime.fromisoformat(created["next_run_at"])
    assert created["cron"] == "@daily" and (next_run.hour, next_run.minute) == (0, 0)

    url = f"/v1/schedules/{created['id']}"
    r = client.patch(url, json={"cron": "30 6 * jan-mar,dec MON-fri"}, headers=writer)
    assert r.status_code == 200, r.text
    next_run = datetime.fromisoformat(r.json()["next_run_at"])
    assert next_run.weekday() < 5 and next_run.month in (1, 2, 3, 12)
    assert (next_run.hour, next_run.minute) == (6, 30)

    bad_name = client.patch(url, json={"cron": "0 6 * * funday"}, headers=writer)
    assert _error_locs(bad_name) == [["body", "cron"]]
    assert "day of week field 'funday'" in bad_name.json()["detail"][0]["msg"]
    bad_shortcut = client.post(
        "/v1/schedules", json=_body(suite["id"], name="x", cron="@reboot"), headers=writer
    )
    assert _error_locs(bad_shortcut) == [["body", "cron"]]
    assert "unknown shortcut" in bad_shortcut.json()["detail"][0]["msg"]
    never = client.patch(url, json={"cron": "0 0 30 feb *"}, headers=writer)
    assert _error_locs(never) == [["body", "cron"]] and "never fires" in never.text
    assert client.get(url, headers=writer).json()["cron"] == "30 6 * jan-mar,dec MON-fri"
