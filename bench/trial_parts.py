"""Where a weight-search trial's time goes: merging into the resident model, evaluation, bookkeeping.

Runs N TPE trials on the demo zoo as `soce run` does: a job in an embedded SQLite app database, its
search and trial tasks run in this process (workers.flow.run_task), the study in an SQLite Optuna
storage. Splits the wall time of the search into merge (weights into the resident model), evaluation
(lm-eval tasks on the model) and the rest: the job's bookkeeping (reading the job, the study lock,
asking, telling, user attributes, progress). Side by side, the same trials through
`WeightSearch.run()` on its own (the same ask, evaluate and tell calls, no job rows), which shows
what the job adds. Target: bookkeeping at most 5% of a trial in `soce run`.

    python bench/trial_parts.py [--zoo DIR] [--size demo] [--trials 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import _pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="a zoo folder; default: the demo zoo (built if missing)")
    ap.add_argument("--size", default="demo")
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    _pipeline.quiet()

    import optuna

    from optimizer.samplers import SearchConfig
    from optimizer.search import WeightSearch
    from optimizer.space import SearchSpace
    from soce.config import Settings
    from soce.db import Job, get_engine, session_scope
    from soce.db.optuna_storage import optuna_storage
    from soce.flow import JobState, TaskName
    from soce.schemas.run import RunRecipe
    from workers.context import resident_soup, run_inputs
    from workers.flow import run_task
    from workers.local import create_local_job
    from workers.pipeline import dev_parts
    from workers.trials import IN_PROCESS, open_job_search

    zoo = _pipeline.ensure_zoo(args.zoo, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", optuna_storage_url=f"sqlite:///{tmp}/optuna.sqlite")
        engine = get_engine(settings.app_database_url())
        recipe = RunRecipe(
            candidates=[str(zoo / "candidates" / "*")],
            suite=str(zoo / "suite.yaml"),
            sampler="tpe",
            n_trials=args.trials,
            max_experts=4,
            output=str(Path(tmp) / "out"),
        )
        job_id = create_local_job(engine, recipe)
        IN_PROCESS.set(True)  # as workers.flow.run_job does for `soce run`
        for task in (TaskName.START, TaskName.SCORE, TaskName.ANALYSE):
            run_task(task, [job_id], settings=settings, engine=engine)
        ctx, analysis, search = open_job_search(engine, settings, job_id)
        resident = resident_soup(run_inputs(ctx.spec, settings), settings)
        experts = tuple(analysis.experts.candidates)
        categories = ctx.spec.suite.category_names
        resident(resident.uniform(experts), categories)  # tasks built, caches warm

        # as `soce run` does: the job's search and trial tasks, one message at a time in this process
        started = time.perf_counter()
        pending = [(TaskName.SEARCH, [job_id])]
        while pending:
            task, task_args = pending.pop(0)
            sent = run_task(task, task_args, settings=settings, engine=engine)
            pending += [(m.task, list(m.args)) for m in sent if m.task != TaskName.FINALIZE]
        wall = time.perf_counter() - started
        with session_scope(engine) as session:
            state = session.get(Job, job_id).state
        assert state == JobState.FINALIZING, state
        job_trials = optuna.load_study(
            study_name=search.study.study_name, storage=settings.optuna_url()
        ).trials

        # the same calls without a job: WeightSearch.run() on its own study
        config = SearchConfig(sampler="tpe", n_trials=args.trials, seed=0)
        search_part, _ = dev_parts(recipe)
        alone = WeightSearch(
            SearchSpace(experts),
            categories,
            partial(resident, part=search_part),  # the search part of dev, as the job's trials
            config,
            storage=optuna_storage(url=f"sqlite:///{tmp}/alone.sqlite"),
            study_name="bench",
            buffered=True,  # as `soce run` asks its study: in memory, each finished trial stored whole
        )
        started = time.perf_counter()
        alone_result = alone.run()
        alone_wall = time.perf_counter() - started

    params = sum(p.numel() for p in resident.model.parameters())
    print(f"{args.trials} TPE trials of {len(experts)} experts ({params / 1e6:.2f} M parameters)")
    alone_timings = [t.timings for t in alone_result.history]
    job_timings = [t.user_attrs.get("timings") or {} for t in job_trials]
    fractions = {}
    for label, timings, secs_all in (
        ("soce run (job tasks in this process)", job_timings, wall),
        ("WeightSearch.run() alone (no job rows)", alone_timings, alone_wall),
    ):
        n = len(timings)
        merge = sum(t.get("merge", 0.0) for t in timings)
        evaluate = sum(t.get("evaluate", 0.0) for t in timings)
        rest = secs_all - merge - evaluate
        fractions[label] = (rest / secs_all, (merge + rest) / secs_all)
        print(f"\n{label}: {secs_all:.2f} s, {secs_all / n * 1000:.1f} ms a trial")
        for name, secs in (("merge", merge), ("evaluation", evaluate), ("bookkeeping", rest)):
            print(f"  {name:12s} {secs / n * 1000:8.1f} ms  {secs / secs_all:6.1%}")
    (job_rest, job_both), (alone_rest, _) = fractions.values()
    print(
        f"\nsoce run: bookkeeping {job_rest:.1%} of a trial (target <= 5%), merge + bookkeeping "
        f"{job_both:.1%}; the job's tasks cost {job_rest - alone_rest:+.1%} of a trial over "
        "WeightSearch.run() alone"
    )


if __name__ == "__main__":
    main()
