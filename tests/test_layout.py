"""The Layout and Import rules of DESIGN.md, checked on the source with `ast` (nothing is imported).

Every import counts: module-level ones, those inside functions, and those under `if TYPE_CHECKING:`.
Relative imports are resolved against the importing module, so `from . import workers` inside `soce`
is `soce.workers`, not the `workers` package. An import under `if TYPE_CHECKING:` never runs: it is
held to the rules on which package may use which, not to those on what is loaded at import time, and it
is no edge of the import graph searched for cycles. `importlib.import_module("name")` with a literal
name counts as an import too.
"""

from __future__ import annotations

import ast
import builtins
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("soce", "evaluators", "optimizer", "workers", "api", "migrations")

# which of our other packages each package may import (DESIGN.md, Import rules); migrations holds our
# Alembic revisions, which read soce's models and nothing else of ours
MAY_IMPORT = {
    "soce": frozenset(),
    "evaluators": frozenset({"soce"}),
    "optimizer": frozenset({"soce"}),
    "workers": frozenset({"soce", "evaluators", "optimizer", "migrations"}),
    "api": frozenset({"soce"}),
    "migrations": frozenset({"soce"}),
}
# the front door may import any package of ours, but only inside its commands (`soce --help` stays fast)
CLI = "soce.cli"
# what the API must not load when it is imported, directly or through the modules of ours it imports;
# Celery is not listed: the API enqueues work by task name through Celery's client, imported on first use
HEAVY_FOR_API = ("torch", "transformers", "lm_eval", "optuna")

