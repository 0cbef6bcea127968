"""evaluators.bfcl: BFCL's data read from the bfcl-eval wheel or a folder, its prompt, the decoding of
answers and the checks, on hand-written examples (test_bfcl_parity.py compares with bfcl-eval itself)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from evaluators.bfcl import (
    BFCL_EVAL_VERSION,
    CATEGORIES,
    RELEVANCE_CATEGORIES,
    BfclItem,
    DecodeError,
    Verdict,
    check,
    find_bfcl_data,
    parse_calls,
    prompt_messages,
    score_item,
)
from evaluators.bfcl import data as bfcl_data
from soce.config import get_settings
from soce.errors import EvaluationError, SuiteError

WHEELS = Path.home() / ".cache" / "soce-test" / "wheels"
ITEM_COUNTS = {
    "simple_python": 400,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "irrelevance": 240,
    "live_simple": 258,
    "live_multiple": 1053,
    "live_parallel": 16,
    "live_parallel_multiple": 24,
    "live_irrelevance": 884,
    "live_relevance": 16,
}
DATA = "bfcl_eval/data"


@pytest.fixture(scope="session")
def bfcl_wheel() -> Path:
    """bfcl-eval's wheel, downloaded once into a cache kept between runs."""
    found = sorted(WHEELS.glob(f"bfcl_eval-{BFCL_EVAL_VERSION}-*.whl"))
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        requirement = f"bfcl-eval=={BFCL_EVAL_VERSION}"
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", str(WHEELS)]
        subprocess.run(command, check=True, timeout=300)
        found = sorted(WHEELS.glob(f"bfcl_eval-{BFCL_EVAL_VERSION}-*.whl"))
    return found[0]


def unpack(wheel: Path, folder: Path, *names: str) -> Path:
    """The named files of the wheel's data folder, unpacked under folder/bfcl_eval/data."""
    with zipfile.ZipFile(wheel) as archive:
        for name in names:
            archive.extract(f"{DATA}/{name}", folder)
    return folder


# --- data ---


def test_the_eleven_categories_load_from_the_wheel(bfcl_wheel: Path) -> None:
    data = find_bfcl_data(bfcl_wheel)
    assert tuple(ITEM_COUNTS) == CATEGORIES
    assert str(bfcl_wheel) in data.describe()
    for category in CATEGORIES:
        items = data.items(category)
        assert len(items) == ITEM_COUNTS[category], category
        assert len({item.id for item in items}) == len(items)
        assert all(item.category == category and item.messages for item in items)
        if category in RELEVANCE_CATEGORIES:
            assert all(item.ground_truth is None for item in items)
        else:
            assert all(item.ground_truth for item in items)
    first = data.items("simple_python")[0]
    assert first.id == "simple_python_0"
    expected = {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}
    assert first.ground_truth == [expected]


def test_an_unpacked_folder_reads_as_the_wheel(bfcl_wheel: Path, tmp_path: Path) -> None:
    simple_files = ("BFCL_v4_simple_python.json", "possible_answer/BFCL_v4_simple_python.json")
    unpack(bfcl_wheel, tmp_path, *simple_files, "BFCL_v4_irrelevance.json")
    wheel = find_bfcl_data(bfcl_wheel)
    for source in (tmp_path, tmp_path / "bfcl_eval", tmp_path / DATA):
        folder = find_bfcl_data(source)
        for category in ("simple_python", "irrelevance"):
            assert folder.items(category) == wheel.items(category), (source, category)
    with pytest.raises(EvaluationError, match=r"BFCL_v4_multiple\.json is missing"):
        find_bfcl_data(tmp_path).items("multiple")


def test_an_item_goes_through_json_unchanged(bfcl_wheel: Path) -> None:
    data = find_bfcl_data(bfcl_wheel)
    for category in ("parallel_multiple", "live_irrelevance"):
        item = data.items(category)[3]
        again = BfclItem.from_json(json.loads(json.dumps(item.to_json())))
        assert again == item
        assert set(item.to_json()) == {"id", "category", "messages", "functions", "ground_truth"}
    broken = data.items("simple_python")[0].to_json()
    del broken["functions"]
    with pytest.raises(EvaluationError, match=r"simple_python_0.*'functions'"):
        BfclItem.from_json(broken)
    with pytest.raises(EvaluationError, match="unknown category 'multi_turn_base'"):
        BfclItem.from_json({**data.items("simple_python")[0].to_json(), "category": "multi_turn_base"})


