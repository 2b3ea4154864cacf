"""The tutorial notebook runs top to bottom in a Jupyter kernel, and its saved outputs render.

demos/tutorial.ipynb is executed with nbclient in a fresh kernel of this environment (IPython and
ipykernel come from the ``notebook`` extra that scripts/setup.sh installs), saved and read back,
then exported to HTML with nbconvert — what a reader gets from a saved notebook — and opened in
headless Chromium with networking disabled. The circuitsvis bundle must be in exactly one output
(not one per view), and every view of every output must still be drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser import Browser
from rendered import rendered_components
from test_browser import assert_coloured_by, click_tab, visible_panel_boxes

BUNDLE = "var CircuitsVis="
# Every view handed to circuitsvis, and React has replaced each "not drawn yet" message (render is
# asynchronous: a view is marked drawn before React commits).
ALL_DRAWN = (
    "[...document.querySelectorAll('.jscopes-view')].length > 0 && "
    "[...document.querySelectorAll('.jscopes-view')].every(v => v.getAttribute('data-jscopes-drawn')) && "
    "[...document.querySelectorAll('.jscopes-view .jscopes-pending')].length === 0"
)


def html_outputs(notebook: Any) -> list[str]:
    return [
        output["data"]["text/html"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "text/html" in output.get("data", {})
    ]


@pytest.fixture(scope="module")
def executed(executed_tutorial: tuple[Any, Path]) -> tuple[Any, Path]:
    """The tutorial after a run in a fresh kernel, saved to disk and read back (tests/conftest.py:
    executed once per test session, for these tests and the docs build of tests/test_docs.py)."""
    return executed_tutorial


def test_tutorial_runs_top_to_bottom_without_errors(executed: tuple[Any, Path]) -> None:
    notebook, _ = executed
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells)
    assert not [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]


def test_the_circuitsvis_bundle_goes_into_one_output_only(executed: tuple[Any, Path]) -> None:
    outputs = html_outputs(executed[0])
    views = [component for output in outputs for component in rendered_components(output)]
    # five token views (one result, three compare tabs, one contrast), the scope matrix, the heads
    assert [view.name for view in views].count("ColoredTokens") == 5 and len(views) == 7
    assert sum(output.count(BUNDLE) for output in outputs) == 1
    assert BUNDLE in next(output for output in outputs if "jscopes.render(" in output)  # the first view carries it


def test_the_saved_notebook_exported_to_html_draws_every_view(executed: tuple[Any, Path], tmp_path: Path) -> None:
    from nbconvert import HTMLExporter

    notebook, _ = executed
    body, _ = HTMLExporter().from_notebook_node(notebook)
    page = tmp_path / "tutorial.html"
    page.write_text(body, encoding="utf-8")
    with Browser(tmp_path / "profile") as browser:
        browser.open(page, ALL_DRAWN)
        assert browser.evaluate("[...document.querySelectorAll('.jscopes-pending')].filter(e => e.offsetParent).length") == 0
        assert browser.evaluate("document.querySelectorAll('.jscopes-tokens .colored-tokens').length") == 5
        # the Semantic / Fisher / Temperature tabs of the compare view keep their own colour scales
        compare = next(i for i, output in enumerate(html_outputs(notebook)) if ">Temperature</button>" in output)
        components = rendered_components(html_outputs(notebook)[compare])
        section = browser.evaluate(
            "[...document.querySelectorAll('.jscopes-tabs')].findIndex(t => t.innerText.includes('Temperature'))"
        )
        for tab, component in enumerate(components):
            click_tab(browser, section, tab)
            assert_coloured_by(visible_panel_boxes(browser, section), component.props["values"])
        # the component scope's heat maps (plain HTML tables): in each, the largest printed score
        # is the deepest red
        tables = browser.evaluate(
            "[...document.querySelectorAll('.jscopes-components .jscopes-heat')].map(t => [...t.querySelectorAll('td')]"
            ".map(td => [td.innerText.trim(), getComputedStyle(td).backgroundColor]))"
        )
        assert len(tables) == 2
        for cells in tables:
            greens = [(float(value), int(colour.replace("(", ",").split(",")[2])) for value, colour in cells if value]
            assert len(greens) >= 3
            assert min(greens, key=lambda cell: cell[1])[0] == max(value for value, _ in greens)
            assert max(green for _, green in greens) > min(green for _, green in greens) + 60


def test_an_output_shown_before_the_one_with_the_bundle_is_drawn_when_it_arrives(executed: tuple[Any, Path], tmp_path: Path) -> None:
    outputs = [output for output in html_outputs(executed[0]) if "jscopes.render(" in output]
    with_bundle = next(output for output in outputs if BUNDLE in output)
    later = outputs[-1]
    assert BUNDLE not in later
    page = tmp_path / "out_of_order.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{later}\n{with_bundle}</body></html>", encoding="utf-8")
    with Browser(tmp_path / "profile") as browser:
        browser.open(page, ALL_DRAWN)
        first = browser.evaluate("document.querySelector('.jscopes-view').getAttribute('data-jscopes-drawn')")
        assert first == "1"


def test_a_view_without_the_bundle_says_so_instead_of_staying_blank(executed: tuple[Any, Path], tmp_path: Path) -> None:
    later = [output for output in html_outputs(executed[0]) if "jscopes.render(" in output][-1]
    page = tmp_path / "no_bundle.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{later}</body></html>", encoding="utf-8")
    with Browser(tmp_path / "profile") as browser:
        browser.open(page)
        message = browser.evaluate("document.querySelector('.jscopes-pending').innerText")
        assert "re-run" in message and "include_bundle=True" in message
