"""The documentation's pages work as written: every Python block and every command.

Each page under docs/ (the user guide, getting started, development, ...) is run the way
tests/test_readme.py runs the README (tests/markdown_blocks.py): its ``python`` blocks in order in
one fresh namespace, in an empty working directory beside a link to demos/; each line of its
``bash`` blocks that is a ``jscopes`` command through the CLI's ``main``. A command that cannot
run here — it needs a GPU, the hub, the authors' data or minutes of CPU — is in NOT_RUN with the
reason, and ``jscopes`` commands among them are still parsed, so their options exist. A command
neither run nor listed fails, and so does a NOT_RUN entry no page has any more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from markdown_blocks import code_blocks, command_lines, jscopes_argv, run_python_blocks

from jscopes_tl.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.md") if "_build" not in path.parts)

# A substring of the command line -> why it is not run here.
NOT_RUN = {
    "torchrun --standalone --nproc-per-node 8": "8 GPUs (two gloo ranks on CPU: tests/test_runs.py)",
    "--model meta-llama/Llama-3.2-1B": "a hub checkpoint (the paper's model)",
    "lambada_prompts_1000.json": "the authors' passage file",
    "ground-truth --prompts 100": "minutes on a CPU (tests/test_cli.py runs ground-truth on few prompts)",
    "python scripts/train_bundled_models.py": "retrains the bundled models: minutes",
    "python -m jscopes_tl.models.train induction": "retrains a bundled model: minutes",
    "bash scripts/docs.sh": "the docs build itself (tests/test_docs.py)",
}


def examples_keep_their_promises(namespace: dict[str, Any], directory: Path) -> None:
    """What the comments of "Every public function, one example each" promise."""
    model, prompt = namespace["model"], namespace["prompt"]
    top = [(index, token, round(score, 3)) for index, token, score in namespace["result"].top_tokens(2)]
    assert top == [(2, "b=7", 5.65), (4, "b=", 0.954)]
    custom = namespace["jacobian_scope"](model, prompt, namespace["unit_hidden_state"], kind="my-temperature")
    torch.testing.assert_close(custom.scores, namespace["temperature_scope"](model, prompt).scores)
    assert {"semantic.html", "fisher.html", "report.html"} <= {path.name for path in directory.iterdir()}


def scopes_keep_their_promises(namespace: dict[str, Any], directory: Path) -> None:
    assert namespace["result"].metadata["numerics"]["perturbation_hook"] == "blocks.0.hook_resid_pre"
    assert [token for _, token, _ in namespace["contrast"].top_tokens(1)] == ["b=7"]


PROMISES = {"guide/examples.md": examples_keep_their_promises, "guide/scopes.md": scopes_keep_their_promises}


def page_id(path: Path) -> str:
    return path.relative_to(DOCS).as_posix()


@pytest.fixture
def in_empty_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    (tmp_path / "demos").symlink_to(ROOT / "demos")  # the pages' commands run from the repository root
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", [path for path in PAGES if code_blocks(path.read_text(encoding="utf-8"), "python")], ids=page_id)
def test_every_python_block_of_the_page_runs_in_order(page: Path, in_empty_directory: Path) -> None:
    namespace = run_python_blocks(page.read_text(encoding="utf-8"))
    PROMISES.get(page_id(page), lambda *_: None)(namespace, in_empty_directory)


@pytest.mark.parametrize("page", [path for path in PAGES if command_lines(path.read_text(encoding="utf-8"))], ids=page_id)
def test_every_command_of_the_page_runs(page: Path, in_empty_directory: Path, capsys: pytest.CaptureFixture) -> None:
    for line in command_lines(page.read_text(encoding="utf-8")):
        argv = jscopes_argv(line)
        skipped = [reason for marker, reason in NOT_RUN.items() if marker in line]
        if skipped:
            if argv is not None:
                build_parser().parse_args(argv)
            continue
        assert argv is not None, f"{page_id(page)}: {line!r} is neither a jscopes command nor in NOT_RUN"
        try:
            code = main(argv)
        except SystemExit as exit:  # --help
            code = exit.code
        captured = capsys.readouterr()
        assert code == 0, (line, captured.err)
        assert "warning" not in captured.err.lower(), (line, captured.err)


def test_every_page_with_promises_is_a_page() -> None:
    assert set(PROMISES) <= {page_id(path) for path in PAGES}


def test_every_command_not_run_is_still_on_a_page() -> None:
    lines = [line for path in PAGES for line in command_lines(path.read_text(encoding="utf-8"))]
    assert [marker for marker in NOT_RUN if not any(marker in line for line in lines)] == []


def test_the_guide_pages_have_code_that_is_run() -> None:
    """Every user-guide page that shows how to call something shows it in a block that runs."""
    without = [page_id(path) for path in (DOCS / "guide").glob("*.md") if not code_blocks(path.read_text(encoding="utf-8"), "python")
               and not command_lines(path.read_text(encoding="utf-8"))]
    assert sorted(without) == ["guide/architectures.md", "guide/demos.md", "guide/hygiene.md", "guide/multi-device.md", "guide/numerics.md"]
