"""Token views and their HTML: offline pages, values, labels, colour scales, escaping, headers.

What the browser draws from these pages is checked in tests/test_browser.py; here the HTML and
the props handed to circuitsvis are checked against the results they come from.
"""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any

import pytest
import torch
from rendered import rendered_components

from jscopes_tl import fisher_scope, models, semantic_scope, temperature_scope
from jscopes_tl.result import Prediction, ScopeResult
from jscopes_tl.views import Page, Tabs, compare_view, save_html, scopes_page, token_view
from jscopes_tl.views import html as page_html
from jscopes_tl.views.html import script_literal
from jscopes_tl.views.tokens import display_token

PROMPT = "Tom loves Korean food. He is a"
RECALL = "a=3 b=7 c=1 b="


def synthetic_result(str_tokens: list[str], scores: list[float], **fields: Any) -> ScopeResult:
    """A one-prompt, one-position result built by hand (no model needed)."""
    n = len(str_tokens)
    defaults: dict[str, Any] = dict(
        kind="semantic",
        scores=torch.tensor(scores),
        tokens=torch.arange(n),
        str_tokens=str_tokens,
        lengths=torch.tensor([n]),
        position=torch.tensor(n - 1),
        target=None,
        prediction=Prediction(torch.tensor([7, 8]), torch.tensor([0.75, 0.25]), [" Paris", " <Rome>"]),
        metadata={"layer": 0},
    )
    defaults.update(fields)
    return ScopeResult(**defaults)


@pytest.fixture(scope="module")
def recall_model() -> Any:
    return models.load("recall")


def test_page_with_several_views_inlines_the_bundle_once(any_model: Any) -> None:
    results = [f(any_model, PROMPT) for f in (semantic_scope, fisher_scope, temperature_scope)]
    page = Page("three", compare_view(results).blocks + token_view(results[0]).blocks + token_view(results[1]).blocks)
    html = page.to_html()
    assert html.count("var CircuitsVis=") == 1
    assert [c.name for c in rendered_components(html)] == ["ColoredTokens"] * 5  # three tabs, two single views


def test_saved_html_loads_no_external_script(any_model: Any, tmp_path: Any) -> None:
    html = semantic_scope(any_model, PROMPT).save_html(tmp_path / "view.html").read_text(encoding="utf-8")
    assert "unpkg.com" not in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.IGNORECASE)
    assert not re.search(r"<link[^>]*https?://", html, flags=re.IGNORECASE)
    assert 'type="module"' not in html and "import " not in html.split("var CircuitsVis=")[0]


def test_token_view_passes_tokens_and_scores_to_colored_tokens(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT)
    [component] = rendered_components(result.to_html())
    assert component.name == "ColoredTokens"
    assert component.props["tokens"] == [display_token(t) for t in result.str_tokens]
    assert component.props["values"] == pytest.approx(result.scores.tolist())


def test_prediction_and_probabilities_are_shown_with_the_view() -> None:
    html = synthetic_result(["a", "b"], [1.0, 2.0]).to_html()
    assert "&#x27; Paris&#x27;&nbsp;(0.750)" in html
    assert "&#x27; &lt;Rome&gt;&#x27;&nbsp;(0.250)" in html


def test_unsigned_scores_use_a_sequential_scale_from_zero() -> None:
    [component] = rendered_components(synthetic_result(["a", "b", "c"], [0.5, 2.0, 1.0]).to_html())
    assert component.props["minValue"] == pytest.approx(-1e-7) and component.props["maxValue"] == pytest.approx(2.0)


def test_signed_values_use_a_diverging_scale_centred_on_zero() -> None:
    result = synthetic_result(["a", "b", "c"], [0.5, 2.0, 1.0], gradient_x_input=torch.tensor([-3.0, 1.0, 0.5]))
    [component] = rendered_components(result.to_html(values="gradient_x_input"))
    assert component.props["values"] == [-3.0, 1.0, 0.5]
    assert component.props["minValue"] == -3.0 and component.props["maxValue"] == 3.0


