"""The package's layout as a specification: imports flow one way, and modules and classes stay small.

Read from the source with ``ast`` (nothing is imported), over every module of ``jscopes_tl``:

* The imports a module runs when it is imported (module level, class bodies and ``try`` blocks
  included; ``if TYPE_CHECKING:`` blocks left out) form no cycle.
* Neither do all imports, those inside functions included, except the lazy imports of the result
  classes' own presentation and serialisation methods (:data:`RESULT_METHOD_IMPORTS`): a result is
  plain data that its views and export read, and ``result.to_html()`` is a convenience that reaches
  back to them when called.
* No module is longer than :data:`MAX_MODULE_LINES` lines and no class than :data:`MAX_CLASS_LINES`,
  except the ones listed, which were longer when the limit was set.

Importing a submodule runs its parent packages' ``__init__`` first; that is not an edge here (a
package's ``__init__`` importing its own submodules is the normal layout). ``from package import
name`` is an edge to the submodule when ``name`` is one, else to the package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "jscopes_tl"
PACKAGE = "jscopes_tl"

MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300

# Longer than the limits when they were set (issue 23); each should be split along its jobs, as the
# adapter was. Listed by name so that they are seen, not hidden; the test fails once one of them is
# back under the limit, so that the list only shrinks.
MODULES_OVER_THE_LIMIT = {
    "jscopes_tl.cli",  # argument parsing and every subcommand's runner
    "jscopes_tl.engine",  # the scope engine: perturbation points, groups, VJPs, results
    "jscopes_tl.faithfulness",  # AOPC, leave-one-out, scorers, both protocols
    "jscopes_tl.patching",  # layer-resolved scopes, activation and attribution patching, components
    "jscopes_tl.scopes",  # jacobian_scope and the named scopes, target parsing
    "jscopes_tl.runs.runner",  # the dataset loop, resuming, records
}
CLASSES_OVER_THE_LIMIT: set[str] = set()

# The one allowed exception to "no import cycle, lazy imports included": these methods of the
# result classes import, when called, the module that presents or serialises the result.
RESULT_METHOD_IMPORTS = {
    ("jscopes_tl.result", "ScopeResult.to_html"): "jscopes_tl.views.tokens",
    ("jscopes_tl.result", "ScopeResult.save_html"): "jscopes_tl.views.tokens",
    ("jscopes_tl.result", "ScopeResult.show"): "jscopes_tl.views.tokens",
    ("jscopes_tl.result", "ScopeResult._repr_html_"): "jscopes_tl.views.tokens",
    ("jscopes_tl.result", "ScopeResult.to_dict"): "jscopes_tl.export",
    ("jscopes_tl.result", "ScopeResult.from_dict"): "jscopes_tl.export",
    ("jscopes_tl.result", "ScopeResult.to_json"): "jscopes_tl.export",
    ("jscopes_tl.result", "ScopeResult.from_json"): "jscopes_tl.export",
    ("jscopes_tl.result", "ScopeResult.to_numpy"): "jscopes_tl.export",
    ("jscopes_tl.result", "ScopeResult.to_pandas"): "jscopes_tl.export",
}


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` from ``where`` (a qualified name
    of the enclosing function or class, "" at module level); ``at_import_time``: it runs when
    ``source`` is imported."""

    source: str
    target: str
    where: str
    at_import_time: bool
    line: int


def module_files(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> list[str]:
    """The package's modules an import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in modules:
            targets.append(submodule)
        elif base in modules:
            targets.append(base)
    return targets


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    """Every import of the package's own modules in one module, TYPE_CHECKING blocks left out."""
    found: list[Import] = []
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, where: list[str], in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, where, in_function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in dict.fromkeys(_resolve(node, module, is_package, modules)):
                if target != module:
                    found.append(Import(module, target, ".".join(where), not in_function, node.lineno))
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = [*where, node.name]
            function = in_function or not isinstance(node, ast.ClassDef)
            for child in node.body:
                visit(child, inner, function)
            for decorator in node.decorator_list:
                visit(decorator, where, in_function)
            return
        if isinstance(node, ast.Lambda):
            visit(node.body, where, True)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, where, in_function)

    visit(ast.parse(path.read_text(), filename=str(path)), [], False)
    return found


def all_imports() -> list[Import]:
    files = module_files()
    return [edge for module, path in files.items() for edge in imports_of(module, path, set(files))]


