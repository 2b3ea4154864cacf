"""Token views and their HTML: offline pages, values, labels, colour scales, escaping."""

from __future__ import annotations

import json
import re
import sys
import types
from typing import Any

import pytest
import torch

from jscopes_tl import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.result import Prediction, ScopeResult
from jscopes_tl.views import Page, compare_view, save_html, token_view
from jscopes_tl.views.html import script_literal

PROMPT = "Tom loves Korean food. He is a"
RENDER_CALL = re.compile(r"CircuitsVis\.render\(\"([^\"]+)\", CircuitsVis\.(\w+), (.*?)\);</script>")


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


def rendered_components(page_html: str) -> list[tuple[str, dict[str, Any]]]:
    """(component name, props) of every circuitsvis render call on a page."""
    return [(name, json.loads(props)) for _, name, props in RENDER_CALL.findall(page_html)]


def test_page_with_several_views_inlines_the_bundle_once(any_model: Any) -> None:
    results = [f(any_model, PROMPT) for f in (semantic_scope, fisher_scope, temperature_scope)]
    page = Page("three", compare_view(results).blocks + token_view(results[0]).blocks + token_view(results[1]).blocks)
    html = page.to_html()
    assert html.count("var CircuitsVis=") == 1
    assert len(rendered_components(html)) == 3


def test_saved_html_loads_no_external_script(any_model: Any, tmp_path: Any) -> None:
    html = semantic_scope(any_model, PROMPT).save_html(tmp_path / "view.html").read_text(encoding="utf-8")
    assert "unpkg.com" not in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.IGNORECASE)
    assert not re.search(r"<link[^>]*https?://", html, flags=re.IGNORECASE)
    assert 'type="module"' not in html and "import " not in html.split("var CircuitsVis=")[0]


def test_token_view_passes_tokens_and_scores_to_colored_tokens(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT)
    [(name, props)] = rendered_components(result.to_html())
    assert name == "ColoredTokens"
    assert props["tokens"] == [t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for t in result.str_tokens]
    assert props["values"] == pytest.approx(result.scores.tolist())


def test_prediction_and_probabilities_are_shown_with_the_view() -> None:
    html = synthetic_result(["a", "b"], [1.0, 2.0]).to_html()
    assert "&#x27; Paris&#x27;&nbsp;(0.750)" in html
    assert "&#x27; &lt;Rome&gt;&#x27;&nbsp;(0.250)" in html


def test_unsigned_scores_use_a_sequential_scale_from_zero() -> None:
    [(_, props)] = rendered_components(synthetic_result(["a", "b", "c"], [0.5, 2.0, 1.0]).to_html())
    assert props["minValue"] == pytest.approx(-1e-7) and props["maxValue"] == pytest.approx(2.0)


def test_signed_values_use_a_diverging_scale_centred_on_zero() -> None:
    result = synthetic_result(["a", "b", "c"], [0.5, 2.0, 1.0], gradient_x_input=torch.tensor([-3.0, 1.0, 0.5]))
    [(_, props)] = rendered_components(result.to_html(values="gradient_x_input"))
    assert props["values"] == [-3.0, 1.0, 0.5]
    assert props["minValue"] == -3.0 and props["maxValue"] == 3.0


def test_log_scale_puts_the_maximum_at_the_top_and_tiny_scores_at_zero() -> None:
    [(_, props)] = rendered_components(synthetic_result(["a", "b", "c"], [1e-9, 10.0, 0.1]).to_html(log_scale=True))
    assert props["values"] == pytest.approx([0.0, 4.0, 2.0])


def test_log_scale_on_signed_values_raises() -> None:
    result = synthetic_result(["a", "b"], [1.0, 2.0], gradient_x_input=torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="log_scale"):
        result.to_html(values="gradient_x_input", log_scale=True)


