"""The API reads only under the checkpoint roots: suite files and candidate folders named in a request
are resolved (symlinks, '..') and refused outside the roots before anything is opened, and a suite file's
errors name the file, never its content."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from tests.api.factories import SUITE, register

SECRET_LINE = "root:$6$s3cr3t-hash-never-shown:19000:0:99999:7:::"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The one checkpoint root of the test app (the conftest's settings name tmp_path)."""
    return tmp_path


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the roots."""
    return tmp_path_factory.mktemp("outside")


def _fifo(folder: Path) -> Path:
    """A named pipe: reading it blocks until something writes, so a server that opens it hangs."""
    path = folder / "suite.yaml"
    os.mkfifo(path)
    return path


def _post_without_hanging(client: TestClient, url: str, body: dict, headers: dict, fifo: Path) -> Response:
    """POST in a thread; if it is still running after 10 s the server opened the FIFO: unblock it, fail."""
    result: list[Response] = []
    thread = threading.Thread(target=lambda: result.append(client.post(url, json=body, headers=headers)))
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():
        with contextlib.suppress(OSError):  # no reader: ENXIO
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer coming and going ends a read
        thread.join(timeout=10)
        pytest.fail(f"the request on {fifo} did not finish: the server opened it and waited")
    return result[0]


def _error(r: Response) -> dict:
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    return err


def _suite_file(folder: Path, file_name: str = "suite.yaml", **over: object) -> Path:
    path = folder / file_name
    path.write_text(yaml.safe_dump({**SUITE, **over}))
    return path


# --- suites -------------------------------------------------------------------------------------


def test_a_suite_path_outside_the_roots_is_refused_unread(client, writer, outside: Path) -> None:
    fifo = _fifo(outside)
    r = _post_without_hanging(client, "/v1/suites", {"path": str(fifo)}, writer, fifo)
    err = _error(r)
    assert err["loc"] == ["body", "path"] and err["type"] == "path_not_allowed"
    assert str(fifo) in err["msg"] and "SOCE_CHECKPOINT_ROOTS" in err["msg"]


def test_a_fifo_under_the_roots_is_refused_unread(client, writer, root: Path) -> None:
    fifo = _fifo(root)
    err = _error(_post_without_hanging(client, "/v1/suites", {"path": str(fifo)}, writer, fifo))
    assert err["loc"] == ["body", "path"] and "not a regular file" in err["msg"]


def test_an_unreadable_file_outside_the_roots_is_refused_by_name(client, writer, outside: Path) -> None:
    secret = outside / "secret.yaml"
    secret.write_text(SECRET_LINE + "\n")
    secret.chmod(0)
    err = _error(client.post("/v1/suites", json={"path": str(secret)}, headers=writer))
    assert err["type"] == "path_not_allowed" and "s3cr3t" not in err["msg"]


def test_etc_shadow_is_refused_without_its_content(client, writer) -> None:
    r = client.post("/v1/suites", json={"path": "/etc/shadow"}, headers=writer)
    err = _error(r)
    assert err["type"] == "path_not_allowed" and "/etc/shadow" in err["msg"]
    assert "root:" not in r.text


def test_errors_of_a_suite_file_under_the_roots_quote_nothing_from_it(client, writer, root: Path) -> None:
    shadow_like = root / "shadow.yaml"
    shadow_like.write_text(f"{SECRET_LINE}\ndaemon: [unclosed\n")
    not_yaml = root / "binary.yaml"
    not_yaml.write_bytes(b"\xff\xfe" + SECRET_LINE.encode())
    wrong_keys = root / "keys.yaml"
    wrong_keys.write_text(yaml.safe_dump({"s3cr3t_key": "s3cr3t_value", "categories": "s3cr3t"}))
    for path in (shadow_like, not_yaml, wrong_keys):
        r = client.post("/v1/suites", json={"path": str(path)}, headers=writer)
        err = _error(r)
        assert err["loc"] == ["body", "path"] and err["type"] == "SuiteError"
        assert err["msg"].startswith(f"{path}: not a valid suite file")
        assert "s3cr3t" not in r.text and "root:" not in r.text


def test_a_suite_file_under_the_roots_is_stored(client, writer, root: Path) -> None:
    (root / "tasks").mkdir()
    path = _suite_file(root / "tasks", "../suite.yaml", name="from-root", include_path="tasks")
    r = client.post("/v1/suites", json={"path": str(path)}, headers=writer)  # '..' that stays inside
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "from-root" and r.json()["spec"]["include_path"] == str(root / "tasks")


def test_dot_dot_and_symlink_escapes_of_a_suite_path_are_refused(
    client, writer, root: Path, outside: Path
) -> None:
    target = _suite_file(outside)
    climbing = f"{root}/../{outside.name}/{target.name}"
    (root / "link.yaml").symlink_to(target)
    (root / "linked-folder").symlink_to(outside, target_is_directory=True)
    for raw in (climbing, str(root / "link.yaml"), str(root / "linked-folder" / target.name)):
        err = _error(client.post("/v1/suites", json={"path": raw}, headers=writer))
        assert err["type"] == "path_not_allowed" and err["msg"].startswith(f"{raw}: not under")


def test_a_symlink_inside_the_roots_is_followed(client, writer, root: Path) -> None:
    target = _suite_file(root, "real.yaml", name="linked")
    (root / "alias.yaml").symlink_to(target)
    r = client.post("/v1/suites", json={"path": str(root / "alias.yaml")}, headers=writer)
    assert r.status_code == 201 and r.json()["name"] == "linked"


def test_include_path_outside_the_roots_is_refused(client, writer, root: Path, outside: Path) -> None:
    inline = client.post("/v1/suites", json={"spec": {**SUITE, "include_path": str(outside)}}, headers=writer)
    err = _error(inline)
    assert err["loc"] == ["body", "spec", "include_path"] and err["type"] == "path_not_allowed"
    relative = client.post("/v1/suites", json={"spec": {**SUITE, "include_path": "tasks"}}, headers=writer)
    assert "absolute path" in _error(relative)["msg"]
    inside = client.post("/v1/suites", json={"spec": {**SUITE, "include_path": str(root)}}, headers=writer)
    assert inside.status_code == 201, inside.text

    path = _suite_file(root, include_path=str(outside / "s3cr3t-tasks"))
    r = client.post("/v1/suites", json={"path": str(path)}, headers=writer)
    err = _error(r)
    assert err["loc"] == ["body", "path"] and "include_path" in err["msg"] and "s3cr3t" not in r.text


def test_a_large_suite_file_is_refused_unread(client, writer, root: Path) -> None:
    big = root / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(2 << 20)  # sparse: nothing written
    assert "too large" in _error(client.post("/v1/suites", json={"path": str(big)}, headers=writer))["msg"]


def test_odd_names_are_a_422(client, writer, root: Path) -> None:
    odd = {f"{root}/a\x00b.yaml": "", "~/suite.yaml": "absolute path", "x.yaml": "absolute path"}
    for raw, why in odd.items():
        for url, body in (("/v1/suites", {"path": raw}), ("/v1/candidates", {"paths": [raw]})):
            assert why in _error(client.post(url, json=body, headers=writer))["msg"], (url, raw)


# --- candidates ---------------------------------------------------------------------------------


def test_candidates_outside_the_roots_are_refused(
    client, writer, make_checkpoints, root: Path, outside: Path
) -> None:
    (inside,) = make_checkpoints(1)
    assert inside.is_relative_to(root)
    register(client, writer, [inside])

    r = client.post("/v1/candidates", json={"paths": [str(inside), "/etc"]}, headers=writer)
    err = _error(r)
    assert err["loc"] == ["body", "paths", 1] and err["type"] == "path_not_allowed"
    r = client.post("/v1/candidates", json={"paths": [str(outside / "missing")]}, headers=writer)
    assert _error(r)["type"] == "path_not_allowed"  # not 'no such folder': nothing is looked at


def test_dot_dot_and_symlink_escapes_of_a_candidate_are_refused(
    client, writer, make_checkpoints, root: Path, outside: Path
) -> None:
    (model,) = make_checkpoints(1)
    moved = outside / "model"
    model.rename(moved)
    (root / "link").symlink_to(moved, target_is_directory=True)
    for raw in (f"{root}/../{outside.name}/model", str(root / "link")):
        err = _error(client.post("/v1/candidates", json={"paths": [raw]}, headers=writer))
        assert err["type"] == "path_not_allowed" and err["msg"].startswith(f"{raw}: not under")


def test_a_candidate_file_linking_out_of_the_roots_is_refused(
    client, writer, make_checkpoints, outside: Path
) -> None:
    (model,) = make_checkpoints(1)
    config = model / "config.json"
    moved = outside / "config.json"
    config.rename(moved)
    config.symlink_to(moved)
    err = _error(client.post("/v1/candidates", json={"paths": [str(model)]}, headers=writer))
    assert err["type"] == "path_not_allowed" and "config.json links outside" in err["msg"]


def test_a_candidate_linked_inside_the_roots_is_stored_resolved(
    client, writer, make_checkpoints, root: Path
) -> None:
    (model,) = make_checkpoints(1)
    (root / "alias").symlink_to(model, target_is_directory=True)
    (row,) = register(client, writer, [root / "alias"])
    assert row["path"] == str(model.resolve())


# --- no roots set -------------------------------------------------------------------------------


@pytest.fixture
def rootless(app: FastAPI) -> Iterator[TestClient]:
    """The app with no checkpoint roots: it reads no server path at all."""
    app.state.settings = app.state.settings.model_copy(update={"checkpoint_roots": []})
    with TestClient(app) as client:
        yield client


def test_without_roots_no_path_is_read(rootless: TestClient, writer, make_checkpoints, root: Path) -> None:
    (model,) = make_checkpoints(1)
    suite = _suite_file(root)
    for url, body, loc in (
        ("/v1/candidates", {"paths": [str(model)]}, ["body", "paths", 0]),
        ("/v1/suites", {"path": str(suite)}, ["body", "path"]),
    ):
        err = _error(rootless.post(url, json=body, headers=writer))
        assert err["loc"] == loc and err["type"] == "path_not_allowed"
        assert "reads no files until SOCE_CHECKPOINT_ROOTS" in err["msg"]
    assert rootless.post("/v1/suites", json={"spec": SUITE}, headers=writer).status_code == 201
