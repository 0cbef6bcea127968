"""Rows the dashboard tests read: a finished job (analysis, trials, soup), a running job and a failed one.

Written straight to the database, the way the workers leave them; no worker runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
from sqlalchemy import Engine

from soce.config import Settings
from soce.db import session_scope
from soce.db.models import Candidate, Job, Soup, Suite
from soce.schemas.report import Report, soup_scores

# a report.json written by a real run (`soce demo`), validated against the Report schema by
# tests/schemas/test_report.py: the finished job stores it as finalize does
REPORT = json.loads((Path(__file__).parents[1] / "data" / "report-demo.json").read_text())
CATEGORIES = REPORT["categories"]
CANDIDATES = REPORT["candidates"]
DEV = [[REPORT["dev_scores"][c][k] for k in CATEGORIES] for c in CANDIDATES]
STUDY = REPORT["search"]["study"]


@dataclass(frozen=True)
class Jobs:
    done: int
    running: int
    failed: int


def _matrix(split: str, values: list[list[float]]) -> dict:
    return {
        "suite": "mini",
        "split": split,
        "evaluator": "lm_eval",
        "candidates": CANDIDATES,
        "categories": CATEGORIES,
        "values": values,
        "stderr": [[0.01] * len(CATEGORIES)] * len(CANDIDATES),
        "n": [[100] * len(CATEGORIES)] * len(CANDIDATES),
        "average": [sum(r) / len(r) for r in values],
    }


def _analysis() -> dict:
    pearson = {a: {b: (1.0 if a == b else 0.1) for b in CATEGORIES} for a in CATEGORIES}
    return {
        "scores": {"dev": _matrix("dev", DEV), "test": _matrix("test", DEV), "cached_tasks": 0},
        "correlation": {
            "method": "pearson",
            "pearson": pearson,
            "spearman": pearson,
            "tau": 0.5,
            "absolute": False,
            "weak_categories": CATEGORIES,
            "explanation": "every pair is below tau",
        },
        "experts": REPORT["experts"],
        "warnings": [],
    }


def fill_study(settings: Settings, job_id: int) -> None:
    """Five trials of the finished job in Optuna's database."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=settings.optuna_url(), direction="maximize")
    for value in (0.45, 0.6, 0.52, 0.66, 0.61):
        trial = study.ask()
        trial.suggest_float("u0", 0.0, 1.0)
        trial.set_user_attr("job", job_id)
        study.tell(trial, value)


def make_jobs(engine: Engine, settings: Settings, soup_dir: Path) -> Jobs:
    """The three jobs, and the finished job's study and soup folder (a model card in it)."""
    soup_dir.mkdir(parents=True, exist_ok=True)
    (soup_dir / "README.md").write_text("# soup\nA soup of three experts.\n")
    (soup_dir / "model.safetensors").write_bytes(b"")
    with session_scope(engine) as session:
        suite = Suite(name="mini", spec={"name": "mini"}, content_hash="d" * 64)
        cands = [
            Candidate(
                name=n,
                path=f"/models/{n}",
                content_hash=f"{i:x}" * 64,
                architecture={"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
            )
            for i, n in enumerate(CANDIDATES, start=1)
        ]
        analysis = _analysis()
        done = Job(
            name="nightly-mini",
            suite=suite,
            candidates=cands,
            recipe={},
            state="done",
            progress={
                "score dev": {"done": 9, "total": 9, "unit": "task"},
                "search": {"done": 5, "total": 5, "unit": "trial"},
            },
            analysis={
                **analysis,
                "search": {"study": STUDY, "best_trial": 3, "best_dev_objective": 0.66},
                "report": REPORT,
            },
            study_name=STUDY,
            timings={"score": 3.0, "analyse": 0.1, "search": 12.0, "finalize": 4.0},
        )
        running = Job(
            name="running-mini",
            suite=suite,
            candidates=cands,
            recipe={},
            state="searching",
            progress={"search": {"done": 2, "total": 10, "unit": "trial"}},
            analysis=analysis,
            timings={"score": 2.0, "analyse": 0.1},
        )
        failed = Job(
            name="broken-mini",
            suite=suite,
            candidates=cands,
            recipe={},
            state="failed",
            progress={},
            error="CheckpointError: /models/logic-ft has no config.json",
            timings={},
        )
        session.add_all([done, running, failed])
        session.flush()
        session.add(
            Soup(
                job_id=done.id,
                path=str(soup_dir),
                content_hash="e" * 64,
                weights={"weights": REPORT["weights"]},
                scores=soup_scores(Report.model_validate(REPORT)),
            )
        )
        jobs = Jobs(done=done.id, running=running.id, failed=failed.id)
    fill_study(settings, jobs.done)
    return jobs
