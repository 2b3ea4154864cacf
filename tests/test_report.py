"""The one-page report: prompt, prediction, all three scopes, scope matrix, attention."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import MODEL_SPECS, build
from rendered import rendered_components

import jscopes_tl
from jscopes_tl.views.html import token_text

PROMPT = 'Tom & <Mary> said "hi".\nHe is a'


@pytest.fixture(scope="module")
def report_model() -> Any:
    return build(MODEL_SPECS[0][0])


@pytest.fixture(scope="module")
def report_html(report_model: Any) -> str:
    return jscopes_tl.report(report_model, PROMPT, attention_layer=0).to_html()


def test_report_shows_the_prompt_escaped_in_its_header(report_html: str) -> None:
    header = report_html[report_html.index("jscopes-header") :]
    assert "Tom &amp; &lt;Mary&gt; said &quot;hi&quot;.\nHe is a" in header[: header.index("</table>")]


def test_report_compares_all_three_scopes(report_html: str) -> None:
    tabs = re.search(r"<div class='jscopes-tablist' role='tablist'>(.*?)</div>", report_html).group(1)
    assert re.findall(r">([^<]+)</button>", tabs) == ["Semantic", "Fisher", "Temperature"]
    for heading in ("Semantic Scope", "Fisher Scope", "Temperature Scope", "Semantic Scope (gradient × input)"):
        assert f"<h2>{heading}</h2>" in report_html


def test_report_shows_the_prediction_with_probabilities(report_model: Any, report_html: str) -> None:
    result = jscopes_tl.semantic_scope(report_model, PROMPT)
    top, probability = result.prediction.str_tokens[0], float(result.prediction.probabilities[0])
    assert f"{token_text(top)}&nbsp;({probability:.3f})" in report_html


def test_report_includes_the_scope_matrix_and_the_attention_comparison(report_html: str) -> None:
    names = [component.name for component in rendered_components(report_html)]
    assert names.count("AttentionPattern") == 2  # the matrix section and the comparison
    assert names.count("AttentionHeads") == 1


def test_report_inlines_the_bundle_once_and_loads_nothing_from_the_network(report_html: str) -> None:
    assert report_html.count("var CircuitsVis=") == 1
    assert "unpkg.com" not in report_html
    assert not re.search(r"<script[^>]*\bsrc\s*=", report_html, flags=re.IGNORECASE)


def test_report_writes_the_page_when_given_a_path(report_model: Any, tmp_path: Any) -> None:
    page = jscopes_tl.report(report_model, "The cat sat", path=tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert str(page).startswith("<!DOCTYPE html>")


def test_report_rejects_an_unknown_matrix_scope(report_model: Any) -> None:
    with pytest.raises(ValueError, match="matrix_scope"):
        jscopes_tl.report(report_model, "The cat sat", matrix_scope="attention")  # type: ignore[arg-type]