def test_missing_and_corrupt_files_are_named(bfcl_wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"missing\.whl does not exist"):
        find_bfcl_data(tmp_path / "missing.whl")
    not_zip = tmp_path / "bad.whl"
    not_zip.write_text("not a zip")
    with pytest.raises(EvaluationError, match=r"bad\.whl is not a readable wheel"):
        find_bfcl_data(not_zip)
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("something/else.json", "{}")
    with pytest.raises(EvaluationError, match=r"other\.whl holds no bfcl_eval/data"):
        find_bfcl_data(other)
    with pytest.raises(EvaluationError, match="holds no BFCL data"):
        find_bfcl_data(tmp_path)

    folder = unpack(bfcl_wheel, tmp_path / "unpacked", "BFCL_v4_simple_python.json")
    questions = folder / DATA / "BFCL_v4_simple_python.json"
    lines = questions.read_text().splitlines()
    questions.write_text("\n".join([*lines[:2], '{"id": "broken", ', *lines[3:]]) + "\n")
    data = find_bfcl_data(folder)
    with pytest.raises(EvaluationError, match=r"BFCL_v4_simple_python\.json:3: not JSON"):
        data.items("simple_python")
    questions.write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(EvaluationError, match=r"possible_answer/BFCL_v4_simple_python\.json is missing"):
        data.items("simple_python")
    answers = folder / DATA / "possible_answer" / "BFCL_v4_simple_python.json"
    answers.parent.mkdir()
    answers.write_text("\n".join(lines[:2]) + "\n")  # questions where answers belong
    with pytest.raises(EvaluationError, match=r"has 5 items but .* has 2 answers"):
        data.items("simple_python")
    two_turns = json.loads(lines[0])
    two_turns["question"] *= 2
    questions.write_text(json.dumps(two_turns) + "\n")
    answers.write_text(json.dumps({"id": two_turns["id"], "ground_truth": [{"f": {"a": [1]}}]}) + "\n")
    with pytest.raises(
        EvaluationError, match=r"simple_python\.json:1: field 'question' must hold exactly one"
    ):
        data.items("simple_python")
    with pytest.raises(SuiteError, match="unknown BFCL category 'simple_java'"):
        data.items("simple_java")