def test_log_scale_puts_the_maximum_at_the_top_and_tiny_scores_at_zero() -> None:
    [component] = rendered_components(synthetic_result(["a", "b", "c"], [1e-9, 10.0, 0.1]).to_html(log_scale=True))
    assert component.props["values"] == pytest.approx([0.0, 4.0, 2.0])


def test_log_scale_hover_titles_give_the_scores_themselves() -> None:
    [component] = rendered_components(synthetic_result(["a", "b", "c"], [1e-9, 10.0, 0.1]).to_html(log_scale=True))
    assert [title.splitlines()[1] for title in component.hover["titles"]] == ["Semantic: 1e-09", "Semantic: 10", "Semantic: 0.1"]


def test_log_scale_on_signed_values_raises() -> None:
    result = synthetic_result(["a", "b"], [1.0, 2.0], gradient_x_input=torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="log_scale"):
        result.to_html(values="gradient_x_input", log_scale=True)


def test_html_special_characters_in_tokens_are_escaped() -> None:
    tokens = ["<b>", " &", ' "q"', "a\nb", "</script>"]
    html = synthetic_result(tokens, [1.0, 2.0, 3.0, 4.0, 5.0]).to_html()
    [component] = rendered_components(html)
    assert component.props["tokens"] == ["&lt;b&gt;", "<i>·</i>&amp;", '<i>·</i>"q"', "a<i>⏎</i>\nb", "&lt;/script&gt;"]
    assert component.hover["raw"] == [repr(token) for token in tokens]
    body = html.split("</head>", 1)[1]
    assert "<b>" not in body
    assert body.count("</script>") == body.count("<script>")


def test_whitespace_is_shown_as_glyphs_and_a_newline_still_breaks_the_line() -> None:
    assert display_token(" cat") == "<i>·</i>cat"
    assert display_token("\n") == "<i>⏎</i>\n"  # circuitsvis starts a new line after a token with "\n"
    assert display_token("\t\r") == "<i>⇥</i><i>␍</i>"
    assert display_token("a\u00a0b") == "a<i>·</i>b"


def test_hover_titles_name_the_raw_token_its_index_and_value() -> None:
    [component] = rendered_components(synthetic_result(["<bos>", " the", "\n"], [0.5, 2.0, 0.25]).to_html())
    assert component.hover["titles"] == ["'<bos>' (token 0)\nSemantic: 0.5", "' the' (token 1)\nSemantic: 2", "'\\n' (token 2)\nSemantic: 0.25"]


def test_script_literal_cannot_close_the_script_element() -> None:
    literal = script_literal({"token": "</script><script>alert(1)</script>&"})
    assert "<" not in literal and ">" not in literal and "&" not in literal
    assert json.loads(literal) == {"token": "</script><script>alert(1)</script>&"}


def test_several_positions_become_tabs_each_with_its_own_colour_bound(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT, position=[3, -1])
    html = result.to_html()
    components = rendered_components(html)
    last = len(result.str_tokens) - 1
    assert [c.name for c in components] == ["ColoredTokens", "ColoredTokens"]
    for component, row in zip(components, result.scores):
        assert component.props["values"] == pytest.approx(row.tolist())
        assert component.props["maxValue"] == pytest.approx(float(row.max()))
    labels = [unescape(label) for label in re.findall(r"<button type='button' role='tab'[^>]*>([^<]*)</button>", html)]
    assert labels == [f"pos 3 {result.str_tokens[3]!r}", f"pos {last} {result.str_tokens[last]!r}"]


def test_choosing_a_position_of_a_multi_position_result_shows_that_column(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT, position=[3, -1])
    [component] = rendered_components(result.to_html(position=3))
    assert component.name == "ColoredTokens"
    assert component.props["values"] == pytest.approx(result.scores[0].tolist())


