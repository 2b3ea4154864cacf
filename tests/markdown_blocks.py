"""The code of Markdown pages (the README, the docs' pages), read the way tests run it.

* ``python`` blocks: run in order in one namespace per page (:func:`run_python_blocks`);
* ``bash`` blocks: one command a line, a trailing ``# comment`` allowed (:func:`command_lines`);
  a ``jscopes`` command (``.venv/bin/jscopes``, or ``-m jscopes_tl.cli`` under ``torchrun``) runs
  through the CLI's own ``main`` (:func:`jscopes_argv`);
* other fences (``text``, ``{doctest}``, ``{eval-rst}``, ``{toctree}``, ...) are not run here
  (doctest blocks run in the docs build: tests/test_docs.py).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


def section(text: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of the same or a higher level."""
    level = heading.split()[0]
    start = text.index(f"\n{heading}\n")
    following = re.search(rf"\n#{{1,{len(level)}}} ", text[start + len(heading) + 2 :])
    return text[start : start + len(heading) + 2 + (following.start() if following else len(text))]


def code_blocks(text: str, language: str) -> list[str]:
    """The contents of the fenced blocks of ``language``, in order (indented fences included)."""
    return [body for info, body in FENCE.findall(dedent_fences(text)) if info.strip() == language]


def dedent_fences(text: str) -> str:
    """Fences inside list items (indented) as top-level ones, their contents dedented alike."""
    lines, out, indent = text.splitlines(keepends=True), [], None
    for line in lines:
        stripped = line.lstrip(" ")
        if indent is None and stripped.startswith("```") and stripped.strip() != "```":
            indent = len(line) - len(stripped)
            out.append(stripped)
        elif indent is not None:
            out.append(line[indent:] if line[:indent].strip() == "" else line)
            if stripped.strip() == "```":
                indent = None
        else:
            out.append(line)
    return "".join(out)


def run_python_blocks(text: str) -> dict[str, Any]:
    """Every ``python`` block of ``text``, in order, in one fresh namespace (returned)."""
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for number, block in enumerate(code_blocks(text, "python"), start=1):
        try:
            exec(compile(block, f"<python block {number}>", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"python block {number} failed:\n{block}") from error
    return namespace


def command_lines(text: str) -> list[str]:
    """Every line of every ``bash`` block of ``text``, comments kept (for messages)."""
    return [line for block in code_blocks(text, "bash") for line in block.splitlines() if line.strip()]


def jscopes_argv(line: str) -> list[str] | None:
    """The arguments of a ``jscopes`` command line (plain, ``.venv/bin/jscopes``, or
    ``... -m jscopes_tl.cli ...`` as torchrun runs it); None for any other command."""
    words = shlex.split(line, comments=True)
    if words and Path(words[0]).name == "jscopes":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] in (["jscopes_tl.cli"], ["jscopes_tl"]):
        return words[words.index("-m") + 2 :]
    return None
