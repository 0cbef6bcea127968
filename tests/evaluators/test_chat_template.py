"""Suites that apply the model's chat template: the same scores as `lm_eval --apply_chat_template`,
requests kept per template, and a clear error for a tokenizer without one."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from evaluators.harness import LmEvalEvaluator
from soce.errors import EvaluationError
from tests.evaluators.task_folder import Zoo
from tests.lm_eval_cli import lm_eval_command

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def with_template(source: Path, out: Path, template: str) -> Path:
    from transformers import AutoTokenizer

    shutil.copytree(source, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    return out


def chat_suite(zoo: Zoo):
    return zoo.suite.model_copy(update={"apply_chat_template": True})


@pytest.mark.slow
def test_chat_scores_equal_lm_evals_command_line(zoo: Zoo, tmp_path: Path) -> None:
    model = with_template(zoo.candidates[0], tmp_path / "chat-model", TEMPLATE)
    out = tmp_path / "cli-out"
    names = [t.name for t in zoo.suite.tasks]
    chat = ("--apply_chat_template", "--log_samples")
    argv, env = lm_eval_command(model, zoo.root / "tasks", names, out, *chat, hf_home=tmp_path / "hf")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    cli = json.loads(results_file.read_text())["results"]
    (sample_file, *_) = sorted(out.rglob("samples_zoo_rev_gen_*.jsonl"))
    prompt = json.loads(sample_file.read_text().splitlines()[0])["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("<user>") and prompt.endswith("<assistant>")  # the template was applied

    evaluator = LmEvalEvaluator(batch_size=8, device="cpu")
    ours = evaluator.score(model, chat_suite(zoo), "test")
    for spec in zoo.suite.tasks:
        assert ours.tasks[spec.name].value == pytest.approx(cli[spec.name][spec.metric], abs=1e-12)
    task_set = evaluator.task_set(chat_suite(zoo), "test")
    (prepared,) = [p for key, p in task_set.prepared.items() if key.startswith("zoo_rev_gen\0")]
    assert prepared.requests[0][0].args[0] == prompt  # the very prompt lm-eval built


def test_requests_are_kept_per_template(zoo: Zoo, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = with_template(zoo.candidates[0], tmp_path / "a", TEMPLATE)
    second = with_template(zoo.candidates[0], tmp_path / "b", TEMPLATE.replace("<assistant>", "<bot>"))
    evaluator = LmEvalEvaluator(batch_size=8, device="cpu")
    suite = chat_suite(zoo)
    model = AutoModelForCausalLM.from_pretrained(first)
    contexts = {}
    for folder in (first, second):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        evaluator.evaluate_model(model, tokenizer, suite, "test")
        task_set = evaluator.task_set(suite, "test")
        prepared = [p for key, p in task_set.prepared.items() if key.startswith("zoo_rev_gen\0")]
        contexts[folder.name] = {p.instances[0].args[0] for p in prepared}
    assert any(c.endswith("<assistant>") for c in contexts["a"])
    assert any(c.endswith("<bot>") for c in contexts["b"])


def test_a_tokenizer_without_a_template_is_named(zoo: Zoo) -> None:
    evaluator = LmEvalEvaluator(batch_size=8, device="cpu")
    with pytest.raises(EvaluationError, match="chat template"):
        evaluator.score(zoo.candidates[0], chat_suite(zoo), "test")


def test_the_flag_changes_the_fingerprint(zoo: Zoo) -> None:
    evaluator = LmEvalEvaluator(batch_size=8, device="cpu")
    plain = evaluator.suite_fingerprints(zoo.suite, "test")
    chat = evaluator.suite_fingerprints(chat_suite(zoo), "test")
    assert set(plain).isdisjoint(chat)
    assert yaml.safe_load(yaml.safe_dump(chat_suite(zoo).model_dump()))["apply_chat_template"] is True
