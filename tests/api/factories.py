"""Small helpers that register what a test needs through the API itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastapi.testclient import TestClient

SUITE = {
    "name": "mini",
    "dev_split": "validation",
    "test_split": "test",
    "categories": [
        {"name": "arithmetic", "tasks": [{"name": "zoo_add", "metric": "exact_match,none"}]},
        {"name": "strings", "tasks": [{"name": "zoo_rev", "metric": "exact_match,none"}]},
    ],
}


def register(
    client: TestClient, headers: dict[str, str], paths: Sequence[Path], tags: Sequence[str] = ()
) -> list[dict]:
    r = client.post(
        "/v1/candidates", json={"paths": [str(p) for p in paths], "tags": list(tags)}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()


def make_suite(client: TestClient, headers: dict[str, str], spec: dict | None = None) -> dict:
    r = client.post("/v1/suites", json={"spec": spec or SUITE}, headers=headers)
    assert r.status_code in (200, 201), r.text
    return r.json()
