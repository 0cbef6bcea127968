"""Registering checkpoint folders: checks on the way in, hashing sent to the cpu queue, tags."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from soce.checkpoints import Checkpoint, DigestCache, checkpoint_hash
from soce.config import Settings
from tests.api.factories import queued_messages, register
from workers.candidates import hash_candidate


def test_register_sends_hashing_to_the_cpu_queue_and_lists_by_tag(
    client, writer, make_checkpoints, redis_db, app: FastAPI
) -> None:
    paths = make_checkpoints(3)
    rows = register(client, writer, paths[:2], tags=["llama-tiny", "nightly"])
    assert [r["path"] for r in rows] == [str(p.resolve()) for p in paths[:2]]
    assert rows[0]["architecture"]["hidden_size"] == 32
    assert rows[0]["tags"] == ["llama-tiny", "nightly"]
    assert all(r["content_hash"] is None and r["hashing"] for r in rows)
    # one message per candidate, sent after the commit; the API reads no weights
    assert queued_messages(redis_db) == [("soce.candidates.hash", [r["id"]]) for r in rows]
    assert redis_db.llen("gpu") == 0

    hash_candidate(app.state.engine, rows[0]["id"], cache=DigestCache(None))  # what the cpu worker runs
    got = client.get(f"/v1/candidates/{rows[0]['id']}").json()
    with Checkpoint.open(paths[0]) as ckpt:
        assert got["content_hash"] == checkpoint_hash(ckpt, DigestCache(None))
    assert got["hashing"] is False and got["error"] is None

    register(client, writer, paths[2:], tags=["other"])
    assert len(client.get("/v1/candidates").json()) == 3
    tagged = client.get("/v1/candidates", params={"tag": "nightly"}).json()
    assert [r["id"] for r in tagged] == [r["id"] for r in rows]
    assert client.get("/v1/candidates", params={"tag": "nope"}).json() == []


def test_registering_with_the_broker_down_leaves_the_hash_to_the_score_step(
    settings: Settings, writer, make_checkpoints
) -> None:
    app = create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(app) as client:
        rows = register(client, writer, make_checkpoints(2))
        got = client.get(f"/v1/candidates/{rows[0]['id']}").json()
    assert got["content_hash"] is None and got["hashing"] is True and got["error"] is None


def test_registering_again_keeps_the_row_and_adds_tags(client, writer, make_checkpoints) -> None:
    paths = make_checkpoints(2)
    first = register(client, writer, paths, tags=["a"])
    again = register(client, writer, paths[:1], tags=["b"])
    assert again[0]["id"] == first[0]["id"]
    assert again[0]["tags"] == ["a", "b"]
    assert len(client.get("/v1/candidates").json()) == 2


def test_missing_folder_is_422_naming_it(
    client: TestClient, writer, make_checkpoints, tmp_path: Path
) -> None:
    good = make_checkpoints(1)[0]
    missing = tmp_path / "no-such-model"
    r = client.post("/v1/candidates", json={"paths": [str(good), str(missing)]}, headers=writer)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "paths", 1]
    assert str(missing) in err["msg"]
    assert client.get("/v1/candidates").json() == []  # nothing half-registered


def test_relative_path_and_bad_body_are_422(client, writer) -> None:
    r = client.post("/v1/candidates", json={"paths": ["ckpts/a"]}, headers=writer)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "paths", 0]
    r = client.post("/v1/candidates", json={"paths": []}, headers=writer)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "paths"]
    r = client.post("/v1/candidates", json={"paths": ["/x"], "colour": 1}, headers=writer)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]


def test_pickle_only_folder_is_refused(client, writer, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")
    r = client.post("/v1/candidates", json={"paths": [str(folder)]}, headers=writer)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["type"] == "PickleRefusedError" and "pickle" in err["msg"] and str(folder) in err["msg"]


def test_incompatible_with_registered_candidates_is_422(client, writer, make_checkpoints) -> None:
    paths = make_checkpoints(3)
    register(client, writer, paths[:2])
    tok = paths[2] / "tokenizer.json"  # same architecture, another tokenizer
    data = json.loads(tok.read_text())
    data["model"]["vocab"]["@@new@@"] = len(data["model"]["vocab"])
    tok.write_text(json.dumps(data))
    r = client.post("/v1/candidates", json={"paths": [str(paths[2])]}, headers=writer)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["type"] == "incompatible" and "tokenizer" in err["msg"] and str(paths[2]) in err["msg"]


def test_incompatible_within_one_request_is_422(client, writer, make_checkpoints) -> None:
    a = make_checkpoints(1, seed=0)[0]
    b = make_checkpoints(1, seed=1, tokenizer=False)[0]
    r = client.post("/v1/candidates", json={"paths": [str(a), str(b)]}, headers=writer)
    assert r.status_code == 422
    assert "tokenizer" in r.json()["detail"][0]["msg"]


def test_other_architectures_register_side_by_side(client, writer, make_checkpoints) -> None:
    small = make_checkpoints(1)[0]
    wide = make_checkpoints(1, hidden=64, intermediate=128)[0]
    register(client, writer, [small])
    rows = register(client, writer, [wide])
    assert rows[0]["architecture"]["hidden_size"] == 64


def test_unknown_candidate_is_404(client) -> None:
    r = client.get("/v1/candidates/999")
    assert r.status_code == 404 and r.json() == {"detail": "candidate 999 does not exist"}
