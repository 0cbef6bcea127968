"""The service tables on a real PostgreSQL and on SQLite: migrations match the models, go down and up
again without touching anyone else's tables, constraints hold, API keys are stored as hashes only, and
`soce db` / `soce apikey` work."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text
from typer.testing import CliRunner

from soce.cli import app
from soce.db import (
    JOB_STATES,
    ApiKey,
    ApiKeyError,
    Base,
    Candidate,
    CandidateTag,
    Job,
    Schedule,
    ScheduleRun,
    Soup,
    Suite,
    create_api_key,
    create_app_engine,
    list_api_keys,
    revoke_api_key,
    session_scope,
    verify_api_key,
)
from soce.db.apikeys import KEY_PREFIX, PREFIX_CHARS
from soce.db.migrate import HEAD, VERSION_TABLE, alembic_config, current_revision, downgrade, upgrade
from soce.errors import DatabaseError

OURS = set(Base.metadata.tables)
SCORES_ONLY = {"scores"}  # what revision 0001 made


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    upgrade(empty_engine)
    return empty_engine


def head(engine: Engine) -> str:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def schema_diff(engine: Engine) -> list:
    with engine.connect() as conn:
        opts = {"compare_type": True, "version_table": VERSION_TABLE}
        return compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def suite(name: str = "s", digest: str = "a" * 64) -> Suite:
    return Suite(name=name, spec={"name": name, "categories": {"math": ["t1"]}}, content_hash=digest)


def job(suite_row: Suite, **fields) -> Job:
    return Job(name="nightly", suite=suite_row, recipe={"sampler": "tpe", "n_trials": 8}, **fields)


# --- migrations -------------------------------------------------------------------------------------


def test_migrations_match_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head(engine) == HEAD
    assert tables(engine) == OURS | {VERSION_TABLE}
    assert schema_diff(engine) == []


def test_downgrade_and_upgrade_leave_other_tables_alone(empty_engine: Engine) -> None:
    engine = empty_engine
    with engine.begin() as conn:  # as Optuna leaves it, had it shared the database
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
    upgrade(engine)
    assert tables(engine) == OURS | {VERSION_TABLE, "alembic_version"}
    downgrade(engine, "0001")
    assert tables(engine) == SCORES_ONLY | {VERSION_TABLE, "alembic_version"}
    assert current_revision(engine) == "0001"
    downgrade(engine, "base")
    assert tables(engine) == {VERSION_TABLE, "alembic_version"}
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["v3.2.0.a"]
        conn.execute(text("DROP TABLE alembic_version"))
        conn.commit()
    assert schema_diff(engine) == []


# --- constraints ------------------------------------------------------------------------------------


def test_job_state_is_checked(engine: Engine) -> None:
    with session_scope(engine) as session:
        s = suite()
        session.add_all([job(s, state=state) for state in JOB_STATES])
    with (
        pytest.raises(DatabaseError, match=r"ck_jobs_state|CHECK constraint"),
        session_scope(engine) as session,
    ):
        session.add(job(session.scalar(select(Suite)), state="paused"))
    with session_scope(engine) as session:
        assert sorted(session.scalars(select(Job.state))) == sorted(JOB_STATES)


def test_idempotency_key_is_unique(engine: Engine) -> None:
    with session_scope(engine) as session:
        s = suite()
        session.add_all([job(s, idempotency_key="retry-1"), job(s), job(s)])  # many jobs have no key
    with (
        pytest.raises(DatabaseError, match=r"uq_jobs_idempotency_key|UNIQUE constraint"),
        session_scope(engine) as session,
    ):
        session.add(job(session.scalar(select(Suite)), idempotency_key="retry-1"))
    with session_scope(engine) as session:
        assert len(session.scalars(select(Job)).all()) == 3


def test_a_schedule_runs_once_per_due_time(engine: Engine) -> None:
    due = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    with session_scope(engine) as session:
        schedule = Schedule(
            name="nightly",
            cron="0 2 * * *",
            recipe_template={"sampler": "tpe"},
            candidate_source={"glob": "/ckpts/*"},
            promotion_policy={"metric": "average", "min_improvement": 0.01},
        )
        session.add(ScheduleRun(schedule=schedule, due_at=due))
    with (
        pytest.raises(DatabaseError, match=r"uq_schedule_runs_schedule_id|UNIQUE constraint"),
        session_scope(engine) as session,  # a second beat process, same tick
    ):
        session.add(ScheduleRun(schedule=session.scalar(select(Schedule)), due_at=due))
    with (
        pytest.raises(DatabaseError, match=r"ck_schedule_runs_outcome|CHECK constraint"),
        session_scope(engine) as session,
    ):
        schedule = session.scalar(select(Schedule))
        session.add(ScheduleRun(schedule=schedule, due_at=due + timedelta(days=1), outcome="maybe"))


# --- rows -------------------------------------------------------------------------------------------


def test_rows_round_trip_with_tags_links_and_utc_times(engine: Engine) -> None:
    started = datetime(2026, 11, 22, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(engine) as session:
        a = Candidate(name="a", path="/ckpts/a", content_hash="1" * 64, architecture={"layers": 2})
        b = Candidate(name="b", path="/ckpts/b", tags=["math", "nightly"])
        a.tags.append("math")
        session.add_all([a, b])
        session.flush()  # a gets the lower id; a job lists its candidates by id
        j = job(suite(), candidates=[b, a], started_at=started, analysis=None)
        soup = Soup(job=j, path="/soups/1", weights={"a": 0.25, "b": 0.75}, lineage={"method": "linear"})
        session.add(
            Schedule(
                name="nightly",
                cron="0 2 * * *",
                timezone="Europe/Paris",
                recipe_template={},
                candidate_source={"tag": "nightly"},
                promotion_policy={"metric": "average"},
                champion=soup,
            )
        )
    with session_scope(engine) as session:
        got = session.scalar(select(Job))
        assert [c.name for c in got.candidates] == ["a", "b"]
        assert got.state == "queued" and got.progress == {} and got.timings == {}
        assert session.scalar(select(Job.id).where(Job.analysis.is_(None))) == got.id
        assert got.suite.spec["categories"] == {"math": ["t1"]}
        assert got.started_at == started and got.started_at.tzinfo == UTC
        assert got.created_at.tzinfo == UTC
        assert abs(got.created_at - datetime.now(UTC)) < timedelta(minutes=5)
        assert got.soups[0].weights == {"a": 0.25, "b": 0.75}
        schedule = session.scalar(select(Schedule))
        assert schedule.enabled and schedule.champion.path == "/soups/1"
        tagged = session.scalars(
            select(Candidate).join(CandidateTag).where(CandidateTag.tag == "math").order_by(Candidate.id)
        ).all()
        assert [(c.name, list(c.tags)) for c in tagged] == [("a", ["math"]), ("b", ["math", "nightly"])]
        # JSON columns must not break DISTINCT (plain json on PostgreSQL has no equality)
        distinct = select(Job).join(Job.candidates).join(CandidateTag).distinct()
        assert len(session.scalars(distinct).all()) == 1
        got.progress["scoring"] = {"done": 3, "total": 8}  # a top-level key change is saved
        got.state = "scoring"
    with session_scope(engine) as session:
        got = session.scalar(select(Job).where(Job.state == "scoring"))
        assert got.progress == {"scoring": {"done": 3, "total": 8}}
        session.delete(session.scalar(select(Candidate).where(Candidate.name == "b")).tag_rows[0])
    with session_scope(engine) as session:
        left = session.scalars(select(CandidateTag.tag).order_by(CandidateTag.tag)).all()
        assert left == ["math", "nightly"]


def test_naive_timestamps_are_refused(engine: Engine) -> None:
    with pytest.raises(DatabaseError, match="has no time zone"), session_scope(engine) as session:
        session.add(job(suite(), started_at=datetime(2026, 1, 1)))
        session.flush()


# --- API keys ---------------------------------------------------------------------------------------


def stored_text(engine: Engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    return " ".join(str(v) for row in rows for v in row)


def test_api_keys_are_stored_as_hashes_only(engine: Engine) -> None:
    with session_scope(engine) as session:
        row, key = create_api_key(session=session, name="ci")
        _, other = create_api_key(session=session, name="dashboard", read_only=True)
    assert key.startswith(KEY_PREFIX) and len(key) > 40 and row.prefix == key[:PREFIX_CHARS]
    stored = stored_text(engine)
    assert key not in stored and key[PREFIX_CHARS:] not in stored and key[-16:] not in stored

    with session_scope(engine) as session:
        found = verify_api_key(session=session, key=key)
        assert found is not None and found.name == "ci" and not found.read_only
        assert verify_api_key(session=session, key=other).read_only
        assert verify_api_key(session=session, key=key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert verify_api_key(session=session, key="") is None
    with session_scope(engine) as session:
        used = session.scalar(select(ApiKey).where(ApiKey.name == "ci")).last_used_at
        assert used is not None and abs(used - datetime.now(UTC)) < timedelta(minutes=5)

    with pytest.raises(ApiKeyError, match="named 'ci' exists"), session_scope(engine) as session:
        create_api_key(session=session, name="ci")
    with session_scope(engine) as session:
        revoked = revoke_api_key(session=session, name="ci").revoked_at
    with session_scope(engine) as session:
        assert verify_api_key(session=session, key=key) is None
        assert revoke_api_key(session=session, name="ci").revoked_at == revoked  # revoking again is a no-op
        assert [(k.name, k.revoked) for k in list_api_keys(session=session)] == [
            ("ci", True),
            ("dashboard", False),
        ]
    with pytest.raises(ApiKeyError, match="no API key is named 'nobody'"), session_scope(engine) as session:
        revoke_api_key(session=session, name="nobody")


# --- CLI --------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def soce(database_url: str) -> Iterator:
    def invoke(*args: str):
        result = runner.invoke(app, [*args, "--database-url", database_url])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output
        return result

    yield invoke
    from soce.db import dispose_engines

    dispose_engines()  # the CLI's shared engines hold connections to the throwaway database


def test_cli_db_upgrade_and_current(soce) -> None:
    assert f"empty; `soce db upgrade` migrates it to {HEAD}" in soce("db", "current").stdout
    assert f"empty -> {HEAD}" in soce("db", "upgrade").stdout
    assert f"already at {HEAD}" in soce("db", "upgrade").stdout
    assert soce("db", "current").stdout.rstrip().endswith(f": {HEAD} (head)")


def test_cli_apikeys(soce, database_url: str) -> None:
    if database_url.startswith("postgresql"):  # the service's database is migrated on purpose
        missing = soce("apikey", "list")
        assert missing.exit_code == 2
        assert "has no api_keys table; run `soce db upgrade` first" in missing.stderr
        soce("db", "upgrade")
    created = soce("apikey", "create", "--name", "ci")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()  # stdout is the key alone, for KEY=$(soce apikey create ...)
    assert key.startswith(KEY_PREFIX) and "\n" not in key
    assert "shown only now" in created.stderr

    again = soce("apikey", "create", "--name", "ci")
    assert again.exit_code == 2 and again.stderr.strip() == (
        "error: an API key named 'ci' exists (revoked keys keep their names)"
    )
    listed = soce("apikey", "list").stdout
    assert key[:PREFIX_CHARS] + "…" in listed and key not in listed and "read-write" in listed

    engine = create_app_engine(database_url)
    try:
        assert key not in stored_text(engine)
        with session_scope(engine) as session:
            assert verify_api_key(session=session, key=key).name == "ci"
        assert "revoked API key 'ci'" in soce("apikey", "revoke", "ci").stdout
        with session_scope(engine) as session:
            assert verify_api_key(session=session, key=key) is None
    finally:
        engine.dispose()
    unknown = soce("apikey", "revoke", "nobody")
    assert unknown.exit_code == 2 and unknown.stderr.strip() == "error: no API key is named 'nobody'"


def test_cli_names_an_unreachable_database() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    try:
        for args in (["db", "current"], ["db", "upgrade"], ["apikey", "list"]):
            result = runner.invoke(app, [*args, "--database-url", url])
            assert result.exit_code == 2, result.output
            assert result.stderr.startswith(f"error: database {url} cannot be reached ("), result.stderr
            assert "Traceback" not in result.output
    finally:
        from soce.db import dispose_engines

        dispose_engines()
