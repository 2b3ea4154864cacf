"""Every public function, class and method in the API reference keeps a runnable example.

The names are read from the autodoc directives of ``docs/api/*.md`` (``autofunction``,
``automethod``, ``autoclass``, ``autoexception``, and the members of a ``:members:`` class or
module that autodoc shows), plus ``jscopes_tl.__all__``. Each must have a ``>>>`` line in its
docstring; a class may have it in its own docstring or in a documented member's. No docs build
here: ``tests/test_docs.py`` builds the site, whose doctest step runs the examples.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import jscopes_tl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from crossref import import_path  # noqa: E402

DIRECTIVE = re.compile(r"^\.\. (autofunction|automethod|autoclass|autoexception|automodule|currentmodule)::\s*(\S+)")
OPTION = re.compile(r"^\s+:([\w-]+):\s*(.*)$")
CALLABLE_KINDS = {"autofunction", "automethod", "autoclass", "autoexception"}


@dataclass
class Directive:
    kind: str
    name: str
    page: str
    current_module: str | None
    options: dict[str, str] = field(default_factory=dict)

    def resolve(self) -> tuple[str, Any]:
        candidates = [self.name] if self.name.startswith("jscopes_tl") else []
        if self.current_module:
            candidates.append(f"{self.current_module}.{self.name}")
        for candidate in candidates:
            found = import_path(candidate)
            if found is not None:
                return candidate, found
        raise LookupError(f"docs/api/{self.page}: {self.kind}:: {self.name} does not import")

    def listed(self, option: str) -> list[str]:
        return [name.strip() for name in self.options.get(option, "").split(",") if name.strip()]


def api_directives() -> list[Directive]:
    directives: list[Directive] = []
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        current, last = None, None
        for line in page.read_text(encoding="utf-8").splitlines():
            match = DIRECTIVE.match(line)
            if match:
                kind, name = match.groups()
                if kind == "currentmodule":
                    current, last = name, None
                else:
                    last = Directive(kind, name, page.name, current)
                    directives.append(last)
                continue
            option = OPTION.match(line)
            if option and last is not None:
                last.options[option.group(1)] = option.group(2)
            elif line.strip() and not line.startswith(" "):
                last = None
    return directives


def docstring(obj: Any) -> str:
    return inspect.getdoc(obj) or ""


def has_example(obj: Any) -> bool:
    return any(line.lstrip().startswith(">>>") for line in docstring(obj).splitlines())


def shown_members(directive: Directive, name: str, owner: Any) -> dict[str, Any]:
    """The functions, properties and classes autodoc shows for a ``:members:`` directive: the
    owner's own public ones with a docstring (any, with ``:undoc-members:``), those listed in
    ``:private-members:``, or exactly the ones ``:members:`` lists."""
    if "members" not in directive.options:
        return {}
    listed, private = directive.listed("members"), directive.listed("private-members")
    members = {}
    for member_name, member in vars(owner).items():
        if listed and member_name not in listed:
            continue
        if member_name.startswith("_") and member_name not in private:
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.ismodule(owner) and getattr(member, "__module__", None) != owner.__name__:
            continue
        if not (inspect.isfunction(member) or isinstance(member, property) or inspect.isclass(member)):
            continue
        if member.__doc__ or "undoc-members" in directive.options:
            members[f"{name}.{member_name}"] = member
    return members


def documented_objects() -> dict[str, tuple[Any, list[Any]]]:
    """name → (object, its documented members) for every function, class and method the API
    reference shows, and for every name of ``jscopes_tl.__all__``."""
    objects: dict[str, tuple[Any, list[Any]]] = {}
    for directive in api_directives():
        name, obj = directive.resolve()
        members = shown_members(directive, name, obj)
        if directive.kind in CALLABLE_KINDS:
            objects[name] = (obj, list(members.values()))
        for member_name, member in members.items():
            objects[member_name] = (member, [])
    for name in jscopes_tl.__all__:
        obj = getattr(jscopes_tl, name)
        objects.setdefault(f"jscopes_tl.{name}", (obj, []))
    return objects


DOCUMENTED = documented_objects()


def test_the_api_reference_is_read() -> None:
    assert {"jscopes_tl.semantic_scope", "jscopes_tl.ScopeResult.top_tokens", "jscopes_tl.views.Page.to_html"} <= set(
        DOCUMENTED
    )
    assert len(DOCUMENTED) > 150


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_documented_object_has_an_example(name: str) -> None:
    obj, members = DOCUMENTED[name]
    if isinstance(obj, property):
        obj = obj.fget
    if inspect.isclass(obj):
        assert has_example(obj) or any(has_example(member) for member in members), (
            f"{name}: neither the class docstring nor a documented member has a >>> example"
        )
    else:
        assert has_example(obj), f"{name}: its docstring has no >>> example (an 'Example:' section)"


def test_a_docstring_without_an_example_is_caught() -> None:
    def undocumented() -> None:
        """No example here."""

    assert not has_example(undocumented) and has_example(jscopes_tl.semantic_scope)
