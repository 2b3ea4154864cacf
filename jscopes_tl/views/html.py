"""Self-contained HTML pages of circuitsvis components, with the JavaScript bundle inlined once.

circuitsvis renders each view as a ``<div>`` plus a script that calls
``CircuitsVis.render(div_id, CircuitsVis.<Component>, props)``. Its offline form
(``RenderedHTML.local_src``) inlines the whole ~1.3 MB bundle (``dist/cdn/iife.js``) into every
view, inside a module script. A page here inlines that same bundle *once*, as a classic script
that defines the global ``CircuitsVis``, and then renders any number of components with one short
script each. Nothing is fetched from the network: the page opens from disk with no server.

A small runtime (:data:`RUNTIME_JS`, a few hundred bytes) sits beside the bundle. It

* queues the render calls that run before the bundle and draws them when the bundle arrives, so
  the order of outputs does not matter (a notebook carries the bundle in one output only);
* switches tabs (:class:`Tabs`): one circuitsvis component per tab, each with its own props —
  so each tab keeps its own colour bounds;
* gives every token of a token view a hover title (its raw ``repr`` and value) and writes the raw
  token into circuitsvis's own tooltip, which would otherwise show the display string.

Notebooks (:meth:`Page._repr_html_`): the bundle goes into the first view displayed in a kernel
and into no later one; those find ``CircuitsVis`` already defined, in the live page and in the
saved notebook (or its nbconvert HTML export), where outputs run in order. The bundle is sent
again when the cell that carried it runs again (its old output is then replaced; needs a
front end that sends the cell id, as JupyterLab and Notebook 7 do) and with every view in
Colab, where each output is a separate frame. ``show(include_bundle=True)`` forces it. A view
that never gets the bundle says so in place of the drawing.

Props are embedded as JavaScript literals inside ``<script>``: ``<``, ``>`` and ``&`` in strings
are written as ``\\u003c``-style escapes, so a token such as ``</script>`` cannot end the script.
"""

from __future__ import annotations

import html
import json
import sys
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