LONG_MODULE_LINES = 500
LONG_MODULE_REASON = "Longer than 500 lines because"  # in the module docstring, followed by the reason
ERRORS_MODULE = "soce.errors"
BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "soce.db.models"; a package is named by its folder
    path: Path
    is_package: bool
    source: str
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package a relative import of this module starts from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def top(self) -> str:
        return self.name.partition(".")[0]

    @property
    def relpath(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Import:
    module: Module  # the importing module
    line: int
    statement: str  # as written, one imported name per entry
    target: str  # the absolute name imported: a module, or a package or module when a name is taken
    in_function: bool
    type_checking: bool

    @property
    def top(self) -> str:
        return self.target.partition(".")[0]

    @property
    def at_import_time(self) -> bool:
        return not (self.in_function or self.type_checking)

    def where(self) -> str:
        how = (
            " (in a function)" if self.in_function else " (under TYPE_CHECKING)" if self.type_checking else ""
        )
        return f"{self.module.relpath}:{self.line} `{self.statement}`{how}"


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


@cache
def parsed() -> tuple[dict[str, Module], tuple[str, ...]]:
    """Every module of our packages, parsed, and those that do not parse (each with its error)."""
    found, broken = {}, []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name, is_package = module_name(path)
            source = path.read_text(encoding="utf-8")
            try:
                tree = ast.parse(source, filename=str(path))
            except SyntaxError as e:
                broken.append(f"{path.relative_to(ROOT).as_posix()}:{e.lineno}: {e.msg}")
                continue
            found[name] = Module(name, path, is_package, source, tree)
    return found, tuple(broken)


def modules() -> dict[str, Module]:
    """Every module of our packages that parses (the rules below check these)."""
    return parsed()[0]


def resolve(module: Module, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        return name or ""
    base = module.package.split(".")
    if level - 1 > len(base) - 1:
        raise AssertionError(f"{module.relpath}: a relative import goes above the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class ImportCollector(ast.NodeVisitor):
    """The imports of one module, each with whether it runs in a function or only for type checkers."""

    def __init__(self, module: Module, known: set[str]) -> None:
        self.module, self.known = module, known
        self.found: list[Import] = []
        self.functions = 0
        self.type_checking = 0

    def add(self, node: ast.AST, statement: str, target: str) -> None:
        self.found.append(
            Import(self.module, node.lineno, statement, target, self.functions > 0, self.type_checking > 0)
        )

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self.type_checking += 1
        for child in node.body:
            self.visit(child)
        self.type_checking -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            written = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
            self.add(node, written, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = resolve(self.module, node.level, node.module)
        source = "." * node.level + (node.module or "")
        for alias in node.names:
            written = f"from {source} import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
            submodule = f"{base}.{alias.name}"
            self.add(node, written, submodule if submodule in self.known else base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = (
            func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        )
        if (
            called in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            self.add(node, ast.unparse(node), node.args[0].value)
        self.generic_visit(node)


@cache
def imports_of(name: str) -> tuple[Import, ...]:
    module = modules()[name]
    collector = ImportCollector(module, set(modules()))
    collector.visit(module.tree)
    return tuple(collector.found)


def all_imports() -> Iterator[Import]:
    for name in modules():
        yield from imports_of(name)


def known_module(target: str) -> str | None:
    """The module of ours an import names, or None (another library's, or a module that does not exist:
    an import error, not a layout question)."""
    return target if target in modules() else None


def fail_listing(what: str, offenders: list[str]) -> None:
    if offenders:
        pytest.fail(f"{what} ({len(offenders)}):\n  " + "\n  ".join(offenders), pytrace=False)


def test_every_module_parses() -> None:
    fail_listing("modules that do not parse, so the rules below cannot check them", list(parsed()[1]))


# --- which package may import which ---


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_the_layout_allows(package: str) -> None:
    offenders = []
    for imp in all_imports():
        if imp.module.top != package or imp.top not in PACKAGES or imp.top == package:
            continue
        if imp.top in MAY_IMPORT[package]:
            continue
        is_cli = imp.module.name == CLI or imp.module.name.startswith(CLI + ".")
        if is_cli and not imp.at_import_time:
            continue  # the CLI's commands import what they run
        rule = " (the CLI only inside its commands)" if is_cli else ""
        offenders.append(f"{imp.where()}: {package} may not import {imp.top}{rule}")
    allowed = ", ".join(sorted(MAY_IMPORT[package])) or "none"
    fail_listing(f"{package} imports packages of ours it may not (it may import: {allowed})", offenders)


def test_api_loads_no_heavy_library_at_import_time() -> None:
    """Following module-level imports from every api module through ours (the packages a module sits in
    run first): none reaches torch, transformers, lm_eval or optuna."""
    chains: dict[str, list[Import]] = {}  # module reached -> the imports that reach it
    queue = [name for name in modules() if name.partition(".")[0] == "api"]
    chains.update({name: [] for name in queue})
    offenders: dict[str, str] = {}
    while queue:
        name = queue.pop(0)
        for imp in imports_of(name):
            if not imp.at_import_time:
                continue
            if imp.top in HEAVY_FOR_API:
                path = " -> ".join(i.where() for i in [*chains[name], imp])
                offenders.setdefault(imp.where(), f"{imp.top} is loaded by importing api: {path}")
                continue
            reached = known_module(imp.target)
            if reached is None:
                continue
            parts = reached.split(".")
            for end in range(1, len(parts) + 1):  # `import a.b.c` runs a, then a.b, then a.b.c
                step = ".".join(parts[:end])
                if step in modules() and step not in chains:
                    chains[step] = [*chains[name], imp]
                    queue.append(step)
    fail_listing("api loads heavy libraries at import time", sorted(offenders.values()))


# --- import cycles ---


def import_graph() -> dict[str, dict[str, Import]]:
    """module -> {module it imports: the first such import}, over our modules; imports that run only
    for type checkers are left out (they never execute, so they close no cycle)."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules()}
    for imp in all_imports():
        if imp.type_checking or imp.top not in PACKAGES:
            continue
        target = known_module(imp.target)
        if target is not None:
            edges = graph[imp.module.name]
            if target not in edges or (edges[target].in_function and not imp.in_function):
                edges[target] = imp  # a module-level import is the one to show
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = itertools.count()

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def simple_cycles(
    graph: dict[str, dict[str, Import]], component: list[str], limit: int = 50
) -> list[list[str]]:
    """The elementary cycles within one component, each starting at its smallest module."""
    members = set(component)
    cycles: list[list[str]] = []
    for start in component:
        path = [start]

        def walk(node: str, start: str = start, path: list[str] = path) -> None:
            for nxt in sorted(graph[node]):
                if len(cycles) >= limit:
                    return
                if nxt == start:
                    cycles.append([*path, start])
                elif nxt in members and nxt > start and nxt not in path:
                    path.append(nxt)
                    walk(nxt)
                    path.pop()

        walk(start)
    return cycles


def test_no_import_cycle() -> None:
    graph = import_graph()
    offenders = []
    for component in strongly_connected(graph):
        for cycle in simple_cycles(graph, component):
            steps = "; ".join(graph[a][b].where() for a, b in itertools.pairwise(cycle))
            offenders.append(f"{' -> '.join(cycle)}: {steps}")
    fail_listing("import cycles (module-level and function-level imports)", offenders)


# --- module size ---


def test_no_module_over_500_lines_without_a_stated_reason() -> None:
    offenders = []
    for module in modules().values():
        lines = len(module.source.splitlines())
        docstring = ast.get_docstring(module.tree) or ""
        if lines > LONG_MODULE_LINES and LONG_MODULE_REASON not in docstring:
            offenders.append(f"{module.relpath}: {lines} lines")
    fail_listing(
        f"modules over {LONG_MODULE_LINES} lines whose docstring does not say '{LONG_MODULE_REASON} ...'",
        offenders,
    )


# --- exception classes ---


def names_in(module: Module) -> dict[str, str]:
    """What each name imported anywhere in a module stands for: an absolute dotted name."""
    return _names_in(module.name) if module.name in modules() else _imported_names(module)


@cache
def _names_in(name: str) -> dict[str, str]:
    return _imported_names(modules()[name])


def _imported_names(module: Module) -> dict[str, str]:
    names = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, node.level, node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


def classes_of(module: Module) -> list[ast.ClassDef]:
    """Every class a module defines, nested ones included."""
    return _classes_in(module.name)


@cache
def _classes_in(name: str) -> list[ast.ClassDef]:
    return [node for node in ast.walk(modules()[name].tree) if isinstance(node, ast.ClassDef)]


def base_name(module: Module, base: ast.expr) -> str | None:
    """The absolute dotted name a base class expression stands for, as far as the source tells."""
    if isinstance(base, ast.Name):
        if any(c.name == base.id for c in classes_of(module)):
            return f"{module.name}.{base.id}"
        return names_in(module).get(base.id, f"builtins.{base.id}")
    if isinstance(base, ast.Attribute):
        owner = base_name(module, base.value)
        return f"{owner}.{base.attr}" if owner else None
    return None


def our_class(dotted: str, depth: int = 0) -> str | None:
    """Where a class of ours named `dotted` is defined (following re-exports), or None."""
    owner, _, name = dotted.rpartition(".")
    if owner not in modules() or depth > 10:
        return None
    module = modules()[owner]
    if any(c.name == name for c in classes_of(module)):
        return dotted
    imported = names_in(module).get(name)
    return our_class(imported, depth + 1) if imported else None


def exception_classes() -> dict[str, tuple[Module, ast.ClassDef]]:
    """Every class of ours deriving from BaseException through built-in exceptions or ours.

    A base from another library counts when its name ends in Error or Exception (the source alone does
    not say more about it).
    """
    classes = {
        f"{module.name}.{node.name}": (module, node)
        for module in modules().values()
        for node in classes_of(module)
    }
    exceptions: dict[str, tuple[Module, ast.ClassDef]] = {}
    changed = True
    while changed:
        changed = False
        for qualified, (module, node) in classes.items():
            if qualified in exceptions:
                continue
            for base in node.bases:
                dotted = base_name(module, base)
                if dotted is None:
                    continue
                ours = our_class(dotted)
                if ours is not None:
                    derives = ours in exceptions
                elif dotted.startswith("builtins."):
                    derives = dotted.removeprefix("builtins.") in BUILTIN_EXCEPTIONS
                else:
                    derives = dotted.partition(".")[0] not in PACKAGES and dotted.endswith(
                        ("Error", "Exception")
                    )
                if derives:
                    exceptions[qualified] = (module, node)
                    changed = True
                    break
    return exceptions


def test_exception_classes_live_in_soce_errors() -> None:
    offenders = [
        f"{module.relpath}:{node.lineno} class {node.name}({', '.join(ast.unparse(b) for b in node.bases)})"
        for module, node in exception_classes().values()
        if module.name != ERRORS_MODULE
    ]
    fail_listing(f"exception classes defined outside {ERRORS_MODULE}", sorted(offenders))


def test_the_rules_see_what_they_check() -> None:
    """The collector resolves relative imports, aliases and function-level imports, and knows the
    exception classes of soce.errors: a broken parser would otherwise pass every rule above."""
    assert {"soce", "soce.errors", "evaluators", "workers", "api"} <= set(modules())
    module = Module("soce.db.models", ROOT / "soce/db/models.py", False, "", ast.parse(""))
    assert resolve(module, 1, None) == "soce.db"
    assert resolve(module, 2, "errors") == "soce.errors"
    package = Module("soce.db", ROOT / "soce/db/__init__.py", True, "", ast.parse(""))
    assert resolve(package, 1, "models") == "soce.db.models"

    source = (
        "from __future__ import annotations\n"
        "import soce.errors as errors\n"
        "from . import workers\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import optuna\n"
        "def run():\n"
        "    from workers import jobs\n"
    )
    probe = Module("soce.probe", ROOT / "soce/probe.py", False, source, ast.parse(source))
    collector = ImportCollector(probe, {"soce", "soce.errors", "workers", "workers.jobs"})
    collector.visit(probe.tree)
    got = {(i.target, i.in_function, i.type_checking) for i in collector.found}
    assert got == {
        ("__future__", False, False),
        ("soce.errors", False, False),
        ("soce", False, False),  # `from . import workers` in soce: soce.workers, no module of ours
        ("typing", False, False),
        ("optuna", False, True),
        ("workers.jobs", True, False),
    }

    errors = {name for name in exception_classes() if name.startswith(ERRORS_MODULE + ".")}
    assert {"soce.errors.SoceError", "soce.errors.EvaluationError"} <= errors
