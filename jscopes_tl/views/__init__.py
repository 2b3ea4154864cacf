"""Views of scope results: circuitsvis token views, scope-vs-attention comparison, reports.

Views are thin: they turn results into the plain lists circuitsvis takes and lay circuitsvis
components out on a :class:`Page`, which displays in Jupyter (the circuitsvis bundle sent once per
kernel) and saves as one self-contained HTML file (the bundle inlined once, so it opens offline).
No analysis happens here.
"""

from jscopes_tl.views.attention import attention_comparison_view
from jscopes_tl.views.html import Component, Page, Tabs
from jscopes_tl.views.patching import faithfulness_table_html, patching_comparison_html, standalone_html
from jscopes_tl.views.report import report
from jscopes_tl.views.tokens import compare_view, save_html, scopes_page, select_columns, token_view

__all__ = [
    "Component",
    "Page",
    "Tabs",
    "attention_comparison_view",
    "compare_view",
    "faithfulness_table_html",
    "patching_comparison_html",
    "report",
    "save_html",
    "scopes_page",
    "select_columns",
    "standalone_html",
    "token_view",
]
