"""The documentation site builds with warnings as errors, and its tutorial page draws offline.

``scripts/docs.sh`` runs Sphinx (myst-nb, autodoc, furo) with ``-W --keep-going -n``: a broken
cross-reference, a link to a missing page or heading, a docstring autodoc cannot read fails it;
then the doctest builder runs the pages' ``{doctest}`` blocks and every ``>>>`` example of the
docstrings the API reference shows, from the same doctrees. Here it builds once into a temporary
directory, showing the tutorial that tests/test_notebook.py executed in this same session (so the
notebook runs once per test run, and the page shows outputs computed now), and the built tutorial
page is opened from disk in headless Chromium with networking disabled (tests/browser.py): every
circuitsvis view must be drawn, its tokens coloured by their scores, with nothing fetched.

The docs tools are pinned in requirements/tl4.txt only: on TransformerLens 2.x these tests skip.
"""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from browser import Browser
from rendered import rendered_components
from test_browser import assert_coloured_by
from test_notebook import ALL_DRAWN, html_outputs

from jscopes_tl import adapter

pytestmark = pytest.mark.skipif(
    adapter.hooked_transformer_available(),
    reason="the docs are built in the TransformerLens 4.x environment only (Sphinx, myst-nb, furo: requirements/tl4.txt)",
)
ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ["jscopes_tl", "jscopes_tl.views", "jscopes_tl.runs", "jscopes_tl.models"]


@pytest.fixture(scope="module")
def site(executed_tutorial: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site (its html directory), from scripts/docs.sh."""
    out = tmp_path_factory.mktemp("docs") / "html"
    _, notebook = executed_tutorial
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docs.sh"), str(out), "-D", f"jscopes_executed_tutorial={notebook}"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "PYTHON": sys.executable},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return out


def test_the_site_builds_with_every_page_and_the_api_reference(site: Path) -> None:
    pages = {path.relative_to(site).as_posix() for path in site.rglob("*.html")}
    guide = {f"guide/{path.stem}.html" for path in (ROOT / "docs" / "guide").glob("*.md")}
    assert {"index.html", "getting-started.html", "tutorial.html", "api/index.html", "performance.html"} | guide <= pages


def documented_names(site: Path) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    return {name for entries in inventory.values() for name in entries}


def test_the_api_reference_documents_every_public_name(site: Path) -> None:
    """Every name of the public modules' __all__ and every exception is in the reference: under
    that name, or the same object under another of its import paths (``jscopes_tl.report`` is
    documented as ``jscopes_tl.views.report``)."""
    import importlib

    import jscopes_tl.errors

    sys.path.insert(0, str(ROOT / "docs"))
    from crossref import import_path

    documented = {id(import_path(name)) for name in documented_names(site)} - {id(None)}
    public = [f"{module}.{name}" for module in PUBLIC_MODULES for name in importlib.import_module(module).__all__]
    public += [f"jscopes_tl.errors.{name}" for name in dir(jscopes_tl.errors) if name.endswith("Error")]
    assert [name for name in public if id(import_path(name)) not in documented] == []


def test_the_tutorial_page_shows_outputs_computed_in_this_run(site: Path, executed_tutorial: tuple[Any, Path]) -> None:
    page = (site / "tutorial.html").read_text(encoding="utf-8")
    notebook, _ = executed_tutorial
    # the page's views are the very ones this session's kernel produced (element ids are random per run)
    assert [component.props for component in rendered_components(page)] == [
        component.props for output in html_outputs(notebook) for component in rendered_components(output)
    ]
    assert page.count("var CircuitsVis=") == 1


class _Resources(HTMLParser):
    """Every URL a page loads by itself: scripts, style sheets, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in {"script", "img", "iframe"} and values.get("src"):
            self.urls.append(values["src"])
        if tag == "link" and values.get("rel") in {"stylesheet", "preload", "icon"} and values.get("href"):
            self.urls.append(values["href"])


def test_the_tutorial_page_loads_nothing_from_the_network(site: Path) -> None:
    parser = _Resources()
    parser.feed((site / "tutorial.html").read_text(encoding="utf-8"))
    assert parser.urls and not [url for url in parser.urls if "//" in url]


def test_the_built_tutorial_draws_its_scope_views_offline(site: Path, tmp_path: Path) -> None:
    page = site / "tutorial.html"
    components = rendered_components(page.read_text(encoding="utf-8"))
    with Browser(tmp_path / "profile") as browser:
        browser.open(page, ALL_DRAWN)
        # five token views, each drawn by circuitsvis with its tokens coloured by their scores
        assert browser.evaluate("document.querySelectorAll('.jscopes-tokens .colored-tokens').length") == 5
        first = browser.evaluate(
            "[...document.querySelector('.jscopes-tokens').querySelectorAll('.colored-tokens > span > span:first-child')]"
            ".map(box => ({colour: getComputedStyle(box).backgroundColor, text: box.textContent, title: box.title}))"
        )
        semantic = next(component for component in components if component.name == "ColoredTokens")
        assert [box["text"] for box in first] == ["<bos>", "a=3", "b=7", "c=1", "b="]
        assert_coloured_by(first, semantic.props["values"])
