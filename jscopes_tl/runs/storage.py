"""Where a run's results live: Parquet shards committed by atomic rename, and its manifest.

Layout of a run directory::

    manifest.json            run arguments, dataset fingerprint, model identity, library versions
    records/part-NNNNNN.parquet   one per committed batch (possibly empty: every prompt failed);
                                  attribution records (jscopes run) or faithfulness rows (jscopes eval)
    errors/part-NNNNNN.parquet    rows that failed in that batch (only when some did)
    errors/part-input.parquet     rows that were never prompts (not UTF-8, empty, too long)
    summary.json             written by rank 0 when every rank has finished
    .lock                    locked (``flock``) by the run in progress; holds its PID and host

A shard is written to a hidden temporary file in the same directory, flushed to disk and renamed
into place: a rename within one file system is atomic, so a reader (or a resumed run) sees a shard
whole or not at all, whatever signal stops the writer. The records shard of a batch is renamed
*last*: its presence is what marks the batch done. Readers skip the hidden temporaries
(``pandas.read_parquet(dir)`` and pyarrow ignore names starting with ``.`` or ``_``; the
``*.parquet`` glob of ``datasets.load_dataset`` does not match them). Every file of a run —
shards, manifest, summary — is written this way.

One run at a time: rank 0 holds an exclusive ``fcntl.flock`` on ``.lock`` for the whole run (the
other ranks of the same run take none), so a second run on the directory is refused at once
(:class:`RunInUseError`, naming the holder) instead of scoring every batch again. The operating
system drops the lock when its process ends, however it ends (SIGKILL included): there is no stale
lock to clean up. Where ``fcntl`` does not exist (Windows), runs are not locked.

A file damaged from outside (a copy cut short, a full disk on a file system without atomic
rename, an edited manifest) is named by :class:`DamagedRunError` when a run resumes, with what to
do; nothing is deleted for the user.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jscopes_tl.errors import ScopeInputError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
RECORDS = "records"
ERRORS = "errors"
INPUT_ERRORS = "part-input.parquet"
LOCK = ".lock"
_PART = re.compile(r"^part-(\d{6,})\.parquet$")

# One row per (prompt, scope kind, prediction position); the field names follow the exported
# ScopeResult (jscopes_tl.export): tokens are ids, str_tokens their strings.
RECORD_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.int64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("position", pa.int64(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("tokens", pa.list_(pa.int64())),
    pa.field("str_tokens", pa.list_(pa.string())),
    pa.field("word_starts", pa.list_(pa.bool_())),
    pa.field("target", pa.list_(pa.int64())),
    pa.field("target_str_tokens", pa.list_(pa.string())),
    pa.field("prediction_token_ids", pa.list_(pa.int64())),
    pa.field("prediction_str_tokens", pa.list_(pa.string())),
    pa.field("prediction_probabilities", pa.list_(pa.float32())),
    pa.field("scores", pa.list_(pa.float32())),
    pa.field("metadata", pa.string()),  # JSON: numerics, layer, Fisher rank and bounds, warnings
    pa.field("batch", pa.int64(), nullable=False),
])

def faithfulness_schema(delta_columns: list[str], paper: bool, diagnostic_columns: dict[str, type]) -> pa.Schema:
    """One row per (prompt, scorer) of ``jscopes eval``: the columns of a
    :class:`~jscopes_tl.faithfulness.FaithfulnessReport` row (``prompt`` named ``prompt_id``; the
    diagnostic columns null for scorers that report none), then the prompt and the scorer's
    measurements (:class:`~jscopes_tl.faithfulness.PromptEvaluation`).

    Example:
        >>> from jscopes_tl.runs.storage import faithfulness_schema
        >>> faithfulness_schema(["delta_10"], paper=False, diagnostic_columns={}).names[:4]
        ['prompt_id', 'scorer', 'n_candidates', 'delta_10']
    """
    return pa.schema([
        pa.field("prompt_id", pa.int64(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("n_candidates", pa.int64()),
        *[pa.field(column, pa.float64()) for column in delta_columns],
        pa.field("aopc", pa.float64()),
        pa.field("loo_spearman", pa.float64()),
        pa.field("loo_percentile_of_top", pa.float64()),
        *([pa.field("loo_rank_percentage", pa.float64())] if paper else []),
        *[pa.field(column, pa.int64() if kind is int else pa.float64()) for column, kind in diagnostic_columns.items()],
        pa.field("top_token", pa.string()),
        pa.field("predicted_token", pa.string()),
        pa.field("gold_token", pa.string()),
        pa.field("text", pa.string()),
        pa.field("tokens", pa.list_(pa.int64())),  # the prompt, its final (gold) token included
        pa.field("str_tokens", pa.list_(pa.string())),  # the scored tokens
        pa.field("candidates", pa.list_(pa.int64())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("loo_scores", pa.list_(pa.float32())),
        pa.field("ablated", pa.list_(pa.list_(pa.int64()))),  # positions ablated at each fraction
        pa.field("leave_one_out_kl", pa.list_(pa.float32())),  # per candidate
        pa.field("batch", pa.int64(), nullable=False),
    ])


ERROR_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.int64(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # "read", "tokenize", "scope" or "eval"
    pa.field("error", pa.string(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("line", pa.int64()),
    pa.field("batch", pa.int64()),
])


def part_name(batch: int) -> str:
    return f"part-{batch:06d}.parquet"


def write_atomically(path: Path, write: Any) -> None:
    """``write(temporary_path)`` then rename to ``path``: readers never see a partial file."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_table(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    write_atomically(path, lambda temporary: pq.write_table(table, temporary))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    write_atomically(path, lambda temporary: temporary.write_text(text + "\n", encoding="utf-8"))