def test_the_cached_wheel_is_found_or_downloaded(
    bfcl_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOCE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    commands = []

    def fake_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        commands.append(command)
        shutil.copy(bfcl_wheel, Path(command[command.index("-d") + 1]) / bfcl_wheel.name)
        return subprocess.CompletedProcess(command, 0, "", "")

    try:
        monkeypatch.setattr(bfcl_data.subprocess, "run", fake_pip)
        data = find_bfcl_data()
        assert data.source == tmp_path / "data" / "bfcl" / bfcl_wheel.name
        assert f"bfcl-eval=={BFCL_EVAL_VERSION}" in commands[0] and "--no-deps" in commands[0]
        assert len(data.items("live_relevance")) == 16
        find_bfcl_data()
        assert len(commands) == 1  # the cached wheel is used
        assert [p.name for p in (tmp_path / "data" / "bfcl").iterdir()] == [bfcl_wheel.name]

        data.source.unlink()

        def failing_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")

        monkeypatch.setattr(bfcl_data.subprocess, "run", failing_pip)
        with pytest.raises(EvaluationError, match=r"No matching distribution found.*pass --data WHEEL"):
            find_bfcl_data()
        assert list((tmp_path / "data" / "bfcl").iterdir()) == []
    finally:
        get_settings.cache_clear()


# --- prompt ---


def test_the_prompt_lists_the_functions_as_bfcl_does(bfcl_wheel: Path) -> None:
    item = find_bfcl_data(bfcl_wheel).items("simple_python")[0]
    functions_before = json.loads(json.dumps(item.functions))
    system, user = prompt_messages(item)
    assert system["role"] == "system" and user == item.messages[0]
    prompt = system["content"]
    assert prompt.startswith("You are an expert in composing functions.You are given a question")
    output_format = (
        "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]"
    )
    assert f"you MUST put it in the format of {output_format}.  You SHOULD NOT include any other" in prompt
    listed = json.loads(prompt.split("Here is a list of functions in json format that you can invoke.\n")[1])
    assert [f["name"] for f in listed] == ["calculate_triangle_area"]
    assert listed[0]["description"] == item.functions[0]["description"] + (
        " Note that the provided function is in Python 3 syntax."
    )
    assert listed[0]["parameters"] == item.functions[0]["parameters"]
    assert json.dumps(listed, indent=4) in prompt and prompt.endswith("\n]\n")
    assert item.functions == functions_before  # the item is not changed


def test_a_question_with_its_own_system_message_gets_one_system_message(bfcl_wheel: Path) -> None:
    items = find_bfcl_data(bfcl_wheel).items("live_simple")
    item = next(i for i in items if i.messages[0]["role"] == "system")
    messages = prompt_messages(item)
    assert [m["role"] for m in messages] == [m["role"] for m in item.messages]
    own = item.messages[0]["content"]
    assert messages[0]["content"].endswith("\n]\n\n\n" + own)
    assert messages[0]["content"].startswith("You are an expert in composing functions.")
    assert messages[1:] == item.messages[1:]
    assert item.messages[0]["content"] == own


# --- decoding ---


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ("[f(a=1), m.g(b='x')]", [{"f": {"a": 1}}, {"m.g": {"b": "x"}}]),
        ("f(a=1)", [{"f": {"a": 1}}]),
        ("  f(a=1), g(b=2)\n", [{"f": {"a": 1}}, {"g": {"b": 2}}]),
        ("```\n[f(a=1)]\n```", [{"f": {"a": 1}}]),
        ("[f(a=[1, [2, 3]], b={'k': {'n': None}}, c=(1, 2), d=True)]", [
            {"f": {"a": [1, [2, 3]], "b": {"k": {"n": None}}, "c": (1, 2), "d": True}}
        ]),
        ("[f(a=-5, b=-2.5, c=+3, d=not True)]", [{"f": {"a": -5, "b": -2.5, "c": -3, "d": -1}}]),
        ("[f(a=60 * 60, b='x' + 'y', c=2 ** 10, d=[1] + [2])]", [
            {"f": {"a": 3600, "b": "xy", "c": 1024, "d": [1, 2]}}
        ]),
        ("[f(a=1, a=2)]", [{"f": {"a": 2}}]),  # Python's parser lets a repeated keyword through
        ("[f(a='%s-%d' % ('x', 12345678), b='%5s' % 'y')]", [{"f": {"a": "x-12345678", "b": "    y"}}]),
        ("[f(1, 2, a=3)]", [{"f": {"a": 3}}]),  # positional arguments are dropped, as BFCL drops them
        ("[f(unit=celsius, t=now(), d=date(2024, 1, 2), x=a[0], n=...)]", [
            {"f": {"unit": "celsius", "t": "now()", "d": "date(2024, 1, 2)", "x": "a[0]", "n": "..."}}
        ]),
        ("[f(a=g(b=1))]", [{"f": {"a": {"g": {"b": 1}}}}]),
        ("[f()]", [{"f": {}}]),
        ("[]", []),
        ("", []),
    ],
)  # fmt: skip
def test_answers_decode_as_bfcl_reads_them(text: str, calls: list[dict]) -> None:
    assert parse_calls(text) == calls


@pytest.mark.parametrize(
    "text",
    [
        "I cannot help with that.",
        "```python\n[f(a=1)]\n```",  # BFCL strips the backticks, not the language name
        "[f(a=1), 5]",
        "[f(a=1)][0]",
        "[f(a=x + 1)]",  # an operator on a name: BFCL's eval fails on it too
        "[f(a=len('ab') + 1)]",  # never run: SoCE does not evaluate model output
        "[f(a=math.pi)]",
        "[f(a=lambda x: x)]",
        "[f(a={1, 2})]",
        "[f(a=1/0)]",
        "[f(a=-x)]",
        "[f(a=10 ** 10 ** 10)]",
        "[f(a='x' * 10 ** 9)]",
        "[f(a='%099999999d' % 1)]",
        "[f(",
        "[" * 300 + "]" * 300,
    ],
)
def test_what_is_not_a_call_list_raises_decode_error(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_calls(text)


# --- checks ---


def fn(name: str, properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} does something.",
        "parameters": {"type": "dict", "properties": properties, "required": required or []},
    }


