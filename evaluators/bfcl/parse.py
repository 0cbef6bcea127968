"""A model's answer read as function calls, the way BFCL's prompt-mode decoder reads it.

BFCL strips backticks, newlines and spaces from both ends, wraps the text in [ ] where a bracket is
missing, parses it as one Python expression and keeps a list of calls: `[f(a=1), m.g(b=[1, 2])]` reads
as [{"f": {"a": 1}}, {"m.g": {"b": [1, 2]}}]. Only keyword arguments count; positional ones are dropped.
Argument values follow BFCL's reading, quirks included (each is noted where it is read).

One rule is not copied: BFCL evaluates an operator expression (`60 * 60`, `"a" + "b"`) with Python's
eval, which runs anything a model writes. Here such an expression is computed only from literals
(numbers, strings, bytes, lists, tuples, sets, dicts, comparisons, conditionals, subscripts, f-strings),
with bounds on sizes; one that names a variable or calls a function is not decoded (BFCL's eval would
fail on most names too).
"""

from __future__ import annotations

import ast
import operator
import re
import warnings
from collections.abc import Callable
from typing import Any

from soce.errors import DecodeError

Call = dict[str, dict[Any, Any]]  # {function name: {parameter: value}}; `**x` gives the parameter None

_MAX_ITEMS = 1_000_000  # longest string, bytes or sequence an operator may build
_MAX_INT_BITS = 100_000  # largest integer a power or shift may build
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_,
    ast.MatMult: operator.matmul,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_BIG_WIDTH = re.compile(r"\d{7,}")  # in a format spec: a width or precision of a million or more
# a %-directive with such a width or precision, or one taken from the arguments (*)
_BIG_PERCENT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(?:\d{7,}|\*|\d*\.(?:\d{7,}|\*))")


def parse_calls(text: str) -> list[Call]:
    """The calls in a model's answer, [{name: {parameter: value}}]; DecodeError when it holds none in
    BFCL's format. An empty list `[]` decodes to []."""
    if not isinstance(text, str):
        raise DecodeError(f"a model answer must be text, not {type(text).__name__}")
    body = text.strip("`\n ")  # only these three characters: a tab or "\r" at either end stays
    if not body.startswith("["):
        body = "[" + body
    if not body.endswith("]"):
        body = body + "]"
    body = body.strip().strip("'")
    try:
        with warnings.catch_warnings():  # "is" with a literal, invalid escapes: a model's slips, not ours
            warnings.simplefilter("ignore")
            tree = ast.parse(body, mode="eval")
    except SyntaxError as error:
        raise DecodeError(f"the answer is not Python: {error.msg}") from None
    except (ValueError, MemoryError, RecursionError) as error:  # a NUL byte; absurd nesting
        raise DecodeError(f"the answer is not Python: {error}") from None
    try:
        return _calls(tree.body)
    except (RecursionError, MemoryError):
        raise DecodeError("the answer is nested too deeply to decode") from None


def _calls(node: ast.expr) -> list[Call]:
    if isinstance(node, ast.Call):
        return [_call(node)]
    elements = getattr(node, "elts", None)  # a list, or a tuple such as `[f()], [g()]`
    if elements is None:
        raise DecodeError(f"the answer is a Python {type(node).__name__}, not a list of calls")
    calls = []
    for element in elements:
        if not isinstance(element, ast.Call):
            raise DecodeError(f"the answer's list holds a {type(element).__name__}, not a function call")
        calls.append(_call(element))
    return calls


def _call(node: ast.Call) -> Call:
    # the dotted name as written (`a.b.c`); parts left of anything but a name or attribute are dropped
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    arguments = {keyword.arg: _value(keyword.value) for keyword in node.keywords}
    return {".".join(reversed(parts)): arguments}


