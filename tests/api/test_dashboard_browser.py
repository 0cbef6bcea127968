"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real uvicorn.

One server on a fresh PostgreSQL database (a finished job with trials and a soup, a running job, a
failed one) and one browser for the module; screenshots go to tmp_path and test-artifacts/dashboard/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from soce.config import Settings
from soce.db import create_api_key, create_app_engine, session_scope
from soce.db.models import Job
from tests.api.conftest import REDIS_URL
from tests.api.dashboard_rows import Jobs, make_jobs

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not CHROMIUM.is_file():
    pytest.skip(
        f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium; .ci/run does it)",
        allow_module_level=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, settings: Settings, jobs: Jobs, writer: str) -> None:
        self.url, self.settings, self.jobs, self.writer = url, settings, jobs, writer
        self.engine = create_app_engine(settings.app_database_url())


@pytest.fixture(scope="module")
def server(api_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """uvicorn serving the app on a free port, with the rows the pages show."""
    root = tmp_path_factory.mktemp("dashboard")
    settings = Settings(
        database_url=api_database_url,
        broker_url=REDIS_URL,
        optuna_storage_url=f"sqlite:///{root / 'optuna.sqlite'}",
        data_dir=root / "data",
    )
    engine = create_app_engine(api_database_url)
    jobs = make_jobs(engine, settings, root / "soup")
    with session_scope(engine) as session:
        _, writer = create_api_key(session=session, name="browser-writer")
    port = _free_port()
    env = {
        **os.environ,
        "SOCE_DATABASE_URL": api_database_url,
        "SOCE_BROKER_URL": REDIS_URL,
        "SOCE_OPTUNA_STORAGE_URL": settings.optuna_url(),
        "SOCE_DATA_DIR": str(settings.data_dir),
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port)]
    log = (root / "uvicorn.log").open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/static/dashboard.css", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"uvicorn did not start: {(root / 'uvicorn.log').read_text()}")
                time.sleep(0.2)
        yield Server(url, settings, jobs, writer)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        engine.dispose()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh page (own cookies) that records console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("requestfailed", lambda r: _request_failed(page, r))
    yield page
    context.close()


def _request_failed(page: Any, request: Any) -> None:
    # net::ERR_ABORTED is the browser dropping a request itself (a navigation that supersedes a poll or
    # a form post whose answer comes while htmx swaps the fragment); the outcome is asserted instead.
    # Any other failure (refused, reset, timed out) is an error of the page.
    if request.failure != "net::ERR_ABORTED":
        page.errors.append(f"request failed: {request.method} {request.url} ({request.failure})")


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def _sign_in(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/signin")
    page.fill("input[name=key]", server.writer)
    page.click("#signin")
    page.wait_for_url(f"{server.url}/")


def test_every_page_loads_without_console_errors(page: Any, server: Server, tmp_path: Path) -> None:
    j = server.jobs
    pages = {
        "jobs": "/",
        "job-done": f"/jobs/{j.done}",
        "job-running": f"/jobs/{j.running}",
        "job-failed": f"/jobs/{j.failed}",
        "candidates": "/candidates",
        "schedules": "/schedules",
        "signin": "/signin",
    }
    for name, path in pages.items():
        response = page.goto(server.url + path)
        assert response.status == 200, path
        page.wait_for_load_state("networkidle")
        _shot(page, tmp_path, name)
    assert page.evaluate("typeof window.htmx") == "object"  # the vendored htmx loaded
    assert page.errors == []
    page.goto(f"{server.url}/jobs/{j.failed}")
    assert "has no config.json" in page.inner_text("#job-error")


def test_heatmaps_and_charts_render(page: Any, server: Server, tmp_path: Path) -> None:
    page.goto(f"{server.url}/jobs/{server.jobs.done}")
    for chart, mark in (
        ("scores-dev", "rect.cell"),
        ("correlation-pearson", "rect.cell"),
        ("history", "circle.trial"),
    ):
        svg = page.locator(f'svg[data-chart="{chart}"]')
        assert svg.count() == 1, chart
        box = svg.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50, chart
        assert svg.locator(mark).count() >= 5, chart
    assert page.locator('svg[data-chart="history"] path.best-so-far').count() == 1
    assert page.locator('svg[data-chart="correlation-pearson"] text.weak').count() > 0  # weak categories
    _shot(page, tmp_path, "job-charts")
    assert page.errors == []


def test_progress_appears_without_reload(page: Any, server: Server, tmp_path: Path) -> None:
    page.goto(f"{server.url}/jobs/{server.jobs.running}")
    assert "2/10" in page.inner_text("#job-progress")
    page.evaluate("window.notReloaded = true")
    with session_scope(server.engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == server.jobs.running)
            .values(progress={"search": {"done": 7, "total": 10, "unit": "trial"}})
        )
    page.wait_for_function(
        "document.querySelector('#job-progress').innerText.includes('7/10')", timeout=10_000
    )
    assert page.evaluate("window.notReloaded") is True
    _shot(page, tmp_path, "job-live-progress")
    assert page.errors == []


def test_cancel_refused_without_a_key_then_works_signed_in(page: Any, server: Server, tmp_path: Path) -> None:
    job_url = f"{server.url}/jobs/{server.jobs.running}"
    page.goto(job_url)
    assert page.locator("#cancel").count() == 0
    status = page.evaluate(
        "fetch(location.pathname + '/cancel', {method: 'POST', body: new URLSearchParams({csrf: 'x'})})"
        ".then(r => r.status)"
    )
    assert status == 401
    page.errors.clear()  # the refused fetch logs its 401
    with session_scope(server.engine) as session:
        assert session.get(Job, server.jobs.running).state == "searching"

    _sign_in(page, server)
    page.goto(job_url)
    with page.expect_navigation():  # the form posts, and the answer redirects back to the same page
        page.click("#cancel")
    page.wait_for_function("document.querySelector('#job-state').innerText.trim() === 'cancelled'")
    assert page.inner_text("#job-state") == "cancelled"
    with session_scope(server.engine) as session:
        assert session.get(Job, server.jobs.running).state == "cancelled"
    _shot(page, tmp_path, "job-cancelled")
    assert page.errors == []
