"""A schedule's glob of candidate folders must lie under the checkpoint roots, resolved before the check
('..' refused, symlinks followed); the roots default to the settings' (SOCE_CHECKPOINT_ROOTS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from soce.config import get_settings
from soce.db import Suite, session_scope
from soce.db.migrate import upgrade
from soce.db.schedules import create_schedule, update_schedule
from soce.errors import ScheduleError
from soce.schemas.schedule import ScheduleCreate, ScheduleUpdate


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def suite_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        suite = Suite(name="s", spec={}, content_hash="s" * 64)
        session.add(suite)
        session.flush()
        return suite.id


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    return folder


@pytest.fixture
def env_roots(monkeypatch: pytest.MonkeyPatch, root: Path) -> Iterator[None]:
    """SOCE_CHECKPOINT_ROOTS names `root` for the settings read from the environment."""
    monkeypatch.setenv("SOCE_CHECKPOINT_ROOTS", str(root))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _spec(suite_id: int, glob: str, **over: Any) -> ScheduleCreate:
    body = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "recipe_template": {"suite_id": suite_id},
        "candidate_source": {"glob": glob},
        "promotion_policy": {"min_improvement": 0.01},
    }
    return ScheduleCreate.model_validate({**body, **over})


def test_a_glob_under_the_roots_is_stored(engine: Engine, suite_id: int, root: Path) -> None:
    (root / "run-1").mkdir()
    (root / "linked").symlink_to(root / "run-1", target_is_directory=True)  # stays inside
    with session_scope(engine) as session:
        for i, glob in enumerate((f"{root}/run-*", f"{root}/*/shard-?", f"{root}/linked/*", f"{root}/*")):
            row = create_schedule(
                session=session, spec=_spec(suite_id, glob, name=f"s{i}"), checkpoint_roots=[root]
            )
            assert row.candidate_source == {"glob": glob}


def test_globs_reaching_out_of_the_roots_are_refused(
    engine: Engine, suite_id: int, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (root / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    refused = {
        f"{tmp_path}/elsewhere/*": "not under the folders",
        "/*/checkpoints/*": "not under the folders",  # the fixed part before the wildcard is '/'
        f"{root}/*/../../elsewhere/*": "must not contain '..'",
        f"{root}/../elsewhere/*": "must not contain '..'",
        f"{root}/out/*": "not under the folders",
    }
    with session_scope(engine) as session:
        for glob, why in refused.items():
            with pytest.raises(ScheduleError, match=why) as err:
                create_schedule(session=session, spec=_spec(suite_id, glob), checkpoint_roots=[root])
            assert glob in str(err.value) and "candidate_source.glob" in str(err.value)


def test_without_roots_a_glob_is_refused_and_a_tag_is_not(engine: Engine, suite_id: int, root: Path) -> None:
    with session_scope(engine) as session:
        with pytest.raises(ScheduleError, match="only under SOCE_CHECKPOINT_ROOTS, which is not set"):
            create_schedule(session=session, spec=_spec(suite_id, f"{root}/*"), checkpoint_roots=[])
        by_tag = _spec(suite_id, "/x", candidate_source={"tag": "nightly"})
        assert create_schedule(session=session, spec=by_tag, checkpoint_roots=[]).candidate_source == {
            "tag": "nightly"
        }


def test_the_roots_default_to_the_settings(
    engine: Engine, suite_id: int, root: Path, env_roots: None
) -> None:
    with session_scope(engine) as session:
        row = create_schedule(session=session, spec=_spec(suite_id, f"{root}/run-*"))
        assert row.candidate_source == {"glob": f"{root}/run-*"}
        with pytest.raises(ScheduleError, match="not under"):
            create_schedule(session=session, spec=_spec(suite_id, "/srv/*", name="other"))


def test_an_update_to_a_glob_out_of_the_roots_changes_nothing(
    engine: Engine, suite_id: int, root: Path
) -> None:
    with session_scope(engine) as session:
        row = create_schedule(session=session, spec=_spec(suite_id, f"{root}/a-*"), checkpoint_roots=[root])
        spec = ScheduleUpdate.model_validate({"candidate_source": {"glob": "/etc/*"}, "cron": "0 4 * * *"})
        with pytest.raises(ScheduleError, match="not under"):
            update_schedule(session=session, schedule=row, spec=spec, checkpoint_roots=[root])
        assert (row.candidate_source, row.cron) == ({"glob": f"{root}/a-*"}, "0 2 * * *")
        spec = ScheduleUpdate.model_validate({"candidate_source": {"glob": f"{root}/b-*"}})
        update_schedule(session=session, schedule=row, spec=spec, checkpoint_roots=[root])
        assert row.candidate_source == {"glob": f"{root}/b-*"}