WEATHER = fn(
    "weather.get",
    {
        "city": {"type": "string", "description": "city"},
        "days": {"type": "integer", "description": "days"},
        "scale": {"type": "float", "description": "scale"},
        "units": {"type": "string", "description": "units"},
        "point": {"type": "tuple", "items": {"type": "float"}, "description": "a point"},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "tags"},
        "options": {"type": "dict", "description": "options"},
        "stops": {"type": "array", "items": {"type": "dict"}, "description": "stops"},
        "metric": {"type": "boolean", "description": "metric"},
    },
    required=["city"],
)
WEATHER_ANSWER = {
    "city": ["New York, NY", "NYC"],
    "days": [3],
    "scale": [2.0],
    "units": ["metric", ""],
    "point": [[1.5, 2.0], ""],
    "tags": [["Rain", "wind"], ""],
    "options": [{"lang": ["en", "EN"], "extra": ["", "x"]}, ""],
    "stops": [[{"name": ["A"]}, {"name": ["B"]}], ""],
    "metric": [True, ""],
}


def item(category: str, functions: list[dict[str, Any]], answers: list[dict[str, Any]] | None) -> BfclItem:
    return BfclItem(f"{category}_0", category, [{"role": "user", "content": "?"}], functions, answers)


def weather_item(answer: dict[str, Any] | None = None) -> BfclItem:
    return item("simple_python", [WEATHER], [{"weather.get": answer or WEATHER_ANSWER}])


def simple(text: str, *, answer: dict[str, Any] | None = None, **kwargs: Any) -> Verdict:
    return check("simple_python", text, weather_item(answer), **kwargs)


@pytest.mark.parametrize(
    "text",
    [
        "[weather.get(city='New York, NY', days=3, scale=2.0)]",
        "[weather.get(city='new york ny', days=3, scale=2)]",  # case, spaces, commas; an int for a float
        "[weather.get(city='NYC', days=3, scale=2.0, units='METRIC', metric=True)]",
        "[weather.get(city='NYC', days=3, scale=2.0, point=(1.5, 2.0), tags=['rain', 'Wind'])]",
        "[weather.get(city='NYC', days=3, scale=2.0, options={'lang': 'en'})]",
        "[weather.get(city='NYC', days=3, scale=2.0, options={'lang': 'E-N', 'extra': 'x'})]",
        "[weather.get(city='NYC', days=3, scale=2.0, stops=[{'name': 'a'}, {'name': 'B'}])]",
    ],
)
def test_answers_bfcl_accepts(text: str) -> None:
    assert simple(text) == Verdict(True)
    assert score_item("simple_python", text, weather_item()) == 1.0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[weather_get(city='NYC', days=3, scale=2.0)]", "calls 'weather_get', expected 'weather.get'"),
        ("[weather.get(days=3, scale=2.0)]", "missing required parameter 'city'"),
        ("[weather.get(city='NYC', days=3, scale=2.0, wind=1)]", "unexpected parameter 'wind'"),
        ("[weather.get(city='NYC', scale=2.0)]", "'days' left out, but it is not optional"),
        ("[weather.get(city='NYC', days=3.0, scale=2.0)]", "float value 3.0, expected integer"),
        ("[weather.get(city='NYC', days=True, scale=2.0)]", "bool value True, expected integer"),
        ("[weather.get(city='Boston', days=3, scale=2.0)]", "'Boston' is not one of"),
        ("[weather.get(city='NYC', days=4, scale=2.0)]", "4 is not one of [3]"),
        ("[weather.get(city='NYC', days=3, scale=2.0, tags=['wind', 'rain'])]", "is not one of"),  # in order
        ("[weather.get(city='NYC', days=3, scale=2.0, tags=[1, 2])]", "is not one of"),
        ("[weather.get(city='NYC', days=3, scale=2.0, options={'lang': 'fr'})]", "key 'lang' has 'fr'"),
        ("[weather.get(city='NYC', days=3, scale=2.0, options={'mode': 'x'})]", "unexpected key 'mode'"),
        ("[weather.get(city='NYC', days=3, scale=2.0, stops=[{'name': 'A'}])]", "1 dicts, expected"),
        ("[weather.get(city='NYC', days=3, scale=2.0), weather.get(city='NYC', days=3)]", "2 function"),
        ("It will rain.", "does not decode"),
        ("[]", "0 function calls, expected 1"),
    ],
)
def test_answers_bfcl_rejects(text: str, reason: str) -> None:
    verdict = simple(text)
    assert not verdict.valid and reason in verdict.error
    assert score_item("simple_python", text, weather_item()) == 0.0


