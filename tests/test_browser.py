"""A real browser renders saved reports offline: headless Chromium, networking disabled.

Chromium loads the saved file from disk with every network request sent to a dead proxy, runs
circuitsvis's inlined JavaScript and dumps the resulting DOM (``--dump-dom``). The tokens must
then appear inside ``div.colored-tokens`` elements, which only circuitsvis's React components
create: text in the page source or in a script does not count.

Chromium comes from scripts/install_browser.sh (called by scripts/test.sh). In CI (``CI=true``)
a missing browser fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MODEL_SPECS, build

import jscopes_tl
from jscopes_tl.result import Prediction, ScopeResult

CHROMIUM_TIMEOUT_S = 60


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed; run scripts/install_browser.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (the browser test must run in CI)")
        pytest.skip(message)
    return path


def rendered_dom(html_path: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium with no network."""
    command = [
        chromium_path(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--proxy-server=127.0.0.1:9",  # any fetch (e.g. a CDN script) goes to a closed port
        "--proxy-bypass-list=<-loopback>",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        html_path.resolve().as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


class ColoredTokensText(HTMLParser):
    """Text of every ``div.colored-tokens`` subtree, one string per rendered token span."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.views: list[list[str]] = []
        self._depth = 0  # depth inside the current colored-tokens div (0: outside)
        self._span_depth = 0
        self._bold_inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._depth == 0:
            if tag == "div" and "colored-tokens" in (dict(attrs).get("class") or "").split():
                self._depth = 1
                self.views.append([])
            return
        if tag == "b":
            self._bold_inside = True
        if tag not in ("br",):
            self._depth += 1
        if tag == "span" and "background-color" in (dict(attrs).get("style") or ""):
            self._span_depth = self._depth
            self.views[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if self._depth == 0 or tag == "br":
            return
        if self._depth == self._span_depth:
            self._span_depth = 0
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._span_depth:
            self.views[-1][-1] += data


def colored_token_views(dom: str) -> ColoredTokensText:
    parser = ColoredTokensText()
    parser.feed(dom)
    return parser


def shown(token: str) -> str:
    """How circuitsvis displays a token: whitespace as non-breaking spaces."""
    return "".join("\xa0" if character.isspace() else character for character in token)


@pytest.fixture(scope="module")
def report_dom(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ScopeResult]:
    directory = tmp_path_factory.mktemp("browser")
    model = build(MODEL_SPECS[0][0])
    prompt = "Tom loves Korean food. He is a"
    path = directory / "report.html"
    jscopes_tl.report(model, prompt, attention_layer=0, path=path)
    return rendered_dom(path, directory / "profile"), jscopes_tl.semantic_scope(model, prompt)


def test_report_tokens_are_rendered_into_the_dom_by_javascript_offline(report_dom: tuple[str, ScopeResult]) -> None:
    dom, result = report_dom
    views = colored_token_views(dom).views
    assert len(views) == 5  # side by side, Semantic, Fisher, Temperature, gradient × input
    expected = [shown(token) for token in result.str_tokens]
    assert all(view == expected for view in views)


def test_report_heatmaps_are_drawn_offline(report_dom: tuple[str, ScopeResult]) -> None:
    dom, _ = report_dom
    # the scope matrix, the zoomed head and one thumbnail per head: chart.js canvases
    assert dom.count("<canvas") >= 2 + build(MODEL_SPECS[0][0]).cfg.n_heads


def test_tokens_with_html_characters_render_as_text_in_the_browser(tmp_path: Path) -> None:
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
    parsed = colored_token_views(rendered_dom(result.save_html(tmp_path / "tokens.html"), tmp_path / "profile"))
    assert parsed.views == [[shown(token) for token in tokens]]
    assert not parsed._bold_inside
