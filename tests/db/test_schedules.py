"""Scheduled runs on a real PostgreSQL: due and not due, concurrent ticks, skipped runs, the promotion
gate and the webhook. The clock is the `now` argument; jobs are rows, never real evaluations."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import Engine, select

from soce.db import create_app_engine
from soce.db.engine import session_scope
from soce.db.migrate import upgrade
from soce.db.models import Candidate, Job, Schedule, ScheduleRun, Soup, Suite
from workers.schedules import gate, notify, notify_with_retries, tick

NOW = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
FAST = (0.05, 0.1, 0.2)


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_app_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _schedule(engine: Engine, *, webhook: str | None = None, min_improvement: float = 0.0) -> int:
    with session_scope(engine) as session:
        suite = Suite(name="s", spec={}, content_hash="h" * 64)
        session.add(suite)
        for i in range(3):
            c = Candidate(name=f"c{i}", path=f"/ckpt/c{i}")
            c.tags.append("nightly")
            session.add(c)
        session.flush()
        row = Schedule(
            name="nightly",
            cron="0 2 * * *",
            timezone="UTC",
            recipe_template={"suite_id": suite.id, "sampler": "grid"},
            candidate_source={"tag": "nightly"},
            promotion_policy={"metric": "test_average", "min_improvement": min_improvement},
            webhook_url=webhook,
            next_run_at=NOW,
        )
        session.add(row)
        session.flush()
        return row.id


def _runs(engine: Engine) -> list[tuple[str, int | None, dict, str | None]]:
    with session_scope(engine) as session:
        rows = session.scalars(select(ScheduleRun).order_by(ScheduleRun.due_at)).all()
        return [(r.outcome, r.job_id, dict(r.details), r.error) for r in rows]


USE_SOUP = {"kind": "soup", "name": "nightly"}  # the job's decision: use the soup it wrote
KEEP = {"kind": "single", "name": "cand-1", "reason": "no soup beat it on the selection split"}


def _finish(
    engine: Engine,
    job_id: int,
    value: float,
    half: float = 0.0,
    vs_champion: dict | None = None,
    decision: dict = USE_SOUP,
) -> None:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = "done"
        scores = {
            "test_average": value,
            "test_average_interval": [value - half, value + half],
            "decision": decision,
        }
        if vs_champion is not None:  # what the job's finalize stores when it scored the champion
            scores["vs_champion"] = vs_champion
        session.add(Soup(job_id=job_id, path=f"/soups/{job_id}", weights={}, scores=scores))


def _new_candidate(engine: Engine, name: str) -> None:
    with session_scope(engine) as session:  # a new candidate, so the next run is not skipped
        c = Candidate(name=name, path=f"/ckpt/{name}")
        c.tags.append("nightly")
        session.add(c)


def _soup_id(engine: Engine, job_id: int) -> int:
    with session_scope(engine) as session:
        soup_id = session.scalar(select(Soup.id).where(Soup.job_id == job_id))
        assert soup_id is not None
        return soup_id


def test_due_gives_one_job_and_not_due_none(engine: Engine, tmp_path: Path) -> None:
    _schedule(engine)
    sent: list[tuple[str, list[int]]] = []
    send = lambda task, args: sent.append((task, args))  # noqa: E731
    assert tick(engine, NOW - timedelta(minutes=1), send=send) == []
    started = tick(engine, NOW, send=send)
    assert len(started) == 1 and sent == [("soce.job.start", started)]
    assert tick(engine, NOW + timedelta(minutes=5), send=send) == []  # next is tomorrow 02:00
    with session_scope(engine) as session:
        schedule = session.scalars(select(Schedule)).one()
        assert schedule.next_run_at == NOW + timedelta(days=1)
        job = session.get(Job, started[0])
        assert job is not None and len(job.candidates) == 3 and job.recipe == {"sampler": "grid"}
    assert [r[0] for r in _runs(engine)] == ["running"]


def test_two_ticks_at_once_start_one_job(engine: Engine) -> None:
    _schedule(engine)
    results: list[list[int]] = []
    barrier = threading.Barrier(2)

    def one() -> None:
        barrier.wait()
        results.append(tick(engine, NOW, send=lambda *_: None))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 1]
    assert len(_runs(engine)) == 1


def test_no_new_candidates_is_a_skipped_run(engine: Engine, tmp_path: Path) -> None:
    _schedule(engine)
    [job_id] = tick(engine, NOW, send=lambda *_: None)
    _finish(engine, job_id, 0.5)
    assert tick(engine, NOW + timedelta(days=1), data_dir=tmp_path, send=lambda *_: None) == []
    runs = _runs(engine)
    assert [r[0] for r in runs] == ["promoted", "skipped"]
    assert runs[1][2]["reason"] == "no new candidates" and runs[1][1] is None


def test_gate_promotes_first_then_only_a_clear_gain(engine: Engine, tmp_path: Path) -> None:
    schedule_id = _schedule(engine, min_improvement=0.01)
    [first] = tick(engine, NOW, send=lambda *_: None)
    _finish(engine, first, 0.50, half=0.01)
    tick(engine, NOW + timedelta(minutes=1), data_dir=tmp_path, send=lambda *_: None)
    pointer = json.loads((tmp_path / "champions" / "nightly.json").read_text())
    assert pointer["path"] == f"/soups/{first}"

    def next_run(day: int, value: float, half: float) -> None:
        _new_candidate(engine, f"new{day}")
        [job_id] = tick(engine, NOW + timedelta(days=day), send=lambda *_: None)
        with session_scope(engine) as session:  # the job scores the champion of the day it started
            job = session.get(Job, job_id)
            schedule = session.get(Schedule, schedule_id)
            assert job is not None and schedule is not None and schedule.champion is not None
            assert job.recipe["extra_baselines"] == {"champion": schedule.champion.path}
        _finish(engine, job_id, value, half)
        tick(engine, NOW + timedelta(days=day, minutes=1), data_dir=tmp_path, send=lambda *_: None)

    next_run(1, 0.52, half=0.02)  # +0.02, but the interval's lower bound is below 0.01
    next_run(2, 0.60, half=0.01)  # a clear gain
    runs = _runs(engine)
    assert [r[0] for r in runs] == ["promoted", "not_better", "promoted"]
    numbers = runs[1][2]["gate"]
    assert (
        numbers["method"] == "independent"
        and numbers["fallback_reason"] == "the job did not score the champion"
    )
    assert numbers["soup"] == pytest.approx(0.52) and numbers["champion"] == pytest.approx(0.50)
    assert numbers["interval"][0] < 0.01 < numbers["interval"][1]
    with session_scope(engine) as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None and schedule.champion is not None
        assert schedule.champion.scores["test_average"] == pytest.approx(0.60)
    assert json.loads((tmp_path / "champions" / "nightly.json").read_text())["path"] == schedule.champion.path


def test_failed_job_fails_the_run(engine: Engine, tmp_path: Path) -> None:
    _schedule(engine)
    [job_id] = tick(engine, NOW, send=lambda *_: None)
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state, job.error = "failed", "out of memory"
    tick(engine, NOW + timedelta(minutes=1), data_dir=tmp_path, send=lambda *_: None)
    assert _runs(engine)[0][0] == "failed" and _runs(engine)[0][3] == "out of memory"


def test_gate_judges_on_the_paired_interval_the_job_stored(engine: Engine, tmp_path: Path) -> None:
    schedule_id = _schedule(engine, min_improvement=0.01)
    [first] = tick(engine, NOW, send=lambda *_: None)
    _finish(engine, first, 0.50, half=0.05)
    tick(engine, NOW + timedelta(minutes=1), data_dir=tmp_path, send=lambda *_: None)
    champion_id = _soup_id(engine, first)

    def next_run(day: int, value: float, vs: dict) -> None:
        _new_candidate(engine, f"new{day}")
        [job_id] = tick(engine, NOW + timedelta(days=day), send=lambda *_: None)
        _finish(engine, job_id, value, half=0.05, vs_champion=vs)
        tick(engine, NOW + timedelta(days=day, minutes=1), data_dir=tmp_path, send=lambda *_: None)

    # +0.02 with wide own intervals (independent: [-0.05, 0.09]) but a tight paired one: promoted
    paired = {"difference": 0.02, "interval": [0.015, 0.025], "level": 0.95, "test_average": 0.50}
    next_run(1, 0.52, {**paired, "path": f"/soups/{first}", "soup_id": champion_id})
    runs = _runs(engine)
    assert [r[0] for r in runs] == ["promoted", "promoted"]
    assert runs[0][2].get("champion_soup_id") is None and runs[1][2]["champion_soup_id"] == champion_id
    numbers = runs[1][2]["gate"]
    assert numbers["method"] == "paired" and numbers["interval"] == [0.015, 0.025]
    assert numbers["difference"] == pytest.approx(0.02) and numbers["champion"] == pytest.approx(0.50)
    second = _soup_id(engine, runs[1][1])
    # a paired interval whose lower bound is not above min_improvement: not better, with the numbers
    low = {"difference": 0.03, "interval": [0.005, 0.055], "level": 0.95, "test_average": 0.52}
    next_run(2, 0.55, {**low, "path": f"/soups/{runs[1][1]}", "soup_id": second})
    outcome, _, details, error = _runs(engine)[2]
    assert outcome == "not_better" and error is None
    assert details["gate"]["method"] == "paired" and details["gate"]["interval"] == [0.005, 0.055]
    assert details["gate"]["min_improvement"] == 0.01 and details["gate"]["soup"] == pytest.approx(0.55)
    with session_scope(engine) as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None and schedule.champion_soup_id == second


def _soups(vs: dict | None, *, soup_half: float = 0.05) -> tuple[Soup, Soup]:
    champion = Soup(id=7, path="/soups/7", weights={}, scores={"test_average": 0.50, "decision": USE_SOUP})
    scores: dict = {
        "test_average": 0.56,
        "test_average_interval": [0.56 - soup_half, 0.56 + soup_half],
        "decision": USE_SOUP,
    }
    if vs is not None:
        scores["vs_champion"] = vs
    return Soup(id=8, path="/soups/8", weights={}, scores=scores), champion


def test_gate_prefers_the_paired_interval() -> None:
    paired = {"difference": 0.06, "interval": [0.03, 0.09], "level": 0.95, "soup_id": 7, "test_average": 0.5}
    promote, details = gate(*_soups(paired), {"min_improvement": 0.02})
    assert promote and details["method"] == "paired" and details["interval"] == [0.03, 0.09]
    assert details["champion_recorded"] == pytest.approx(0.50)
    # a lower bound of 0.03 is not above 0.04: refused, although the point estimate (+0.06) is above
    promote, details = gate(*_soups(paired), {"min_improvement": 0.04})
    assert not promote and details["method"] == "paired"
    independent, _ = gate(*_soups(None, soup_half=0.0), {"min_improvement": 0.04})
    assert independent  # without the paired interval: 0.06 > 0.04 on point estimates


@pytest.mark.parametrize(
    ("vs", "metric", "reason"),
    [
        (None, "test_average", "the job did not score the champion"),
        (
            {"error": "/soups/7: no such folder", "path": "/soups/7", "soup_id": 7},
            "test_average",
            "the job could not score the champion: /soups/7: no such folder",
        ),
        (
            {"difference": 0.06, "interval": [0.03, 0.09], "soup_id": 3, "path": "/soups/3"},
            "test_average",
            "the job scored soup 3 (/soups/3), not the champion, soup 7",
        ),
        (
            {"difference": 0.06, "interval": [0.03, 0.09], "soup_id": 7},
            "test_a",
            "the paired interval is on test_average, the policy's metric is test_a",
        ),
    ],
)
def test_gate_falls_back_to_independent_intervals_and_says_why(
    vs: dict | None, metric: str, reason: str
) -> None:
    soup, champion = _soups(vs)
    soup.scores["test_a"], champion.scores["test_a"] = 0.56, 0.50
    promote, details = gate(soup, champion, {"metric": metric, "min_improvement": 0.02})
    assert details["method"] == "independent" and details["fallback_reason"] == reason
    # 0.06 - 0.05 (the soup's half-width; the champion has none) = 0.01, not above 0.02
    low = 0.01 if metric == "test_average" else 0.06
    assert details["interval"][0] == pytest.approx(low) and promote is (low > 0.02)


def test_gate_refuses_a_job_that_kept_a_single_candidate(engine: Engine, tmp_path: Path) -> None:
    paired = {"difference": 0.06, "interval": [0.03, 0.09], "level": 0.95, "soup_id": 7, "test_average": 0.5}
    soup, champion = _soups(paired)
    soup.scores["decision"] = KEEP
    promote, details = gate(soup, champion, {"min_improvement": 0.0})
    assert not promote and details["decision"] == "single"
    assert details["refused"] == f"the job kept the single candidate cand-1: {KEEP['reason']}"
    assert not gate(soup, None, {})[0]  # not even as a schedule's first champion
    soup.scores.pop("decision")
    promote, details = gate(soup, champion, {})
    assert not promote and details["refused"] == "the job recorded no decision to use the soup"
    # through a run: the first job keeps a candidate, so the schedule gets no champion
    schedule_id = _schedule(engine)
    [job_id] = tick(engine, NOW, send=lambda *_: None)
    _finish(engine, job_id, 0.9, decision=KEEP)
    tick(engine, NOW + timedelta(minutes=1), data_dir=tmp_path, send=lambda *_: None)
    assert [r[0] for r in _runs(engine)] == ["not_better"]
    assert _runs(engine)[0][2]["gate"]["decision"] == "single"
    with session_scope(engine) as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None and schedule.champion_soup_id is None
    assert not (tmp_path / "champions" / "nightly.json").exists()


def test_gate_without_interval_compares_values() -> None:
    soup = Soup(path="/a", weights={}, scores={"test_average": 0.6, "decision": USE_SOUP})
    champion = Soup(path="/b", weights={}, scores={"test_average": 0.5})
    assert gate(soup, champion, {"min_improvement": 0.05})[0]
    assert not gate(soup, champion, {"min_improvement": 0.2})[0]
    assert gate(soup, None, {})[0]


class _Hook(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []
    failures = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_response(500)
        else:
            type(self).bodies.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _webhook(engine: Engine) -> dict:
    """What the run records about its webhook (`details["webhook"]`)."""
    with session_scope(engine) as session:
        return dict(session.scalars(select(ScheduleRun)).one().details["webhook"])


def test_webhook_retries_and_a_dead_one_does_not_fail_the_run(engine: Engine, tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Hook.bodies, _Hook.failures = [], 2
        _schedule(engine, webhook=f"http://127.0.0.1:{server.server_port}/hook")
        [job_id] = tick(engine, NOW, send=lambda *_: None)
        _finish(engine, job_id, 0.5)
        tick(engine, NOW + timedelta(minutes=1), data_dir=tmp_path, send=lambda *_: None, webhook_delays=FAST)
        assert [b["outcome"] for b in _Hook.bodies] == ["promoted"]
        assert _Hook.bodies[0]["schedule"] == "nightly" and _Hook.bodies[0]["job_id"] == job_id
        assert next(iter(_Hook.bodies[0])) == "verdict"  # none here: these jobs are rows, not runs
        assert "webhook" not in _Hook.bodies[0]["details"]
        recorded = _webhook(engine)
        assert (recorded["outcome"], recorded["attempts"], recorded["status"]) == ("delivered", 3, 204)
    finally:
        server.shutdown()
        server.server_close()
    with session_scope(engine) as session:  # nobody listens there any more
        run = session.scalars(select(ScheduleRun)).one()
        run_id = run.id
    assert notify_with_retries(engine, run_id, delays=FAST) is False  # a refused connection is retried
    recorded = _webhook(engine)
    assert (recorded["outcome"], recorded["attempts"], recorded["status"]) == ("failed", 3 + 4, None)
    assert "ConnectError" in recorded["error"]
    assert _runs(engine)[0][0] == "promoted"


def test_the_service_sends_webhooks_as_their_own_task(engine: Engine, tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Hook.bodies, _Hook.failures = [], 0
        _schedule(engine, webhook=f"http://127.0.0.1:{server.server_port}/hook")
        [job_id] = tick(engine, NOW, send=lambda *_: None)
        _finish(engine, job_id, 0.5)
        later: list[int] = []

        def none(*_: object) -> None:
            pass

        tick(engine, NOW + timedelta(minutes=1), data_dir=tmp_path, send=none, notify_later=later.append)
        assert _Hook.bodies == []  # the tick only handed the run on
        [run_id] = later
        attempt = notify(engine, run_id)
        assert attempt is not None and attempt.delivered and attempt.status == 204
        assert [(b["run_id"], b["outcome"]) for b in _Hook.bodies] == [(run_id, "promoted")]

        def broken(_run_id: int) -> None:
            raise ConnectionError("broker down")

        # a tick that cannot hand a webhook on calls it itself rather than lose it
        _new_candidate(engine, "c9")
        [job_id] = tick(engine, NOW + timedelta(days=1), send=lambda *_: None)
        _finish(engine, job_id, 0.9)
        tick(engine, NOW + timedelta(days=1, minutes=1), data_dir=tmp_path, send=none, notify_later=broken)
        assert len(_Hook.bodies) == 2
    finally:
        server.shutdown()
        server.server_close()


def test_cli_create_and_list(postgres_url: str, engine: Engine) -> None:
    from typer.testing import CliRunner

    from soce.cli import app

    with session_scope(engine) as session:
        suite = Suite(name="s", spec={}, content_hash="c" * 64)
        session.add(suite)
        session.flush()
        suite_id = suite.id
    runner = CliRunner()
    base = [
        "schedule",
        "create",
        "--database-url",
        postgres_url,
        "--name",
        "nightly",
        "--suite-id",
        str(suite_id),
    ]
    ok = runner.invoke(app, [*base, "--cron", "0 2 * * *", "--tag", "nightly", "--timezone", "Europe/Paris"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, [*base, "--cron", "0 25 * * *", "--tag", "nightly"])
    assert bad.exit_code != 0 and "hour" in bad.output
    listed = runner.invoke(app, ["schedule", "list", "--database-url", postgres_url])
    assert listed.exit_code == 0 and "nightly" in listed.output and "Europe/Paris" in listed.output
    update = ["schedule", "update", "nightly", "--database-url", postgres_url]
    changed = runner.invoke(app, [*update, "--cron", "15 4 * * *", "--disable", "--min-improvement", "0.02"])
    assert changed.exit_code == 0, changed.output
    assert "'15 4 * * *' Europe/Paris, disabled" in changed.output
    with session_scope(engine) as session:
        row = session.scalars(select(Schedule)).one()
        assert (row.cron, row.enabled, row.promotion_policy["min_improvement"]) == ("15 4 * * *", False, 0.02)
    named = runner.invoke(app, [*update, "--cron", "0 6 * * mon-fri"])
    assert named.exit_code == 0 and "'0 6 * * mon-fri'" in named.output, named.output
    shortcut = runner.invoke(app, [*update, "--cron", "@weekly"])
    assert shortcut.exit_code == 0 and "'@weekly'" in shortcut.output, shortcut.output
    bad = runner.invoke(app, [*update, "--cron", "0 6 * * funday"])
    assert bad.exit_code != 0 and "day of week" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, [*update, "--timezone", "Mars/Base"])
    assert bad.exit_code != 0 and "Mars/Base" in bad.output
    missing = runner.invoke(app, ["schedule", "update", "weekly", "--database-url", postgres_url, "--enable"])
    assert missing.exit_code != 0 and "no schedule is named 'weekly'" in missing.output


def test_glob_source_registers_new_folders(engine: Engine, make_checkpoints) -> None:
    folders = make_checkpoints(n=2)
    (folders[0].parent / "not-a-model").mkdir()
    schedule_id = _schedule(engine)
    with session_scope(engine) as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None
        schedule.candidate_source = {"glob": f"{folders[0].parent}/*"}
    [job_id] = tick(engine, NOW, send=lambda *_: None)
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert sorted(c.path for c in job.candidates) == sorted(str(f.resolve()) for f in folders)
        assert all(c.architecture for c in job.candidates)
    # the same folders the next night: nothing new, so no job
    assert tick(engine, NOW + timedelta(days=1), send=lambda *_: None) == []
    assert [r[0] for r in _runs(engine)] == ["running", "skipped"]


def test_glob_of_incompatible_folders_fails_the_run(engine: Engine, make_checkpoints) -> None:
    small, large = make_checkpoints(n=1, hidden=32), make_checkpoints(n=1, hidden=64)
    root = small[0].parent.parent
    schedule_id = _schedule(engine)
    with session_scope(engine) as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None
        schedule.candidate_source = {"glob": f"{root}/ckpts-*/*"}
    assert tick(engine, NOW, send=lambda *_: None) == []
    [(outcome, job_id, _, error)] = _runs(engine)
    assert outcome == "failed" and job_id is None and error is not None and "incompatible" in error
    assert str(large[0].parent).startswith(str(root))


def test_unplanned_schedule_gets_a_time_and_a_broken_cron_never_fires(engine: Engine) -> None:
    schedule_id = _schedule(engine)
    with session_scope(engine) as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None
        schedule.next_run_at, schedule.last_run_at = None, NOW - timedelta(days=1)
        broken = Schedule(
            name="broken",
            cron="not a cron",
            recipe_template=schedule.recipe_template,
            candidate_source={"tag": "nightly"},
            promotion_policy={},
        )
        session.add(broken)
    assert len(tick(engine, NOW, send=lambda *_: None)) == 1  # yesterday's run -> today 02:00 is due
    with session_scope(engine) as session:
        broken_row = session.scalars(select(Schedule).where(Schedule.name == "broken")).one()
        assert broken_row.next_run_at is None
