"""A run directory that cannot be resumed as it is (a shard cut short, a manifest that is not JSON,
other arguments, an out_dir under a file) is refused with a message naming the file and what to
do — before a model loads on the command line, in one line, never a traceback."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from jscopes_tl import cli, models, run_dataset
from jscopes_tl.runs import RunConflictError
from jscopes_tl.runs.storage import DamagedRunError

PROMPTS = ["a=3 b=7 c=1 b=", "k=5 k=", "a=1 b=2 a=", "q=4 q="]


@pytest.fixture(scope="module")
def recall():
    return models.load("recall")


@pytest.fixture
def finished_run(recall, tmp_path) -> Path:
    """A finished run of four prompts, one batch (one shard) each, and its prompt file."""
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    run_dataset(recall, tmp_path / "prompts.txt", tmp_path / "run", batch_size=1, progress=False)
    return tmp_path / "run"


def resume(recall, run: Path, **options):
    return run_dataset(recall, run.parent / "prompts.txt", run, batch_size=1, progress=False, **options)


def command_line(run: Path, capsys) -> tuple[int, str]:
    code = cli.main(["run", str(run.parent / "prompts.txt"), "--model", "recall", "--out-dir", str(run), "--batch-size", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    return code, captured.err


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def test_a_shard_cut_short_is_named_with_the_command_that_redoes_its_batch(recall, finished_run):
    shard = finished_run / "records" / "part-000001.parquet"
    cut_short(shard)
    with pytest.raises(DamagedRunError, match=rf"'{re.escape(str(shard))}' is not a readable Parquet shard .*its batch is redone") as raised:
        resume(recall, finished_run)
    command = re.search(r"`(rm -f [^`]+)`", str(raised.value)).group(1)
    assert shlex.split(command)[2:] == [str(shard)]
    subprocess.run(shlex.split(command), check=True)
    summary = resume(recall, finished_run)
    assert summary.ok and summary.computed_prompts == 1 and summary.prompts_done == 4


def test_an_errors_shard_cut_short_names_its_records_shard_too(recall, finished_run):
    errors = finished_run / "errors" / "part-000002.parquet"
    errors.write_bytes(b"PAR1 cut")
    with pytest.raises(DamagedRunError, match=re.escape(f"rm -f {errors} {finished_run / 'records' / 'part-000002.parquet'}")):
        resume(recall, finished_run)


def test_the_command_line_refuses_a_shard_cut_short_in_one_line_before_loading_the_model(finished_run, no_model_loading, capsys):
    cut_short(finished_run / "records" / "part-000003.parquet")
    code, err = command_line(finished_run, capsys)
    assert code == 2 and "part-000003.parquet' is not a readable Parquet shard" in err and "rm -f" in err


def test_a_manifest_that_is_not_json_is_named_and_overwrite_starts_afresh(recall, finished_run):
    (finished_run / "manifest.json").write_text('{"format": ')
    with pytest.raises(DamagedRunError, match=r"manifest.json' is damaged: not valid JSON .*--overwrite"):
        resume(recall, finished_run)
    summary = resume(recall, finished_run, overwrite=True)
    assert summary.ok and summary.computed_prompts == 4


def test_the_command_line_refuses_a_manifest_that_is_not_json_in_one_line(finished_run, no_model_loading, capsys):
    (finished_run / "manifest.json").write_text("[1, 2]")
    code, err = command_line(finished_run, capsys)
    assert code == 2 and "manifest.json' is damaged: a JSON list, not an object" in err


def test_a_refused_resume_shows_where_two_fingerprints_differ(recall, finished_run):
    with pytest.raises(RunConflictError) as raised:
        run_dataset(recall, finished_run.parent / "prompts.txt", finished_run, batch_size=1, limit=3, progress=False)
    old, new = re.search(r"dataset\.fingerprint: (\S+) → (\S+);", str(raised.value)).groups()
    assert old != new and new.endswith("[:3]'"), (old, new)  # not both cut to the same prefix


def test_an_out_dir_under_a_file_says_the_file_is_a_file(tmp_path, no_model_loading, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "prompts.txt").write_text("a=3 b=7 c=1 b=\n")
    code = cli.main(["run", str(tmp_path / "prompts.txt"), "--model", "recall", "--out-dir", str(tmp_path / "afile" / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and f"'{tmp_path / 'afile'}' is a file, not a directory" in err and "does not exist" not in err
