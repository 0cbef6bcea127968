"""BFCL's verdict on a model's answer to a single-turn item: its AST checks and its relevance rules.

The answer is decoded as BFCL's prompt mode decodes it (`parse_calls`). Then, by category name:
- "parallel" categories: as many calls as expected, each expected call matched by a different call of
  the answer in any order (first fit, as BFCL does it);
- "multiple" categories: exactly one call, checked against the expected one;
- the simple categories: exactly one call, checked against the item's first function;
- irrelevance, live_irrelevance: pass when the answer does not decode into a non-empty list of calls;
- live_relevance: pass when it does (the values are not checked).

A call is checked against one expected call: the function's name; the parameters the function requires;
no parameter the function or the answer key lacks; each value's type (Python types: an int is accepted
for a float, a tuple for a tuple parameter, list elements are checked one level deep) and value (strings
compared case-insensitively without spaces and ,./-_*^; dicts key by key; lists of dicts dict by dict);
an answer key's parameter left out only when "" is among its acceptable values. An acceptable value of
another type than the parameter's stands for a variable: a value of that type is compared as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from evaluators.bfcl.data import CATEGORIES, RELEVANCE_CATEGORIES, BfclItem
from evaluators.bfcl.parse import Call, DecodeError, parse_calls
from soce.errors import EvaluationError, SuiteError

PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,  # answers went through JSON, where a tuple is a list
    "dict": dict,
    "any": str,
}
_ELEMENT_CHECKED = ("array", "tuple")  # parameter types whose elements' types are checked too
_IGNORED_IN_STRINGS = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class Verdict:
    """Whether the answer passes BFCL's check, and if not, why."""

    valid: bool
    error: str | None = None


_PASS = Verdict(True)


def check(category: str, output_text: str, item: BfclItem, *, underscore_to_dot: bool = False) -> Verdict:
    """BFCL's verdict on `output_text`, a model's answer to `item` of `category`.

    underscore_to_dot: BFCL's setting for function-calling models whose API forbids dots in names (the
    expected name's dots become underscores); prompt-mode models keep the dots, hence False.
    """
    if category not in CATEGORIES:
        raise SuiteError(
            f"unknown BFCL category {category!r} (single-turn categories: {', '.join(CATEGORIES)})"
        )
    if item.category != category:
        raise EvaluationError(f"BFCL item {item.id!r} is of category {item.category!r}, not {category!r}")
    try:
        calls = parse_calls(output_text)
        decode_error = None
    except DecodeError as error:
        calls, decode_error = [], str(error)
    if category in RELEVANCE_CATEGORIES:
        has_call = decode_error is None and len(calls) > 0
        if "irrelevance" in category:
            return Verdict(False, "the answer calls a function where none fits") if has_call else _PASS
        return (
            _PASS
            if has_call
            else Verdict(False, f"no function call in the answer ({decode_error or 'empty'})")
        )
    if decode_error is not None:
        return Verdict(False, f"the answer does not decode: {decode_error}")
    answers = item.ground_truth
    if answers is None:
        raise EvaluationError(f"BFCL item {item.id!r} of category {category!r} has no ground truth")
    expected = len(answers) if "parallel" in category or "multiple" in category else 1
    if len(calls) != expected:
        return Verdict(False, f"{len(calls)} function calls, expected {expected}")
    if "parallel" in category:
        error = _check_any_order(item, calls, answers, underscore_to_dot)
    elif "multiple" in category:
        error = _check_call(_function(item, answers[0]), calls[0], answers[0], underscore_to_dot)
    else:
        error = _check_call(item.functions[0], calls[0], answers[0], underscore_to_dot)
    return _PASS if error is None else Verdict(False, error)


def score_item(category: str, output_text: str, item: BfclItem) -> float:
    """1.0 when BFCL's check of the answer passes, else 0.0."""
    return 1.0 if check(category, output_text, item).valid else 0.0


def _function(item: BfclItem, answer: dict[str, Any]) -> dict[str, Any]:
    name = next(iter(answer))
    for doc in item.functions:
        if doc["name"] == name:
            return doc
    raise EvaluationError(f"BFCL item {item.id!r}: its ground truth calls {name!r}, which it does not offer")


def _check_any_order(
    item: BfclItem, calls: list[Call], answers: list[dict[str, Any]], underscore: bool
) -> str | None:
    """Each expected call, in order, takes the first call not yet taken that passes for it."""
    taken: set[int] = set()
    for number, answer in enumerate(answers):
        doc = _function(item, answer)
        errors = []
        for index, call in enumerate(calls):
            if index in taken:
                continue
            error = _check_call(doc, call, answer, underscore)
            if error is None:
                taken.add(index)
                break
            errors.append(f"call {index}: {error}")
        else:
            return f"no call matches expected call {number} ({doc['name']!r}): " + "; ".join(errors)
    return None


def _check_call(doc: dict[str, Any], call: Call, answer: dict[str, Any], underscore: bool) -> str | None:
    """Why `call` fails the expected call `answer` of function `doc`; None when it passes."""
    acceptable = next(iter(answer.values()))
    name = doc["name"]
    if underscore and "." in name:
        name = name.replace(".", "_")
    if name not in call:
        return f"calls {next(iter(call))!r}, expected {name!r}"
    params = call[name]
    properties = doc["parameters"]["properties"]
    for required in doc["parameters"].get("required", []):
        if required not in params:
            return f"missing required parameter {required!r}"
    for param, value in params.items():
        if param not in properties or param not in acceptable:
            return f"unexpected parameter {param!r}"
        error = _check_value(doc, param, value, acceptable[param])
        if error is not None:
            return error
    for param, values in acceptable.items():
        if param not in params and "" not in values:
            return f"parameter {param!r} left out, but it is not optional"
    return None


