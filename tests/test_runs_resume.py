"""Dataset runs survive being killed and run on several processes (torch.distributed, gloo).

A real ``jscopes run`` subprocess is stopped mid-run by SIGINT, SIGTERM or SIGKILL; every shard
it finished must read whole, and re-running resumes to exactly the records of an uninterrupted
run. Under ``torchrun --nproc-per-node 2`` (CPU, gloo) the merged records equal a single
process's exactly; a rank killed mid-run resumes on another number of ranks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from jscopes_tl import models, run_dataset
from jscopes_tl.runs import RunInUseError
from jscopes_tl.runs.storage import lock_directory
from conftest import once_per_suite
from run_processes import assert_no_partial_files, environment, interrupt_run, start_run, torchrun, wait_for_shards

N_PROMPTS = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Records are compared bit for bit across processes, and a float sum's order depends on the
    number of threads: every process here (this one, the runs, torchrun's ranks) uses one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recall():
    return models.load("recall")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "recall.jsonl"
    texts = [prompt.text for prompt in models.get_task("recall").labelled_prompts(N_PROMPTS, seed=1)]
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


@pytest.fixture(scope="module")
def reference(recall, prompt_file, tmp_path_factory) -> list[dict]:
    """The records of an uninterrupted single-process run (batch size 1: many commits)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_dataset(recall, prompt_file, out, batch_size=1, progress=False)
    return records(out)


def records(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "records").glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=lambda row: (row["prompt_id"], row["kind"], row["position"]))


def command(prompt_file: Path, out: Path) -> list[str]:
    return ["run", str(prompt_file), "--model", "recall", "--out-dir", str(out), "--batch-size", "1", "--no-progress"]


def assert_every_shard_reads_whole(out: Path) -> int:
    shards = sorted((out / "records").glob("*.parquet"))
    for shard in shards:
        table = pq.read_table(shard)  # a torn file would raise here
        assert table.num_rows == 1
    return len(shards)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_records(recall, prompt_file, reference, tmp_path, stop):
    out = tmp_path / "run"
    interrupt_run(command(prompt_file, out), out, stop)
    finished = assert_every_shard_reads_whole(out)
    assert 3 <= finished < N_PROMPTS, "the run was not stopped mid-run"
    summary = run_dataset(recall, prompt_file, out, batch_size=1, progress=False)
    assert summary.ok and summary.computed_prompts == N_PROMPTS - finished
    assert records(out) == reference
    assert_no_partial_files(out)


@once_per_suite
def test_two_ranks_on_gloo_write_exactly_the_single_process_records(prompt_file, reference, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        torchrun(2, command(prompt_file, out)), env=environment(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "300 of 300 prompts have records" in done.stdout and "on 2 ranks" in done.stdout
    assert done.stdout.count("prompts/s") == 1  # rank 0 prints the merged summary
    assert records(out) == reference
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["computed_prompts"] == N_PROMPTS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    lock_directory(out).release()  # rank 0's lock went with the run


@once_per_suite
def test_a_rank_killed_mid_run_resumes_on_another_number_of_ranks(recall, prompt_file, reference, tmp_path):
    import psutil

    out = tmp_path / "run"
    launcher = subprocess.Popen(
        torchrun(2, command(prompt_file, out)), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_shards(out, launcher, at_least=4)
    ranks = [child for child in psutil.Process(launcher.pid).children(recursive=True) if "jscopes_tl" in " ".join(child.cmdline())]
    assert len(ranks) == 2
    ranks[1].kill()
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    finished = assert_every_shard_reads_whole(out)
    assert finished < N_PROMPTS, "the run was not stopped mid-run"
    summary = run_dataset(recall, prompt_file, out, batch_size=1, progress=False)  # one process now
    assert summary.ok and summary.computed_prompts == N_PROMPTS - finished
    assert records(out) == reference


@once_per_suite
def test_a_single_process_run_resumes_on_two_ranks(recall, prompt_file, reference, tmp_path):
    out = tmp_path / "run"
    process = start_run(command(prompt_file, out), out)
    process.kill()
    process.communicate(timeout=60)
    finished = assert_every_shard_reads_whole(out)
    done = subprocess.run(
        torchrun(2, command(prompt_file, out)), env=environment(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"scored {N_PROMPTS - finished} prompts" in done.stdout
    assert records(out) == reference


# A run that dies by SIGKILL halfway through writing its third Parquet file (the input errors,
# then one shard a batch): the file it was writing is left as it was at that moment.
KILLED_MID_WRITE = """
import os, signal, sys
import pyarrow.parquet as pq
from jscopes_tl import models, run_dataset
from jscopes_tl.runs import RunInUseError
from jscopes_tl.runs.storage import lock_directory

write_table, written = pq.write_table, []

def write_half_then_die(table, where, **options):
    written.append(where)
    write_table(table, where, **options)
    if len(written) == 3:
        os.truncate(where, os.path.getsize(where) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

pq.write_table = write_half_then_die
run_dataset(models.load("recall"), sys.argv[1], sys.argv[2], batch_size=1, progress=False)
"""


@once_per_suite
def test_a_run_killed_mid_write_leaves_the_directory_readable_and_resumes(recall, prompt_file, reference, tmp_path):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, str(prompt_file), str(out)], env=environment(), capture_output=True,
        text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    half_written = [name for name in os.listdir(out / "records") if name.endswith(".tmp")]
    assert len(half_written) == 1 and half_written[0].startswith(".")  # hidden: readers skip it
    assert len(pd.read_parquet(out / "records")) == 1  # the one committed shard, nothing of the torn one
    summary = run_dataset(recall, prompt_file, out, batch_size=1, progress=False)
    assert summary.ok and summary.computed_prompts == N_PROMPTS - 1
    assert records(out) == reference
    assert_no_partial_files(out)


@once_per_suite
def test_a_running_run_holds_its_directory_until_killed_by_sigkill(recall, prompt_file, reference, tmp_path):
    out = tmp_path / "run"
    process = start_run(command(prompt_file, out), out)
    with pytest.raises(RunInUseError, match=rf"in use by another run \(PID {process.pid} on "):
        run_dataset(recall, prompt_file, out, batch_size=1, progress=False)
    process.kill()
    process.communicate(timeout=60)
    summary = run_dataset(recall, prompt_file, out, batch_size=1, progress=False)  # the OS dropped the lock
    assert summary.ok and records(out) == reference


@once_per_suite
def test_two_ranks_are_refused_together_on_a_directory_another_run_holds(prompt_file, tmp_path):
    out = tmp_path / "run"
    lock = lock_directory(out)
    try:
        done = subprocess.run(
            torchrun(2, command(prompt_file, out)), env=environment(), capture_output=True, text=True, timeout=300
        )
    finally:
        lock.release()
    assert done.returncode != 0 and done.stdout == ""
    # Rank 0 names the holder and exits 2 (rank 1 refuses too, unless torchrun stops it first once
    # rank 0 has exited); the traceback below is torchrun's own report, none goes through this package.
    assert f"jscopes: error: out_dir '{out}' is in use by another run (PID {os.getpid()}" in done.stderr, done.stderr
    assert "exitcode  : 2" in done.stderr and "jscopes_tl/" not in done.stderr, done.stderr
    assert sorted(os.listdir(out)) == [".lock"]
