"""Rows the dashboard tests read: a finished job (analysis, trials, soup), a running job and a failed one.

Written straight to the database, the way the workers leave them; no worker runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from sqlalchemy import Engine

from soce.config import Settings
from soce.db import session_scope
from soce.db.models import Candidate, Job, Soup, Suite

CATEGORIES = ["arithmetic", "strings", "logic"]
CANDIDATES = ["math-ft", "string-ft", "logic-ft"]
DEV = [[0.8, 0.3, 0.5], [0.2, 0.9, 0.4], [0.4, 0.5, 0.7]]
STUDY = "soce-tpe-dashboard0000000"


@dataclass(frozen=True)
class Jobs:
    done: int
    running: int
    failed: int


# what a finished job's finalize step stores: the verdict, the decision and the contenders compared
DECIDED = {
    "verdict": "use the soup: +5.3 [+1.0, +9.0] over math-ft on test",
    "decision": {"kind": "soup", "name": "nightly-mini", "model": "/soups/job-1/soup", "test_average": 0.673},
    "selection": {
        "chosen": "trial_3",
        "kind": "soup",
        "fraction": 0.5,
        "level": 0.95,
        "reason": "trial 3 is ahead of best single (math-ft) on the selection part by +6.0 points",
        "contenders": [
            {
                "name": "best_single",
                "label": "best single (math-ft)",
                "kind": "single",
                "average": 0.6,
                "diff": 0.0,
                "low": 0.0,
                "passed": False,
                "search_average": 0.63,
                "test_average": 0.62,
            },
            {
                "name": "trial_3",
                "label": "trial 3",
                "kind": "soup",
                "average": 0.66,
                "diff": 0.06,
                "low": 0.02,
                "passed": True,
                "search_average": 0.66,
                "test_average": 0.673,
            },
        ],
    },
}


def _matrix(split: str, values: list[list[float]]) -> dict:
    return {
        "suite": "mini",
        "split": split,
        "evaluator": "lm_eval",
        "candidates": CANDIDATES,
        "categories": CATEGORIES,
        "values": values,
        "stderr": [[0.01] * 3] * 3,
        "n": [[100] * 3] * 3,
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
        "experts": [
            {"category": c, "candidate": n, "score": DEV[i][i], "reason": f"best dev score on {c}"}
            for i, (c, n) in enumerate(zip(CATEGORIES, CANDIDATES, strict=True))
        ],
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
                **DECIDED,
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
                weights={"weights": dict(zip(CANDIDATES, [0.5, 0.3, 0.2], strict=True))},
                scores={
                    "dev_average": 0.66,
                    "test": {"arithmetic": 0.7, "strings": 0.72, "logic": 0.6},
                    "test_average": 0.673,
                    "intervals": {"vs_best_single": {"diff": 0.05, "low": 0.01, "high": 0.09, "level": 0.95}},
                    "baselines": {
                        "best_single": {"test_average": 0.62, "dev_average": 0.63},
                        "uniform": {"test_average": 0.55, "dev_average": 0.56},
                        "greedy": {"test_average": 0.64, "dev_average": 0.65},
                    },
                },
            )
        )
        jobs = Jobs(done=done.id, running=running.id, failed=failed.id)
    fill_study(settings, jobs.done)
    return jobs
