"""Suites inline or from a YAML on the server, stored once per content."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.api.factories import SUITE


def test_inline_suite_is_stored_once(client, writer) -> None:
    r = client.post("/v1/suites", json={"spec": SUITE}, headers=writer)
    assert r.status_code == 201
    first = r.json()
    assert first["name"] == "mini" and first["spec"]["categories"][0]["name"] == "arithmetic"
    again = client.post("/v1/suites", json={"spec": SUITE}, headers=writer)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert [s["id"] for s in client.get("/v1/suites").json()] == [first["id"]]
    assert client.get(f"/v1/suites/{first['id']}").json()["content_hash"] == first["content_hash"]


def test_suite_from_a_yaml_path(client, writer, tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "name": "from-file", "include_path": "tasks"}))
    r = client.post("/v1/suites", json={"path": str(path)}, headers=writer)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["include_path"] == str(tmp_path / "tasks")


def test_bad_suites_are_422_naming_the_field(client, writer, tmp_path: Path) -> None:
    r = client.post("/v1/suites", json={"path": str(tmp_path / "nope.yaml")}, headers=writer)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "path"] and "nope.yaml" in err["msg"]

    r = client.post("/v1/suites", json={"spec": {**SUITE, "test_split": "validation"}}, headers=writer)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "spec"]
    assert "held out" in r.json()["detail"][0]["msg"]

    r = client.post("/v1/suites", json={}, headers=writer)
    assert r.status_code == 422 and "exactly one of 'spec'" in r.json()["detail"][0]["msg"]
