"""`soce score` and `soce analyse` on BFCL leaderboard tables: leaderboard names as candidates, the
correlation and experts checked by hand on a small table, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from soce.cli import app
from soce.config import get_settings
from tests.evaluators.test_leaderboard import LIVE, NON_LIVE, OVERALL, SCORES, live_row, write_bfcl

runner = CliRunner()

# Four fine-tunes on data_live.csv. Live simple rises down the table and live multiple falls (rho = -1);
# live relevance is 75, 70, 90, 85: Pearson rho with live simple = 125 / sqrt(125 * 250) = 1/sqrt(2),
# Spearman (ranks 2, 1, 4, 3 against 1, 2, 3, 4) = 1 - 6 * 4 / (4 * 15) = 0.6.
HAMMER, XLAM, QWEN, LLAMA = "Hammer2.1-7b (FC)", "xLAM-2-8b-fc-r (FC)", "Qwen3-8B (FC)", "Llama-3.1-8B (FC)"
BOARD = {
    HAMMER: ("70.00%", "90.00%", "75.00%"),
    XLAM: ("75.00%", "85.00%", "70.00%"),
    QWEN: ("80.00%", "80.00%", "90.00%"),
    LLAMA: ("85.00%", "75.00%", "85.00%"),
}


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOCE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def suite_file(tmp_path: Path, *categories: str) -> Path:
    data = {
        "name": "bfcl",
        "categories": [
            {"name": c, "tasks": [{"name": f"bfcl_{c}", "metric": "accuracy,none"}]} for c in categories
        ],
    }
    path = tmp_path / "bfcl.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def live_board(tmp_path: Path) -> Path:
    rows = [
        {"Model": m, "Python Simple AST": s, "Python Multiple AST": mu, "Relevance Detection": r}
        for m, (s, mu, r) in BOARD.items()
    ]
    return write_bfcl(tmp_path / "data_live.csv", LIVE, rows)


def test_score_takes_leaderboard_names_from_merged_tables(tmp_path: Path) -> None:
    from tests.evaluators.test_leaderboard import non_live_row, overall_row

    overall = write_bfcl(tmp_path / "data_overall.csv", OVERALL, [overall_row(m) for m in SCORES])
    non_live = write_bfcl(tmp_path / "data_non_live.csv", NON_LIVE, [non_live_row(m) for m in SCORES])
    suite = suite_file(tmp_path, "simple_python", "multiple", "live_simple", "live_relevance")
    gpt, llama = "GPT-4o-2024-11-20 (FC)", "Llama-3.1-8B-Instruct (FC)"
    out = tmp_path / "out"
    args = ["score", "--suite", suite, "--split", "dev", "--evaluator", "external", "--out", out, "-q"]
    result = invoke(*args, "--scores", overall, "--scores", non_live, gpt, llama)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "candidate",
        "simple_python",
        "multiple",
        "live_simple",
        "live_relevance",
        "average",
    ]
    assert lines[1].split() == [*gpt.split(), "0.9350", "0.9550", "0.8023", "0.7500", "0.8606"]
    assert lines[2].split()[:3] == [*llama.split(), "0.9125"]
    matrix = json.loads((out / "bfcl-dev.json").read_text())
    assert matrix["candidates"] == [gpt, llama] and matrix["values"][0][1] == 0.955

    # --all: every model scored in every category; a model with N/A in one is left out, named
    rows = [overall_row(m) for m in SCORES]
    rows[2]["Relevance Detection"] = "N/A"
    write_bfcl(overall, OVERALL, rows)
    result = invoke(*args, "--scores", overall, "--scores", non_live, "--all")
    assert result.exit_code == 0, result.output
    assert [ln.split()[0] for ln in result.stdout.splitlines()[1:4]] == [
        "GPT-4o-2024-11-20",
        "Llama-3.1-8B-Instruct",
        "xLAM-2-8b-fc-r",
    ]
    assert (
        f"skipped 'Qwen2.5-7B-Instruct (Prompt)': no score in live_relevance (N/A at {overall}, line 4, "
        "column 'Relevance Detection')"
    ) in result.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["GPT-5 (FC)"], "error: {board}: no dev scores for candidate 'GPT-5 (FC)' (it has: "),
        (["--all", "GPT-4o-2024-11-20 (FC)"], "error: give candidates or --all, not both"),
        ([], "error: name the checkpoints to score"),
        (
            ["--column", "Live Simple AST", "--all"],
            "error: --column 'Live Simple AST': expected HEADER=CATEGORY",
        ),
    ],
)
def test_score_refuses_bad_input_in_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    board = write_bfcl(tmp_path / "data_live.csv", LIVE, [live_row(m) for m in SCORES])
    suite = suite_file(tmp_path, "live_simple")
    result = invoke(
        "score", "--suite", suite, "--split", "dev", "--evaluator", "external", "--scores", board, *extra
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith(message.format(board=board)), result.output


def test_analyse_finds_correlations_and_experts_by_hand(tmp_path: Path, live_board: Path) -> None:
    suite = suite_file(tmp_path, "live_simple", "live_multiple", "live_relevance")
    out = tmp_path / "analysis.json"
    result = invoke("analyse", "--suite", suite, "--scores", live_board, "--json", out)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "  live_simple <- data_live.csv 'Python Simple AST'" in text
    assert "  live_relevance <- data_live.csv 'Relevance Detection'" in text
    rows = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.startswith("[")}
    assert rows["[1]"] == ["live_simple", "*", "+1.00", "-1.00", "+0.71"]
    assert rows["[3]"] == ["live_relevance", "*", "+0.71", "-0.71", "+1.00"]
    experts = [ln.split() for ln in text.splitlines() if ln.startswith("live_")]
    assert experts == [
        ["live_simple", *LLAMA.split(), "0.8500", *QWEN.split(), "0.8000", "+0.0500"],
        ["live_multiple", *HAMMER.split(), "0.9000", *XLAM.split(), "0.8500", "+0.0500"],
        ["live_relevance", *QWEN.split(), "0.9000", *LLAMA.split(), "0.8500", "+0.0500"],
    ]
    assert "ingredients (3): the candidates the weight search would soup" in text
    assert f"  {QWEN}: best in live_relevance at 0.9000" in text  # and the best single (83.33 on average)
    assert "also the best single candidate by dev average (0.8333)" in text
    assert "run `soce run RECIPE.yaml`" in text and "37 weightings of 3 ingredients" in text
    assert "warning: only 4 candidate(s)" not in text

    data = json.loads(out.read_text())
    corr = data["analysis"]["correlation"]
    assert corr["pearson"]["live_simple"]["live_relevance"] == pytest.approx(1 / math.sqrt(2))
    assert corr["spearman"]["live_simple"]["live_relevance"] == pytest.approx(0.6)
    assert corr["pearson"]["live_simple"]["live_multiple"] == pytest.approx(-1.0)
    assert corr["weak_categories"] == ["live_simple", "live_multiple", "live_relevance"]
    assert data["analysis"]["expert_candidates"] == [LLAMA, HAMMER, QWEN]
    assert data["analysis"]["best_single"] == QWEN
    assert data["scores"]["values"][0] == [0.7, 0.9, 0.75]
    assert data["columns"]["live_multiple"] == [{"file": str(live_board), "column": "Python Multiple AST"}]
    recipe = data["next"]["recipe"]
    assert recipe["candidates"] == [f"<checkpoint folder of {c}>" for c in (LLAMA, HAMMER, QWEN)]
    assert recipe["suite"] == str(suite.resolve()) and recipe["tau"] == 0.5 and recipe["sampler"] == "grid"


def test_analyse_options_change_the_rule_and_the_pool(tmp_path: Path, live_board: Path) -> None:
    suite = suite_file(tmp_path, "live_simple", "live_multiple", "live_relevance")
    args = ["analyse", "--suite", suite, "--scores", live_board, "--json", tmp_path / "a.json"]

    def analysis(*extra: object) -> dict:
        result = invoke(*args, *extra)
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / "a.json").read_text())

    # |rho| >= 0.71 everywhere: nothing is weakly correlated, the pool falls back to the top 3 by average
    got = analysis("--absolute")
    assert got["analysis"]["correlation"]["weak_categories"] == []
    assert got["analysis"]["experts_fallback"] and got["analysis"]["expert_candidates"] == [
        QWEN,
        LLAMA,
        HAMMER,
    ]
    # Spearman's 0.6 is below 0.65 in absolute value; Pearson's 0.71 is not
    got = analysis("--absolute", "--tau", "0.65", "--correlation", "spearman")
    assert got["analysis"]["correlation"]["weak_categories"] == [
        "live_simple",
        "live_multiple",
        "live_relevance",
    ]
    assert analysis("--absolute", "--tau", "0.65")["analysis"]["correlation"]["weak_categories"] == []
    # the top 3 by average leave xLAM out (76.67); named models are analysed in their order
    got = analysis("--top", "3")
    assert got["scores"]["candidates"] == [HAMMER, QWEN, LLAMA]
    assert got["left_out"] == {XLAM: "not among the top 3 by average (0.7667)"}
    got = analysis("--experts-only", XLAM, HAMMER, QWEN)
    assert got["scores"]["candidates"] == [XLAM, HAMMER, QWEN]
    assert got["next"]["recipe"]["include_best_single"] is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (["Gorilla (FC)", HAMMER], "no dev scores for candidate 'Gorilla (FC)' (it has: "),
        ([HAMMER], "the analysis compares candidates: it needs at least 2, and has 1"),
        (["--evaluator", "lm_eval"], "soce analyse reads scores from files (--evaluator external)"),
        (["--correlation", "kendall"], "--correlation must be pearson or spearman, not 'kendall'"),
        (  # two columns for one category that disagree
            ["--column", "Python Simple AST=live_simple", "--column", "Relevance Detection=live_simple"],
            "error: {board}, line 2, column 'Relevance Detection': 'Hammer2.1-7b (FC)' scores 75.00% in "
            "category 'live_simple', but 70.00% at {board}, line 2, column 'Python Simple AST'",
        ),
    ],
)
def test_analyse_refuses_bad_input_in_one_line(
    tmp_path: Path, live_board: Path, extra: list[str], message: str
) -> None:
    suite = suite_file(tmp_path, "live_simple", "live_multiple")
    result = invoke("analyse", "--suite", suite, "--scores", live_board, *extra)
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(board=live_board) in last, result.output


def test_analyse_names_a_bad_cell(tmp_path: Path, live_board: Path) -> None:
    suite = suite_file(tmp_path, "live_simple", "live_multiple")
    live_board.write_text(live_board.read_text().replace("85.00%", "eighty-five", 1))
    result = invoke("analyse", "--suite", suite, "--scores", live_board)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {live_board}, line 3, column 'Python Multiple AST': 'eighty-five' is not a percentage "
        "(such as 85.5% or 85.5) nor N/A"
    )


def test_analyse_help_loads_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from soce.cli import app\n"
        "try:\n"
        "    app(['analyse', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "analyse [OPTIONS]" in proc.stdout and "--correlation" in proc.stdout
    loaded = {name.partition(".")[0] for name in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert loaded.isdisjoint({"torch", "optuna", "sqlalchemy", "workers", "evaluators", "optimizer"})
