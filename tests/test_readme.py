"""The README's code works as written: the first example, every public function, the command line.

* "Use it on your own model": the loading block for the installed TransformerLens runs up to the
  Hugging Face download (this machine has no hub); then the block and the example after it run as
  written, loader unpatched, in a fresh process whose hub cache holds a tiny random "gpt2" with a
  BPE tokenizer in which " liberal" and " conservative" are single tokens, as in GPT-2's
  (``tests/fake_hub.py``; every load path against the oracle: ``tests/test_load_paths.py``).
* "Every public function, one example each": every block, in order, in one namespace.
* "Command line": every command, minus its ``.venv/bin/jscopes`` prefix, through the CLI's
  ``main`` (``ground-truth`` over 300 prompts is only parsed: it runs in tests/test_cli.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import fake_hub
from jscopes_tl import adapter, temperature_scope
from jscopes_tl.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The README text from ``heading`` to the next heading of the same or a higher level."""
    level = heading.split()[0]
    start = README.index(f"\n{heading}\n")
    following = re.search(rf"\n#{{1,{len(level)}}} ", README[start + len(heading) + 2 :])
    return README[start : start + len(heading) + 2 + (following.start() if following else len(README))]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def loading_block() -> str:
    """The first example's loading block for the installed TransformerLens."""
    python_blocks = code_blocks(section("## Use it on your own model"), "python")
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
    [rest] = [block for block in code_blocks(section("## Use it on your own model"), "python") if "semantic_scope(" in block]
    program = loading_block() + "\n" + rest + "\nprint('contrast', result.target.tolist(), type(model).__name__)\n"
    completed = fake_hub.run_python(hub, ["-c", program], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    contrast = [hub.tokenizer(text).input_ids[0] for text in (" liberal", " conservative")]
    expected_class = "HookedTransformer" if adapter.hooked_transformer_available() else "TransformerBridge"
    assert f"contrast {contrast} {expected_class}" in completed.stdout  # the loader's own model scored the pair
    assert (tmp_path / "scope.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_every_public_function_example_runs_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks(section("## Every public function, one example each"), "python")
    assert len(blocks) >= 4
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(block, namespace)
    model, prompt = namespace["model"], namespace["prompt"]
    # what the comments promise
    assert [(index, token, round(score, 3)) for index, token, score in namespace["result"].top_tokens(2)] == [
        (2, "b=7", 5.65), (4, "b=", 0.954)
    ]
    custom = namespace["jacobian_scope"](model, prompt, namespace["unit_hidden_state"], kind="my-temperature")
    torch.testing.assert_close(custom.scores, temperature_scope(model, prompt).scores)
    assert {"semantic.html", "fisher.html", "report.html"} <= {path.name for path in tmp_path.iterdir()}


def command_lines() -> list[list[str]]:
    [block] = code_blocks(section("### Command line"), "bash")
    commands = []
    for line in block.splitlines():
        command = shlex.split(line, comments=True)
        assert command[0] == ".venv/bin/jscopes", line  # what the README's set-up command installs
        commands.append(command[1:])
    return commands


def test_the_command_line_section_works_as_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "demos").symlink_to(ROOT / "demos")  # the commands run from the repository root
    monkeypatch.chdir(tmp_path)
    commands = command_lines()
    assert {command[0] for command in commands} == {"scope", "eval", "run", "ground-truth", "models"}
    for argv in commands:
        if argv[0] == "ground-truth":
            build_parser().parse_args(argv)
            continue
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.err)
        assert "warning" not in captured.err, (argv, captured.err)
    assert {"scores.json", "view.html", "periodic.html", "recall_run"} <= {path.name for path in tmp_path.iterdir()}
    assert len(list((tmp_path / "recall_run" / "records").glob("*.parquet"))) >= 1


def test_the_set_up_command_installs_the_console_script_the_readme_calls() -> None:
    assert 'jscopes = "jscopes_tl.cli:main"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "bash scripts/setup.sh && .venv/bin/jscopes scope" in README
    assert "-e ." in (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
