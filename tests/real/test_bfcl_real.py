"""The real model on BFCL: our evaluator gives exactly the per-item verdicts of lm-eval's own command
line with `--apply_chat_template` on the task folder `soce suite bfcl` writes (the same prompts through
SmolLM2's chat template, the same greedy answers, BFCL's checks)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from evaluators.bfcl.suite_files import write_bfcl_suite
from evaluators.harness import LmEvalEvaluator
from soce.schemas.suite import SuiteSpec
from tests.lm_eval_cli import lm_eval_command
from tests.real.test_evaluator import float32_copy

pytestmark = pytest.mark.real
CATEGORIES = ("simple_python", "irrelevance")  # the shortest prompts: a few functions each
LIMIT = 2
MAX_NEW_TOKENS = 48  # the suite's 256 leave room for long answers; both sides read the task YAMLs


def shorter_answers(suite: SuiteSpec) -> None:
    for path in Path(suite.include_path).glob("*.yaml"):
        text = path.read_text()
        assert "max_gen_toks: 256" in text
        path.write_text(text.replace("max_gen_toks: 256", f"max_gen_toks: {MAX_NEW_TOKENS}"))


def test_bfcl_scores_equal_lm_evals_command_line(
    smollm2: Path,
    bfcl_wheel: Path,
    tmp_path: Path,
) -> None:
    suite_file = write_bfcl_suite(tmp_path / "bfcl.yaml", data=bfcl_wheel, categories=CATEGORIES, limit=LIMIT)
    suite = SuiteSpec.from_file(suite_file)
    shorter_answers(suite)
    model = float32_copy(smollm2, tmp_path / "float32")
    names = [t.name for t in suite.tasks]
    extra = ("--limit", str(LIMIT), "--apply_chat_template", "--log_samples")
    argv, env = lm_eval_command(
        model, suite.include_path, names, tmp_path / "cli-out", *extra, hf_home=tmp_path / "hf"
    )
    cli = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = time.perf_counter()
        ours = LmEvalEvaluator(batch_size=8, device="cpu")
        model_obj, tokenizer = ours.load_checkpoint(model)
        scores = ours.evaluate_model(model_obj, tokenizer, suite, "test", samples=True)
        seconds = time.perf_counter() - started
        _, stderr = cli.communicate(timeout=900)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, stderr[-3000:]
    (results_file,) = (tmp_path / "cli-out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    items = len(names) * LIMIT
    print(f"ours: {items} BFCL items in {seconds:.1f} s ({100 * seconds / items:.0f} s per 100 items)")
    for name in names:
        (samples_file,) = (tmp_path / "cli-out").rglob(f"samples_{name}_*.jsonl")
        theirs = [json.loads(line) for line in samples_file.read_text().splitlines()]
        theirs.sort(key=lambda s: s["doc_id"])
        assert scores[name].value == results[name]["accuracy,none"], name
        assert list(scores[name].samples) == [s["accuracy"] for s in theirs], name
        assert scores[name].n == LIMIT
    # the model answered every item (a 135M model mostly answers in prose, which BFCL's checks fail)
    answers = [s for f in (tmp_path / "cli-out").rglob("samples_*.jsonl") for s in f.read_text().splitlines()]
    assert len(answers) == items and all(json.loads(a)["filtered_resps"][0].strip() for a in answers)
