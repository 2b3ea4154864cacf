"""One run per directory at a time: a run holds a lock on its out_dir, and a second run there is
refused naming the holder (in Python, and on the command line before a model loads), whether it
would score (jscopes run) or evaluate (jscopes eval --out-dir). Real processes, SIGKILL and two
torchrun ranks: tests/test_runs_resume.py."""

from __future__ import annotations

import os

import pytest

from jscopes_tl import cli, models, run_dataset
from jscopes_tl.runs import RunInUseError, runner
from jscopes_tl.runs.storage import lock_directory

PROMPTS = ["a=3 b=7 c=1 b=", "k=5 k="]


@pytest.fixture(scope="module")
def recall():
    return models.load("recall")


@pytest.fixture
def held(tmp_path):
    """A run directory this process holds the lock of, as another run would."""
    lock = lock_directory(tmp_path / "run")
    yield tmp_path / "run"
    lock.release()


def test_a_second_run_on_a_directory_in_use_is_refused_naming_the_holder(recall, held):
    with pytest.raises(RunInUseError, match=rf"out_dir '{held}' is in use by another run \(PID {os.getpid()} on .+\)"):
        run_dataset(recall, PROMPTS, held, progress=False)
    assert sorted(os.listdir(held)) == [".lock"]  # nothing read, planned or written


@pytest.mark.parametrize("command", ["run", "eval"])
def test_the_command_line_refuses_a_directory_in_use_before_loading_the_model(held, no_model_loading, capsys, command):
    prompts = held.parent / "prompts.txt"
    prompts.write_text("a=3 b=7 c=1 b= 7\n")
    code = cli.main([command, str(prompts), "--model", "recall", "--out-dir", str(held), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"is in use by another run (PID {os.getpid()}" in err and len(err.strip().splitlines()) == 1


def test_a_run_that_stops_with_an_error_releases_its_directory(recall, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "score_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(recall, PROMPTS, tmp_path / "run", progress=False)
    lock_directory(tmp_path / "run").release()  # would raise RunInUseError if the run still held it


def test_the_directory_is_free_again_once_a_run_has_finished(recall, tmp_path):
    run_dataset(recall, PROMPTS, tmp_path / "run", progress=False)
    assert run_dataset(recall, PROMPTS, tmp_path / "run", progress=False).computed_prompts == 0
