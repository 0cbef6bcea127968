"""Leaderboard tables read by the external evaluator: BFCL's own CSV format, its header mapping per table,
a user's mapping, several tables merged, and bad cells named by file, line and column."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from evaluators import ExternalScores, build_evaluator
from evaluators.leaderboard import is_leaderboard, parse_column_options, read_leaderboard, user_columns
from soce.errors import ScoreFileError
from soce.schemas.suite import SuiteSpec

# BFCL v4's headers (bfcl_eval/constants/column_headers.py), in its order
OVERALL = [
    "Rank", "Overall Acc", "Model", "Model Link", "Total Cost ($)", "Latency Mean (s)",
    "Latency Standard Deviation (s)", "Latency 95th Percentile (s)", "Non-Live AST Acc",
    "Non-Live Simple AST", "Non-Live Multiple AST", "Non-Live Parallel AST", "Non-Live Parallel Multiple AST",
    "Live Acc", "Live Simple AST", "Live Multiple AST", "Live Parallel AST", "Live Parallel Multiple AST",
    "Multi Turn Acc",
    "Multi Turn Base", "Multi Turn Miss Func", "Multi Turn Miss Param", "Multi Turn Long Context",
    "Web Search Acc", "Web Search Base", "Web Search No Snippet", "Memory Acc", "Memory KV", "Memory Vector",
    "Memory Recursive Summarization", "Relevance Detection", "Irrelevance Detection",
    "Format Sensitivity Max Delta", "Format Sensitivity Standard Deviation", "Organization", "License",
]  # fmt: skip
NON_LIVE = [
    "Rank", "Model", "Non-Live Overall Acc", "AST Summary", "Simple AST", "Python Simple AST",
    "Java Simple AST", "JavaScript Simple AST", "Multiple AST", "Parallel AST", "Parallel Multiple AST",
    "Irrelevance Detection",
]  # fmt: skip
LIVE = [
    "Rank", "Model", "Live Overall Acc", "AST Summary", "Python Simple AST", "Python Multiple AST",
    "Python Parallel AST", "Python Parallel Multiple AST", "Irrelevance Detection", "Relevance Detection",
]  # fmt: skip

GPT, LLAMA, QWEN, XLAM = (
    "GPT-4o-2024-11-20 (FC)",
    "Llama-3.1-8B-Instruct (FC)",
    "Qwen2.5-7B-Instruct (Prompt)",
    "xLAM-2-8b-fc-r (FC)",
)
# fractions per model: simple_python, multiple, live_simple, live_relevance, irrelevance, live_irrelevance
SCORES = {
    GPT: (0.935, 0.955, 0.8023, 0.75, 0.8417, 0.7891),
    LLAMA: (0.9125, 0.9, 0.7209, 0.875, 0.6875, 0.5213),
    QWEN: (0.9475, 0.935, 0.7558, 0.6875, 0.7708, 0.6974),
    XLAM: (0.955, 0.94, 0.7907, 0.9375, 0.7583, 0.6611),
}


def pct(x: float) -> str:
    return f"{x * 100:.2f}%"  # as BFCL's write_score_csv_file


def write_bfcl(path: Path, headers: list[str], rows: list[dict[str, str]]) -> Path:
    """A table as BFCL writes it: comma-joined, unquoted, "N/A" where a model has no score, no final
    newline; rows are ranked by their overall column."""
    lines = [",".join(headers)]
    for rank, cells in enumerate(rows, 1):
        full = {h: "N/A" for h in headers} | {"Rank": str(rank)} | cells
        lines.append(",".join(full[h] for h in headers))
    path.write_text("\n".join(lines))
    return path


def overall_row(model: str) -> dict[str, str]:
    sp, mu, ls, rel, irr, lirr = SCORES[model]
    return {
        "Overall Acc": "41.27%",
        "Model": model,
        "Model Link": "https://example.com/" + model.split()[0],
        "Total Cost ($)": "12.5",
        "Latency Mean (s)": "1.32",
        "Latency Standard Deviation (s)": "2.01",
        "Latency 95th Percentile (s)": "3.4",
        "Non-Live Simple AST": pct((sp + 0.9 + 0.8) / 3),  # with Java and JavaScript
        "Non-Live Multiple AST": pct(mu),
        "Live Simple AST": pct(ls),
        "Relevance Detection": pct(rel),
        "Irrelevance Detection": pct((irr + lirr) / 2),
        "Organization": "Example Org",
        "License": "Apache 2.0",
    }


def non_live_row(model: str) -> dict[str, str]:
    sp, mu, _, _, irr, _ = SCORES[model]
    return {
        "Model": model,
        "Python Simple AST": pct(sp),
        "Multiple AST": pct(mu),
        "Irrelevance Detection": pct(irr),
    }


def live_row(model: str) -> dict[str, str]:
    _, _, ls, rel, _, lirr = SCORES[model]
    return {
        "Model": model,
        "Python Simple AST": pct(ls),
        "Irrelevance Detection": pct(lirr),
        "Relevance Detection": pct(rel),
    }


def bfcl_suite(tmp_path: Path, *categories: str) -> SuiteSpec:
    data = {
        "name": "bfcl",
        "categories": [
            {"name": c, "tasks": [{"name": f"bfcl_{c}", "metric": "accuracy,none"}]} for c in categories
        ],
    }
    path = tmp_path / "bfcl.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return SuiteSpec.from_file(path)


@pytest.fixture
def overall(tmp_path: Path) -> Path:
    return write_bfcl(tmp_path / "data_overall.csv", OVERALL, [overall_row(m) for m in SCORES])


@pytest.fixture
def non_live(tmp_path: Path) -> Path:
    return write_bfcl(tmp_path / "data_non_live.csv", NON_LIVE, [non_live_row(m) for m in SCORES])


@pytest.fixture
def live(tmp_path: Path) -> Path:
    return write_bfcl(tmp_path / "data_live.csv", LIVE, [live_row(m) for m in SCORES])


def test_data_overall_reads_bfcl_headers_as_fractions_for_dev_and_test(
    tmp_path: Path, overall: Path, caplog: pytest.LogCaptureFixture
) -> None:
    suite = bfcl_suite(tmp_path, "multiple", "live_simple", "live_relevance")
    with caplog.at_level(logging.WARNING):
        evaluator = build_evaluator("external", scores_file=overall)
    assert "no dev or test split" in caplog.text and str(overall) in caplog.text
    assert evaluator.tables and evaluator.tables[0].kind == "overall"
    dev = evaluator.score(GPT, suite, "dev")
    assert {c: s.value for c, s in dev.categories.items()} == pytest.approx(
        {"multiple": 0.955, "live_simple": 0.8023, "live_relevance": 0.75}
    )
    assert dev.tasks == {} and dev.candidate == GPT and dev.evaluator == "external"
    assert evaluator.score(GPT, suite, "test").categories == dev.categories
    columns = evaluator.leaderboard(suite).columns
    assert columns["live_simple"] == [(overall, "Live Simple AST")]
    assert columns["live_relevance"] == [(overall, "Relevance Detection")]


def test_the_same_header_means_the_category_of_its_table(tmp_path: Path, non_live: Path, live: Path) -> None:
    suite = bfcl_suite(tmp_path, "simple_python", "live_simple", "irrelevance", "live_irrelevance")
    got = ExternalScores(scores_file=[non_live, live]).score(LLAMA, suite, "dev")
    sp, _, ls, _, irr, lirr = SCORES[LLAMA]
    assert {c: s.value for c, s in got.categories.items()} == pytest.approx(
        {"simple_python": sp, "live_simple": ls, "irrelevance": irr, "live_irrelevance": lirr}
    )


def test_tables_merge_when_they_agree_and_a_conflict_names_both_places(
    tmp_path: Path, overall: Path, non_live: Path
) -> None:
    suite = bfcl_suite(tmp_path, "simple_python", "multiple", "live_simple")
    evaluator = ExternalScores(scores_file=[overall, non_live])
    assert evaluator.score(XLAM, suite, "dev").categories["simple_python"].value == pytest.approx(0.955)
    assert evaluator.leaderboard(suite).columns["multiple"] == [
        (overall, "Non-Live Multiple AST"),
        (non_live, "Multiple AST"),
    ]
    rows = [non_live_row(m) for m in SCORES]
    rows[1]["Multiple AST"] = "89.00%"  # LLAMA has 90.00% in data_overall.csv
    write_bfcl(non_live, NON_LIVE, rows)
    with pytest.raises(ScoreFileError) as err:
        ExternalScores(scores_file=[overall, non_live]).score(LLAMA, suite, "dev")
    assert str(err.value) == (
        f"{non_live}, line 3, column 'Multiple AST': {LLAMA!r} scores 89.00% in category 'multiple', but "
        f"90.00% at {overall}, line 3, column 'Non-Live Multiple AST'"
    )


def test_a_missing_category_names_it_the_headers_offered_and_where_bfcl_has_it(
    tmp_path: Path, overall: Path
) -> None:
    suite = bfcl_suite(tmp_path, "simple_python", "multiple")
    with pytest.raises(ScoreFileError) as err:
        ExternalScores(scores_file=overall).score(GPT, suite, "dev")
    message = str(err.value)
    assert message.startswith(f"{overall}: no column for category 'simple_python' of the suite")
    assert "'Non-Live Simple AST' averages simple_python, simple_java, simple_javascript" in message
    assert "data_non_live.csv, column 'Python Simple AST'" in message
    assert "columns offered: 'Overall Acc', 'Model Link', 'Total Cost ($)'" in message
    assert "'Relevance Detection', 'Irrelevance Detection'" in message and "'Rank'" not in message
    assert "--column 'HEADER=simple_python'" in message


def test_a_user_mapping_from_a_file_and_options(tmp_path: Path, overall: Path) -> None:
    suite = bfcl_suite(tmp_path, "simple_python", "multiple", "irrelevance")
    mapping = tmp_path / "columns.yaml"
    mapping.write_text("Non-Live Simple AST: simple_python\nIrrelevance Detection: irrelevance\n")
    columns = user_columns(mapping, ["Non-Live Parallel AST=multiple"])
    assert columns == {
        "Non-Live Simple AST": "simple_python",
        "Irrelevance Detection": "irrelevance",
        "Non-Live Parallel AST": "multiple",
    }
    rows = [overall_row(m) | {"Non-Live Parallel AST": "12.5%"} for m in SCORES]
    write_bfcl(overall, OVERALL, rows)
    evaluator = ExternalScores(scores_file=overall, columns=columns)
    got = evaluator.score(QWEN, suite, "dev")
    sp, _, _, _, irr, lirr = SCORES[QWEN]
    assert got.categories["simple_python"].value == pytest.approx(round((sp + 1.7) / 3, 4))
    assert got.categories["irrelevance"].value == pytest.approx(round((irr + lirr) / 2, 4))
    # the user's column takes the category over from the built-in one
    assert got.categories["multiple"].value == pytest.approx(0.125)
    assert evaluator.leaderboard(suite).columns["multiple"] == [(overall, "Non-Live Parallel AST")]
    as_json = tmp_path / "columns.json"
    as_json.write_text(json.dumps({"Non-Live Simple AST": "simple_python"}))
    assert user_columns(as_json, ["Non-Live Simple AST = multiple"]) == {"Non-Live Simple AST": "multiple"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("- a\n- b\n", "a column mapping is a mapping {header: category}"),
        ("Live Simple AST: [a]\n", "entry 'Live Simple AST': the category is a name, not ['a']"),
        ("a: b\n c: [\n", "line 2, column 3: not valid YAML"),
    ],
)
def test_a_bad_mapping_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "columns.yaml"
    path.write_text(text)
    with pytest.raises(ScoreFileError) as err:
        user_columns(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_column_options_are_header_equals_category() -> None:
    assert parse_column_options(["Score (a=b)=multiple"]) == {"Score (a=b)": "multiple"}
    for bad in ("Live Simple AST", "=live_simple", "Live Simple AST="):
        with pytest.raises(ScoreFileError, match=f"--column '{bad}': expected HEADER=CATEGORY"):
            parse_column_options([bad])


@pytest.mark.parametrize(
    "cell, message",
    [
        ("abc", "'abc' is not a percentage (such as 85.5% or 85.5) nor N/A"),
        ("85,5%", "'85,5%' is not a percentage (such as 85.5% or 85.5) nor N/A"),
        ("nan", "'nan' is not a percentage (such as 85.5% or 85.5) nor N/A"),
        ("120%", "'120%' is outside 0..100%"),
    ],
)
def test_a_bad_cell_names_file_line_and_column(
    tmp_path: Path, overall: Path, cell: str, message: str
) -> None:
    suite = bfcl_suite(tmp_path, "live_simple")
    rows = [overall_row(m) for m in SCORES]
    rows[2]["Live Simple AST"] = f'"{cell}"' if "," in cell else cell
    write_bfcl(overall, OVERALL, rows)
    with pytest.raises(ScoreFileError) as err:
        ExternalScores(scores_file=overall).score(GPT, suite, "dev")
    assert str(err.value) == f"{overall}, line 4, column 'Live Simple AST': {message}"


def test_bom_bare_percentages_blanks_and_unused_columns_are_tolerated(tmp_path: Path) -> None:
    suite = bfcl_suite(tmp_path, "live_simple", "live_relevance")
    path = tmp_path / "board.csv"
    path.write_text(
        "\ufeffRank,Model,Live Overall Acc,Python Simple AST,Relevance Detection,License\n"
        "1,model-a,80.1%,85.5,100,not a number\n"
        "2,model-b,N/A,72.25 %,,MIT\n"
        "3,model-c,70%,70\n"
        "4,model-d,N/A,N/A,N/A,MIT\n"
    )
    evaluator = ExternalScores(scores_file=path)
    assert evaluator.tables[0].kind == "live"
    got = evaluator.score("model-a", suite, "dev")
    assert {c: s.value for c, s in got.categories.items()} == pytest.approx(
        {"live_simple": 0.855, "live_relevance": 1.0}
    )
    complete, lacking = evaluator.candidates(suite, "dev")
    assert complete == ["model-a"]
    assert lacking == {
        "model-b": f"no score in live_relevance (N/A at {path}, line 3, column 'Relevance Detection')",
        "model-c": f"no score in live_relevance (N/A at {path}, line 4, column 'Relevance Detection')",
        "model-d": f"no score in live_simple (N/A at {path}, line 5, column 'Python Simple AST'), "
        f"live_relevance (N/A at {path}, line 5, column 'Relevance Detection')",
    }
    with pytest.raises(ScoreFileError) as err:
        evaluator.score("model-b", suite, "dev")
    assert str(err.value) == (
        f"{path}, line 3, column 'Relevance Detection': no score for candidate 'model-b' in category "
        "'live_relevance' (the cell is N/A or empty)"
    )
    with pytest.raises(ScoreFileError) as err:
        evaluator.score("model-d", suite, "test")
    assert str(err.value) == (
        f"{path}, line 5, column 'Python Simple AST': no score for candidate 'model-d' "
        "(the cell is N/A or empty)"
    )


def test_an_unknown_model_is_named_with_the_models_offered(tmp_path: Path, overall: Path) -> None:
    suite = bfcl_suite(tmp_path, "live_simple")
    with pytest.raises(ScoreFileError) as err:
        ExternalScores(scores_file=overall).score("GPT-5 (FC)", suite, "dev")
    assert str(err.value) == (
        f"{overall}: no dev scores for candidate 'GPT-5 (FC)' (it has: {', '.join(sorted(SCORES))})"
    )
    many = write_bfcl(
        tmp_path / "many.csv",
        LIVE,
        [{"Model": f"Model-{i} (FC)", "Python Simple AST": "50%"} for i in range(12)],
    )
    with pytest.raises(ScoreFileError) as err:
        ExternalScores(scores_file=many).score("Model-1 (Fc)", suite, "dev")
    assert "among its 12 candidates; did you mean 'Model-1 (FC)'" in str(err.value)


def test_long_form_and_wide_form_are_told_apart(tmp_path: Path) -> None:
    long = tmp_path / "long.csv"
    long.write_text("candidate,category,score\nModel-a,live_relevance,0.25\n")
    wide = tmp_path / "wide.csv"
    wide.write_text("Model,live_simple,live_relevance\nModel-a,50%,N/A\n")
    named = tmp_path / "named.csv"
    named.write_text("Name,live_simple\nModel-a,50%\n")
    plain = tmp_path / "plain.csv"
    plain.write_text("Model,Score\nModel-a,50\n")
    assert is_leaderboard(wide) and not is_leaderboard(long)
    assert not is_leaderboard(named) and not is_leaderboard(plain)
    assert is_leaderboard(named, model_column="Name")
    with pytest.raises(
        ScoreFileError, match="a leaderboard table\\? name its model column with --model-column"
    ):
        ExternalScores(scores_file=plain)
    suite = bfcl_suite(tmp_path, "live_simple", "live_relevance")
    # score rows and a table together: the table gives the categories the rows do not
    got = ExternalScores(scores_file=[long, wide]).score("Model-a", suite, "dev")
    assert {c: s.value for c, s in got.categories.items()} == {"live_simple": 0.5, "live_relevance": 0.25}
    by_name = ExternalScores(scores_file=named, model_column="name")
    assert by_name.tables[0].model_column == "Name"
    with pytest.raises(ScoreFileError, match="column mappings are for leaderboard tables"):
        ExternalScores(scores_file=long, columns={"a": "b"})
    with pytest.raises(ScoreFileError, match=r"line 1: no model column 'Nom' \(columns: Name, live_simple\)"):
        read_leaderboard(named, model_column="Nom")


def test_bad_tables_are_named(tmp_path: Path) -> None:
    path = tmp_path / "board.csv"
    for text, message in [
        ("Model,Model,x\n", "line 1: column 'Model' appears twice"),
        ("Rank,Model,Python Simple AST\n", "holds no models"),
        ("Rank,Model,Python Simple AST\n1,a,50%,7\n", "line 2: 4 values for 3 columns"),
        ("Rank,Model,Python Simple AST\n1,,50%\n", "line 2, column 'Model': no model name"),
    ]:
        path.write_text(text)
        with pytest.raises(ScoreFileError) as err:
            read_leaderboard(path)
        assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_fractions_in_a_percent_table_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    suite = bfcl_suite(tmp_path, "live_simple")
    path = tmp_path / "board.csv"
    path.write_text("Model,live_simple\na,0.5\nb,0.75\n")
    with caplog.at_level(logging.WARNING):
        got = ExternalScores(scores_file=path).score("a", suite, "dev")
    assert got.categories["live_simple"].value == pytest.approx(0.005)
    assert "every score read is at most 1" in caplog.text