class DamagedRunError(ScopeInputError):
    """A file of a run directory cannot be read (a shard cut short, a manifest that is not JSON);
    the message names it and says what to do.

    Example:
        >>> import tempfile
        >>> out_dir = tempfile.mkdtemp()
        >>> from pathlib import Path
        >>> _ = run_dataset(model, [prompt], out_dir, progress=False)
        >>> _ = (Path(out_dir) / "manifest.json").write_text("{not json")
        >>> run_dataset(model, [prompt], out_dir, progress=False)
        Traceback (most recent call last):
            ...
        DamagedRunError: '.../manifest.json' is damaged: not valid JSON ...
    """


def read_json(path: Path) -> dict[str, Any] | None:
    """A run's JSON file (None if absent); a :class:`DamagedRunError` if it does not parse."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"not valid JSON ({error})"
    else:
        if isinstance(payload, dict):
            return payload
        problem = f"a JSON {type(payload).__name__}, not an object"
    raise DamagedRunError(
        f"{str(path)!r} is damaged: {problem}. The run's arguments cannot be checked against it, so the run "
        f"cannot be resumed: start afresh with --overwrite (overwrite=True; it deletes the run's records) or "
        "use another directory."
    )


def check_shards_readable(out_dir: Path) -> None:
    """Every shard's Parquet footer reads (a file cut short has none), before a resumed run plans
    from them and reads them back; a :class:`DamagedRunError` naming the first that does not."""
    for sub in (RECORDS, ERRORS):
        for path in shard_paths(out_dir, sub):
            try:
                pq.read_metadata(path)
            except (pa.ArrowException, OSError) as error:
                raise DamagedRunError(_damaged_shard_message(out_dir, path, str(error).splitlines()[0])) from None


def _damaged_shard_message(out_dir: Path, path: Path, problem: str) -> str:
    """What to delete so that a resumed run redoes the shard's batch (or rewrites the input errors)."""
    if path.name == INPUT_ERRORS:
        delete, redone = [path], "it is rewritten"
    else:
        delete, redone = [path, out_dir / RECORDS / path.name], "its batch is redone"
    command = "rm -f " + " ".join(shlex.quote(str(item)) for item in dict.fromkeys(delete))
    return (
        f"{str(path)!r} is not a readable Parquet shard ({problem}): it was cut short or damaged outside the run. "
        f"Delete it and resume ({redone}): `{command}`, then run the same command again."
    )


def committed_batches(out_dir: Path) -> set[int]:
    """The batches whose records shard is in place (the mark of a finished batch)."""
    directory = out_dir / RECORDS
    if not directory.is_dir():
        return set()
    return {int(match.group(1)) for name in os.listdir(directory) if (match := _PART.match(name))}


def remove_temporaries(out_dir: Path) -> None:
    """Delete the temporaries a killed writer left (called before any rank writes)."""
    for directory in (out_dir, out_dir / RECORDS, out_dir / ERRORS):
        if directory.is_dir():
            for name in os.listdir(directory):
                if name.startswith(".") and name.endswith(".tmp"):
                    (directory / name).unlink(missing_ok=True)