def test_a_value_of_the_answer_keys_other_type_is_a_variable() -> None:
    answer = {**WEATHER_ANSWER, "days": ["num_days"]}  # a string where the parameter is an integer
    assert simple("[weather.get(city='NYC', days='num_days', scale=2.0)]", answer=answer).valid
    assert not simple("[weather.get(city='NYC', days='Num_Days', scale=2.0)]", answer=answer).valid  # as is


def test_element_types_are_checked_unless_the_parameter_is_optional() -> None:
    # BFCL's element check passes on any acceptable value that is not a list: "" (optional) is one
    required_tags = {**WEATHER_ANSWER, "tags": [["rain", "wind"]]}
    verdict = simple("[weather.get(city='NYC', days=3, scale=2.0, tags=[1, 2])]", answer=required_tags)
    assert not verdict.valid and "int" not in verdict.error and "expected array" in verdict.error
    optional_tags = simple("[weather.get(city='NYC', days=3, scale=2.0, tags=[1, 2])]")
    assert not optional_tags.valid and "is not one of" in optional_tags.error
    assert simple("[weather.get(city='NYC', days=3, scale=2.0, tags=[])]", answer=WEATHER_ANSWER).valid


def test_dots_become_underscores_only_for_models_that_need_it() -> None:
    underscored = "[weather_get(city='NYC', days=3, scale=2.0)]"
    assert simple(underscored, underscore_to_dot=True).valid
    assert not simple("[weather.get(city='NYC', days=3, scale=2.0)]", underscore_to_dot=True).valid


def test_parallel_calls_match_in_any_order_and_multiple_checks_the_named_function() -> None:
    pay = fn(
        "pay",
        {"to": {"type": "string", "description": "t"}, "cents": {"type": "integer", "description": "c"}},
    )
    answers = [{"pay": {"to": ["ann"], "cents": [5]}}, {"pay": {"to": ["bob"], "cents": [7]}}]
    case = item("parallel", [pay], answers)
    assert check("parallel", "[pay(to='bob', cents=7), pay(to='ann', cents=5)]", case).valid
    assert not check("parallel", "[pay(to='bob', cents=7), pay(to='bob', cents=7)]", case).valid
    assert not check("parallel", "[pay(to='bob', cents=7)]", case).valid
    chosen = item("multiple", [WEATHER, pay], [{"pay": {"to": ["ann"], "cents": [5]}}])
    assert check("multiple", "[pay(to='Ann', cents=5)]", chosen).valid
    assert not check("multiple", "[weather.get(city='NYC', days=3, scale=2.0)]", chosen).valid


def test_relevance_categories_judge_only_whether_a_call_was_made() -> None:
    for category in ("irrelevance", "live_irrelevance"):
        case = item(category, [WEATHER], None)
        assert check(category, "No function fits this question.", case).valid
        assert check(category, "[]", case).valid
        assert check(category, "```python\n[weather.get(city='x')]\n```", case).valid  # does not decode
        assert not check(category, "[weather.get(city='x')]", case).valid
        assert not check(category, "[unknown(a=1)]", case).valid
    case = item("live_relevance", [WEATHER], None)
    assert check("live_relevance", "weather.get(city='anywhere')", case).valid
    assert not check("live_relevance", "[]", case).valid
    assert not check("live_relevance", "I would call weather.get.", case).valid


def test_bad_arguments_are_errors_not_verdicts() -> None:
    case = item("simple_python", [WEATHER], [{"weather.get": WEATHER_ANSWER}])
    with pytest.raises(SuiteError, match="unknown BFCL category 'simple_java'"):
        check("simple_java", "[]", case)
    with pytest.raises(EvaluationError, match="is of category 'simple_python', not 'parallel'"):
        check("parallel", "[]", case)
    with pytest.raises(EvaluationError, match="has no ground truth"):
        check("simple_python", "[f()]", item("simple_python", [WEATHER], None))
    odd = fn("odd", {"x": {"type": "number", "description": "x"}})
    with pytest.raises(EvaluationError, match="parameter 'x' has type 'number', unknown to BFCL"):
        check("simple_python", "[odd(x=1)]", item("simple_python", [odd], [{"odd": {"x": [1]}}]))
