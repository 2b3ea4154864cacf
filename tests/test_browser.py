"""Saved views as a person sees them: headless Chromium, networking disabled, read through the DOM.

Each page is written by the library (or the command line) and opened from disk in Chromium
(tests/browser.py) with every network request sent to a closed port. The tests then do what a
reader does — click tabs, hover tokens — and read what the browser drew: the computed background
colour of each token, the text it shows, its hover title and tooltip, bounding boxes. Text in the
page source or in a script does not count: only elements that circuitsvis's React components
created do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from browser import Browser
from conftest import MODEL_SPECS, build

import jscopes_tl
from jscopes_tl import models
from jscopes_tl.cli import main
from jscopes_tl.result import Prediction, ScopeResult
from jscopes_tl.views.tokens import POSITIVE_COLOR, display_token

RECALL = "a=3 b=7 c=1 b="
TOY_PROMPT = "Tom & <Mary> said:\n He is a"
DRAWN = "document.querySelectorAll('.jscopes-view').length > 0 && [...document.querySelectorAll('.jscopes-view')].every(v => v.querySelector('.colored-tokens, canvas'))"
WHITE = (255, 255, 255)

# Token boxes of the visible panels (or of views outside tabs), in order, with what they show.
TOKEN_BOXES_JS = """
(() => [...document.querySelectorAll('.jscopes-tokens')].filter(view => view.offsetParent !== null).map(view =>
  [...view.querySelectorAll('.colored-tokens > span > span:first-child')].map(box => ({
    colour: getComputedStyle(box).backgroundColor, text: box.textContent, title: box.title,
    rect: box.getBoundingClientRect().toJSON()}))))()