def _check_value(doc: dict[str, Any], param: str, value: Any, acceptable: list[Any]) -> str | None:
    spec = doc["parameters"]["properties"][param]
    type_name = spec.get("type")
    if type_name not in PYTHON_TYPES:
        raise EvaluationError(
            f"function {doc['name']!r}: parameter {param!r} has type {type_name!r}, unknown to BFCL"
        )
    expected = PYTHON_TYPES[type_name]
    element = None
    if type_name in _ELEMENT_CHECKED:
        element_type = spec.get("items", {}).get("type")
        if element_type not in PYTHON_TYPES:
            raise EvaluationError(f"function {doc['name']!r}: parameter {param!r} has no known element type")
        element = PYTHON_TYPES[element_type]
    if type_name == "tuple" and type(value) is tuple:
        value = list(value)
    if type_name == "float" and type(value) is int:
        value = float(value)
    matches, is_variable = _type_matches(value, acceptable, expected, element)
    if not matches:
        return f"parameter {param!r}: {type(value).__name__} value {value!r}, expected {type_name}"
    if not is_variable:
        if expected is dict:
            return _check_dict(param, value, acceptable)
        if expected is list and element is dict:
            return _check_dict_list(param, value, acceptable)
        if expected is str:
            if _standardize(value) in [_standardize(a) for a in acceptable if type(a) is str]:
                return None
            return f"parameter {param!r}: {value!r} is not one of {acceptable!r}"
        if expected is list:
            return _check_list(param, value, acceptable)
    if value not in acceptable:
        return f"parameter {param!r}: {value!r} is not one of {acceptable!r}"
    return None


def _answer_type(acceptable: list[Any]) -> type | None:
    """The type of the first acceptable value that is not "" (the mark of an optional parameter)."""
    for value in acceptable:
        if value != "":
            return type(value)
    return None


def _type_matches(
    value: Any, acceptable: list[Any], expected: type, element: type | None
) -> tuple[bool, bool]:
    """(whether the value's type passes, whether the answer key names a variable), BFCL's type rule.

    Types compare exactly (a bool is no int). A list's elements pass when, for some acceptable value
    that is a list, each has the element type or that list's answer type; an acceptable value that is
    not a list lets any elements pass.
    """
    answer_type = _answer_type(acceptable)
    is_variable = answer_type is not None and answer_type != expected
    if type(value) is expected:
        if element is None:
            return True, is_variable
        for option in acceptable:
            if type(option) is not list or all(_type_matches(v, option, element, None)[0] for v in value):
                return True, is_variable
        return False, False
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, False


def _standardize(text: str) -> str:
    """BFCL's string comparison key: no spaces or ,./-_*^, lower case, ' read as "."""
    return _IGNORED_IN_STRINGS.sub("", text).lower().replace("'", '"')


def _standardized(value: Any) -> Any:
    return _standardize(value) if type(value) is str else value


def _check_list(param: str, value: list[Any], acceptable: list[Any]) -> str | None:
    """Strings in the list (not nested deeper) are standardized on both sides; order counts."""
    standardized = [_standardized(v) for v in value]
    # BFCL reads each acceptable value as a sequence: "" (optional) becomes [], matching an empty list
    options = [[_standardized(a) for a in option] for option in acceptable]
    if standardized in options:
        return None
    return f"parameter {param!r}: {value!r} is not one of {acceptable!r}"


def _check_dict(param: str, value: Any, acceptable: list[Any]) -> str | None:
    """The dict passes when, for some acceptable dict, every key of it is accepted there with an accepted
    (standardized) value, and every key left out has "" among its values."""
    error = f"parameter {param!r}: no acceptable dict"
    if not isinstance(value, dict):
        return f"parameter {param!r}: {value!r} is not a dict"
    for option in acceptable:
        if option == "":
            continue
        error = None
        for key, item in value.items():
            if key not in option:
                error = f"parameter {param!r}: unexpected key {key!r}"
                break
            if _standardized(item) not in [_standardized(a) for a in option[key]]:
                error = f"parameter {param!r}: key {key!r} has {item!r}, expected one of {option[key]!r}"
                break
        if error is None:
            for key, values in option.items():
                if key not in value and "" not in values:
                    error = f"parameter {param!r}: key {key!r} missing"
                    break
        if error is None:
            return None
    return error


def _check_dict_list(param: str, value: list[Any], acceptable: list[Any]) -> str | None:
    """A list of dicts passes when some acceptable list has as many dicts, each accepting the dict at its
    place."""
    error = f"parameter {param!r}: no acceptable list of dicts"
    for option in acceptable:
        if len(value) != len(option):
            error = f"parameter {param!r}: {len(value)} dicts, expected {len(option)}"
            continue
        error = None
        for index, (item, expected) in enumerate(zip(value, option, strict=True)):
            error = _check_dict(f"{param}[{index}]", item, [expected])
            if error is not None:
                break
        if error is None:
            return None
    return error
