"""Parity with bfcl-eval itself: its runner's per-entry evaluation, in an isolated venv, judges the same
answers as `evaluators.bfcl.check`, and its prompt pre-processing gives the same messages.

The venv (bfcl-eval without its dependencies, plus the few small packages its checker's imports need;
see bfcl_reference_driver.py) is made once and kept in ~/.cache/soce-test (SOCE_TEST_CACHE), keyed by
the bfcl-eval version, the requirements and the Python version. Without the package registry the test
fails: parity is not optional.

Answers: for a deterministic sample of items of every category (SOCE_BFCL_PARITY_SAMPLE items, default
40; "all" for every item; small categories whole), the gold answer written as a model would write it
and variants of it (fenced, without brackets, optional parameters given, calls reversed, strings
re-cased and re-spaced, one value retyped), perturbations (a wrong value, a missing required parameter,
an unexpected parameter, a positional argument, an extra call, a wrong name, a dotted name written with
underscores), plain text and an empty list; for the relevance categories, calls and non-calls; and a
list of tricky answers for the decoder on a few items of several categories.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evaluators.bfcl import (
    BFCL_EVAL_VERSION,
    CATEGORIES,
    RELEVANCE_CATEGORIES,
    BfclItem,
    check,
    find_bfcl_data,
    parse_calls,
    prompt_messages,
)

DRIVER = Path(__file__).with_name("bfcl_reference_driver.py")
# what bfcl-eval's checker and decoder import (tree-sitter for its Java and JavaScript parsers), at the
# versions bfcl-eval asks for; bfcl-eval itself without its dependencies (see the driver)
REQUIREMENTS = (
    f"bfcl-eval=={BFCL_EVAL_VERSION}",
    "filelock==3.20.0",
    "overrides",
    "python-dotenv>=1.0.1",
    "tenacity>=8.5.0",
    "tqdm",
    "tree-sitter==0.21.3",
    "tree-sitter-java==0.21.0",
    "tree-sitter-javascript==0.21.4",
)
PROMPT_MODEL = "Qwen/Qwen3-8B"  # a prompt-mode local model of BFCL's registry, decoded by the default decoder
DEFAULT_SAMPLE = 40
PLAIN_TEXT = "I cannot help with that: none of the functions fits the question."

# answers that probe the decoder; {f} is a function the item offers
TRICKY = (
    "[{f}(a=-5, b=+3, c=not True, d=~2, e=-1.5, g=-1j)]",
    "[{f}(a=60*60, b='a'+'b', c=[1, 2]+[3], d=2**10, e=7//2, g=7/2, h=7%3, i=-(3))]",
    "[{f}(a=1/0)]",
    "[{f}(a='Order 1234567: %d' % 12345678, b='%5.1f%%' % 2.25, c=b'%s' % b'x')]",
    "[{f}(a='%s-%d' % ('x', 3), b=[0]*3, c=(1 < 2) + 1, d=(1, 2) + (3,), e={{'a': 1}} | {{'b': 2}})]",
    "[{f}(a=(1 if 2 > 1 else 0) + 1, b=[1, 2, 3][1] * 2, c='abc'[1:] + '', d=f'x{{1 + 1}}' + 'y')]",
    "[{f}(a=x + 1)]",
    "[{f}(a=math.pi)]",
    "[{f}(a=x)]",
    "[{f}(a=now())]",
    "[{f}(a=datetime.date(2024, 1, 2))]",
    "[{f}(a=g(b=1, c=[1, 2]))]",
    "[{f}(a=arr[0], b=arr[1:2], c=m['k'])]",
    "[{f}(a=(1, 2), b={{'k': [1, {{'z': None}}]}}, c=..., d=b'x', e=1e309)]",
    "[{f}(a=lambda x: x)]",
    "[{f}(a={{1, 2}})]",
    "[{f}(a=f'x')]",
    "[{f}(a={{[1]: 2}})]",
    "[{f}(a={{**{{'b': 1}}}})]",
    "[{f}(a=-'s')]",
    "[{f}(a=-x)]",
    "[{f}(a=--1)]",
    "[{f}(a=1 < 2)]",
    "[{f}(1, 2, a=3)]",
    "[{f}(**kwargs)]",
    "[{f}(a=1, **kwargs)]",
    "[a.b.c(d=1), {f}()]",
    "[{f}()(a=1)]",
    "[{f}(a=1)][0]",
    "[{f}(a=i) for i in range(3)]",
    "[{f}(a=1), 5]",
    "[1], [2]",
    "[{f}(a=1)], [{f}(a=2)]",
    "'[{f}(a=1)]'",
    "\t[{f}(a=1)]",
    "[{f}(a=1)]\n\nThis calls the function.",
    "Sure! [{f}(a=1)]",
    "{f}(a=1), {f}(a=2)",
    " ```\n[{f}(a=1)]\n``` ",
    "```json\n[{f}(a=1)]\n```",
    "[{f}(a='C:\\d\\n', b=\"it's\", c='''x''')]",
    "[{f}(a=1, a=2)]",
    "[{f}(",
    "[]",
    "",
    "[[]]",
    "[{{}}]",
    "None",
    "[{f}(a=[{f}(b=1)], c={{'d': {f}(e=2)}})]",
)


@dataclass(frozen=True)
class Case:
    key: str
    category: str
    item: BfclItem
    output: str
    underscore_to_dot: bool = False

    def request(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "category": self.category,
            "id": self.item.id,
            "output": self.output,
            "underscore_to_dot": self.underscore_to_dot,
        }


def test_bfcl_eval_judges_every_answer_as_we_do(bfcl_reference: Path, tmp_path: Path) -> None:
    data = find_bfcl_data(site_packages(bfcl_reference))
    items = {category: data.items(category) for category in CATEGORIES}
    sampled = {category: sample(category_items) for category, category_items in items.items()}
    cases = [case for category in CATEGORIES for case in cases_for(category, sampled[category])]
    request = {
        "model": PROMPT_MODEL,
        "cases": [case.request() for case in cases],
        "prompt_ids": {category: [item.id for item in chosen] for category, chosen in sampled.items()},
    }
    results = run_driver(bfcl_reference, request, tmp_path)

    for category in CATEGORIES:  # the same items, in the same order, as bfcl-eval's loaders read them
        assert results["items"][category] == [item.id for item in items[category]], category
    prompt_mismatches = [
        f"{item.id}:\n  ours: {prompt_messages(item)!r}\n  bfcl: {results['prompts'].get(item.id)!r}"
        for chosen in sampled.values()
        for item in chosen
        if prompt_messages(item) != results["prompts"].get(item.id)
    ]
    assert not prompt_mismatches, "prompts differ:\n" + "\n".join(prompt_mismatches[:5])

    disagreements, decoded_differ = [], []
    for case in cases:
        ours = check(case.category, case.output, case.item, underscore_to_dot=case.underscore_to_dot)
        theirs = results["verdicts"][case.key]
        if theirs.get("valid") != ours.valid:
            disagreements.append(
                f"{case.item.id} [{case.key}] output={case.output!r}\n"
                f"  ours: valid={ours.valid} ({ours.error})\n  bfcl: {theirs}"
            )
        if decoded(case.output) != results["decoded"][case.key]:
            decoded_differ.append(
                f"{case.item.id} [{case.key}] output={case.output!r}\n"
                f"  ours: {decoded(case.output)}\n  bfcl: {results['decoded'][case.key]}"
            )
    print(
        f"\nBFCL parity: {len(cases)} answers on {sum(map(len, sampled.values()))} items of "
        f"{len(CATEGORIES)} categories; {len(cases) - len(disagreements)} verdicts agree, "
        f"{sum(1 for c in cases if results['verdicts'][c.key].get('valid'))} pass; "
        f"stubbed in bfcl-eval's venv: {', '.join(results['stubbed'])}"
    )
    assert not disagreements, f"{len(disagreements)} verdicts differ:\n" + "\n".join(disagreements[:40])
    assert not decoded_differ, f"{len(decoded_differ)} decodings differ:\n" + "\n".join(decoded_differ[:40])
    # the cases test something: both verdicts occur in every category
    for category in CATEGORIES:
        verdicts = {results["verdicts"][c.key]["valid"] for c in cases if c.category == category}
        assert verdicts == {True, False}, category


def decoded(output: str) -> str | None:
    try:
        return repr(parse_calls(output))
    except Exception:
        return None


# --- the answers ---


def sample(items: list[BfclItem]) -> list[BfclItem]:
    """A deterministic sample: the items first by a hash of their id; a small category whole."""
    wanted = os.environ.get("SOCE_BFCL_PARITY_SAMPLE", str(DEFAULT_SAMPLE))
    if wanted == "all" or len(items) <= 2 * int(wanted):
        return items
    return sorted(items, key=lambda item: hashlib.sha256(item.id.encode()).hexdigest())[: int(wanted)]


def cases_for(category: str, items: list[BfclItem]) -> Iterator[Case]:
    for item in items:
        outputs = relevance_outputs(item) if category in RELEVANCE_CATEGORIES else ast_outputs(item)
        for name, output in outputs.items():
            yield Case(f"{item.id}/{name}", category, item, output)
        if item.ground_truth and any("." in next(iter(call)) for call in item.ground_truth):
            calls = gold_calls(item, optional=False)
            for name, underscored in (("dot", False), ("underscore", True)):
                written = [{under(k) if underscored else k: v for k, v in c.items()} for c in calls]
                yield Case(f"{item.id}/fc-{name}", category, item, render(written), underscore_to_dot=True)
    for item in items[:3]:
        function = item.functions[0]["name"] if item.functions else "f"
        for number, template in enumerate(TRICKY):
            yield Case(f"{item.id}/tricky-{number}", category, item, template.format(f=function))


def under(name: str) -> str:
    return name.replace(".", "_")


def gold_calls(item: BfclItem, *, optional: bool) -> list[dict[str, dict[str, Any]]]:
    """The expected calls with each parameter's first acceptable value; an optional parameter (one with
    "" among its values) only when `optional`."""
    calls = []
    for call in item.ground_truth or []:
        ((name, acceptable),) = call.items()
        params = {}
        for param, values in acceptable.items():
            concrete = [v for v in values if v != ""]
            if concrete and (optional or "" not in values):
                params[param] = as_written(concrete[0], optional=optional)
        calls.append({name: params})
    return calls


def as_written(value: Any, *, optional: bool) -> Any:
    """An acceptable value as a model writes it. A dict of the answer key (alone or in a list) maps
    each key to a list of acceptable values, of which the first is taken (one level deep, as BFCL
    checks dicts)."""
    if isinstance(value, list):
        return [as_written(v, optional=optional) if isinstance(v, dict) else v for v in value]
    if not isinstance(value, dict):
        return value
    written = {}
    for key, values in value.items():
        if not isinstance(values, list):
            written[key] = values
            continue
        concrete = [v for v in values if v != ""]
        if concrete and (optional or "" not in values):
            written[key] = concrete[0]
    return written


def render(calls: list[dict[str, dict[str, Any]]], *, bare: bool = False) -> str:
    written = []
    for call in calls:
        ((name, params),) = call.items()
        written.append(f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")")
    text = ", ".join(written)
    return text if bare else f"[{text}]"


def ast_outputs(item: BfclItem) -> dict[str, str]:
    calls = gold_calls(item, optional=False)
    gold = render(calls)
    outputs = {
        "gold": gold,
        "gold-optional": render(gold_calls(item, optional=True)),
        "gold-reversed": render(calls[::-1]),
        "gold-fenced": f"```\n{gold}\n```",
        "gold-python-fence": f"```python\n{gold}\n```",
        "gold-bare": render(calls, bare=True),
        "gold-noisy-strings": render(map_values(calls, noisy)),
        "gold-retyped": render(map_first_value(calls, retyped)),
        "wrong-value": render(map_first_value(calls, wrong)),
        "extra-call": render([*calls, calls[0]]),
        "wrong-name": render([{f"{next(iter(calls[0]))}_v2": next(iter(calls[0].values()))}, *calls[1:]]),
        "plain-text": PLAIN_TEXT,
        "empty-list": "[]",
    }
    ((name, params),) = calls[0].items()
    required = [p for p in item_function(item, name)["parameters"].get("required", []) if p in params]
    if required:
        dropped = {k: v for k, v in params.items() if k != required[0]}
        outputs["missing-required"] = render([{name: dropped}, *calls[1:]])
    outputs["unexpected-param"] = render([{name: {**params, "unexpected_param": 1}}, *calls[1:]])
    if params:
        first, *rest = params.items()
        positional = f"{name}({first[1]!r}" + "".join(f", {k}={v!r}" for k, v in rest) + ")"
        outputs["positional"] = render_with(positional, calls[1:])
    if "." in name:
        outputs["dot-as-underscore"] = render([{name.replace(".", "_"): params}, *calls[1:]])
    return outputs


def render_with(first: str, calls: list[dict[str, dict[str, Any]]]) -> str:
    """A call list whose first call is written as given."""
    return f"[{first}" + (", " + render(calls, bare=True) if calls else "") + "]"


def relevance_outputs(item: BfclItem) -> dict[str, str]:
    # a few live_irrelevance items offer no function at all
    function = item.functions[0] if item.functions else {"name": "get_time", "parameters": {"properties": {}}}
    properties = function["parameters"]["properties"]
    params = {p: placeholder(properties[p].get("type")) for p in function["parameters"].get("required", [])}
    call = render([{function["name"]: params}])
    return {
        "plain-text": PLAIN_TEXT,
        "empty-list": "[]",
        "call": call,
        "call-bare": call[1:-1],
        "call-fenced": f"```\n{call}\n```",
        "call-python-fence": f"```python\n{call}\n```",
        "two-calls": render([{function["name"]: params}] * 2),
        "broken": call[:-2],
        "prose-then-call": f"Here you go: {call}",
    }


def item_function(item: BfclItem, name: str) -> dict[str, Any]:
    return next(doc for doc in item.functions if doc["name"] == name)


PLACEHOLDERS = {"integer": 1, "float": 1.5, "boolean": True, "array": [], "tuple": (), "dict": {}}


def placeholder(type_name: str | None) -> Any:
    return PLACEHOLDERS.get(type_name, "x")


def map_values(calls: list[dict[str, dict[str, Any]]], change: Any) -> list[dict[str, dict[str, Any]]]:
    return [{n: {k: change(v) for k, v in p.items()}} for call in calls for n, p in call.items()]


def map_first_value(calls: list[dict[str, dict[str, Any]]], change: Any) -> list[dict[str, dict[str, Any]]]:
    changed = copy.deepcopy(calls)
    params = next(iter(changed[0].values()))
    if params:
        key = next(iter(params))
        params[key] = change(params[key])
    return changed


def noisy(value: Any) -> Any:
    """The same string as BFCL compares it (case, spaces and ,./-_*^ ignored), written differently."""
    if isinstance(value, str):
        return value.upper().replace(" ", " - ").replace(",", " ,.") + "_"
    if isinstance(value, list):
        return [noisy(v) for v in value]
    return value


def retyped(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else str(value)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, str):
        return [value]
    return value


def wrong(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + " and more"
    if isinstance(value, list):
        return [*value, value[0] if value else "x"]
    if isinstance(value, dict):
        return {**value, "extra_key": 1}
    return "something"


# --- bfcl-eval's venv ---


def cache_root() -> Path:
    return Path(os.environ.get("SOCE_TEST_CACHE", Path.home() / ".cache" / "soce-test"))


def site_packages(python: Path) -> Path:
    return next(python.parent.parent.glob("lib/python*/site-packages"))


@pytest.fixture(scope="session")
def bfcl_reference() -> Path:
    """The python of a venv holding bfcl-eval, made once (under a lock) and kept between runs."""
    key = hashlib.sha256(json.dumps([REQUIREMENTS, sys.version_info[:2]]).encode()).hexdigest()[:12]
    venv = cache_root() / f"bfcl-venv-{BFCL_EVAL_VERSION}-{key}"
    python, done = venv / "bin" / "python", venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator at a time; the others wait and reuse it
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            started = time.monotonic()
            steps = (
                [sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "-q", "--no-deps", *REQUIREMENTS],
            )
            for step in steps:
                try:
                    finished = subprocess.run(step, capture_output=True, text=True, timeout=600)
                except (OSError, subprocess.TimeoutExpired) as error:
                    pytest.fail(f"cannot make bfcl-eval's venv at {venv}: {error}")
                if finished.returncode != 0:
                    pytest.fail(
                        f"cannot make bfcl-eval's venv at {venv} (the package registry must be reachable):\n"
                        f"{' '.join(step)}\n{finished.stderr[-3000:]}"
                    )
            done.write_text(f"made in {time.monotonic() - started:.1f} s\n")
    return python


def run_driver(python: Path, request: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    cases, results = tmp_path / "cases.json", tmp_path / "results.json"
    cases.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(BFCL_PROJECT_ROOT=str(tmp_path / "bfcl-root"), OMP_NUM_THREADS="1")
    finished = subprocess.run(
        [str(python), str(DRIVER), str(cases), str(results)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert finished.returncode == 0, f"bfcl-eval's driver failed:\n{finished.stderr[-5000:]}"
    return json.loads(results.read_text())
