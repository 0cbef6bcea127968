"""The job state machine in-process (workers.jobs) on a real PostgreSQL: no worker, no evaluation."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from soce.config import Settings
from soce.db import Candidate, Job, Suite, create_app_engine, session_scope
from soce.db.migrate import upgrade
from soce.db.models import Schedule, ScheduleRun, Soup
from soce.schemas.suite import SuiteSpec, canonical_hash
from tests.db.conftest import postgres_url  # noqa: F401  (a fixture, used by name)
from workers import context, metrics, steps
from workers.context import ResidentCache, resident_cache
from workers.flow import run_job, run_step, run_task
from workers.schedules import tick
from workers.trials import study_lock

SUITE = {"name": "s", "categories": [{"name": "a", "tasks": [{"name": "t_a"}]}]}


@pytest.fixture
def engine(postgres_url: str):  # noqa: F811
    engine = create_app_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def add_job(engine, folders: list[Path], *, state: str = "queued", recipe: dict | None = None) -> int:
    with session_scope(engine) as session:
        suite = session.scalar(select(Suite)) or Suite(name="s", spec=SUITE, content_hash="0" * 64)
        job = Job(
            name="j",
            suite=suite,
            recipe=recipe or {"n_trials": 3},
            state=state,
            candidates=[Candidate(name=p.name, path=str(p)) for p in folders],
        )
        session.add(job)
        session.flush()
        return job.id


def read(engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def test_missing_candidate_fails_the_job_with_its_name(engine, settings, tmp_path: Path):
    job_id = add_job(engine, [tmp_path / "gone-a", tmp_path / "gone-b"])
    assert run_job(job_id, settings=settings, engine=engine) == "failed"
    job = read(engine, job_id)
    assert job.error.startswith("start: ") and "gone-a" in job.error and job.finished_at


def test_incompatible_candidates_fail_at_start(engine, settings, make_checkpoints):
    a = make_checkpoints(1, hidden=32)
    b = make_checkpoints(1, hidden=64)
    job_id = add_job(engine, [*a, *b])
    assert run_step("soce.job.start", job_id, settings=settings, engine=engine) is None
    job = read(engine, job_id)
    assert job.state == "failed" and job.error


def test_bad_recipe_is_refused_naming_the_field(engine, settings, make_checkpoints):
    job_id = add_job(engine, make_checkpoints(2), recipe={"n_trials": 0})
    run_step("soce.job.start", job_id, settings=settings, engine=engine)
    job = read(engine, job_id)
    assert job.state == "failed" and "n_trials" in job.error


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["/soups/1"], "extra_baselines must map names to model folders, not list"),
        ({"Champion": "/soups/1"}, "extra_baselines: 'Champion' is not a lower-case identifier"),
        ({"greedy": "/soups/1"}, "extra_baselines: 'greedy' is a built-in baseline's name"),
        ({"champion": ""}, "extra_baselines: 'champion' must name a model folder"),
    ],
)
def test_bad_extra_baselines_are_refused_at_start(engine, settings, make_checkpoints, extra, message):
    job_id = add_job(engine, make_checkpoints(2), recipe={"n_trials": 3, "extra_baselines": extra})
    run_step("soce.job.start", job_id, settings=settings, engine=engine)
    job = read(engine, job_id)
    assert job.state == "failed" and job.error == f"start: job {job_id}: {message}"


def test_start_moves_a_valid_job_to_scoring(engine, settings, make_checkpoints):
    job_id = add_job(engine, make_checkpoints(2))
    assert run_step("soce.job.start", job_id, settings=settings, engine=engine) == "soce.job.score"
    job = read(engine, job_id)
    assert job.state == "scoring" and job.started_at and job.error is None
    # run again (a redelivered message): nothing to do, unless redelivered after its commit
    assert run_step("soce.job.start", job_id, settings=settings, engine=engine) is None
    assert run_step("soce.job.start", job_id, redelivered=True, settings=settings, engine=engine) == (
        "soce.job.score"
    )
    assert read(engine, job_id).state == "scoring"


def test_candidates_without_a_hash_get_it_when_their_job_scores(engine, make_checkpoints):
    from soce.checkpoints import Checkpoint, checkpoint_hash

    folders = make_checkpoints(3)
    job_id = add_job(engine, folders)  # registered without a hash, as a schedule's glob does
    with session_scope(engine) as session:
        rows = session.get(Job, job_id).candidates
        rows[2].content_hash = "f" * 64  # hashed already: left as it is
        ids = [c.id for c in rows]
    assert steps.record_candidate_hashes(engine, job_id) == 2
    assert steps.record_candidate_hashes(engine, job_id) == 0  # a redelivered score step changes nothing
    with session_scope(engine) as session:
        stored = [session.get(Candidate, i).content_hash for i in ids]
    for folder, digest in zip(folders[:2], stored, strict=False):
        with Checkpoint.open(folder) as ckpt:
            assert digest == checkpoint_hash(ckpt)  # what the API's registration stores
    assert stored[2] == "f" * 64


@pytest.mark.parametrize(
    ("task", "extra"),
    [("soce.job.start", ()), ("soce.job.score", ()), ("soce.job.search", ()), ("soce.job.trial", (0,))],
)
def test_cancelled_and_finished_jobs_are_left_alone(engine, settings, make_checkpoints, task, extra):
    for state in ("cancelled", "done", "failed"):
        job_id = add_job(engine, make_checkpoints(2), state=state)
        sent = run_task(task, (job_id, *extra), redelivered=True, settings=settings, engine=engine)
        assert sent == []
        assert read(engine, job_id).state == state


def test_missing_job_is_nothing_to_do(engine, settings):
    assert run_step("soce.job.score", 123456, settings=settings, engine=engine) is None


class Fake:
    def __init__(self, nbytes: int) -> None:
        import torch

        self.tensors = {"x": {"w": torch.zeros(nbytes // 4)}}
        self.model = torch.nn.Linear(1, 1, bias=False)  # 4 bytes


def test_resident_cache_drops_least_recently_used_by_bytes():
    cache = ResidentCache(max_bytes=1000)
    built: list[str] = []

    def build(name: str, nbytes: int):
        def make():
            built.append(name)
            return Fake(nbytes)

        return make

    a = cache.get_or_build(("a",), build("a", 400))
    assert cache.get_or_build(("a",), build("a", 400)) is a
    cache.get_or_build(("b",), build("b", 400))
    cache.get_or_build(("a",), build("a", 400))  # a is now the most recent
    cache.get_or_build(("c",), build("c", 400))  # over 1000 bytes: b goes
    assert built == ["a", "b", "c"]
    cache.get_or_build(("a",), build("a", 400))
    cache.get_or_build(("b",), build("b", 400))
    assert built == ["a", "b", "c", "b"]
    cache.get_or_build(("big",), build("big", 4000))  # larger than the budget alone: kept, the rest dropped
    assert list(cache) == [("big",)] and cache.nbytes == 1000  # counted as the whole budget
    assert (cache.hits, cache.misses) == (3, 5)


def test_resident_cache_budget_comes_from_the_settings(monkeypatch):
    monkeypatch.setattr(context, "_resident_cache", None)
    monkeypatch.setenv("SOCE_RESIDENT_CACHE_GIB", "0.5")
    cache = resident_cache(Settings())
    assert cache.max_bytes == 512 << 20
    assert resident_cache(Settings(resident_cache_gib=2)) is cache  # one cache per process


def test_study_lock_lets_one_process_decide_at_a_time(postgres_url):  # noqa: F811
    engines = [create_app_engine(postgres_url) for _ in range(2)]
    spans: list[tuple[float, float]] = []

    def hold(engine, name: str) -> None:
        with study_lock(engine, name):
            entered = time.monotonic()
            time.sleep(0.5)
            spans.append((entered, time.monotonic()))

    try:
        threads = [threading.Thread(target=hold, args=(e, "soce-tpe-x")) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        (_, a_out), (b_in, _) = sorted(spans)
        assert b_in >= a_out  # the second waited for the first
        started = time.monotonic()
        with study_lock(engines[0], "soce-tpe-x"), study_lock(engines[1], "soce-tpe-other"):
            pass  # another study is not held up
        assert time.monotonic() - started < 5
    finally:
        for e in engines:
            e.dispose()


def test_score_cache_counters_are_what_metrics_reads(redis_url: str):
    from api.broker import SCORE_CACHE_HITS_KEY, SCORE_CACHE_MISSES_KEY, JobQueue

    assert (metrics.SCORE_CACHE_HITS_KEY, metrics.SCORE_CACHE_MISSES_KEY) == (
        SCORE_CACHE_HITS_KEY,
        SCORE_CACHE_MISSES_KEY,
    )
    queue = JobQueue(redis_url)
    try:
        hits, misses = queue.score_cache_counts()
        metrics.count_score_cache(redis_url, hits=3, misses=5)
        metrics.count_score_cache(redis_url, hits=2, misses=0)
        assert queue.score_cache_counts() == (hits + 5, misses + 5)
    finally:
        queue.close()


def test_score_cache_counters_never_fail_a_job(caplog: pytest.LogCaptureFixture):
    metrics.count_score_cache("redis://127.0.0.1:1/0", hits=1, misses=1)  # nothing listens on port 1
    assert "score cache counters at redis://127.0.0.1:1/0 not updated" in caplog.text
    metrics.count_score_cache("memory://", hits=1, misses=1)  # not Redis: not counted, no error


# --- a schedule's champion scored at finalize, on the tiny zoo -------------------------------------
NOW = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


def soup_of(engine, job_id: int) -> Soup:
    with session_scope(engine) as session:
        soup = session.scalars(select(Soup).where(Soup.job_id == job_id)).one()
        session.expunge(soup)
        return soup


def runs(engine) -> list[ScheduleRun]:
    with session_scope(engine) as session:
        rows = session.scalars(select(ScheduleRun).order_by(ScheduleRun.due_at)).all()
        for r in rows:
            session.expunge(r)
        return list(rows)


@pytest.mark.slow
def test_scheduled_run_scores_the_champion_and_the_gate_uses_the_paired_interval(
    engine, tiny_zoo: Path, redis_url: str, tmp_path: Path
):
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url)
    folders = sorted((tiny_zoo / "candidates").iterdir())[:4]  # 4 of the zoo and 12 examples a task: fast
    spec = {**SuiteSpec.from_file(tiny_zoo / "suite.yaml").model_dump(mode="json"), "limit": 12}
    recipe = {"sampler": "tpe", "n_trials": 2, "bootstrap_iterations": 200}
    with session_scope(engine) as session:
        suite = Suite(name=spec["name"], spec=spec, content_hash=canonical_hash(spec))
        session.add(suite)
        for folder in folders[:-1]:  # the last candidate appears on the second night
            c = Candidate(name=folder.name, path=str(folder))
            c.tags.append("nightly")
            session.add(c)
        session.flush()
        session.add(
            Schedule(
                name="nightly",
                cron="0 2 * * *",
                timezone="UTC",
                recipe_template={"suite_id": suite.id, **recipe},
                candidate_source={"tag": "nightly"},
                promotion_policy={"metric": "test_average", "min_improvement": 0.0},
                next_run_at=NOW,
            )
        )

    def chose_its_soup(job_id: int) -> None:
        with session_scope(engine) as session:
            soup = session.scalars(select(Soup).where(Soup.job_id == job_id)).one()
            decision = soup.scores["decision"]
            assert decision["kind"] in ("soup", "single") and decision["model"]
            # the tiny zoo's soups are rarely ahead on 6 selection examples a task, and the gate refuses a
            # kept candidate (tests/db/test_schedules.py): this test is about the champion, so the job is
            # taken to have chosen its soup
            soup.scores = {**soup.scores, "decision": {**decision, "kind": "soup"}}

    def night(day: int) -> int:
        [job_id] = tick(engine, NOW + timedelta(days=day), send=lambda *_: None)
        assert run_job(job_id, settings=settings, engine=engine) == "done", read(engine, job_id).error
        chose_its_soup(job_id)
        tick(engine, NOW + timedelta(days=day, minutes=1), data_dir=settings.data_dir, send=lambda *_: None)
        return job_id

    first = night(0)
    champion = soup_of(engine, first)
    assert runs(engine)[0].outcome == "promoted" and "extra_baselines" not in read(engine, first).recipe
    low, high = champion.scores["test_average_interval"]  # its own interval, for a fallback gate
    assert low <= champion.scores["test_average"] <= high and low < high

    with session_scope(engine) as session:
        c = Candidate(name=folders[-1].name, path=str(folders[-1]))
        c.tags.append("nightly")
        session.add(c)
    second = night(1)
    assert read(engine, second).recipe["extra_baselines"] == {"champion": champion.path}
    soup = soup_of(engine, second)
    report = json.loads(Path(soup.lineage["report"]).read_text())
    # the champion folder scored on test as the job's own soup is scored from disk
    scored = report["baselines"]["champion"]
    assert scored["path"] == champion.path and set(scored["test"]) == set(report["categories"])
    assert scored["test_average"] == pytest.approx(champion.scores["test_average_from_disk"], abs=1e-9)
    interval = report["soup"]["intervals"]["vs_champion"]
    assert interval["diff"] == pytest.approx(soup.scores["test_average"] - scored["test_average"], abs=1e-9)
    assert interval["low"] <= interval["diff"] <= interval["high"] and interval["iterations"] == 200
    vs = soup.scores["vs_champion"]
    assert vs["soup_id"] == champion.id and vs["interval"] == [interval["low"], interval["high"]]
    assert report["baselines_not_scored"] == {}
    run = runs(engine)[1]
    assert run.details["champion_soup_id"] == champion.id
    gate = run.details["gate"]
    assert gate["method"] == "paired" and gate["interval"] == vs["interval"]
    assert run.outcome == ("promoted" if vs["interval"][0] > 0.0 else "not_better"), gate

    # the champion's folder vanished before the next job's finalize: the job ends, the gate falls back
    with session_scope(engine) as session:
        schedule = session.scalars(select(Schedule)).one()
        current = schedule.champion
        assert current is not None
        gone = Path(current.path)
        candidates = session.scalars(select(Candidate).order_by(Candidate.id)).all()
        job = Job(
            name="third night",
            suite=session.scalars(select(Suite)).one(),
            recipe={**recipe, "extra_baselines": {"champion": str(gone)}},
            state="queued",
            candidates=list(candidates),
        )
        session.add(job)
        session.flush()
        third = job.id
        session.add(
            ScheduleRun(
                schedule_id=schedule.id,
                due_at=NOW + timedelta(days=2),
                outcome="running",
                job_id=third,
                details={},
            )
        )
    gone.rename(gone.with_name("moved-away"))
    assert run_job(third, settings=settings, engine=engine) == "done", read(engine, third).error
    soup = soup_of(engine, third)
    report = json.loads(Path(soup.lineage["report"]).read_text())
    assert "champion" not in report["baselines"] and "vs_champion" not in report["soup"]["intervals"]
    assert report["baselines_not_scored"] == {
        "champion": {"path": str(gone), "error": f"{gone}: no such folder"}
    }
    assert any("extra baseline champion" in w and "no such folder" in w for w in report["warnings"])
    assert soup.scores["vs_champion"] == {
        "path": str(gone),
        "soup_id": current.id,
        "error": f"{gone}: no such folder",
    }
    chose_its_soup(third)
    tick(engine, NOW + timedelta(days=2, minutes=1), data_dir=settings.data_dir, send=lambda *_: None)
    run = runs(engine)[2]
    gate = run.details["gate"]
    assert gate["method"] == "independent" and run.outcome in ("promoted", "not_better")
    assert gate["fallback_reason"] == f"the job could not score the champion: {gone}: no such folder"
    own = soup.scores["test_average_interval"]
    champion_half = (
        current.scores["test_average_interval"][1] - current.scores["test_average_interval"][0]
    ) / 2
    margin = ((own[1] - own[0]) / 2) ** 2 + champion_half**2
    assert gate["interval"][0] == pytest.approx(gate["difference"] - margin**0.5)
