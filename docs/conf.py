"""Sphinx configuration of the jscopes_tl documentation (``bash scripts/docs.sh`` builds it).

User-guide pages are MyST Markdown (``docs/*.md``, ``docs/guide``), the API reference is generated
from the docstrings by autodoc + napoleon (``docs/api``), and the tutorial notebook
(``docs/tutorial.ipynb``, a link to ``demos/tutorial.ipynb``, stored without outputs) is executed by
myst-nb on every build, in a kernel of the interpreter that runs the build. Its circuitsvis views
carry the circuitsvis JavaScript inline (``jscopes_tl.views.html``), so the built pages open
offline, from ``file://``, and fetch nothing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

project = "jscopes_tl"
author = "the jscopes_tl authors"
copyright = "the jscopes_tl authors"
release = version = installed_version("jscopes_tl")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # docs/crossref.py

extensions = [
    "myst_nb",  # Markdown pages (myst-parser) and executed notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "crossref",  # docs/crossref.py: references by another import path of a documented object
]
root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = True  # every cross-reference must resolve (scripts/docs.sh builds with -W -n)

# ----------------------------------------------------------------------------------------- MyST
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links to headings are resolved and checked

# ------------------------------------------------------------------------------------- notebooks
# "force": the tutorial is executed in every build, so its outputs are those of the code being
# documented (a cache keyed on the notebook alone could show outputs of older code).
nb_execution_mode = "force"
# A copy of the tutorial executed moments ago, shown instead of executing it again: tests/test_docs.py
# passes (-D) the one tests/test_notebook.py executes in the same test session.
jscopes_executed_tutorial = ""
nb_execution_timeout = 300
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True


def _kernel_of_this_interpreter() -> str:
    """A kernel spec running this very interpreter, so the notebook runs in the build's environment
    (a "python3" spec elsewhere on the machine could start another one)."""
    directory = Path(tempfile.mkdtemp(prefix="jscopes-docs-kernel-"))
    spec = directory / "kernels" / "jscopes-docs"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "jscopes_tl docs", "language": "python"}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(directory), os.environ.get("JUPYTER_PATH")]))
    return "jscopes-docs"


nb_kernel_rgx_aliases = {".*": _kernel_of_this_interpreter()}

# --------------------------------------------------------------------------------------- autodoc
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Types of other libraries: there are no intersphinx inventories offline (the build has no
# network), so references to them stay plain text. Every reference into jscopes_tl must resolve.
_EXTERNAL = r"(torch|numpy|np|pandas|pd|transformer_lens|transformers|datasets|jaxtyping|pyarrow|circuitsvis|IPython|collections|typing|pathlib|random|os|enum|dataclasses|abc|concurrent|threading|weakref)"
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL + r"(\..*)?"),
    (r"py:(class|obj)", r"(Float|Int|Bool|Tensor|Any|Callable|Sequence|Mapping|Iterable|Iterator|Literal|Path|DataFrame|ndarray|Module)"),
    # Not names: the words of jaxtyping shape strings (Float[Tensor, "n_layers pos"]) and of prose
    # that napoleon reads as a type; a Python name has no quote and no space.
    (r"py:(class|obj)", r"(.*['\"\s].*|)"),
    # Private helpers (a leading underscore) are not part of the reference; docstrings that name
    # them for readers of the code render the name as text.
    (r"py:.*", r"(.+\.)?_[A-Za-z]\w*"),
]


# --------------------------------------------------------------------------------------- doctest
# `sphinx-build -b doctest` (the second step of scripts/docs.sh) runs the pages' ```{doctest}
# blocks and every `>>>` block of every docstring the API reference shows (napoleon turns an
# "Example:" section into such a block; doctest_test_doctest_blocks makes each one a test), so no
# example rots. The blocks of one page share a namespace, which starts as this one: `model` (the
# bundled recall model), `prompt` and the top-level names of jscopes_tl (`from jscopes_tl import *`,
# as a reader of the reference would); an example imports what else it needs, and rebinds neither
# `model` nor `prompt`. tests/test_docstring_examples.py checks that every documented function,
# class and method has one.
doctest_global_setup = """
import torch
from jscopes_tl import *
from jscopes_tl import models
model = models.load("recall")
prompt = "a=3 b=7 c=1 b="
"""
doctest_test_doctest_blocks = "default"


# ------------------------------------------------------------------------------------------ HTML
html_theme = "furo"
html_title = f"jscopes_tl {release}"


def _use_executed_tutorial(app: Any, config: Any) -> None:
    if config.jscopes_executed_tutorial:
        config.nb_execution_mode = "off"


def _read_executed_tutorial(app: Any, docname: str, source: list[str]) -> None:
    if docname == "tutorial" and app.config.jscopes_executed_tutorial:
        source[0] = Path(app.config.jscopes_executed_tutorial).read_text(encoding="utf-8")


def setup(app: Any) -> None:
    app.add_config_value("jscopes_executed_tutorial", "", "env")
    app.connect("config-inited", _use_executed_tutorial)
    app.connect("source-read", _read_executed_tutorial)
