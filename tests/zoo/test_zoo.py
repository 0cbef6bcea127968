"""The tiny zoo: layout, determinism, and that its fine-tunes soup into a working model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from soce.checkpoints import Checkpoint, checkpoint_hash
from soce.merging import write_soup
from soce.schemas import MergeRecipe, SuiteSpec
from soce.zoo.build import SIZES, ZOO_VERSION, build_zoo, candidate_paths, plans
from soce.zoo.tasks import CATEGORIES, TASKS
from soce.zoo.train import REPLAY, Batcher, TrainPlan, encode, train


def test_layout_suite_and_manifest(tiny_zoo: Path) -> None:
    suite = SuiteSpec.from_file(tiny_zoo / "suite.yaml")
    assert suite.category_names == list(CATEGORIES)
    assert {t.name for t in suite.tasks} == {t.name for t in TASKS}
    assert Path(suite.include_path) == tiny_zoo / "tasks"
    for task in TASKS:
        assert (tiny_zoo / "tasks" / f"{task.name}.yaml").is_file()
        for split in ("train", "dev", "test"):
            assert (tiny_zoo / "data" / task.name / f"{split}.jsonl").stat().st_size > 0
    manifest = json.loads((tiny_zoo / "zoo.json").read_text())
    assert manifest["size"] == "tiny" and manifest["seed"] == 0 and manifest["pool"] == "default"
    assert manifest["instruct"]["path"] == "instruct"
    cands = candidate_paths(tiny_zoo)
    assert len(cands) >= 6
    for folder in [tiny_zoo / "base", tiny_zoo / "instruct", *cands]:
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
        assert np.isfinite(manifest["final_train_loss"][folder.name])


def test_candidates_have_different_mixtures() -> None:
    _, instruct, cands = plans(SIZES["tiny"], seed=0)
    assert set(instruct.mixture) == {*CATEGORIES, REPLAY}  # the common parent saw every category
    experts = [p for p in cands if p.name.endswith("-expert")]
    assert {max(p.mixture, key=p.mixture.get) for p in experts} == set(CATEGORIES)
    assert {p.name for p in experts} == {f"{c}-expert" for c in CATEGORIES}
    mixes = [p for p in cands if p.name.endswith("-mix")]
    assert len(mixes) >= 2  # two-category mixes, no candidate focused on all categories at once
    for p in cands:  # every candidate keeps what the base and the instruct model can do
        assert p.mixture[REPLAY] > 0 and all(p.mixture[c] > 0 for c in CATEGORIES), p.name
    assert len({p.seed for p in cands}) == len(cands)  # each its own seed and data order
    assert all(p.lr_floor == 1.0 for p in cands)  # a constant rate: noisy endpoints, which a soup averages


def test_gentle_pool_has_a_generalist_and_gentler_fine_tunes() -> None:
    _, _, default = plans(SIZES["demo"], seed=0)
    _, _, gentle = plans(SIZES["demo"], seed=0, pool="gentle")
    assert {p.name for p in gentle} == {f"{c}-expert" for c in CATEGORIES} | {"generalist"}
    generalist = next(p for p in gentle if p.name == "generalist")
    assert len({generalist.mixture[c] for c in CATEGORIES}) == 1
    assert max(p.lr for p in gentle) < min(p.lr for p in default)


def test_unknown_pool_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="default, gentle"):
        build_zoo(tmp_path / "zoo", size="tiny", seed=0, pool="wild")
    with pytest.raises(ValueError, match="default, gentle"):
        plans(SIZES["tiny"], seed=0, pool="wild")
    assert not (tmp_path / "zoo").exists()


def test_gentle_pool_builds_and_records_its_pool(tiny_zoo: Path, tmp_path: Path) -> None:
    gentle = build_zoo(tmp_path / "gentle", size="tiny", seed=0, pool="gentle")
    manifest = json.loads((gentle / "zoo.json").read_text())
    assert manifest["pool"] == "gentle" and manifest["version"] == ZOO_VERSION
    assert json.loads((tiny_zoo / "zoo.json").read_text())["pool"] == "default"
    assert {p.name for p in candidate_paths(gentle)} == {f"{c}-expert" for c in CATEGORIES} | {"generalist"}
    # the same base and instruct model as the default pool of the seed: only the fine-tunes differ
    for name in ("base", "instruct"):
        a, b = Checkpoint.open(gentle / name), Checkpoint.open(tiny_zoo / name)
        assert checkpoint_hash(a) == checkpoint_hash(b), name


def test_same_seed_builds_the_same_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    again = build_zoo(tmp_path / "again", size="tiny", seed=0)
    for a, b in zip(
        [tiny_zoo / "base", tiny_zoo / "instruct", *candidate_paths(tiny_zoo)],
        [again / "base", again / "instruct", *candidate_paths(again)],
        strict=True,
    ):
        assert checkpoint_hash(Checkpoint.open(a)) == checkpoint_hash(Checkpoint.open(b)), a.name
    for task in TASKS:
        for split in ("train", "dev", "test"):
            rel = Path("data") / task.name / f"{split}.jsonl"
            assert (tiny_zoo / rel).read_bytes() == (again / rel).read_bytes()


def test_existing_zoo_is_refused_without_force(tiny_zoo: Path) -> None:
    from soce.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="--force"):
        build_zoo(tiny_zoo, size="tiny", seed=0)


def _dev_loss(model, zoo: Path) -> float:
    """Mean cross-entropy of the answers of every dev example, as lm-eval would score them."""
    losses = []
    with torch.no_grad():
        for task in TASKS:
            for line in (zoo / "data" / task.name / "dev.jsonl").read_text().splitlines():
                row = json.loads(line)
                answer = row["choices"][row["answer"]] if "choices" in row else row["target"]
                p, t = encode(row["prompt"]), encode(answer + "\n")
                ids = torch.tensor([p + t])
                labels = torch.tensor([[-100] * len(p) + t])
                losses.append(float(model(input_ids=ids, labels=labels).loss))
    return float(np.mean(losses))


def test_fine_tunes_soup_into_a_working_model_but_independent_models_do_not(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    cands = candidate_paths(tiny_zoo)
    soup = write_soup(MergeRecipe(method="uniform", candidates=[str(p) for p in cands]), tmp_path / "soup")
    soup_loss = _dev_loss(AutoModelForCausalLM.from_pretrained(soup.path), tiny_zoo)
    cand_losses = [_dev_loss(AutoModelForCausalLM.from_pretrained(p), tiny_zoo) for p in cands]
    assert soup_loss < np.mean(cand_losses) + 0.05, (soup_loss, cand_losses)

    # a model trained the same way from another initialisation does not average with the zoo
    manifest = json.loads((tiny_zoo / "zoo.json").read_text())
    train_sets = {t.name: [] for t in TASKS}
    from soce.zoo.tasks import make_splits

    shape = SIZES["tiny"]
    for t in TASKS:
        train_sets[t.name] = make_splits(
            t, seed=0, n_train=shape.n_train, n_dev=shape.n_dev, n_test=shape.n_test
        )["train"]
    torch.manual_seed(1234)
    stranger = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(cands[0]).config)
    plan = TrainPlan("stranger", {c: 1.0 for c in CATEGORIES}, manifest["shape"]["base_steps"], 3e-3, 1234)
    train(stranger, Batcher(train_sets), plan, batch_size=shape.batch)
    stranger.save_pretrained(tmp_path / "stranger")
    for f in (cands[0]).glob("tokenizer*"):
        (tmp_path / "stranger" / f.name).write_bytes(f.read_bytes())
    stranger_loss = _dev_loss(stranger, tiny_zoo)
    mixed = write_soup(
        MergeRecipe(method="uniform", candidates=[str(cands[0]), str(tmp_path / "stranger")]),
        tmp_path / "mixed",
    )
    mixed_loss = _dev_loss(AutoModelForCausalLM.from_pretrained(mixed.path), tiny_zoo)
    assert mixed_loss > max(stranger_loss, cand_losses[0]) + 0.5, (mixed_loss, stranger_loss, cand_losses[0])


def test_candidates_differ_per_category_under_lm_eval(tiny_zoo: Path, tmp_path: Path) -> None:
    from evaluators import LmEvalEvaluator
    from soce.db import create_app_engine
    from soce.db.migrate import upgrade
    from soce.score_cache import score_checkpoint

    suite = SuiteSpec.from_file(tiny_zoo / "suite.yaml")
    engine = create_app_engine(f"sqlite:///{tmp_path / 'scores.sqlite'}")
    upgrade(engine)
    matrix = {
        p.name: {
            c: s.value
            for c, s in score_checkpoint(LmEvalEvaluator(), p, suite, "dev", engine=engine).categories.items()
        }
        for p in candidate_paths(tiny_zoo)
    }
    for cat in CATEGORIES:
        assert len({row[cat] for row in matrix.values()}) >= 2, (cat, matrix)
    best = {cat: max(matrix, key=lambda name, cat=cat: matrix[name][cat]) for cat in CATEGORIES}
    assert len(set(best.values())) >= 2, best  # no single candidate is best at everything
    # generation tasks are really scored (a decoding bug once made them all zero)
    gen = [t.name for t in TASKS if t.kind == "gen"]
    scores = score_checkpoint(LmEvalEvaluator(), candidate_paths(tiny_zoo)[0], suite, "dev", engine=engine)
    assert any(scores.tasks[name].value > 0 for name in gen), scores.tasks
