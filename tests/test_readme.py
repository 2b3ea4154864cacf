"""The README's code works as written: the first example, the tour, the command line.

* "First example": the loading block for the installed TransformerLens runs up to the Hugging Face
  download (this machine has no hub); then the block and the example after it run as written,
  loader unpatched, in a fresh process whose hub cache holds a tiny random "gpt2" with a BPE
  tokenizer in which " liberal" and " conservative" are single tokens, as in GPT-2's
  (``tests/fake_hub.py``; every load path against the oracle: ``tests/test_load_paths.py``).
* "A tour": every block, in order, in one namespace, on the bundled models — except the
  multi-device one, which loads "gpt2" by name and runs the same way as the first example.
* "Command line": every command, minus its ``.venv/bin/jscopes`` prefix, through the CLI's ``main``.

The pages the README links to are tested the same way: ``tests/test_docs_pages.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from markdown_blocks import code_blocks, command_lines, jscopes_argv, section

import fake_hub
from jscopes_tl import adapter
from jscopes_tl.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MULTI_DEVICE = "device_map="  # the tour's one block that needs a hub checkpoint


def loading_block() -> str:
    """The first example's loading block for the installed TransformerLens."""
    python_blocks = code_blocks(section(README, "## First example"), "python")
    wanted = "TransformerBridge.boot_transformers" if not adapter.hooked_transformer_available() else "from_pretrained_no_processing"
    return next(block for block in python_blocks if wanted in block)


def test_the_first_examples_loading_block_reaches_the_hub_download(tmp_path: Path) -> None:
    program = (
        "import json, sys\n"
        "try:\n"
        f"    exec({loading_block()!r})\n"
        "except Exception as error:\n"
        "    print(json.dumps([[cls.__name__ for cls in type(error).__mro__], str(error)]))\n"
        "    sys.exit(3)\n"
    )
    # an empty hub cache: the same call that loads the cached "gpt2" below must stop at the download
    environment = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environment, timeout=300)
    assert completed.returncode == 3, completed.stdout + completed.stderr[-2000:]
    classes, message = json.loads(completed.stdout.strip().splitlines()[-1])
    # the loader exists and accepts "gpt2"; what stops it is the missing hub, not the code
    assert not {"ImportError", "AttributeError", "NameError", "TypeError"} & set(classes), (classes, message)
    assert "OSError" in classes or "offline" in message.lower() or "connect" in message.lower(), (classes, message)


def test_the_first_example_runs_as_written_on_a_cached_gpt2(tmp_path: Path) -> None:
    hub = fake_hub.build(tmp_path / "hf")
    [rest] = [block for block in code_blocks(section(README, "## First example"), "python") if "semantic_scope(" in block]
    program = loading_block() + "\n" + rest + "\nprint('contrast', result.target.tolist(), type(model).__name__)\n"
    completed = fake_hub.run_python(hub, ["-c", program], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    contrast = [hub.tokenizer(text).input_ids[0] for text in (" liberal", " conservative")]
    expected_class = "HookedTransformer" if adapter.hooked_transformer_available() else "TransformerBridge"
    assert f"contrast {contrast} {expected_class}" in completed.stdout  # the loader's own model scored the pair
    assert (tmp_path / "scope.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def tour_blocks() -> list[str]:
    blocks = code_blocks(section(README, "## A tour"), "python")
    assert len(blocks) >= 12  # the set-up and one example per capability
    return blocks


def test_the_tour_runs_in_order_on_the_bundled_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for block in tour_blocks():
        if MULTI_DEVICE not in block:
            exec(block, namespace)
    model, prompt = namespace["model"], namespace["prompt"]
    # what the comments promise
    top = namespace["semantic_scope"](model, prompt).top_tokens(2)
    assert [(index, token, round(score, 3)) for index, token, score in top] == [(2, "b=7", 5.65), (4, "b=", 0.954)]
    assert tuple(namespace["temperature_scope"](model, prompt, position="all").scores.shape) == (5, 5)
    assert tuple(namespace["semantic_scope"](model, prompt, layer="all").scores.shape) == (model.cfg.n_layers + 1, 5)
    assert namespace["heads"].heads.shape[:2] == (2, 4)
    assert {"semantic.html", "report.html", "recall_run"} <= {path.name for path in tmp_path.iterdir()}
    assert len(list((tmp_path / "recall_run" / "records").glob("*.parquet"))) >= 1


@pytest.mark.skipif(adapter.hooked_transformer_available(), reason="the tour's multi-device block is TransformerLens 4.x's TransformerBridge")
def test_the_tours_multi_device_block_runs_on_a_cached_gpt2(tmp_path: Path) -> None:
    hub = fake_hub.build(tmp_path / "hf")
    setup, *_ = tour_blocks()
    [block] = [block for block in tour_blocks() if MULTI_DEVICE in block]
    program = setup + "\n" + block + "\nprint('scored', type(big).__name__, big.cfg.device)\n"
    completed = fake_hub.run_python(hub, ["-c", program], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "scored TransformerBridge cpu" in completed.stdout


def test_the_command_line_section_works_as_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "demos").symlink_to(ROOT / "demos")  # the commands run from the repository root
    monkeypatch.chdir(tmp_path)
    lines = command_lines(section(README, "## Command line"))
    assert all(line.startswith(".venv/bin/jscopes ") for line in lines), lines  # what the set-up command installs
    commands = [jscopes_argv(line) for line in lines]
    assert {command[0] for command in commands} == {"scope", "eval", "run", "models"}
    for argv in commands:
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.err)
        assert "warning" not in captured.err, (argv, captured.err)
    assert {"view.html", "recall_run"} <= {path.name for path in tmp_path.iterdir()}
    assert len(list((tmp_path / "recall_run" / "records").glob("*.parquet"))) >= 1


def test_the_readme_is_a_five_minute_read() -> None:
    assert README.count("\n") <= 260


def test_the_set_up_command_installs_the_console_script_the_readme_calls() -> None:
    assert 'jscopes = "jscopes_tl.cli:main"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "bash scripts/setup.sh && .venv/bin/jscopes scope" in README
    assert "-e ." in (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert "\nbash scripts/test.sh\n" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")  # CI runs the README's test command
    assert "    bash scripts/test.sh\n" in README
