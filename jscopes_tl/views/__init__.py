"""Views of scope results: circuitsvis token views and self-contained (offline) HTML files.

Views are thin: they turn results into the plain lists circuitsvis takes and return circuitsvis's
renderable objects; no analysis happens here.
"""

from jscopes_tl.views.tokens import html_document, save_html, token_view

__all__ = ["html_document", "save_html", "token_view"]
