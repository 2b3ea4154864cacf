"""Dataset runs in real subprocesses (tests/test_runs_resume.py, tests/test_runs_eval.py): the
environment they run in, and waiting until a run has committed shards (so it can be killed mid-run)."""

from __future__ import annotations

import os
import subprocess
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
