"""The ``jscopes`` command line: each flag, bad arguments (exit 2), failures (exit 1), files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rendered import rendered_components

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
    assert all(f">{label}</button>" in page for label in ("Semantic", "Fisher", "Temperature"))
    assert [c.name for c in rendered_components(page)] == ["ColoredTokens"] * 3


def test_scope_kind_all_position_all_writes_every_scope_and_position(capsys, tmp_path: Path):
    path, scores = tmp_path / "view.html", tmp_path / "scores.json"
    argv = ["scope", RECALL, "--model", "recall", "--kind", "all", "--position", "all", "--out", str(path), "--json", str(scores)]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    records = json.loads(scores.read_text())
    components = rendered_components(path.read_text())
    assert len(components) == 3 * 5  # each scope, each prediction position
    expected = [row for record in records for row in record["scores"]]
    assert [c.props["values"] for c in components] == [pytest.approx(row) for row in expected]


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


def test_python_dash_m_is_spelled_one_way_in_the_readme_and_the_help():
    from jscopes_tl import cli

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    texts = readme + cli.RUN_FORMAT + cli.EVAL_FORMAT + cli.__doc__
    spellings = set(re.findall(r"-m (jscopes_tl[\w.]*)(?= (?:run|eval|scope|models|ground-truth)\b|`)", texts))
    assert spellings == {"jscopes_tl"}, spellings  # what python -m runs (jscopes_tl/__main__.py)


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


def test_version_names_jscopes_transformer_lens_and_torch(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("jscopes ") and "TransformerLens " in out and "torch " in out


def test_help_shows_the_defaults(capsys):
    code, out, _ = run(capsys, "scope", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for default in ("(default: semantic)", "(default: -1)", "(default: 1)", "(default: 5)"):
        assert default in flat
    assert "--model MODEL required;" in flat


def test_eval_help_lists_the_scorers_and_the_prompt_format(capsys):
    from jscopes_tl.faithfulness import DEFAULT_SCORERS

    code, out, _ = run(capsys, "eval", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert ", ".join(DEFAULT_SCORERS) in flat
    assert "ENDING WITH THE ANSWER" in flat and "demos/prompts_recall.jsonl" in flat


def test_models_lists_each_model_with_a_runnable_example_and_no_markup(capsys, tmp_path: Path):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "``" not in out
    examples = [line.split("example", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("example")]
    assert [example.split("--model ")[1].split()[0] for example in examples] == ["recall", "induction", "periodic"]
    for example in examples:  # each example answers as stated (the model predicts the answer)
        text = example.split('"')[1]
        name = example.split("--model ")[1].split()[0]
        answer = next(line for line in out.splitlines()[out.splitlines().index(name) :] if "answer" in line).split("'")[1]
        code, scope_out, err = run(capsys, "scope", text, "--model", name, "--top", "1")
        assert code == 0, err
        assert f"model's top tokens [{answer!r}" in scope_out


def test_eval_example_file_ends_each_prompt_with_the_models_answer():
    from jscopes_tl import models
    from jscopes_tl.cli import implausible_answers, read_prompts

    prompts = read_prompts(Path(__file__).resolve().parents[1] / "demos" / "prompts_recall.jsonl")
    assert len(prompts) >= 5
    assert implausible_answers(models.load("recall"), prompts) == []


def test_eval_warns_when_prompts_lack_their_answer(capsys, tmp_path: Path):
    prompts = tmp_path / "questions.txt"
    prompts.write_text("a=3 b=7 c=1 b=\nd=1 e=2 d=\n")  # questions: the answers are missing
    code, _, err = run(capsys, "eval", str(prompts), "--model", "recall", "--scorers", "random")
    assert code == 0, err
    assert "warning: 2 of 2 prompts end with a token" in err and "must end with its answer" in err


def test_ground_truth_progress_counts_prompts(capsys):
    code, _, err = run(capsys, "ground-truth", "--models", "recall", "--prompts", "3")
    assert code == 0
    assert "ground truth (recall)" in err and "3/3" in err
