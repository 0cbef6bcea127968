"""`soce run` drives the service's own job in-process: same states, steps, trial tasks and trials."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from soce.config import Settings
from soce.db import Job, get_engine, session_scope
from soce.flow import JobState, TaskName
from soce.schemas.run import RunRecipe
from workers import flow
from workers.flow import run_task
from workers.local import DRIVER, create_local_job, fail_orphans, run_local
from workers.trials import forget_opened


def recipe_for(zoo: Path, out: Path, **fields) -> RunRecipe:
    return RunRecipe(
        candidates=[str(zoo / "candidates" / "*")],
        suite=str(zoo / "suite.yaml"),
        sampler="tpe",
        n_trials=5,
        parallel_trials=2,
        bootstrap_iterations=200,
        output=str(out),
        **fields,
    )


def trials_of(settings: Settings, study_name: str) -> list[tuple[str, dict, dict]]:
    study = optuna.load_study(study_name=study_name, storage=settings.optuna_url())
    return [(t.state.name, t.params, t.user_attrs["category_scores"]) for t in study.trials]


def test_soce_run_and_the_service_ask_the_same_trials(tiny_zoo: Path, tmp_path: Path):
    data = tmp_path / "data"  # one app database (scores cached once), two Optuna databases
    local = Settings(data_dir=data, optuna_storage_url=f"sqlite:///{tmp_path / 'local.sqlite'}")
    service = Settings(data_dir=data, optuna_storage_url=f"sqlite:///{tmp_path / 'service.sqlite'}")
    engine = get_engine(local.app_database_url())

    result = run_local(recipe_for(tiny_zoo, tmp_path / "local"), engine=engine, settings=local)
    with session_scope(engine) as session:
        job = session.get(Job, 1)
        assert job.state == JobState.DONE and job.analysis["report"] == result.report.as_json()
        assert job.study_name == result.report.search.study
    assert (tmp_path / "local" / "report.json").is_file() and result.soup_path.is_dir()

    # the service's way: every task a message, run as a Celery worker runs it (the study not buffered)
    forget_opened()
    job_id = create_local_job(engine, recipe_for(tiny_zoo, tmp_path / "service"))
    pending = [(TaskName.START, [job_id])]
    while pending:
        task, args = pending.pop(0)
        pending += [(m.task, list(m.args)) for m in run_task(task, args, settings=service, engine=engine)]
    with session_scope(engine) as session:
        assert session.get(Job, job_id).state == JobState.DONE

    name = result.report.search.study
    local_trials, service_trials = trials_of(local, name), trials_of(service, name)
    assert len(local_trials) == 5 and all(state == "COMPLETE" for state, _, _ in local_trials)
    assert local_trials == service_trials  # one seeding policy: the same points, the same scores


def test_a_local_job_left_active_by_a_dead_process_is_failed(tmp_path: Path, tiny_zoo: Path):
    engine = get_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    dead = create_local_job(engine, recipe_for(tiny_zoo, tmp_path / "a"))
    alive = create_local_job(engine, recipe_for(tiny_zoo, tmp_path / "b"))
    elsewhere = create_local_job(engine, recipe_for(tiny_zoo, tmp_path / "c"))
    gone = 2**22 + 4097  # above the usual pid_max: no such process
    with session_scope(engine) as session:
        session.get(Job, dead).analysis = {DRIVER: {"host": socket.gethostname(), "pid": gone}}
        session.get(Job, alive).analysis = {DRIVER: {"host": socket.gethostname(), "pid": os.getpid()}}
        session.get(Job, elsewhere).analysis = {DRIVER: {"host": "another-machine", "pid": gone}}
    assert fail_orphans(engine) == 1
    with session_scope(engine) as session:
        states = {j: session.get(Job, j).state for j in (dead, alive, elsewhere)}
        assert "process running it stopped" in session.get(Job, dead).error
    assert states == {dead: JobState.FAILED, alive: JobState.QUEUED, elsewhere: JobState.QUEUED}


def test_an_interrupted_run_leaves_its_job_failed(tmp_path: Path, tiny_zoo: Path, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data", optuna_storage_url=f"sqlite:///{tmp_path / 'o.sqlite'}")
    engine = get_engine(settings.app_database_url())

    def interrupted(ctx):  # Ctrl-C while the analyse step runs
        raise KeyboardInterrupt

    table = {s.task: replace(s, step=interrupted) if s.task == TaskName.ANALYSE else s for s in flow.STATES}
    monkeypatch.setattr(flow, "BY_TASK", table)
    with pytest.raises(KeyboardInterrupt):
        run_local(recipe_for(tiny_zoo, tmp_path / "out"), engine=engine, settings=settings)
    with session_scope(engine) as session:
        job = session.get(Job, 1)
        assert job.state == JobState.FAILED and job.error.startswith("interrupted: KeyboardInterrupt")


def test_bad_candidates_are_refused_before_anything_is_written(tmp_path: Path, tiny_zoo: Path):
    from soce.errors import RunRecipeError

    engine = get_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    recipe = recipe_for(tiny_zoo, tmp_path / "out")
    recipe = recipe.model_copy(update={"candidates": [str(tmp_path / "none*")]})
    with pytest.raises(RunRecipeError):
        create_local_job(engine, recipe)
    with session_scope(engine) as session:
        assert session.query(Job).count() == 0
