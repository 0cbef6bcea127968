"""`soce score` on the real model and its BPE tokenizer gives exactly the numbers of lm-eval's own command
line (`lm_eval --model hf`): a generation task, a one-token and a multi-token multiple-choice task."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from soce.cli import app
from soce.schemas.suite import SuiteSpec
from tests.lm_eval_cli import lm_eval_command

pytestmark = pytest.mark.real
runner = CliRunner()
BATCH_SIZE = 32


def float32_copy(folder: Path, out: Path) -> Path:
    """The model in float32: both sides then compute in float32, where batches composed differently
    change logits in the last bits only (in bfloat16, enough to flip a near tie between two choices)."""
    out.mkdir()
    weights = {n: t.float() for n, t in load_file(folder / "model.safetensors").items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "dtype": "float32"}, indent=2))
    for f in folder.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, out / f.name)
    return out


def start_lm_eval_cli(tasks_root: Path, suite: SuiteSpec, model: Path, tmp_path: Path) -> subprocess.Popen:
    """lm-eval's CLI on the folder, on both splits: `<task>_dev` copies select dev through test_split."""
    tasks_dir = tmp_path / "cli-tasks"
    tasks_dir.mkdir()
    names = []
    for spec in suite.tasks:
        cfg = yaml.safe_load((tasks_root / "tasks" / f"{spec.name}.yaml").read_text())
        (tasks_dir / f"{spec.name}.yaml").write_text(yaml.safe_dump(cfg))
        dev = {**cfg, "task": f"{spec.name}_dev", "test_split": suite.dev_split}
        (tasks_dir / f"{spec.name}_dev.yaml").write_text(yaml.safe_dump(dev))
        names += [spec.name, f"{spec.name}_dev"]
    argv, env = lm_eval_command(
        model, tasks_dir, names, tmp_path / "cli-out", batch_size=BATCH_SIZE, hf_home=tmp_path / "hf"
    )
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def lm_eval_results(proc: subprocess.Popen, tmp_path: Path) -> dict[str, dict]:
    try:
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    (results_file,) = (tmp_path / "cli-out").rglob("results_*.json")
    data = json.loads(results_file.read_text())
    return {name: {**r, "n": data["n-samples"][name]["effective"]} for name, r in data["results"].items()}


def soce_score(suite_file: Path, model: Path, split: str, out: Path) -> dict:
    args = ["score", "--suite", suite_file, "--split", split, "--batch-size", BATCH_SIZE, "--no-cache"]
    result = runner.invoke(app, [str(a) for a in [*args, "--out", out, "-q", model]])
    assert result.exit_code == 0, result.output
    (scores,) = json.loads((out / f"real-{split}.json").read_text())["scores"]
    return scores["tasks"]


def test_soce_score_equals_lm_evals_command_line(smollm2: Path, real_tasks: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    suite_file = real_tasks / "suite.yaml"
    suite = SuiteSpec.from_file(suite_file)
    model = float32_copy(smollm2, tmp_path / "float32")
    cli = start_lm_eval_cli(real_tasks, suite, model, tmp_path)  # it runs beside ours, on the other core
    ours = {split: soce_score(suite_file, model, split, tmp_path / "scores") for split in ("test", "dev")}
    theirs = lm_eval_results(cli, tmp_path)
    for split, suffix in (("test", ""), ("dev", "_dev")):
        for spec in suite.tasks:
            mine, cli_row = ours[split][spec.name], theirs[spec.name + suffix]
            name, _, filt = spec.metric.partition(",")
            print(
                f"{split} {spec.name} {spec.metric}: {mine['value']:.4f} (lm_eval {cli_row[spec.metric]:.4f})"
            )
            assert mine["value"] == cli_row[spec.metric], (split, spec.name)
            assert mine["stderr"] == pytest.approx(cli_row[f"{name}_stderr,{filt}"], abs=1e-12), (
                split,
                spec.name,
            )
            assert mine["n"] == cli_row["n"] == 10
    # the tasks meet the tokenizer as intended: BPE pieces with a leading space ('Ġ'), digits alone
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert tokenizer.tokenize(" Paris") == ["ĠParis"] and tokenizer.tokenize(" 4") == ["Ġ", "4"]
    # and the scores are neither all wrong nor all right somewhere: the model is really at work
    values = [ours[s][t.name]["value"] for s in ours for t in suite.tasks]
    assert len(set(values)) > 1 and any(0 < v < 1 for v in values)