# The document's own style: only a saved page gets it (in a notebook it would restyle the notebook).
DOCUMENT_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; max-width: 1200px; }
"""
# Everything else is scoped to the views' own classes.
PAGE_STYLE = """
.jscopes-page h1 { font-size: 1.5em; } .jscopes-page h2 { font-size: 1.2em; margin-top: 1.6em; }
.jscopes-prompt { white-space: pre-wrap; background: #f6f6f6; padding: 8px 12px; border-radius: 4px; }
.jscopes-note { color: #555; font-size: 0.9em; }
.jscopes-prompt-text { white-space: pre-wrap; }
.jscopes-table { border-collapse: collapse; font-size: 0.9em; margin: 6px 0; }
.jscopes-table td, .jscopes-table th { border: 1px solid #ddd; padding: 2px 8px; text-align: left;
  vertical-align: top; }
.jscopes-header th { font-weight: 600; color: #444; white-space: nowrap; }
.jscopes-row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.jscopes-row > div { flex: 1 1 420px; min-width: 320px; }
.jscopes-matrix { max-width: 560px; }
.jscopes-tablist { display: flex; flex-wrap: wrap; gap: 4px; margin: 8px 0 6px; }
.jscopes-tablist button { font: inherit; font-size: 0.9em; padding: 3px 10px; border: 1px solid #bbb;
  border-radius: 4px; background: #fff; color: #222; cursor: pointer; }
.jscopes-tablist button[aria-selected="true"] { background: #222; color: #fff; border-color: #222; }
.jscopes-panel { padding: 2px 0 4px; }
.jscopes-pending { color: #a33; font-size: 0.85em; }
.jscopes-tokens .colored-tokens { line-height: 1.9; padding-bottom: 12px !important; }
.jscopes-tokens .colored-tokens > span > span:first-child { margin: 0 3px 3px 0 !important;
  padding: 3px 2px !important; border-color: #c8c8c8 !important; border-radius: 2px; }
.jscopes-tokens .colored-tokens i { font-style: normal; opacity: 0.55; }
"""

# The page runtime (see the module docstring). Defined once per window; later copies do nothing.
RUNTIME_JS = """
(function () {
  if (window.jscopes) return;
  var pending = [];
  function decorate(element, hover) {
    function apply() {
      var view = element.querySelector(".colored-tokens");
      if (!view) return;
      var index = -1;
      for (var child = view.firstElementChild; child; child = child.nextElementSibling) {
        if (child.tagName === "SPAN") {
          index += 1;
          var box = child.firstElementChild;
          var title = hover.titles[index];
          if (box && title !== undefined && box.title !== title) box.title = title;
        } else if (index >= 0 && index < hover.raw.length) {
          var strong = child.querySelector("strong");
          if (strong && strong.textContent !== hover.raw[index]) strong.textContent = hover.raw[index];
        }
      }
    }
    new MutationObserver(apply).observe(element, { childList: true, subtree: true });
    apply();
  }
  function draw(job) {
    var element = document.getElementById(job.id);
    if (!element || element.getAttribute("data-jscopes-drawn")) return;
    element.setAttribute("data-jscopes-drawn", "1");
    CircuitsVis.render(job.id, CircuitsVis[job.component], job.props);
    if (job.hover) decorate(element, job.hover);
  }
  window.jscopes = {
    render: function (id, component, props, hover) {
      var job = { id: id, component: component, props: props, hover: hover };
      if (window.CircuitsVis) draw(job); else pending.push(job);
    },
    bundleLoaded: function () {
      var jobs = pending;
      pending = [];
      jobs.forEach(draw);
    }
  };
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".jscopes-tablist > button");
    if (!button) return;
    var tabs = button.parentElement.parentElement;
    var buttons = button.parentElement.children;
    var panels = [];
    for (var child = tabs.firstElementChild; child; child = child.nextElementSibling) {
      if (child.classList.contains("jscopes-panel")) panels.push(child);
    }
    for (var i = 0; i < buttons.length; i++) {
      var selected = buttons[i] === button;
      buttons[i].setAttribute("aria-selected", selected ? "true" : "false");
      if (panels[i]) panels[i].hidden = !selected;
    }
  });
})();
"""

PENDING_MESSAGE = (
    "This view is drawn by JavaScript (circuitsvis). If it stays empty: in a notebook reopened from "
    "disk, trust the notebook or re-run its cells; the circuitsvis code travels with the first "
    "jscopes_tl view displayed in the kernel (Page.show(include_bundle=True) adds it anywhere)."
)


@dataclass(frozen=True)
class Component:
    """One circuitsvis React component (e.g. ``"ColoredTokens"``) and its props.

    ``hover``: for token views, per token the hover title (``titles``) and the raw token that
    circuitsvis's tooltip shows (``raw``); see :data:`RUNTIME_JS`.

    Example:
        >>> from jscopes_tl.views import Component, Page
        >>> tokens = Component("ColoredTokens", {"tokens": ["a=3", "b="], "values": [0.2, 1.0]})
        >>> "ColoredTokens" in Page("Two tokens", [tokens]).to_html()
        True
    """

    name: str
    props: dict[str, Any]
    hover: dict[str, list[str]] | None = None


@dataclass(frozen=True)
class Tabs:
    """Panels of blocks behind a row of tab buttons; the first panel is shown.

    Example:
        >>> from jscopes_tl.views import Component, Page, Tabs
        >>> tabs = Tabs(["semantic", "fisher"], [["<p>one</p>"], ["<p>two</p>"]])
        >>> "fisher" in Page("Tabs", [tabs]).to_html()
        True
    """

    labels: list[str]
    panels: list[list[Block]]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.panels) or not self.labels:
            raise ValueError(
                f"Tabs needs one label per panel; got {len(self.labels)} labels, {len(self.panels)} panels."
            )


Block = Union[str, Component, Tabs]  # a str block is trusted HTML, already escaped by its builder


@dataclass(frozen=True)
class _NotebookBundle:
    """Which execution's output carries the bundle in this kernel (see the module docstring)."""

    cell_id: str | None
    message_id: str


_notebook_bundle: list[_NotebookBundle] = []  # at most one entry: the current owner


def _current_execution() -> tuple[str | None, str] | None:
    """(cell id, execute-request id) of the running notebook cell; None outside a Jupyter kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    get_parent = getattr(kernel, "get_parent", None)
    if get_parent is None:
        return None
    try:
        parent = get_parent() or {}
    except Exception:  # an unknown kernel's API: include the bundle rather than fail to display
        return None
    message_id = (parent.get("header") or {}).get("msg_id")
    if message_id is None:
        return None
    return (parent.get("metadata") or {}).get("cellId"), message_id


def notebook_needs_bundle() -> bool:
    """Whether the view being displayed must carry the circuitsvis bundle (and record it if so)."""
    execution = _current_execution()
    if execution is None or "google.colab" in sys.modules:
        return True
    cell_id, message_id = execution
    if _notebook_bundle:
        owner = _notebook_bundle[0]
        if owner.message_id == message_id or cell_id is None or owner.cell_id != cell_id:
            return False  # already in this execution's output, or in another cell's
    _notebook_bundle[:] = [_NotebookBundle(cell_id, message_id)]
    return True


@dataclass
class Page:
    """A sequence of HTML blocks, tabs and circuitsvis components, rendered with one inlined bundle.

    Works in Jupyter (``_repr_html_``, :meth:`show`), as a string (:meth:`to_html`) and as a file
    (:meth:`save_html`).

    Example:
        >>> from jscopes_tl.views import Component, Page
        >>> page = Page("Tokens", [Component("ColoredTokens", {"tokens": ["a", "b"], "values": [0.1, 0.9]})])
        >>> page.title, len(page.blocks)
        ('Tokens', 1)
    """

    title: str
    blocks: list[Block] = field(default_factory=list)

    def to_html(self) -> str:
        """A complete, self-contained HTML document.

        Example:
            >>> from jscopes_tl.views import token_view
            >>> html = token_view(semantic_scope(model, prompt)).to_html()
            >>> html.startswith("<!DOCTYPE html>"), "var CircuitsVis=" in html    # inlined: offline
            (True, True)
        """
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title>\n<style>{DOCUMENT_STYLE}{PAGE_STYLE}</style>\n"
            f"{runtime_script()}\n{bundle_script()}\n</head>\n<body>\n{self._body()}\n</body></html>\n"
        )

    def _body(self) -> str:
        prefix = f"jscopes-{uuid.uuid4().hex[:10]}"  # unique per rendering: notebooks hold many pages
        counter = iter(range(1 << 30))

        def render(blocks: list[Block]) -> list[str]:
            parts = []
            for block in blocks:
                if isinstance(block, str):
                    parts.append(block)
                elif isinstance(block, Component):
                    parts.append(_render_call(f"{prefix}-{next(counter)}", block))
                else:
                    parts.append(_render_tabs(block, render))
            return parts

        return "<div class='jscopes-page'>\n" + "\n".join(render(self.blocks)) + "\n</div>"

    def _repr_html_(self, include_bundle: bool | None = None) -> str:
        """The page as notebook output: its blocks, with circuitsvis's bundle unless already shown.

        Example:
            >>> from jscopes_tl.views import token_view
            >>> token_view(semantic_scope(model, prompt))._repr_html_(include_bundle=False).startswith("<")
            True
        """

        if include_bundle is None:
            include_bundle = notebook_needs_bundle()
        bundle = bundle_script() + "\n" if include_bundle else ""
        return f"<style>{PAGE_STYLE}</style>\n{runtime_script()}\n{bundle}{self._body()}"

    def __str__(self) -> str:
        return self.to_html()

    def save_html(self, path: str | Path) -> Path:
        """Write :meth:`to_html` to ``path`` (UTF-8) and return the path.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from jscopes_tl.views import token_view
            >>> out = Path(tempfile.mkdtemp()) / "view.html"
            >>> token_view(semantic_scope(model, prompt)).save_html(out) == out
            True
        """
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def show(self, include_bundle: bool | None = None) -> None:
        """Display the page in Jupyter (needs IPython: the ``notebook`` extra of jscopes_tl).

        ``include_bundle``: None (default) sends the circuitsvis bundle with the first view of a
        kernel only (see the module docstring); True always, False never.

        Example:
            >>> from jscopes_tl.views import token_view
            >>> token_view(semantic_scope(model, prompt)).show()          # a notebook shows the view
            <IPython.core.display.HTML object>
        """
        try:
            from IPython.display import HTML, display
        except ImportError as error:
            raise ImportError(
                "show() displays in Jupyter and needs IPython (pip install ipython ipykernel, or "
                "jscopes_tl's [notebook] extra); "
                "outside a notebook use to_html() or save_html(path) and open the file in a browser."
            ) from error
        display(HTML(self._repr_html_(include_bundle)))


def script_literal(value: Any) -> str:
    """``value`` as a JavaScript literal that is safe inside an HTML ``<script>`` element."""
    text = json.dumps(value, ensure_ascii=False)
    for character, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(character, escape)
    return text


def _render_call(element_id: str, component: Component) -> str:
    css_class = "jscopes-view jscopes-tokens" if component.hover is not None else "jscopes-view"
    pending = f"<span class='jscopes-pending'>{html.escape(PENDING_MESSAGE)}</span>"  # until circuitsvis draws
    return (
        f"<div id='{element_id}' class='{css_class}'>{pending}</div>\n"
        f"<script>jscopes.render({script_literal(element_id)}, {script_literal(component.name)}, "
        f"{script_literal(component.props)}, {script_literal(component.hover)});</script>"
    )


def _render_tabs(tabs: Tabs, render: Any) -> str:
    buttons = "".join(
        f"<button type='button' role='tab' aria-selected='{str(index == 0).lower()}'>{html.escape(label)}</button>"
        for index, label in enumerate(tabs.labels)
    )
    panels = "".join(
        f"<div class='jscopes-panel' role='tabpanel'{'' if index == 0 else ' hidden'}>" + "\n".join(render(panel)) + "</div>"
        for index, panel in enumerate(tabs.panels)
    )
    tablist = f"<div class='jscopes-tablist' role='tablist'>{buttons}</div>"
    return f"<div class='jscopes-tabs'>{tablist}{panels}</div>"


def runtime_script() -> str:
    return f"<script>{RUNTIME_JS}</script>"


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
    return (
        f"<script>/* circuitsvis {circuitsvis.__version__}, inlined for offline use */\n{source}\n"
        ";window.jscopes && window.jscopes.bundleLoaded();\n</script>"
    )


def text(value: Any) -> str:
    """Escape ``value`` for HTML text or attribute content."""
    return html.escape(str(value), quote=True)


def token_text(token: str) -> str:
    """A token shown readably in HTML text: its ``repr`` (quotes, ``\\n`` visible), escaped."""
    return html.escape(repr(token), quote=True)


def check_type(value: Any, expected: type, argument: str, what: str) -> None:
    """A view's argument is the object it draws (``what`` names it and where it comes from)."""
    if not isinstance(value, expected):
        raise TypeError(f"{argument} must be {what}; got {type(value).__name__}.")


def check_list_of(values: Any, expected: type, argument: str, what: str) -> list[Any]:
    """A view's list argument holds the objects it draws (one of them alone is refused, with a hint)."""
    if isinstance(values, expected):
        raise TypeError(f"{argument} must be a list of {what}s; got one {type(values).__name__}: pass [{argument[:-1] or 'it'}].")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or not hasattr(values, "__iter__"):
        raise TypeError(f"{argument} must be a list of {what}s; got {type(values).__name__}.")
    values = list(values)
    for index, value in enumerate(values):
        if not isinstance(value, expected):
            raise TypeError(f"{argument}[{index}] must be a {what}; got {type(value).__name__}.")
    return values

