"""A one-page report: one prompt, its prediction, all three scopes and the scope matrix.

:func:`report` runs the Semantic, Fisher and Temperature Scopes on one prediction, the
all-position scope matrix, and optionally the attention comparison of one layer, and lays them
out on a single self-contained page (circuitsvis bundle inlined once: it opens offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from jscopes_tl.export import check_output_path
from jscopes_tl.readouts import Target
from jscopes_tl.scopes import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.views.attention import attention_comparison_view, scope_matrix_component
from jscopes_tl.views.html import Page, text
from jscopes_tl.views.tokens import compare_view, header_block, token_view
from jscopes_tl.words import Reduction

MatrixScope = Literal["semantic", "fisher", "temperature"]


def report(
    model: Any,
    prompt: str,
    *,
    target: Target = None,
    position: int = -1,
    fisher_rank: int = 1,
    matrix_scope: MatrixScope = "fisher",
    attention_layer: int | None = None,
    words: Reduction | None = None,
    path: str | Path | None = None,
) -> Page:
    """A self-contained HTML report of all three Jacobian Scopes on ``prompt``.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the text; scopes explain the prediction at ``position`` (default: the next token).
        target: the Semantic Scope's target (see :func:`~jscopes_tl.semantic_scope`).
        fisher_rank: rank of the Fisher Scope (the paper's default is 1).
        matrix_scope: which scope fills the all-position matrix.
        attention_layer: also show the matrix beside this layer's attention heads, with correlations.
        words: ``"sum"`` / ``"max"`` merges sub-word tokens in the token views.
        path: also write the page there.

    Returns:
        The :class:`~jscopes_tl.views.html.Page`; ``.to_html()`` / ``str()`` give the HTML.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> out = Path(tempfile.mkdtemp()) / "report.html"
        >>> page = report(model, prompt, attention_layer=0, path=out)
        >>> page.title, out.exists()
        ('Jacobian Scopes report', True)
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string; got {prompt!r}.")
    if matrix_scope not in ("semantic", "fisher", "temperature"):
        raise ValueError(f"matrix_scope must be 'semantic', 'fisher' or 'temperature'; got {matrix_scope!r}.")
    if path is not None:
        check_output_path(path, "path")  # before the scopes run, not after
    semantic = semantic_scope(model, prompt, target=target, position=position)
    fisher = fisher_scope(model, prompt, rank=fisher_rank, position=position)
    temperature = temperature_scope(model, prompt, position=position)
    if matrix_scope == "semantic":
        matrix_result = semantic_scope(model, prompt, position="all")
    elif matrix_scope == "fisher":
        matrix_result = fisher_scope(model, prompt, rank=fisher_rank, position="all")
    else:
        matrix_result = temperature_scope(model, prompt, position="all")

    title = "Jacobian Scopes report"
    page = Page(title, [f"<h1>{text(title)}</h1>", header_block([semantic, fisher, temperature])])
    page.blocks += compare_view([semantic, fisher, temperature], words=words, header=False).blocks
    page.blocks += token_view(semantic, words=words, header=False).blocks
    page.blocks += token_view(fisher, words=words, log_scale=True, header=False).blocks
    page.blocks += token_view(temperature, words=words, header=False).blocks
    if semantic.gradient_x_input is not None:
        page.blocks += token_view(semantic, values="gradient_x_input", words=words, header=False).blocks
    page.blocks += [
        f"<h2>{text(matrix_scope.capitalize())} Scope matrix (every prediction position)</h2>"
        "<p class='jscopes-note'>Rows: prediction position; columns: source token; each row divided by its sum.</p>"
        "<div class='jscopes-matrix'>",
        scope_matrix_component(matrix_result.scores, matrix_result.str_tokens),
        "</div>",
    ]
    if attention_layer is not None:
        page.blocks += attention_comparison_view(model, matrix_result, layer=attention_layer).blocks
    if path is not None:
        page.save_html(path)
    return page
