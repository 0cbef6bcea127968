"""`soce run` on the tiny zoo: the soup, report.json and report.html; a rerun reuses scores and the study."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from soce.cli import app
from soce.config import get_settings
from soce.merging import load_recipe

runner = CliRunner()

REPORT_KEYS = {
    "verdict",
    "decision",
    "selection",
    "dev_parts",
    "candidates",
    "categories",
    "dev_scores",
    "test_scores",
    "correlation",
    "experts",
    "weights",
    "search",
    "baselines",
    "soup",
}


def write_recipe(folder: Path, zoo: Path, **fields) -> Path:
    recipe = {
        "candidates": [str(zoo / "candidates" / "*")],
        "suite": str(zoo / "suite.yaml"),
        "sampler": "tpe",
        "n_trials": 4,
        "output": "out",
        "bootstrap_iterations": 300,
        **fields,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def first_run(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("run")
    recipe = write_recipe(folder, tiny_zoo)
    result = runner.invoke(app, ["run", str(recipe), "-q"])
    return recipe, result


def test_run_writes_soup_and_reports(first_run, tiny_zoo: Path):
    recipe, result = first_run
    assert result.exit_code == 0, result.output
    out = recipe.parent / "out"
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    cands = sorted(p.name for p in (tiny_zoo / "candidates").iterdir())
    assert sorted(report["candidates"]) == cands
    cats = report["categories"]
    assert set(report["dev_scores"]) == set(cands) and set(report["dev_scores"][cands[0]]) == set(cats)
    assert set(report["correlation"]) >= {"pearson", "spearman", "tau"}
    experts = report["expert_candidates"]
    # the ingredients: the experts and the best single candidate by its average on all of dev
    dev_avg = report["dev_average"]
    best = max(dev_avg, key=lambda c: (dev_avg[c], -report["candidates"].index(c)))
    assert report["best_single"] == best and best in experts
    assert any(e["candidate"] == best and e["category"] is None for e in report["experts"])
    assert sum(report["weights"].values()) == pytest.approx(1.0)
    search = report["search"]
    assert search["sampler"] == "tpe" and search["n_trials"] == 4 and 1 <= search["evaluations"] <= 4
    assert search["best_dev_objective"] == max(
        t["objective"] for t in search["history"] if t["objective"] is not None
    )
    ingredients = [e for e, w in report["weights"].items() if w > 0]
    ensemble = {"ensemble"} if len(ingredients) > 1 else set()  # an ensemble of one is not scored
    assert set(report["baselines"]) == {"best_single", "uniform", "uniform_experts", "greedy", *ensemble}
    best_single = report["baselines"]["best_single"]
    assert best_single["members"] == [best]
    # a candidate souped alone is that candidate: its test scores equal its own cached test scores
    assert best_single["test_average"] == pytest.approx(report["test_average"][best])
    soup = report["soup"]
    assert set(soup["test"]) == set(cats) and set(soup["intervals"]) >= {"vs_best_single", "vs_uniform"}
    for iv in soup["intervals"].values():
        assert iv["low"] <= iv["diff"] <= iv["high"]
    # the written soup scores on test (from disk) what the resident soup scored
    assert soup["test_average_from_disk"] == pytest.approx(soup["test_average"], abs=1e-9)
    soup_dir = Path(soup["path"])
    assert (soup_dir / "model.safetensors").is_file() or (soup_dir / "model.safetensors.index.json").is_file()
    written = load_recipe(soup_dir / "soce_recipe.yml")
    members = list(report["weights"])
    assert [Path(c.path).name for c in written.candidates] == [Path(p).name for p in members]
    assert [c.weight for c in written.candidates] == pytest.approx([report["weights"][e] for e in members])
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 5 and "http://" not in html and "https://" not in html
    assert (out / "scores-dev.csv").read_text().startswith("candidate,")
    # the final table opens with the verdict: every candidate, the baselines and the soup with intervals
    assert f"verdict: {report['verdict']}\n\ntest split (points)" in result.output
    for name in [*cands, "best single", "uniform soup (all)", "greedy soup", "SoCE soup", "vs best single"]:
        assert name in result.output
    assert str(soup_dir) in result.output


def test_report_leads_with_a_decision(first_run):
    recipe, result = first_run
    assert result.exit_code == 0, result.output
    out = recipe.parent / "out"
    report = json.loads((out / "report.json").read_text())
    assert list(report)[:2] == ["verdict", "decision"]
    decision, selection, soup = report["decision"], report["selection"], report["soup"]
    assert set(decision) >= {"kind", "name", "model", "test_average", "vs_best_single"}
    assert set(decision["vs_best_single"]) >= {"diff", "low", "high"}
    # every contender was scored on the selection part; the decision follows the lower bounds
    contenders = {c["name"]: c for c in selection["contenders"]}
    assert {"best_single", "uniform"} <= set(contenders) and any(n.startswith("trial_") for n in contenders)
    passing = [c for c in contenders.values() if c["passed"]]
    assert decision["kind"] == ("soup" if passing else "single")
    for c in contenders.values():
        assert c["passed"] == (c["kind"] == "soup" and c["low"] > 0)
    if decision["kind"] == "single":
        best = report["best_single"]
        assert decision["name"] == best and Path(decision["model"]) == Path(report["candidate_paths"][best])
        assert report["verdict"] == f"keep {best}: no soup beat it on the selection split"
        assert decision["test_average"] == pytest.approx(report["test_average"][best])
        assert soup["recommended"] is False
    else:
        iv = soup["intervals"]["vs_best_single"]
        assert Path(decision["model"]) == Path(soup["path"]) and soup["recommended"] is True
        assert decision["vs_best_single"]["diff"] == pytest.approx(iv["diff"])
        assert report["verdict"].startswith("use the soup: ")
        assert decision["test_average"] == pytest.approx(soup["test_average"])
    # the soup folder is written either way; its model card opens with the verdict
    card = (Path(soup["path"]) / "README.md").read_text()
    head = "Recommended" if decision["kind"] == "soup" else "Not recommended"
    assert f"> **{head}:** {report['verdict']}" in card
    html = (out / "report.html").read_text()
    assert html.index('id="verdict"') < html.index('id="scores"') and 'id="selection"' in html
    assert (out / "scores-dev-search.csv").is_file() and (out / "scores-dev-select.csv").is_file()


def test_the_output_ensemble_of_the_soups_ingredients_is_reported_beside_it(first_run, tiny_zoo: Path):
    from evaluators import LmEvalEvaluator
    from evaluators.ensemble import EnsembleLM
    from soce.schemas.scores import SuiteScores
    from soce.schemas.suite import SuiteSpec

    recipe, result = first_run
    assert result.exit_code == 0, result.output
    out = recipe.parent / "out"
    report = json.loads((out / "report.json").read_text())
    soup, baselines = report["soup"], report["baselines"]
    ingredients = [e for e, w in report["weights"].items() if w > 0]
    assert len(ingredients) > 1, "the tiny zoo's soup mixes several candidates"
    ens = baselines["ensemble"]
    assert ens["kind"] == "ensemble" and ens["members"] == ingredients and ens["dev_average"] is None
    assert ens["weights"] == pytest.approx({e: 1 / len(ingredients) for e in ingredients})
    assert set(ens["test"]) == set(report["categories"])
    assert all(b["kind"] == "soup" for name, b in baselines.items() if name != "ensemble")
    # the ingredients loaded from disk and ensembled on their own score what finalize reported
    suite = SuiteSpec.from_file(tiny_zoo / "suite.yaml")
    evaluator = LmEvalEvaluator(device="cpu")
    models = [evaluator.load_checkpoint(Path(report["candidate_paths"][e])) for e in ingredients]
    tasks = evaluator.evaluate_model(EnsembleLM([m for m, _ in models]), models[0][1], suite, "test")
    alone = SuiteScores.aggregate(suite, "test", candidate="e", evaluator="e", tasks=tasks)
    assert ens["test_average"] == pytest.approx(alone.average, abs=1e-9)
    # the paired interval of soup minus ensemble, and the share of the ensemble's gain the soup keeps
    iv = soup["intervals"]["vs_ensemble"]
    assert iv["diff"] == pytest.approx(soup["test_average"] - ens["test_average"])
    assert iv["low"] <= iv["diff"] <= iv["high"]
    best = baselines["best_single"]["test_average"]
    if ens["test_average"] > best:
        kept = (soup["test_average"] - best) / (ens["test_average"] - best)
        assert soup["ensemble_gain_kept"] == pytest.approx(kept) and soup["ensemble_note"] is None
        shown = f"keeps {100 * soup['ensemble_gain_kept']:.0f}% of its gain"
    else:
        assert soup["ensemble_gain_kept"] is None and "does not beat the best single" in soup["ensemble_note"]
        shown = "does not beat the best single"
    assert shown in result.output and "output ensemble of the soup's ingredients" in result.output
    html = (out / "report.html").read_text()
    assert 'id="ensemble-gain"' in html and "soup vs ensemble" in html and "series-ensemble" in html


def test_rerun_reuses_cached_scores_and_the_stored_study(first_run):
    recipe, first = first_run
    assert first.exit_code == 0, first.output
    before = json.loads((recipe.parent / "out" / "report.json").read_text())
    result = runner.invoke(app, ["run", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    after = json.loads((recipe.parent / "out" / "report.json").read_text())
    assert after["search"]["study"] == before["search"]["study"]
    assert after["search"]["history"] == before["search"]["history"]  # no trial run again
    assert after["dev_scores"] == before["dev_scores"]
    study = optuna.load_study(study_name=after["search"]["study"], storage=get_settings().optuna_url())
    assert len(study.trials) == 4
    # more trials continue the same study: the first four stay as they were
    result = runner.invoke(app, ["run", str(recipe), "-q", "--n-trials", "6"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=after["search"]["study"], storage=get_settings().optuna_url())
    assert len(study.trials) == 6
    old = {t["number"]: t["category_scores"] for t in before["search"]["history"]}
    assert {t.number: t.user_attrs["category_scores"] for t in study.trials[:4]} == old


def test_the_report_has_the_dev_curve_between_the_two_largest_ingredients(first_run):
    from markupsafe import escape

    recipe, result = first_run
    assert result.exit_code == 0, result.output
    out = recipe.parent / "out"
    report = json.loads((out / "report.json").read_text())
    curve, weights = report["interpolation"], report["weights"]
    ranked = sorted((e for e, w in weights.items() if w > 0), key=lambda e: -weights[e])  # ties: in order
    assert len(ranked) >= 2, "the tiny zoo's soup mixes several candidates"
    assert [curve["a"], curve["b"]] == ranked[:2] and report["recipe"]["interpolation_points"] == 5
    assert curve["split"] == "dev" and curve["part"] is None  # all of dev, as dev_scores
    assert [p["t"] for p in curve["points"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the ends are the two candidates alone: their dev scores, scored from disk by the score step
    for point, name in ((curve["points"][0], curve["a"]), (curve["points"][-1], curve["b"])):
        assert point["categories"] == pytest.approx(report["dev_scores"][name], abs=1e-9)
        assert point["average"] == pytest.approx(report["dev_average"][name], abs=1e-9)
    assert curve["barrier"] >= 0
    assert curve["linearly_connected"] == curve["conclusion"].startswith("linearly connected")
    html = (out / "report.html").read_text()
    assert 'id="interpolation"' in html and 'data-chart="interpolation"' in html
    assert str(escape(curve["conclusion"])) in html


def test_layerwise_search_writes_a_layerwise_soup(tiny_zoo: Path, tmp_path: Path):
    recipe = write_recipe(tmp_path, tiny_zoo, space="layerwise", n_trials=3, layer_groups=2)
    result = runner.invoke(app, ["run", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for trial in report["search"]["history"]:  # every trial weighs each layer group on its own
        assert {"embed", "blocks[0]", "blocks[1]", "norm", "head"} <= set(trial["layer_weights"])
    written = load_recipe(Path(report["soup"]["path"]) / "soce_recipe.yml")
    if report["soup"]["source"].startswith("trial_"):  # a searched soup, not a uniform or greedy one
        assert report["layer_weights"] is not None
        assert written.method == "layerwise" and len(written.parameters["blocks"]) == 2
    else:
        assert report["layer_weights"] is None and written.method == "linear"


def test_the_papers_recipe_searches_the_experts_and_chooses_on_all_of_dev(tiny_zoo: Path, tmp_path: Path):
    recipe = write_recipe(
        tmp_path,
        tiny_zoo,
        include_best_single=False,
        selection_fraction=0,
        n_trials=3,
        ensemble=False,
        interpolation_points=0,
    )
    result = runner.invoke(app, ["run", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not any(report["dev_parts"].values()) and not (tmp_path / "out" / "scores-dev-search.csv").exists()
    experts = [e["candidate"] for e in report["experts"] if e["category"] is not None]
    if not report["experts_fallback"]:
        assert report["expert_candidates"] == list(dict.fromkeys(experts))  # no best single added
    best = max(
        report["dev_average"], key=lambda c: (report["dev_average"][c], -report["candidates"].index(c))
    )
    assert report["best_single"] == best  # chosen on all of dev
    assert any("selection_fraction is 0" in w for w in report["warnings"])
    assert report["decision"]["selection_fraction"] == 0
    # the recipe turns the output ensemble off: no baseline, no interval, no share of its gain
    assert "ensemble" not in report["baselines"] and "vs_ensemble" not in report["soup"]["intervals"]
    assert (
        report["soup"]["ensemble_gain_kept"] is None and "ensemble: false" in report["soup"]["ensemble_note"]
    )
    # the recipe turns the interpolation curve off
    assert report["interpolation"] is None
    assert "interpolation_points: 0" in (tmp_path / "out" / "report.html").read_text()
    if report["decision"]["kind"] == "single":
        assert report["verdict"] == f"keep {best}: no soup beat it on dev (no selection split)"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sampler": "annealing"}, "sampler: Input should be"),
        ({"n_trials": 0}, "n_trials: Input should be greater than or equal to 1"),
        ({"space": "layerwise", "sampler": "grid"}, "use tpe, cmaes or nsga2 with space layerwise"),
        ({"candidates": ["/nonexistent/*"]}, "pattern '/nonexistent/*' matches no folder"),
        ({"suite": "/nonexistent/suite.yaml"}, "no such suite file"),
        ({"tau": 2}, "tau: Input should be less than or equal to 1"),
        ({"selection_fraction": 1}, "selection_fraction: Input should be less than or equal to 0.9"),
        ({"weights": [1, 2]}, "weights: Extra inputs are not permitted"),
    ],
)
def test_bad_recipes_give_clear_errors(tiny_zoo: Path, tmp_path: Path, fields, message):
    recipe = write_recipe(tmp_path, tiny_zoo, **fields)
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_one_candidate_is_not_a_soup(tiny_zoo: Path, tmp_path: Path):
    one = sorted((tiny_zoo / "candidates").iterdir())[0]
    recipe = write_recipe(tmp_path, tiny_zoo, candidates=[str(one)])
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "at least 2 checkpoints" in result.output


def test_missing_and_malformed_recipe_files(tmp_path: Path):
    result = runner.invoke(app, ["run", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "no such recipe file" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidates: [unclosed\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2 and "cannot be read as YAML" in result.output


def test_the_report_has_the_basin_check_of_the_candidates(first_run):
    """The analyse step's basin check: fine-tunes of the zoo's one base share it, nobody is flagged."""
    recipe, result = first_run
    assert result.exit_code == 0, result.output
    out = recipe.parent / "out"
    report = json.loads((out / "report.json").read_text())
    similarity = report["similarity"]
    assert similarity["candidates"] == report["candidates"]  # named by their labels, not paths
    assert similarity["flagged"] == [] and len(similarity["basins"]) == 1
    overall = similarity["overall"]["weights"]
    assert min(v for row in overall for v in row if v is not None) > 0.5
    assert "Lowest weight cosine" in (out / "report.html").read_text()  # the check's tables
