"""Self-contained HTML pages of circuitsvis components, with the JavaScript bundle inlined once.

circuitsvis renders each view as a ``<div>`` plus a script that calls
``CircuitsVis.render(div_id, CircuitsVis.<Component>, props)``. Its offline form
(``RenderedHTML.local_src``) inlines the whole ~1.3 MB bundle (``dist/cdn/iife.js``) into every
view, inside a module script. A page here inlines that same bundle *once*, as a classic script
that defines the global ``CircuitsVis``, and then renders any number of components with one short
script each. Nothing is fetched from the network: the page opens from disk with no server.

Props are embedded as JavaScript literals inside ``<script>``: ``<``, ``>`` and ``&`` in strings
are written as ``\\u003c``-style escapes, so a token such as ``</script>`` cannot end the script.
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

PAGE_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; max-width: 1200px; }
.jscopes-page h1 { font-size: 1.5em; } .jscopes-page h2 { font-size: 1.2em; margin-top: 1.6em; }
.jscopes-prompt { white-space: pre-wrap; background: #f6f6f6; padding: 8px 12px; border-radius: 4px; }
.jscopes-note { color: #555; font-size: 0.9em; }
.jscopes-table { border-collapse: collapse; font-size: 0.9em; margin: 6px 0; }
.jscopes-table td, .jscopes-table th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
.jscopes-row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.jscopes-row > div { flex: 1 1 420px; min-width: 320px; }
.jscopes-matrix { max-width: 560px; }
"""


@dataclass(frozen=True)
class Component:
    """One circuitsvis React component (e.g. ``"ColoredTokens"``) and its props."""

    name: str
    props: dict[str, Any]


Block = Union[str, Component]  # a str block is trusted HTML, already escaped by its builder


@dataclass
class Page:
    """A sequence of HTML blocks and circuitsvis components, rendered with one inlined bundle.

    Works in Jupyter (``_repr_html_``), as a string (:meth:`to_html`) and as a file
    (:meth:`save_html`).
    """

    title: str
    blocks: list[Block] = field(default_factory=list)

    def to_html(self) -> str:
        """A complete, self-contained HTML document."""
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title>\n<style>{PAGE_STYLE}</style>\n"
            f"{bundle_script()}\n</head>\n<body>\n{self._body()}\n</body></html>\n"
        )

    def _body(self) -> str:
        prefix = f"jscopes-{uuid.uuid4().hex[:10]}"  # unique per rendering: notebooks hold many pages
        parts = []
        for number, block in enumerate(self.blocks):
            parts.append(block if isinstance(block, str) else _render_call(f"{prefix}-{number}", block))
        return "<div class='jscopes-page'>\n" + "\n".join(parts) + "\n</div>"

    def _repr_html_(self) -> str:
        return f"<style>{PAGE_STYLE}</style>\n{bundle_script()}\n{self._body()}"

    def __str__(self) -> str:
        return self.to_html()

    def save_html(self, path: str | Path) -> Path:
        """Write :meth:`to_html` to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def show(self) -> None:
        """Display the page in Jupyter (needs IPython)."""
        try:
            from IPython.display import display
        except ImportError as error:
            raise ImportError(
                "show() displays in Jupyter and needs IPython; outside a notebook use to_html() or "
                "save_html(path) and open the file in a browser."
            ) from error
        display(self)


def script_literal(value: Any) -> str:
    """``value`` as a JavaScript literal that is safe inside an HTML ``<script>`` element."""
    text = json.dumps(value, ensure_ascii=False)
    for character, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(character, escape)
    return text


def _render_call(element_id: str, component: Component) -> str:
    return (
        f"<div id='{element_id}' class='jscopes-view'></div>\n"
        f"<script>CircuitsVis.render({script_literal(element_id)}, CircuitsVis.{component.name}, "
        f"{script_literal(component.props)});</script>"
    )


@lru_cache(maxsize=1)
def bundle_script() -> str:
    """circuitsvis's browser bundle as one classic ``<script>`` that defines ``CircuitsVis``."""
    import circuitsvis

    bundle_path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not bundle_path.exists():
        raise RuntimeError(
            f"circuitsvis {circuitsvis.__version__} has no bundled JavaScript at {bundle_path}; "
            "reinstall circuitsvis (a wheel from PyPI ships it)."
        )
    source = bundle_path.read_text(encoding="utf-8")
    # '</script' anywhere in the code would end the element; '<\/script' is the same JS string.
    source = source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    source = source.replace("//# sourceMappingURL=iife.js.map", "")
    return f"<script>/* circuitsvis {circuitsvis.__version__}, inlined for offline use */\n{source}\n</script>"


def text(value: Any) -> str:
    """Escape ``value`` for HTML text or attribute content."""
    return html.escape(str(value), quote=True)


def token_text(token: str) -> str:
    """A token shown readably in HTML text: its ``repr`` (quotes, ``\\n`` visible), escaped."""
    return html.escape(repr(token), quote=True)
