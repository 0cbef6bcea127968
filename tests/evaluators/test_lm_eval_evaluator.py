"""The lm_eval evaluator: the same scores as lm-eval's own command line, tasks built once per process,
weights read fresh on every call, and task fingerprints that follow content, not location."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from evaluators import LmEvalEvaluator
from evaluators.task_files import task_fingerprint
from soce.schemas.suite import SuiteSpec
from tests.evaluators.task_folder import Zoo, write_zoo_tasks
from tests.lm_eval_cli import lm_eval_command

pytestmark = pytest.mark.usefixtures("one_thread")


def lm_eval_cli(zoo: Zoo, checkpoint: Path, tmp_path: Path) -> dict[str, dict]:
    """lm-eval's CLI on the saved folder; `<task>_dev` variants select the dev split through test_split."""
    tasks_dir = tmp_path / "cli-tasks"
    tasks_dir.mkdir()
    names = []
    for spec in zoo.suite.tasks:
        cfg = yaml.safe_load((zoo.root / "tasks" / f"{spec.name}.yaml").read_text())
        (tasks_dir / f"{spec.name}.yaml").write_text(yaml.safe_dump(cfg))
        dev = {**cfg, "task": f"{spec.name}_dev", "test_split": zoo.suite.dev_split}
        (tasks_dir / f"{spec.name}_dev.yaml").write_text(yaml.safe_dump(dev))
        names += [spec.name, f"{spec.name}_dev"]
    out = tmp_path / "cli-out"
    argv, env = lm_eval_command(checkpoint, tasks_dir, names, out, hf_home=tmp_path / "hf")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    data = json.loads(results_file.read_text())
    return {name: {**data["results"][name], "n": data["n-samples"][name]["effective"]} for name in names}


@pytest.mark.slow
def test_scores_equal_lm_evals_command_line(zoo: Zoo, tmp_path: Path) -> None:
    checkpoint = zoo.candidates[0]
    cli = lm_eval_cli(zoo, checkpoint, tmp_path)
    evaluator = LmEvalEvaluator(batch_size=8, device="cpu")
    for split, suffix in (("test", ""), ("dev", "_dev")):
        ours = evaluator.score(checkpoint, zoo.suite, split)
        for spec in zoo.suite.tasks:
            theirs, mine = cli[spec.name + suffix], ours.tasks[spec.name]
            assert mine.value == pytest.approx(theirs[spec.metric], abs=1e-12), (split, spec.name)
            name, _, filt = spec.metric.partition(",")
            assert mine.stderr == pytest.approx(theirs[f"{name}_stderr,{filt}"], abs=1e-12)
            assert mine.n == theirs["n"]


def test_tasks_are_built_once_and_weights_are_read_fresh(zoo: Zoo) -> None:
    evaluator = LmEvalEvaluator(batch_size=8)
    model, tokenizer = evaluator.load_checkpoint(zoo.candidates[0])
    first = evaluator.evaluate_model(model, tokenizer, zoo.suite, "dev")
    task_set = evaluator.task_set(zoo.suite, "dev")
    assert evaluator.evaluate_model(model, tokenizer, zoo.suite, "dev") == first
    assert evaluator.task_set(zoo.suite, "dev") is task_set
    assert LmEvalEvaluator().task_set(zoo.suite, "dev") is task_set  # shared by the process

    with torch.no_grad():
        model.lm_head.weight.zero_()  # in place, as a weight search merges into a resident model
    mc = zoo.suite.tasks[0]
    flat = evaluator.evaluate_model(model, tokenizer, zoo.suite, "dev", tasks=[mc])
    # uniform next-token probabilities: the choice with the fewest tokens wins, the first on ties
    docs = [json.loads(line) for line in (zoo.root / "data" / mc.name / "dev.jsonl").read_text().splitlines()]
    shortest = [min(range(len(d["choices"])), key=lambda i, d=d: len(d["choices"][i])) for d in docs]
    expected = sum(s == d["answer"] for s, d in zip(shortest, docs, strict=True)) / len(docs)
    assert list(flat) == [mc.name]
    assert flat[mc.name].value == pytest.approx(expected)
    assert flat[mc.name].n == len(docs)


def test_edited_task_files_are_rebuilt(fresh_zoo: Zoo) -> None:
    evaluator = LmEvalEvaluator()
    before = evaluator.task_set(fresh_zoo.suite, "dev")
    data = fresh_zoo.root / "data" / "zoo_add_mc" / "dev.jsonl"
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:3]))
    after = evaluator.task_set(fresh_zoo.suite, "dev")
    assert after is not before
    assert len(after.tasks["zoo_add_mc"].eval_docs) == 3


def test_fingerprints_follow_content_and_split_not_location(tmp_path: Path) -> None:
    def fingerprints(root: Path, split: str = "dev") -> list[str]:
        suite = SuiteSpec.from_file(root / "suite.yaml")
        return [task_fingerprint(suite, t.name, split, lm_eval_version="x") for t in suite.tasks]

    a, b = write_zoo_tasks(tmp_path / "a"), write_zoo_tasks(tmp_path / "b")
    assert fingerprints(a) == fingerprints(b)  # same content elsewhere: same cache entries
    assert fingerprints(a, "test") != fingerprints(a, "dev")
    with open(b / "data" / "zoo_rev_gen" / "test.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "rev xyz=", "target": "zyx"}) + "\n")
    assert fingerprints(b)[0] == fingerprints(a)[0] and fingerprints(b)[1] != fingerprints(a)[1]
    task_yaml = b / "tasks" / "zoo_add_mc.yaml"
    edited = task_yaml.read_text().replace("doc_to_text: prompt", "doc_to_text: 'Q: {{prompt}}'")
    assert edited != task_yaml.read_text()
    task_yaml.write_text(edited)
    assert fingerprints(b)[0] != fingerprints(a)[0]


@pytest.mark.slow
def test_scores_the_reference_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    from soce.db import create_app_engine
    from soce.db.migrate import upgrade
    from soce.score_cache import score_checkpoint
    from soce.zoo.build import candidate_paths

    suite = SuiteSpec.from_file(tiny_zoo / "suite.yaml")
    engine = create_app_engine(f"sqlite:///{tmp_path / 'zoo.sqlite'}")
    upgrade(engine)
    got = score_checkpoint(LmEvalEvaluator(), candidate_paths(tiny_zoo)[0], suite, "dev", engine=engine)
    assert list(got.categories) == suite.category_names
    assert all(s.n and 0 <= s.value <= 1 for s in got.tasks.values())
    assert list(got.tasks) == [t.name for t in suite.tasks]
