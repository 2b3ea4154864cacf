"""A Sphinx extension: a reference to a jscopes_tl object by another of its import paths than the
one the API reference documents resolves to the documented entry.

jscopes_tl re-exports its public names (``jscopes_tl.semantic_scope`` is
``jscopes_tl.scopes.semantic_scope``), and docstrings name objects relative to the module they are
written in. The reference documents each object once; this finds it by identity. A name that does
not import, or imports to an object the reference does not document, stays unresolved, so the
nitpicky build still fails on it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


def resolve_re_exported_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """A reference to a function, class or module by another of its import paths than the one
    documented (``jscopes_tl.faithfulness.evaluate_faithfulness`` for the documented
    ``jscopes_tl.evaluate_faithfulness``, a short name imported into the docstring's module)
    resolves to the documented entry. A name that does not import, or imports to an object the
    reference does not document, stays unresolved and fails the build."""
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    documented = documented_objects(domain)
    target = node["reftarget"].lstrip("~.")
    module, cls = node.get("py:module"), node.get("py:class")
    for candidate in (target, f"{module}.{target}", f"{module}.{cls}.{target}"):
        found = import_path(candidate)
        name = documented.get(id(found)) if found is not None else None
        if name is not None and name != candidate:
            resolved = domain.resolve_any_xref(env, node["refdoc"], app.builder, name, node, contnode)
            if resolved:
                return resolved[0][1]
    # A name relative to the module of an object documented under its top-level name
    # (jscopes_tl.run_faithfulness, whose module is jscopes_tl.runs.faithfulness): the one documented
    # object of that name, if there is exactly one.
    matches = list({id(import_path(name)): name for name in domain.objects if name.endswith("." + target)}.values())
    if len(matches) == 1:
        resolved = domain.resolve_any_xref(env, node["refdoc"], app.builder, matches[0], node, contnode)
        if resolved:
            return resolved[0][1]
    return None


_DOCUMENTED: dict[int, dict[int, str]] = {}


def documented_objects(domain: Any) -> dict[int, str]:
    """id(object) → documented name, for the functions, classes and modules of the reference."""
    key = len(domain.objects)
    if key not in _DOCUMENTED:
        names: dict[int, str] = {}
        for name in sorted(domain.objects, key=len):
            found = import_path(name)
            if found is not None and (callable(found) or inspect.ismodule(found) or isinstance(found, property)):
                names.setdefault(id(found), name)
        _DOCUMENTED[key] = names
    return _DOCUMENTED[key]


def import_path(dotted: str) -> Any:
    """The object at a dotted path, attribute by attribute from the top package (so
    ``jscopes_tl.views.report`` is the function the package exports, not the module of that name),
    importing a submodule only where no attribute has the name; None if there is none."""
    parts = dotted.split(".")
    try:
        found = importlib.import_module(parts[0])
    except Exception:
        return None
    for index, attribute in enumerate(parts[1:], start=2):
        value = inspect.getattr_static(found, attribute, None) if inspect.isclass(found) else getattr(found, attribute, None)
        if value is None and inspect.ismodule(found):
            try:
                value = importlib.import_module(".".join(parts[:index]))
            except Exception:
                value = None
        if value is None:
            return None
        found = value
    return found


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", resolve_re_exported_name)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