"""


def visible_panel_boxes(browser: Browser, section: int) -> list[dict[str, Any]]:
    """The token boxes of the visible panel of the ``section``-th tab group of the page."""
    return browser.evaluate(
        f"(() => {{ const tabs = document.querySelectorAll('.jscopes-tabs')[{section}];"
        " const panels = [...tabs.children].filter(c => c.classList.contains('jscopes-panel') && !c.hidden);"
        " if (panels.length !== 1) return null;"
        " return [...panels[0].querySelectorAll('.colored-tokens > span > span:first-child')].map(box =>"
        " ({colour: getComputedStyle(box).backgroundColor, text: box.textContent, title: box.title})); })()"
    )


def rgb(css: str) -> tuple[int, ...]:
    return tuple(int(value) for value in re.findall(r"\d+", css)[:3])


def hex_rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 2) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def assert_coloured_by(boxes: list[dict[str, Any]], scores: list[float]) -> None:
    """Top token in the full positive colour, zero scores white, darker for larger scores."""
    colours = [rgb(box["colour"]) for box in boxes]
    peak = max(scores)
    assert peak > 0
    for colour, score in zip(colours, scores):
        if score == peak:
            assert close(colour, hex_rgb(POSITIVE_COLOR)), (colour, score)
        elif score == 0:
            assert colour == WHITE
        elif score > 0.05 * peak:
            assert colour != WHITE, (colour, score, peak)
    ordered = sorted(zip(scores, colours))
    brightness = [sum(colour) for _, colour in ordered]
    assert brightness == sorted(brightness, reverse=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    with Browser(tmp_path_factory.mktemp("chromium") / "profile") as chromium:
        yield chromium


def click_tab(browser: Browser, section: int, tab: int) -> None:
    """A real mouse click on a tab button (the page's own handler switches the panel)."""
    browser.evaluate(f"document.querySelectorAll('.jscopes-tablist')[{section}].children[{tab}].scrollIntoView()")
    x, y = browser.evaluate(
        f"(() => {{ const r = document.querySelectorAll('.jscopes-tablist')[{section}].children[{tab}]"
        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    browser.click(x, y)


# ------------------------------------------------------------------------------------ the main job
@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    import json

    directory = tmp_path_factory.mktemp("main_job")
    page, scores = directory / "scope.html", directory / "scores.json"
    assert main(["scope", RECALL, "--model", "recall", "--kind", "all", "--out", str(page), "--json", str(scores)]) == 0
    return page, json.loads(scores.read_text())


def test_every_tab_of_the_main_job_colours_its_tokens_on_its_own_scale(browser: Browser, main_job: Any) -> None:
    page, records = main_job
    browser.open(page, DRAWN)
    for tab, record in enumerate(records):  # Semantic (~5), Fisher (~1e-3), Temperature (~1)
        click_tab(browser, 0, tab)
        assert len(browser.evaluate(TOKEN_BOXES_JS)) == 1  # only the selected panel is visible
        boxes = visible_panel_boxes(browser, 0)
        assert [box["text"] for box in boxes] == ["<bos>", "a=3", "b=7", "c=1", "b="]
        assert_coloured_by(boxes, record["scores"])
        selected = browser.evaluate("[...document.querySelectorAll('.jscopes-tablist button')].map(b => b.getAttribute('aria-selected'))")
        assert selected == ["true" if index == tab else "false" for index in range(3)]


def test_the_header_shows_model_prompt_position_target_and_settings(browser: Browser, main_job: Any) -> None:
    page, _ = main_job
    browser.open(page, DRAWN)
    rows = dict(browser.evaluate("[...document.querySelectorAll('.jscopes-header tr')].map(r => [r.cells[0].innerText, r.cells[1].innerText])"))
    assert rows["model"] == "recall"
    assert rows["prompt"] == f"{RECALL} (5 tokens)"
    assert rows["prediction position"] == "4 (after 'b=')"
    assert rows["Semantic Scope"].startswith("target '7' (the model's top-1 prediction)")
    assert rows["Fisher Scope"].startswith("rank 1;")
    assert "final norm folded into W_U: no" in rows["numerics"]
    caption = browser.evaluate("document.querySelector('.jscopes-panel:not([hidden]) .jscopes-caption').innerText")
    assert caption.replace("\xa0", " ").startswith("prediction at position 4 (after 'b='): '7' (1.000)")


def test_token_views_hold_tokens_only(browser: Browser, main_job: Any) -> None:
    page, _ = main_job
    browser.open(page, DRAWN)
    for tab in range(3):
        click_tab(browser, 0, tab)
        # the view's whole text is its tokens: no bound boxes, no stray "0", no leftover message
        text = browser.evaluate("document.querySelector('.jscopes-panel:not([hidden]) .jscopes-view').innerText")
        assert text.strip() == "<bos>a=3b=7c=1b="
    assert browser.evaluate("document.querySelectorAll('input, .jscopes-pending').length") == 0


def test_every_scope_and_position_of_the_command_line_page_is_drawn(browser: Browser, tmp_path: Path) -> None:
    import json

    page, scores = tmp_path / "all.html", tmp_path / "scores.json"
    argv = ["scope", RECALL, "--model", "recall", "--kind", "all", "--position", "all", "--out", str(page), "--json", str(scores)]
    assert main(argv) == 0
    records = json.loads(scores.read_text())
    browser.open(page, DRAWN)
    for section, record in enumerate(records):
        for position, row in enumerate(record["scores"]):
            click_tab(browser, section, position)
            assert_coloured_by(visible_panel_boxes(browser, section), row)


# ------------------------------------------------------------------------------------ tokens, hover, report
@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ScopeResult]:
    directory = tmp_path_factory.mktemp("report")
    model = build(MODEL_SPECS[0][0])
    path = directory / "report.html"
    jscopes_tl.report(model, TOY_PROMPT, attention_layer=0, path=path)
    return path, jscopes_tl.semantic_scope(model, TOY_PROMPT)


def test_report_views_are_drawn_offline_by_javascript(browser: Browser, report_page: Any) -> None:
    path, result = report_page
    browser.open(path, DRAWN)
    views = browser.evaluate(TOKEN_BOXES_JS)
    assert len(views) == 5  # side by side (first tab), Semantic, Fisher, Temperature, gradient × input
    expected = [box_text(token) for token in result.str_tokens]
    assert all([box["text"] for box in view] == expected for view in views)
    # the scope matrix, the comparison's matrix, the zoomed head and one thumbnail per head
    assert browser.evaluate("document.querySelectorAll('canvas').length") >= 3 + build(MODEL_SPECS[0][0]).cfg.n_heads


def box_text(token: str) -> str:
    """What a token box shows: whitespace as glyphs; after a newline glyph circuitsvis keeps a space."""
    shown = "".join({" ": "·", "\n": "⏎\xa0", "\t": "⇥", "\r": "␍"}.get(character, character) for character in token)
    return shown


def test_whitespace_is_visible_and_hover_shows_the_raw_token(browser: Browser, report_page: Any) -> None:
    path, result = report_page
    browser.open(path, DRAWN)
    [boxes] = browser.evaluate(TOKEN_BOXES_JS)[1:2]  # the Semantic section
    tokens = result.str_tokens
    assert any("·" in box["text"] for box in boxes) and any("⏎" in box["text"] for box in boxes)
    for index, (box, token) in enumerate(zip(boxes, tokens)):
        assert box["title"] == f"{token!r} (token {index})\nSemantic: {float(result.scores[index]):.4g}"
    # a newline token ends its line: the next token starts further down
    newline = next(index for index, token in enumerate(tokens) if "\n" in token)
    assert boxes[newline + 1]["rect"]["y"] > boxes[newline]["rect"]["y"] + 5
    # circuitsvis's own tooltip shows the raw token too
    spaced = next(index for index, token in enumerate(tokens) if token.startswith(" "))
    rect = boxes[spaced]["rect"]
    browser.hover(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
    tooltip = browser.evaluate(
        "(() => { const views = [...document.querySelectorAll('.jscopes-tokens')].filter(v => v.offsetParent);"
        " const tip = views[1].querySelector('.colored-tokens > div strong'); return tip && tip.textContent; })()"
    )
    assert tooltip == repr(tokens[spaced])


def test_attention_head_labels_do_not_overlap(browser: Browser, report_page: Any) -> None:
    path, _ = report_page
    browser.open(path, DRAWN)
    labels = browser.evaluate(
        "[...document.querySelectorAll('h4')].filter(h => /^L\\d+H\\d+$/.test(h.textContent)).map(h =>"
        " ({label: h.getBoundingClientRect().toJSON(), thumbnail: h.parentElement.getBoundingClientRect().toJSON()}))"
    )
    assert len(labels) == build(MODEL_SPECS[0][0]).cfg.n_heads
    for index, first in enumerate(labels):
        label, thumbnail = first["label"], first["thumbnail"]
        assert thumbnail["x"] - 1 <= label["x"] and label["x"] + label["width"] <= thumbnail["x"] + thumbnail["width"] + 1
        for second in labels[index + 1 :]:
            other = second["label"]
            apart = (
                label["x"] + label["width"] <= other["x"]
                or other["x"] + other["width"] <= label["x"]
                or label["y"] + label["height"] <= other["y"]
                or other["y"] + other["height"] <= label["y"]
            )
            assert apart, (label, other)


def test_tokens_with_html_characters_render_as_text(browser: Browser, tmp_path: Path) -> None:
    tokens = ["<b>bold</b>", " &amp;", ' "q"', " a<b"]
    result = ScopeResult(
        kind="semantic",
        scores=torch.tensor([1.0, 2.0, 3.0, 4.0]),
        tokens=torch.arange(4),
        str_tokens=tokens,
        lengths=torch.tensor([4]),
        position=torch.tensor(3),
        target=None,
        prediction=Prediction(torch.tensor([1]), torch.tensor([0.5]), ["x"]),
        metadata={"layer": 0},
    )
    browser.open(result.save_html(tmp_path / "tokens.html"), DRAWN)
    [boxes] = browser.evaluate(TOKEN_BOXES_JS)
    assert [box["text"] for box in boxes] == [box_text(token) for token in tokens]
    assert browser.evaluate("document.querySelectorAll('.colored-tokens b').length") == 0


def test_a_word_level_prompt_merged_into_words_keeps_its_words(browser: Browser, tmp_path: Path) -> None:
    result = jscopes_tl.semantic_scope(models.load("recall"), RECALL)
    browser.open(result.save_html(tmp_path / "words.html", words="sum"), DRAWN)
    [boxes] = browser.evaluate(TOKEN_BOXES_JS)
    assert [box["text"] for box in boxes] == ["<bos>", "a=3", "b=7", "c=1", "b="]
    assert [display_token(t) for t in result.str_tokens] == ["&lt;bos&gt;", "a=3", "b=7", "c=1", "b="]