def find_cycle(edges: list[Import]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    graph: dict[str, list[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in graph.get(node, []):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = walk(target)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle is not None:
                return cycle
    return None


def _path(start: str, goal: str, edges: list[Import]) -> list[str] | None:
    """A chain of imports from ``start`` to ``goal``, or None."""
    graph: dict[str, list[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge.target)
    came_from: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        if node == goal:
            chain = [node]
            while came_from[chain[-1]] is not None:
                chain.append(came_from[chain[-1]])  # type: ignore[arg-type]
            return chain[::-1]
        for target in graph.get(node, []):
            if target not in came_from:
                came_from[target] = node
                frontier.append(target)
    return None


def _is_result_method_import(edge: Import) -> bool:
    return RESULT_METHOD_IMPORTS.get((edge.source, edge.where)) == edge.target


def _describe(cycle: list[str], edges: list[Import]) -> str:
    steps = []
    for source, target in zip(cycle, cycle[1:]):
        edge = next(e for e in edges if e.source == source and e.target == target)
        steps.append(f"{source} -> {target} (line {edge.line}{', in ' + edge.where if edge.where else ''})")
    return "\n  ".join(steps)


def test_imports_run_at_import_time_form_no_cycle():
    edges = [edge for edge in all_imports() if edge.at_import_time]
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle at import time:\n  {_describe(cycle, edges)}"


def test_imports_inside_functions_form_no_cycle_but_for_the_result_classes_own_methods():
    edges = [edge for edge in all_imports() if not _is_result_method_import(edge)]
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle (function-level imports included):\n  {_describe(cycle, edges)}"


def test_the_allowed_result_method_imports_are_imports_the_code_makes():
    made = {(edge.source, edge.where, edge.target) for edge in all_imports() if not edge.at_import_time}
    stale = [key for key, target in RESULT_METHOD_IMPORTS.items() if (*key, target) not in made]
    assert not stale, f"RESULT_METHOD_IMPORTS names imports the code no longer makes: {stale}"


def test_the_result_methods_close_only_direct_cycles():
    """A module a result method imports may import the result's module itself, and nothing that
    leads back to it: before issue 23 ``views/tokens.py`` read a result's axes through ``export.py``,
    so result, views and export stood in one circle."""
    edges = [edge for edge in all_imports() if not _is_result_method_import(edge)]
    for (result_module, method), target in RESULT_METHOD_IMPORTS.items():
        indirect = [edge for edge in edges if not (edge.source == target and edge.target == result_module)]
        path = _path(target, result_module, indirect)
        assert path is None, f"{result_module}.{method} imports {target}, which leads back: {' -> '.join(path)}"


def test_results_import_neither_views_nor_export_when_imported():
    imported = {edge.target for edge in all_imports() if edge.source == "jscopes_tl.result" and edge.at_import_time}
    assert not {name for name in imported if name.startswith("jscopes_tl.views") or name == "jscopes_tl.export"}


def test_no_module_is_longer_than_the_limit():
    lengths = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    over = {name for name, length in lengths.items() if length > MAX_MODULE_LINES}
    assert over - MODULES_OVER_THE_LIMIT == set(), {name: lengths[name] for name in over - MODULES_OVER_THE_LIMIT}
    back_under = MODULES_OVER_THE_LIMIT - over
    assert not back_under, f"now within {MAX_MODULE_LINES} lines: remove {sorted(back_under)} from MODULES_OVER_THE_LIMIT"


def test_no_class_is_longer_than_the_limit():
    lengths = {}
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lengths[f"{module}.{node.name}"] = node.end_lineno - node.lineno + 1
    over = {name for name, length in lengths.items() if length > MAX_CLASS_LINES}
    assert over - CLASSES_OVER_THE_LIMIT == set(), {name: lengths[name] for name in over - CLASSES_OVER_THE_LIMIT}
    assert not CLASSES_OVER_THE_LIMIT - over


# ------------------------------------------------------------------------------ the checks themselves
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(
    ("files", "at_import_time", "cycle"),
    [
        # a module-level circle
        ({"__init__.py": "", "a.py": "from pkg.b import x\n", "b.py": "import pkg.a\n"}, True, True),
        # the same circle closed inside a function: not at import time, but a cycle of all imports
        ({"__init__.py": "", "a.py": "from pkg.b import x\n", "b.py": "def f():\n    from pkg import a\n"}, True, False),
        ({"__init__.py": "", "a.py": "from pkg.b import x\n", "b.py": "def f():\n    from pkg import a\n"}, False, True),
        # TYPE_CHECKING imports never run
        ({"__init__.py": "", "a.py": "from pkg.b import x\n", "b.py": "if TYPE_CHECKING:\n    from pkg.a import y\n"}, False, False),
        # a package's __init__ importing its submodule, which imports a sibling: no cycle
        ({"__init__.py": "from pkg.a import x\n", "a.py": "from pkg.b import y\n", "b.py": ""}, True, False),
        # a relative import back into the package's __init__ that imports the module: a cycle
        ({"__init__.py": "from pkg.a import x\n", "a.py": "from . import y\n"}, True, True),
    ],
)
def test_the_cycle_check_finds_exactly_the_cycles(tmp_path, files, at_import_time, cycle):
    root = _write(tmp_path, files)
    modules = module_files(root)
    edges = [edge for name, path in modules.items() for edge in imports_of(name, path, set(modules))]
    if at_import_time:
        edges = [edge for edge in edges if edge.at_import_time]
    assert (find_cycle(edges) is not None) == cycle
