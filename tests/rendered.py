"""Read the circuitsvis components a jscopes_tl page renders, from its HTML (no browser)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

RENDER_CALL = "jscopes.render("


class RenderedComponent(NamedTuple):
    element_id: str
    name: str
    props: dict[str, Any]
    hover: dict[str, list[str]] | None


def rendered_components(page_html: str) -> list[RenderedComponent]:
    """Every ``jscopes.render(id, name, props, hover)`` call of a page, in order, decoded."""
    decoder = json.JSONDecoder()
    found = []
    start = page_html.find(RENDER_CALL)
    while start != -1:
        index = start + len(RENDER_CALL)
        values = []
        for _ in range(4):
            value, index = decoder.raw_decode(page_html, index)
            values.append(value)
            index += 2 if page_html.startswith(", ", index) else 0
        assert page_html.startswith(");</script>", index), page_html[index : index + 40]
        found.append(RenderedComponent(*values))
        start = page_html.find(RENDER_CALL, index)
    return found