def remove_run(out_dir: Path) -> None:
    """Delete a previous run's files (only the ones a run writes: the directory may hold others)."""
    for sub in (RECORDS, ERRORS):
        directory = out_dir / sub
        if directory.is_dir():
            for name in os.listdir(directory):
                if _PART.match(name) or name == INPUT_ERRORS or (name.startswith(".") and name.endswith(".tmp")):
                    (directory / name).unlink()
            if not os.listdir(directory):
                directory.rmdir()
    for name in (MANIFEST, SUMMARY):
        (out_dir / name).unlink(missing_ok=True)


def shard_paths(out_dir: Path, sub: str) -> list[Path]:
    directory = out_dir / sub
    if not directory.is_dir():
        return []
    return sorted(directory / name for name in os.listdir(directory) if name.endswith(".parquet") and not name.startswith("."))


def read_column(paths: list[Path], column: str) -> list[Any]:
    values: list[Any] = []
    for path in paths:
        values.extend(pq.read_table(path, columns=[column]).column(column).to_pylist())
    return values


def count_rows(paths: list[Path]) -> int:
    return sum(pq.read_metadata(path).num_rows for path in paths)


# ------------------------------------------------------------------------------------ one run at a time
class RunInUseError(ScopeInputError):
    """Another run holds the run directory's lock (two runs would both score every prompt).

    Example:
        >>> import tempfile
        >>> out_dir = tempfile.mkdtemp()
        >>> from pathlib import Path
        >>> from jscopes_tl.runs.storage import lock_directory
        >>> lock = lock_directory(Path(out_dir))                  # as another run would
        >>> run_dataset(model, [prompt], out_dir, progress=False)
        Traceback (most recent call last):
            ...
        RunInUseError: out_dir '...' is in use by another run (PID ...
        >>> lock.release()
    """


class DirectoryLock:
    """This process's exclusive lock on a run directory; :meth:`release` (or the process's end) drops it.

    Example:
        >>> import tempfile
        >>> from jscopes_tl.runs.storage import lock_directory
        >>> from pathlib import Path
        >>> out_dir = Path(tempfile.mkdtemp())
        >>> lock_directory(out_dir).release()
        >>> lock_directory(out_dir).release()                # released: the directory can be locked again
    """

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        """Drop the lock (closing its file descriptor); a second call does nothing.

        Example:
            >>> import tempfile
            >>> from jscopes_tl.runs.storage import lock_directory
            >>> from pathlib import Path
            >>> lock = lock_directory(Path(tempfile.mkdtemp()))
            >>> lock.release(); lock.release()
        """

        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the file drops its flock
            self._descriptor = None


def lock_directory(out_dir: Path) -> DirectoryLock | None:
    """Lock ``out_dir`` (created if missing) for this process, or raise :class:`RunInUseError`
    naming the process that holds it. None where locks are not available (no ``fcntl``, or a file
    system that refuses them).

    Example:
        >>> import tempfile
        >>> from jscopes_tl.runs.storage import lock_directory
        >>> from pathlib import Path
        >>> out_dir = Path(tempfile.mkdtemp())
        >>> lock = lock_directory(out_dir)
        >>> lock_directory(out_dir)                          # a second lock on the same directory
        Traceback (most recent call last):
            ...
        RunInUseError: out_dir '...' is in use by another run (PID ...
        >>> lock.release()
    """
    if fcntl is None:
        return None
    out_dir.mkdir(exist_ok=True)
    descriptor = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _try_lock(out_dir, descriptor)
    except RunInUseError:
        os.close(descriptor)
        raise
    if not locked:
        os.close(descriptor)
        return None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return DirectoryLock(descriptor)


def check_not_in_use(out_dir: Path) -> None:
    """Raise :class:`RunInUseError` if a run holds ``out_dir`` now (a command line's check before it
    loads a model; the run itself takes the lock with :func:`lock_directory`)."""
    if fcntl is None or not (out_dir / LOCK).is_file():
        return
    descriptor = os.open(out_dir / LOCK, os.O_RDONLY)
    try:
        _try_lock(out_dir, descriptor)
    finally:
        os.close(descriptor)


def _try_lock(out_dir: Path, descriptor: int) -> bool:
    """Take the lock on ``descriptor`` (False: the file system has no locks), or raise
    :class:`RunInUseError` when another process holds it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip() or "its PID not yet written"
        raise RunInUseError(
            f"out_dir {str(out_dir)!r} is in use by another run ({holder}): two runs on one directory would both "
            "score every prompt. Wait for it to finish (running the same command again then resumes or finds "
            "the run done), stop it, or use another directory."
        ) from None
    except OSError:  # e.g. a network file system without lock support
        return False
    return True
