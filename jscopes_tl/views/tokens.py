"""Token views of scope results (circuitsvis), and self-contained HTML files.

Views are thin: they turn a :class:`~jscopes_tl.result.ScopeResult` into the plain lists
circuitsvis takes and return circuitsvis's renderable object. Saved HTML inlines circuitsvis's
bundled JavaScript (``RenderedHTML.local_src``), so a file opens offline with no server.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from jscopes_tl.result import ScopeResult


def token_view(result: ScopeResult) -> Any:
    """One prompt, one position: the tokens coloured by score (circuitsvis ``colored_tokens``)."""
    from circuitsvis.tokens import colored_tokens

    if result.scores.ndim != 1:
        raise ValueError(
            f"token_view shows one prompt at one position; scores have shape {tuple(result.scores.shape)}. "
            "Index the result first."
        )
    values = result.scores[: len(result.str_tokens)].tolist()
    return colored_tokens(result.str_tokens, values, min_value=0.0, max_value=max(values) or 1.0)


def html_document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def save_html(result: ScopeResult, path: str | Path) -> Path:
    """Write a self-contained HTML view of ``result`` (works offline)."""
    path = Path(path)
    prediction = result.prediction
    heading = (
        f"<h3>{html.escape(result.kind.capitalize())} Scope</h3>"
        f"<p>prediction: {html.escape(repr(prediction.str_tokens[0]))} "
        f"(p = {float(prediction.probabilities[0]):.3f})</p>"
    )
    path.write_text(html_document(f"{result.kind} scope", heading + token_view(result).local_src), encoding="utf-8")
    return path
