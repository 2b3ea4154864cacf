"""Regenerate the pictures of the README and the docs: docs/main_job.png and docs/report.png.

Runs the README's main job (the three scopes of the bundled ``recall`` model) and a report on the
bundled ``induction`` model, opens both in headless Chromium (tests/browser.py) and saves
screenshots of what a reader sees first.

    .venv/bin/python scripts/docs_screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser  # noqa: E402

import jscopes_tl  # noqa: E402
from jscopes_tl import models  # noqa: E402
from jscopes_tl.cli import main as jscopes  # noqa: E402

DRAWN = "[...document.querySelectorAll('.jscopes-view')].every(v => v.getAttribute('data-jscopes-drawn'))"


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        scope = work / "scope.html"
        jscopes(["scope", "a=3 b=7 c=1 b=", "--model", "recall", "--kind", "all", "--out", str(scope)])
        prompt = models.get_task("induction").labelled_prompts(1, seed=3)[0].text
        report = jscopes_tl.report(models.load("induction"), prompt, attention_layer=0, path=work / "report.html")
        with Browser(work / "profile", width=900, height=430) as browser:
            browser.open(scope, DRAWN)
            browser.screenshot(ROOT / "docs" / "main_job.png", full_page=False)
            browser.resize(1100, 1500)
            browser.open(work / "report.html", DRAWN)
            browser.screenshot(ROOT / "docs" / "report.png", full_page=False)
        print(f"wrote docs/main_job.png and docs/report.png ({report.title})")


if __name__ == "__main__":
    main()
