"""`soce run` on the real model: two quick fine-tunes, the real task folder, a few grid trials; the run
finishes, its report leads with a verdict that agrees with its decision, and the soup loads and talks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from soce.cli import app

pytestmark = pytest.mark.real
runner = CliRunner()


def test_soce_run_on_quick_fine_tunes(fine_tunes: list[Path], real_tasks: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = {
        "name": "smollm2-soup",
        "candidates": [str(p) for p in fine_tunes],
        "suite": str(real_tasks / "suite.yaml"),
        "sampler": "grid",
        "n_trials": 3,
        "selection_trials": 2,
        "batch_size": 32,
        "bootstrap_iterations": 200,
        "output": str(tmp_path / "out"),
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report)[:2] == ["verdict", "decision"]
    assert f"verdict: {report['verdict']}" in result.output
    assert sorted(report["candidates"]) == sorted(p.name for p in fine_tunes)
    assert report["categories"] == ["capitals", "facts", "phrases"]
    search = report["search"]
    assert search["sampler"] == "grid" and search["n_trials"] == 3 and 1 <= search["evaluations"] <= 3
    decision, soup = report["decision"], report["soup"]
    if decision["kind"] == "soup":
        assert report["verdict"].startswith("use the soup: ") and soup["recommended"] is True
    else:
        best = report["best_single"]
        assert decision["kind"] == "single" and decision["name"] == best
        assert report["verdict"].startswith(f"keep {best}")
        assert soup["recommended"] is False
    assert sum(report["weights"].values()) == pytest.approx(1.0)
    assert soup["test_average_from_disk"] == pytest.approx(soup["test_average"], abs=1e-9)

    # the soup written to disk is a model of its own: tied as its ingredients, it loads and generates
    folder = Path(soup["path"])
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()
    assert model.dtype == torch.bfloat16 and model.lm_head.weight is model.model.embed_tokens.weight
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    batch = tokenizer(chat, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, batch.input_ids.shape[1] :], skip_special_tokens=True)
    print(f"verdict: {report['verdict']}\nthe soup says: {text!r}")
    assert text.strip()
