"""The learned soup on the tiny zoo: its objective and gradient, its path, `soce run` and the service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from optimizer.learned import LEARNED_ATTR, LearnedPath, LearnedSettings
from optimizer.space import SearchSpace, SoupWeights
from soce.config import Settings
from soce.db import Job, get_engine, session_scope
from soce.flow import JobState, TaskName
from soce.schemas.run import RunRecipe
from workers.flow import run_task
from workers.local import create_local_job, run_local
from workers.resident import ResidentSoup
from workers.trials import forget_opened

EXPERTS = ("strings-expert", "recall-expert", "counting-expert")


def noisy_copy(src: Path, dst: Path, scale: float = 0.5) -> Path:
    """A copy of a checkpoint with Gaussian noise on every tensor: a clearly worse ingredient."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + scale * v.std() * torch.randn(v.shape, generator=gen) for k, v in tensors.items()}
    save_file(noisy, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def resident(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> ResidentSoup:
    from workers.pipeline import open_run

    noisy = noisy_copy(tiny_zoo / "candidates" / EXPERTS[0], tmp_path_factory.mktemp("noisy") / "noisy")
    recipe = RunRecipe(candidates=[str(tiny_zoo / "candidates" / "*")], suite=str(tiny_zoo / "suite.yaml"))
    inputs = open_run(recipe)
    paths = {e: inputs.paths[e] for e in EXPERTS} | {"noisy": noisy}
    return ResidentSoup(paths, inputs.evaluator, inputs.suite)


def test_reference_pairs_are_each_documents_gold_answer(resident: ResidentSoup, tiny_zoo: Path):
    from evaluators.reference_pairs import reference_pairs

    pairs = reference_pairs(resident.evaluator, resident.suite, "dev")
    rows = {
        t.name: [json.loads(line) for line in (tiny_zoo / "data" / t.name / "dev.jsonl").open()]
        for t in resident.suite.tasks
    }
    assert len(pairs) == sum(len(r) for r in rows.values())  # one per document
    got = {(p.task, p.context, p.continuation) for p in pairs}
    for row in rows["zoo_add"]:  # generation: the target after the prompt
        assert ("zoo_add", row["prompt"], row["target"]) in got
    for row in rows["zoo_sub_mc"]:  # multiple choice: the gold choice
        assert ("zoo_sub_mc", row["prompt"], row["choices"][row["answer"]]) in got


def test_the_objective_is_batched_lms_log_likelihood_and_its_gradient_is_exact(resident: ResidentSoup):
    import torch

    from evaluators.batched_lm import BatchedLM
    from evaluators.reference_pairs import reference_pairs
    from workers.learned import _Objective, document_weights

    space = SearchSpace(EXPERTS)
    objective = _Objective(resident, space, LearnedSettings(), None)
    w = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    value, dw = objective(w, grad=True)

    # the same number from lm-eval's interface on the soup merged in place
    pairs = reference_pairs(resident.evaluator, resident.suite, "dev")
    resident.load(SoupWeights(EXPERTS, (0.5, 0.3, 0.2)))
    lm = BatchedLM(resident.model, resident.tokenizer)
    lls = lm.loglikelihood([SimpleNamespace(args=(p.context, p.continuation)) for p in pairs])
    lengths = [len(c) for _, c in lm.encoder.encode_pairs([(p.context, p.continuation) for p in pairs])]
    share = document_weights(resident.suite, pairs)
    expected = sum(s * ll / n for s, (ll, _), n in zip(share, lls, lengths, strict=True))
    assert value == pytest.approx(expected, abs=1e-4)

    # the chain rule through the frozen candidates: central differences (small steps: it curves)
    eps = 0.005
    for i in range(3):
        step = torch.zeros_like(w)
        step[0, i] = eps
        up, _ = objective(w + step, grad=False)
        down, _ = objective(w - step, grad=False)
        assert -float(dw[0, i]) == pytest.approx((up - down) / (2 * eps), rel=0.02, abs=3e-4)


def test_the_path_stays_on_the_simplex_never_ends_below_uniform_and_repeats(resident: ResidentSoup):
    space = SearchSpace(EXPERTS)
    settings = LearnedSettings(steps=4, lr=0.2)
    path = resident.learned_path(space, settings)
    assert len(path.weights) == len(path.loglik) == 5 and path.stopped == "steps"
    assert path.weights[0][""] == pytest.approx([1 / 3] * 3)
    for step in path.weights:
        (w,) = step.values()
        assert min(w) >= 0 and sum(w) == pytest.approx(1.0, abs=1e-9)
    assert path.loglik[path.best_step] >= path.loglik[0] - 1e-9
    again = resident.learned_path(space, settings)
    assert again.weights == path.weights and again.loglik == path.loglik and again.best_step == path.best_step


def test_the_gradient_moves_towards_a_clearly_better_ingredient(resident: ResidentSoup):
    space = SearchSpace((EXPERTS[0], "noisy"))
    path = resident.learned_path(space, LearnedSettings(steps=8, lr=0.3))
    good = [step[""][0] for step in path.weights]
    assert good[0] == pytest.approx(0.5) and good[1] > good[0]  # the first step already goes its way
    assert good[path.best_step] > 0.75
    assert path.loglik[path.best_step] > path.loglik[0] + 0.05


def test_layerwise_learns_each_groups_weights(resident: ResidentSoup):
    space = SearchSpace(EXPERTS, "layerwise", resident.layer_groups())
    path = resident.learned_path(space, LearnedSettings(steps=3, lr=0.3))
    assert path.groups == space.groups and set(path.weights[-1]) == set(space.groups)
    for w in path.weights[-1].values():
        assert min(w) >= 0 and sum(w) == pytest.approx(1.0, abs=1e-9)
    last = path.soup(len(path.weights) - 1)
    assert len({tuple(round(x, 6) for x in w) for w in last.groups.values()}) > 1  # not one shared vector


def test_soce_run_and_the_service_record_the_learned_points_as_trials(tiny_zoo: Path, tmp_path: Path):
    data = tmp_path / "data"  # one app database (scores cached once), two Optuna databases
    local = Settings(data_dir=data, optuna_storage_url=f"sqlite:///{tmp_path / 'local.sqlite'}")
    service = Settings(data_dir=data, optuna_storage_url=f"sqlite:///{tmp_path / 'service.sqlite'}")
    engine = get_engine(local.app_database_url())

    def recipe(out: str) -> RunRecipe:
        return RunRecipe(
            candidates=[str(tiny_zoo / "candidates" / "*")],
            suite=str(tiny_zoo / "suite.yaml"),
            sampler="learned",
            n_trials=3,
            learned_steps=4,
            bootstrap_iterations=200,
            output=str(tmp_path / out),
        )

    forget_opened()
    result = run_local(recipe("local"), engine=engine, settings=local)
    report = result.report.as_json()
    search = report["search"]
    assert search["sampler"] == "learned" and search["n_trials"] == 3
    first = list(search["history"][0]["weights"].values())  # the path starts at the uniform soup
    assert first == pytest.approx([1 / len(first)] * len(first))
    assert report["verdict"].startswith(("use the soup: ", "keep "))
    assert any(c["name"].startswith("trial_") for c in report["selection"]["contenders"])
    study = optuna.load_study(study_name=search["study"], storage=local.optuna_url())
    path = LearnedPath.from_dict(study.user_attrs[LEARNED_ATTR])
    assert [t.user_attrs["learned"]["step"] for t in study.trials] == path.checkpoints(3)
    assert path.loglik[path.best_step] >= path.loglik[0]
    with session_scope(engine) as session:
        job = session.get(Job, 1)
        assert job.analysis["search"]["learned"]["steps"] >= 1 and job.timings["learn"] > 0

    # the service's way: every task a message (the path computed by the search task, stored with the study)
    forget_opened()
    job_id = create_local_job(engine, recipe("service"))
    pending = [(TaskName.START, [job_id])]
    while pending:
        task, args = pending.pop(0)
        pending += [(m.task, list(m.args)) for m in run_task(task, args, settings=service, engine=engine)]
    with session_scope(engine) as session:
        assert session.get(Job, job_id).state == JobState.DONE
    other = optuna.load_study(study_name=search["study"], storage=service.optuna_url())
    assert [t.params for t in other.trials] == [t.params for t in study.trials]
    assert [t.user_attrs["category_scores"] for t in other.trials] == [
        t.user_attrs["category_scores"] for t in study.trials
    ]
