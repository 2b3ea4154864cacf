"""Dataset runs in real subprocesses (tests/test_runs_resume.py, tests/test_runs_eval.py): the
environment they run in, the torchrun command line, and a run stopped by a signal once it has
committed shards (mid-run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def environment() -> dict[str, str]:
    """This checkout on the path, one thread (a sum's order depends on the thread count)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def wait_for_shards(out: Path, process: subprocess.Popen, at_least: int = 3, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        directory = out / "records"
        if directory.is_dir() and sum(1 for name in os.listdir(directory) if name.endswith(".parquet")) >= at_least:
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("no shard appeared")


def torchrun(n_processes: int, args: list[str]) -> list[str]:
    """``jscopes ARGS`` under ``torchrun --standalone --nproc-per-node N``."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n_processes}",
        "-m", "jscopes_tl", *args,
    ]


def start_run(args: list[str], out: Path) -> subprocess.Popen:
    """``jscopes ARGS`` in a new process writing to ``out``, once it has committed three shards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "jscopes_tl", *args],
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_shards(out, process)
    return process


def interrupt_run(args: list[str], out: Path, stop: signal.Signals) -> None:
    """Start ``jscopes ARGS`` writing to ``out``, send ``stop`` once it has committed three shards,
    and check how it ended: killed (SIGKILL), or exit 130 with the resume hint (SIGINT, SIGTERM)."""
    process = start_run(args, out)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == (-signal.SIGKILL if stop == signal.SIGKILL else 130), stderr
    if stop != signal.SIGKILL:
        assert "run the same command again to resume" in stderr


def assert_no_partial_files(out: Path) -> None:
    """No shard left half-written (a ``.tmp`` file that was never renamed)."""
    assert not [name for name in os.listdir(out / "records") if name.endswith(".tmp")]
