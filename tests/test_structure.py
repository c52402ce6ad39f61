"""The code's own structure: no import cycles, built-in steps on the public toolkit only."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import rolling_update
from rolling_update import _errors, toolkit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rolling_update", "steps")


@functools.cache
def modules() -> dict[str, Path]:
    """Every first-party module by its dotted name (the demo app runs in a container, alone)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "demo" in path.relative_to(ROOT).parts[1:-1]:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path) -> Iterator[tuple[str, ast.stmt, bool]]:
    """``(module imported, node, at module level)`` for each import of ``name``'s file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()

    def target(module: str, names: list[str]) -> Iterator[str]:
        for alias in names:
            yield f"{module}.{alias}" if f"{module}.{alias}" in known else module

    def walk(nodes: list[ast.stmt], top: bool) -> Iterator[tuple[str, ast.stmt, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node, top
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for found in target(base, [a.name for a in node.names]):
                    yield found, node, top
            elif isinstance(node, ast.If) and top and is_type_checking(node):
                # Type-only imports: they shape the design as much as runtime ones do.
                yield from walk(node.body, top)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from walk(node.body, False)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        yield from walk([n for n in inner if isinstance(n, ast.stmt)], top)
                    if field == "handlers" and isinstance(inner, list):
                        for handler in inner:
                            yield from walk(handler.body, top)

    yield from walk(ast.parse(path.read_text()).body, True)


def python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` run by this interpreter in a process of its own, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def first_party(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports by name.

    A package's ``__init__`` counts only for what it imports itself: importing
    ``rolling_update.toolkit`` runs ``rolling_update/__init__`` too, but that facade
    re-exports the layers below it, so every submodule would otherwise close a loop
    through it; :func:`test_every_entry_module_imports_first_in_a_fresh_interpreter`
    proves the order of imports does not matter.
    """
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for module, _node, _top in imports(name, path):
            if first_party(module) and module in known and module != name:
                edges[name].add(module)
    return edges


def test_no_import_cycle_between_modules() -> None:
    """The first-party import graph (type-only imports included) has no cycle."""
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert sum(len(v) for v in edges.values()) > 100  # the graph was read
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_first_party_import_inside_a_function() -> None:
    """Every first-party import is at module level, where a cycle would show."""
    inside = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
        for name, path in modules().items()
        for module, node, top in imports(name, path)
        if not top and first_party(module)
    ]
    assert modules(), "no module found"
    assert not inside, "\n".join(inside)


def test_built_in_steps_import_only_the_public_toolkit() -> None:
    """A built-in step imports nothing of rolling_update but rolling_update.toolkit."""
    private: list[str] = []
    step_modules = {n: p for n, p in modules().items() if n.split(".")[0] == "steps"}
    assert len(step_modules) >= 10
    for name, path in step_modules.items():
        for module, node, _top in imports(name, path):
            if module.split(".")[0] == "rolling_update" and module != "rolling_update.toolkit":
                private.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module}")
    assert not private, "\n".join(private)


def test_every_error_is_exported_by_the_package_and_the_toolkit_agrees() -> None:
    """Each error class of the tree is in rolling_update.__all__; the toolkit's are the same."""
    errors = {
        name
        for name, value in vars(_errors).items()
        if isinstance(value, type) and issubclass(value, _errors.RollingUpdateError)
    }
    assert "ActionFailed" in errors
    assert errors - set(rolling_update.__all__) == set()
    for name in toolkit.__all__:
        if name in rolling_update.__all__:
            assert getattr(toolkit, name) is getattr(rolling_update, name), name


ENTRY_MODULES = [
    "rolling_update",
    "rolling_update.toolkit",
    "rolling_update.testing",
    "steps",
    *sorted(n for n in modules() if n.startswith("steps.")),
]


FIRST = """
import importlib, sys
third_party = set(sys.modules)
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("rolling_update", "steps")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(failed)
"""


def test_every_entry_module_imports_first_in_a_fresh_interpreter() -> None:
    """Importing any step module, steps, the toolkit or the package first works."""
    # One interpreter: the first-party modules are forgotten before each import, so each
    # one is imported first; third-party ones stay loaded (they cannot close a cycle).
    run = python(FIRST, *ENTRY_MODULES, cwd=ROOT)
    assert len(ENTRY_MODULES) >= 13
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "{}", run.stdout


@pytest.mark.parametrize("shape", ["package", "module"])
def test_a_users_own_steps_in_the_working_directory_is_never_imported(
    tmp_path: Path, shape: str
) -> None:
    """Run where a service keeps its own steps/ or steps.py (first on sys.path, as with
    python -m), rolling_update imports its own."""
    if shape == "package":
        (tmp_path / "steps").mkdir()
        (tmp_path / "steps" / "__init__.py").write_text("raise SystemExit('user steps imported')\n")
    else:
        (tmp_path / "steps.py").write_text("raise SystemExit('user steps imported')\n")
    which = python("import rolling_update, steps; print(steps.__file__)", cwd=tmp_path)
    assert which.stdout.strip() == str(ROOT / "steps" / "__init__.py"), which.stderr


def test_a_users_steps_imported_first_is_refused_by_name(tmp_path: Path) -> None:
    """A different steps already imported makes rolling_update's import fail saying so."""
    (tmp_path / "steps.py").write_text("")
    run = python("import steps, rolling_update", cwd=tmp_path)
    assert run.returncode == 1
    assert "a module named 'steps'" in run.stderr and "rename yours" in run.stderr


# Where the wall clock is read, and why: timestamps a human reads, and the Brain's own
# `next_tick` (a wall-clock time from the same host, so a clock step moves both sides).
WALL_CLOCK_READERS = {
    "rolling_update._state.journal": "the journal's timestamps",
    "rolling_update._observe.history": "the audit log's timestamps",
    "steps.tick": "blue's next_tick is a wall-clock time",
}


_WALL_CLOCK = {("time", "time"), ("time", "time_ns"), ("datetime", "now"), ("datetime", "utcnow")}


def wall_clock_calls(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            if (name, node.func.attr) in _WALL_CLOCK:
                yield f"{name}.{node.func.attr}() on line {node.lineno}"


def test_no_deadline_reads_the_wall_clock() -> None:
    """Every deadline and duration runs on the monotonic clock (anyio's, time.monotonic): an
    NTP step moves no deadline. The wall clock is read only where a human's time is wanted."""
    found = {
        name: calls
        for name, path in modules().items()
        if name not in WALL_CLOCK_READERS and (calls := list(wall_clock_calls(path)))
    }
    assert found == {}