def _value(node: ast.expr) -> Any:
    """An argument's value, read as BFCL reads it."""
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp):
        # BFCL negates a constant operand whatever the operator: `+5` and `~5` read as -5, `not True` as -1
        operand = node.operand
        if isinstance(operand, ast.Constant) and type(operand.value) in (int, float, complex, bool):
            return -operand.value
        raise DecodeError(f"cannot read the operand of {ast.unparse(node)!r}")
    if isinstance(node, ast.List):
        return [_value(element) for element in node.elts]
    if isinstance(node, ast.Dict):
        result = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            if key_node is None:
                raise DecodeError("a dict spread (**) is not a value")
            key, value = _value(key_node), _value(value_node)
            try:
                result[key] = value
            except TypeError:
                raise DecodeError(f"dict key {key!r} is not hashable") from None
        return result
    if isinstance(node, ast.BinOp):
        return _literal(node)
    if isinstance(node, ast.Name):
        return node.id  # a bare name reads as its text: unit=celsius is "celsius"
    if isinstance(node, ast.Call):
        # a call with keywords is a nested call; one without keywords is kept as its source text
        return _call(node) if node.keywords else ast.unparse(node)
    if isinstance(node, ast.Tuple):
        return tuple(_value(element) for element in node.elts)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value) + "[" + ast.unparse(node.slice) + "]"  # kept as text: a[0] is "a[0]"
    # attributes (math.pi), sets, f-strings, comparisons, lambdas (BFCL's reading of one always fails)...
    raise DecodeError(f"{type(node).__name__} {ast.unparse(node)!r} is not a value BFCL reads")


def _literal(node: ast.expr) -> Any:
    """The value of an expression built from literals only (what BFCL's eval gives for it)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _literal(node.left), _literal(node.right)
        _check_size(node.op, left, right)
        return _apply(_BINARY[type(node.op)], left, right)
    if isinstance(node, ast.UnaryOp):
        return _apply(_UNARY[type(node.op)], _literal(node.operand))
    if isinstance(node, ast.BoolOp):
        value = None
        for operand in node.values:  # short-circuit, as Python does
            value = _literal(operand)
            if bool(value) == isinstance(node.op, ast.Or):
                break
        return value
    if isinstance(node, ast.Compare):
        left = _literal(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _literal(right_node)
            if not _apply(_COMPARE[type(op)], left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _literal(node.body) if _literal(node.test) else _literal(node.orelse)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        elements = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                elements.extend(_apply(list, _literal(element.value)))
            else:
                elements.append(_literal(element))
        kind = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
        return _apply(kind, elements)
    if isinstance(node, ast.Dict):
        result: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                _apply(result.update, _literal(value))
            else:
                _apply(result.__setitem__, _literal(key), _literal(value))
        return result
    if isinstance(node, ast.Subscript):
        return _apply(operator.getitem, _literal(node.value), _literal(node.slice))
    if isinstance(node, ast.Slice):
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if part is None else _literal(part) for part in parts))
    if isinstance(node, ast.JoinedStr):
        return "".join(_apply(str, _literal(part)) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        value = _literal(node.value)
        if node.conversion != -1:  # !s, !r, !a
            value = _apply({ord("s"): str, ord("r"): repr, ord("a"): ascii}[node.conversion], value)
        spec = "" if node.format_spec is None else _literal(node.format_spec)
        if _BIG_WIDTH.search(spec):
            raise DecodeError(f"format width too large in {ast.unparse(node)!r}")
        return _apply(format, value, spec)
    raise DecodeError(f"{ast.unparse(node)!r} in an operator expression is not a literal")


def _apply(function: Callable[..., Any], *arguments: Any) -> Any:
    try:
        return function(*arguments)
    except Exception as error:  # what Python raises on bad operands: BFCL's eval fails the same way
        raise DecodeError(f"cannot compute an argument value: {type(error).__name__}: {error}") from None


def _check_size(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be huge (BFCL would spend minutes or gigabytes on it)."""
    sequences = (str, bytes, list, tuple)
    if isinstance(op, ast.Mult):
        for sequence, count in ((left, right), (right, left)):
            if (
                isinstance(sequence, sequences)
                and isinstance(count, int)
                and len(sequence) * count > _MAX_ITEMS
            ):
                raise DecodeError(f"an argument value would hold over {_MAX_ITEMS} items")
    elif isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and right > 0:
        if max(abs(left).bit_length() - 1, 0) * right > _MAX_INT_BITS and abs(left) > 1:
            raise DecodeError(f"an argument value would be an integer over {_MAX_INT_BITS} bits")
    elif isinstance(op, ast.LShift) and isinstance(left, int) and isinstance(right, int):
        if left and right > _MAX_INT_BITS:
            raise DecodeError(f"an argument value would be an integer over {_MAX_INT_BITS} bits")
    elif isinstance(op, ast.Mod) and isinstance(left, str | bytes):
        arguments = right if isinstance(right, tuple) else (right,)
        directive = _BIG_PERCENT.search(left if isinstance(left, str) else left.decode("latin-1"))
        if directive and (
            "*" not in directive.group() or any(type(a) is int and abs(a) > _MAX_ITEMS for a in arguments)
        ):
            raise DecodeError("a %-format in an argument value asks for a huge width")
