"""The ``jscopes`` command line: each flag, bad arguments (exit 2), failures (exit 1), files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jscopes_tl.cli import main

RECALL = "a=3 b=7 c=1 b="


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_scope_on_a_bundled_model_prints_the_top_tokens(capsys):
    code, out, err = run(capsys, "scope", RECALL, "--model", "recall", "--top", "2")
    assert code == 0, err
    assert out.startswith("semantic")
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == 2


def test_scope_all_kinds_with_rank_writes_valid_json(capsys, tmp_path: Path):
    path = tmp_path / "scores.json"
    code, out, err = run(capsys, "scope", RECALL, "--model", "recall", "--kind", "all", "--rank", "2", "--json", str(path))
    assert code == 0, err
    records = json.loads(path.read_text())
    assert [r["kind"] for r in records] == ["semantic", "fisher", "temperature"]
    assert all(len(r["scores"]) == len(r["tokens"]) == 5 for r in records)


def test_scope_target_and_contrast_are_recorded(capsys, tmp_path: Path):
    path = tmp_path / "scores.json"
    code, _, err = run(capsys, "scope", RECALL, "--model", "recall", "--target", "7", "--contrast", "3", "--json", str(path))
    assert code == 0, err
    (record,) = json.loads(path.read_text())
    assert len(record["target"]) == 2


def test_scope_position_all_gives_a_matrix(capsys, tmp_path: Path):
    path = tmp_path / "scores.json"
    code, out, err = run(capsys, "scope", RECALL, "--model", "recall", "--kind", "temperature", "--position", "all", "--json", str(path))
    assert code == 0, err
    (record,) = json.loads(path.read_text())
    assert len(record["scores"]) == len(record["scores"][0]) == 5


def test_scope_writes_an_html_view(capsys, tmp_path: Path):
    path = tmp_path / "view.html"
    code, _, err = run(capsys, "scope", RECALL, "--model", "recall", "--kind", "fisher", "--out", str(path))
    assert code == 0, err
    assert path.read_text().lstrip().lower().startswith("<!doctype html")


def test_scope_kind_all_writes_the_three_scopes_side_by_side(capsys, tmp_path: Path):
    path = tmp_path / "view.html"
    code, _, err = run(capsys, "scope", RECALL, "--model", "recall", "--kind", "all", "--out", str(path))
    assert code == 0, err
    page = path.read_text()
    assert all(label in page for label in ('"Semantic"', '"Fisher"', '"Temperature"'))
    assert "ColoredTokensMulti" in page


@pytest.mark.parametrize(
    "argv, message",
    [
        (["scope", RECALL, "--model", "recall", "--kind", "entropy"], "invalid choice"),
        (["scope", RECALL, "--model", "recall", "--rank", "-1"], "--rank"),
        (["scope", RECALL, "--model", "recall", "--position", "last"], "--position"),
        (["scope", RECALL, "--model", "recall", "--contrast", "3"], "--contrast needs --target"),
        (["scope", RECALL, "--model", "recall", "--kind", "fisher", "--target", "7"], "semantic scope only"),
        (["scope", RECALL, "--model", "recall", "--target", "not-a-word"], "target"),
        (["scope", RECALL, "--model", "recall", "--position", "99"], "position"),
        (["scope", RECALL, "--model", "recall", "--json", "/no/such/dir/x.json"], "does not exist"),
        (["ground-truth", "--models", "gpt5"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert out == ""


def test_missing_hub_model_offline_exits_1_at_once_with_a_hint(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    code, out, err = run(capsys, "scope", "hello", "--model", "jscopes-tl-tests/not-a-model")
    assert code == 1
    assert "local" in err and "--local-dir" in err
    assert time.perf_counter() - started < 3


def test_ground_truth_prints_a_table_and_writes_json(capsys, tmp_path: Path):
    path = tmp_path / "accuracy.json"
    code, out, err = run(capsys, "ground-truth", "--models", "induction", "--prompts", "2", "--json", str(path))
    assert code == 0, err
    assert "| semantic |" in out
    assert set(json.loads(path.read_text())["induction"]["accuracy"]) >= {"semantic", "fisher", "temperature", "random"}


def test_models_lists_the_bundled_models(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert all(name in out for name in ("recall", "induction", "periodic"))


def test_python_dash_m_runs_the_command_line_and_keeps_stdout_clean():
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, "-m", "jscopes_tl", "scope", RECALL, "--model", "recall", "--kind", "temperature"],
        capture_output=True, text=True, env=environment, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("temperature")


@pytest.mark.parametrize(
    "name, content",
    [
        ("prompts.jsonl", '"a=3 b=7 b=7"\n{"text": "c=1 d=2 c=1"}\n'),
        ("prompts.csv", "text,source\na=3 b=7 b=7,x\nc=1 d=2 c=1,y\n"),
        ("prompts.txt", "a=3 b=7 b=7\n\nc=1 d=2 c=1\n"),
    ],
)
def test_eval_reads_jsonl_csv_and_text_prompt_files(tmp_path: Path, name, content):
    from jscopes_tl.cli import read_prompts

    path = tmp_path / name
    path.write_text(content)
    assert read_prompts(path) == ["a=3 b=7 b=7", "c=1 d=2 c=1"]


def test_eval_prints_the_faithfulness_summary_and_writes_json(capsys, tmp_path: Path):
    prompts, path = tmp_path / "prompts.txt", tmp_path / "faithfulness.json"
    prompts.write_text("a=3 b=7 c=1 b=7\n")
    code, out, err = run(capsys, "eval", str(prompts), "--model", "recall", "--scorers", "semantic", "random", "--json", str(path))
    assert code == 0, err
    assert "| semantic |" in out and "aopc" in out
    assert "faithfulness" in err  # the progress bar goes to stderr
    assert [row["scorer"] for row in json.loads(path.read_text())["summary"]] == ["semantic", "random"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "/no/such/prompts.txt", "--model", "recall"], "no such prompts file"),
        (["eval", "PROMPTS", "--model", "recall", "--scorers", "psychic"], "unknown scorer"),
    ],
)
def test_eval_bad_arguments_exit_2(capsys, tmp_path: Path, argv, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a=3 b=7 b=7\n")
    code, _, err = run(capsys, *[str(prompts) if a == "PROMPTS" else a for a in argv])
    assert code == 2 and message in err