def test_compare_view_gives_each_scope_its_own_tab_and_colour_bound(any_model: Any) -> None:
    results = [f(any_model, PROMPT) for f in (semantic_scope, fisher_scope, temperature_scope)]
    page = compare_view(results)
    [tabs] = [block for block in page.blocks if isinstance(block, Tabs)]
    assert tabs.labels == ["Semantic", "Fisher", "Temperature"]
    components = rendered_components(page.to_html())
    for component, result in zip(components, results):
        assert component.props["values"] == pytest.approx(result.scores.tolist())
        assert component.props["maxValue"] == pytest.approx(float(result.scores.max()))


def test_compare_view_rejects_results_of_different_prompts(any_model: Any) -> None:
    with pytest.raises(ValueError, match="different tokens"):
        compare_view([semantic_scope(any_model, PROMPT), fisher_scope(any_model, "The cat sat")])


def test_scopes_page_shows_every_scope_at_every_position(recall_model: Any) -> None:
    results = [f(recall_model, RECALL, position="all") for f in (semantic_scope, fisher_scope, temperature_scope)]
    html = scopes_page(results).to_html()
    components = rendered_components(html)
    assert len(components) == 3 * 5
    for index, component in enumerate(components):
        assert component.props["values"] == pytest.approx(results[index // 5].scores[index % 5].tolist())
    for heading in ("Semantic Scope", "Fisher Scope", "Temperature Scope"):
        assert f"<h2>{heading}</h2>" in html


def test_header_names_the_model_prompt_position_target_and_settings(recall_model: Any) -> None:
    results = [
        semantic_scope(recall_model, RECALL, target=("7", "3")),
        fisher_scope(recall_model, RECALL, rank=2),
        temperature_scope(recall_model, RECALL),
    ]
    html = compare_view(results).to_html()
    header = html[html.index("jscopes-header") : html.index("</table>", html.index("jscopes-header"))]
    assert "<th>model</th><td>recall</td>" in header
    assert "a=3 b=7 c=1 b=" in header and "(5 tokens)" in header
    assert "4 (after &#x27;b=&#x27;)" in header
    assert "logit difference &#x27;7&#x27; − &#x27;3&#x27;" in header
    assert "rank 2" in header and "tail_tolerance 1e-06" in header and "truncation bound" in header
    assert "final norm folded into W_U: no" in header


def test_header_says_when_the_target_is_the_models_top_prediction(recall_model: Any) -> None:
    html = semantic_scope(recall_model, RECALL).to_html()
    assert "target &#x27;7&#x27; (the model&#x27;s top-1 prediction)" in html


def test_to_html_on_a_batch_without_a_prompt_index_raises(any_model: Any) -> None:
    result = semantic_scope(any_model, [PROMPT, "The cat sat"])
    with pytest.raises(ValueError, match="prompt=i"):
        result.to_html()


def test_to_html_shows_the_chosen_prompt_of_a_batch_without_padding(any_model: Any) -> None:
    result = semantic_scope(any_model, [PROMPT, "The cat sat"])
    [component] = rendered_components(result.to_html(prompt=1))
    assert len(component.props["tokens"]) == int(result.lengths[1])
    assert "The cat sat" in result.to_html(prompt=1)


def test_gradient_x_input_view_of_a_result_without_it_raises() -> None:
    with pytest.raises(ValueError, match="no gradient_x_input"):
        synthetic_result(["a"], [1.0]).to_html(values="gradient_x_input")


def test_words_option_merges_sub_word_tokens_in_the_view() -> None:
    result = synthetic_result(["<|endoftext|>", "Tom", " lo", "ves", " food", "."], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    html = result.to_html(words="sum")
    [component] = rendered_components(html)
    assert "at spaces and punctuation" in html  # a result without the tokenizer's boundaries
    assert component.props["tokens"] == ["&lt;|endoftext|&gt;", "Tom", "<i>·</i>loves", "<i>·</i>food."]
    assert component.props["values"] == [1.0, 2.0, 7.0, 11.0]
    assert component.hover["titles"][2] == "' loves' (tokens 2–3)\nSemantic: 7"


def test_words_option_keeps_the_words_of_a_word_level_tokenizer_apart(recall_model: Any) -> None:
    result = semantic_scope(recall_model, RECALL)
    html = result.to_html(words="sum")
    [component] = rendered_components(html)
    assert "at the tokenizer's word boundaries" in html
    assert component.props["tokens"] == ["&lt;bos&gt;", "a=3", "b=7", "c=1", "b="]
    assert component.props["values"] == pytest.approx(result.scores.tolist())


def test_show_displays_the_page_through_ipython(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    shown: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    synthetic_result(["hello", " world"], [1.0, 2.0]).show()
    [view] = shown
    assert "hello" in view.data and "var CircuitsVis=" in view.data  # outside a kernel: always the bundle


def test_a_result_as_a_cells_last_expression_renders_its_view() -> None:
    assert "jscopes.render(" in synthetic_result(["hello", " world"], [1.0, 2.0])._repr_html_()


def test_a_batch_result_falls_back_to_its_plain_repr_in_a_notebook(any_model: Any) -> None:
    assert semantic_scope(any_model, [PROMPT, "The cat sat"])._repr_html_() is None


def test_views_save_html_writes_a_self_contained_file(tmp_path: Any) -> None:
    path = save_html(synthetic_result(["hello", " world"], [1.0, 2.0]), tmp_path / "out.html")
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "var CircuitsVis=" in html
    assert rendered_components(html)[0].props["tokens"] == ["hello", "<i>·</i>world"]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str]]:
    """A fake Jupyter kernel: set ``kernel[0] = (cell id, execute-request id)`` before each display."""
    execution: list[tuple[str | None, str]] = [("cell-a", "run-1")]
    monkeypatch.setattr(page_html, "_current_execution", lambda: execution[0])
    monkeypatch.setattr(page_html, "_notebook_bundle", [])
    return execution


def test_notebook_gets_the_bundle_with_the_first_view_of_a_kernel_only(kernel: list) -> None:
    page = Page("view", ["<p>x</p>"])
    assert "var CircuitsVis=" in page._repr_html_()
    assert "var CircuitsVis=" not in page._repr_html_()  # a second view in the same cell run
    kernel[0] = ("cell-b", "run-2")
    assert "var CircuitsVis=" not in page._repr_html_()


def test_notebook_sends_the_bundle_again_when_its_cell_runs_again(kernel: list) -> None:
    page = Page("view", ["<p>x</p>"])
    page._repr_html_()
    kernel[0] = ("cell-a", "run-2")  # the cell that carried it runs again: its old output goes
    assert "var CircuitsVis=" in page._repr_html_()
    kernel[0] = ("cell-b", "run-3")
    assert "var CircuitsVis=" not in page._repr_html_()


def test_show_can_force_the_bundle(kernel: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    shown: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    page = Page("view", ["<p>x</p>"])
    page.show()
    page.show()
    page.show(include_bundle=True)
    assert ["var CircuitsVis=" in view.data for view in shown] == [True, False, True]


def test_notebook_output_styles_only_its_own_elements() -> None:
    fragment = Page("view", ["<p>x</p>"])._repr_html_(include_bundle=False)
    style = re.search(r"<style>(.*?)</style>", fragment, flags=re.DOTALL).group(1)
    selectors = [rule.split("{")[0] for rule in re.sub(r"\{[^}]*\}", "{}\n", style).split("\n") if "{" in rule]
    assert selectors and all(s.strip().startswith(".jscopes") for group in selectors for s in group.split(","))


def test_show_without_ipython_says_what_to_install_and_what_to_use_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "IPython.display", None)  # as if IPython were not installed
    with pytest.raises(ImportError, match="pip install ipython ipykernel.*save_html"):
        synthetic_result(["hello"], [1.0]).show()