def test_html_special_characters_in_tokens_are_escaped() -> None:
    tokens = ["<b>", " &", ' "q"', "a\nb", "</script>"]
    html = synthetic_result(tokens, [1.0, 2.0, 3.0, 4.0, 5.0]).to_html()
    [(_, props)] = rendered_components(html)
    assert props["tokens"] == ["&lt;b&gt;", " &amp;", ' "q"', "a\nb", "&lt;/script&gt;"]
    body = html.split("</head>", 1)[1]
    assert "<b>" not in body
    assert body.count("</script>") == body.count("<script>")


def test_script_literal_cannot_close_the_script_element() -> None:
    literal = script_literal({"token": "</script><script>alert(1)</script>&"})
    assert "<" not in literal and ">" not in literal and "&" not in literal
    assert json.loads(literal) == {"token": "</script><script>alert(1)</script>&"}


def test_several_positions_become_labelled_columns_of_one_multi_view(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT, position=[3, -1])
    [(name, props)] = rendered_components(result.to_html())
    last = len(result.str_tokens) - 1
    assert name == "ColoredTokensMulti"
    assert props["labels"] == [f"pos 3 {result.str_tokens[3]!r}", f"pos {last} {result.str_tokens[last]!r}"]
    torch.testing.assert_close(torch.tensor(props["values"]).T, result.scores)


def test_choosing_a_position_of_a_multi_position_result_shows_that_column(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT, position=[3, -1])
    [(name, props)] = rendered_components(result.to_html(position=3))
    assert name == "ColoredTokens"
    assert props["values"] == pytest.approx(result.scores[0].tolist())


def test_compare_view_labels_scopes_semantic_fisher_temperature(any_model: Any) -> None:
    results = [f(any_model, PROMPT) for f in (semantic_scope, fisher_scope, temperature_scope)]
    [(name, props)] = rendered_components(compare_view(results).to_html())
    assert name == "ColoredTokensMulti"
    assert props["labels"] == ["Semantic", "Fisher", "Temperature"]
    torch.testing.assert_close(torch.tensor(props["values"]).T, torch.stack([r.scores for r in results]))
    assert props["positiveBounds"] == pytest.approx([float(r.scores.max()) for r in results])


def test_compare_view_rejects_results_of_different_prompts(any_model: Any) -> None:
    with pytest.raises(ValueError, match="different tokens"):
        compare_view([semantic_scope(any_model, PROMPT), fisher_scope(any_model, "The cat sat")])


def test_to_html_on_a_batch_without_a_prompt_index_raises(any_model: Any) -> None:
    result = semantic_scope(any_model, [PROMPT, "The cat sat"])
    with pytest.raises(ValueError, match="prompt=i"):
        result.to_html()


def test_to_html_shows_the_chosen_prompt_of_a_batch_without_padding(any_model: Any) -> None:
    result = semantic_scope(any_model, [PROMPT, "The cat sat"])
    [(_, props)] = rendered_components(result.to_html(prompt=1))
    assert len(props["tokens"]) == int(result.lengths[1])


def test_gradient_x_input_view_of_a_result_without_it_raises() -> None:
    with pytest.raises(ValueError, match="no gradient_x_input"):
        synthetic_result(["a"], [1.0]).to_html(values="gradient_x_input")


def test_words_option_merges_sub_word_tokens_in_the_view() -> None:
    result = synthetic_result(["<|endoftext|>", "Tom", " lo", "ves", " food", "."], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    [(_, props)] = rendered_components(result.to_html(words="sum"))
    assert props["tokens"] == ["&lt;|endoftext|&gt;", "Tom", " loves", " food."]
    assert props["values"] == [1.0, 2.0, 7.0, 11.0]


def test_show_displays_the_view_through_ipython(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    display_module = types.ModuleType("IPython.display")
    display_module.display = shown.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    synthetic_result(["hello", " world"], [1.0, 2.0]).show()
    [view] = shown
    assert "hello" in view._repr_html_() and "var CircuitsVis=" in view._repr_html_()


def test_views_save_html_writes_a_self_contained_file(tmp_path: Any) -> None:
    path = save_html(synthetic_result(["hello", " world"], [1.0, 2.0]), tmp_path / "out.html")
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "var CircuitsVis=" in html and '" world"' in html
