"""The dataset runner: a prompt dataset → attribution records on disk, resumable, data parallel.

A run is a loop around the public scopes (:func:`~jscopes_tl.scopes.semantic_scope`,
``fisher_scope``, ``temperature_scope``) plus storage (:mod:`jscopes_tl.runs.storage`) and
``torch.distributed`` (:mod:`jscopes_tl.runs.distributed`). What keeps it exact and cheap:

* **A plan that depends on the dataset and the arguments only.** Prompts are tokenised once and
  grouped into batches of equal token length (sorted by length, then prompt id; at most
  ``batch_size`` each), so one scope call scores a whole batch with no padding. Batch ``i`` is the
  same prompts in every run with the same arguments, whatever the number of ranks or how often
  the run was interrupted, so a resumed run computes bit-for-bit the records of an uninterrupted
  one (scores depend on the batch a prompt was computed in only through floating-point summation
  order, which the plan fixes).
* **A batch is the unit of work and of commit.** Its records go to one Parquet shard, renamed
  into place when complete (atomic); a killed run loses at most the batches in flight, and a
  resumed run skips every batch whose shard exists, whichever rank wrote it.
* **Ranks share the remaining batches round-robin** (``remaining[rank::world_size]``), computed
  after every rank has read the same set of finished batches, so resuming with a different
  number of ranks neither repeats nor skips a batch.
* **Bad rows do not stop a run.** Rows that are not prompts (not UTF-8, not JSON, empty, longer
  than ``n_ctx``) are written to the errors table before any computation; a batch whose scope
  call fails is retried prompt by prompt and the prompts that still fail join the errors table.
* **Memory stays flat.** Records go to disk batch by batch; only the plan (prompt ids and token
  ids) is held for the whole dataset.
* **One run per directory at a time.** Rank 0 holds a lock on the directory for the run
  (:func:`jscopes_tl.runs.storage.lock_directory`); a second run there is refused, naming the
  process that holds it.
* **One argument set per directory.** The manifest records the run's arguments, the dataset's
  fingerprint and the model's identity (name, dtype, load mode, a hash of its weights); a run with
  other arguments on the same directory is refused unless ``overwrite=True``.

The loop itself (:func:`execute`) knows nothing of scopes: a :class:`RunJob` says what a batch
computes and the schema of its rows. :func:`run_dataset` is the scopes' job;
:func:`jscopes_tl.runs.run_faithfulness` (``jscopes eval --out-dir``) is the faithfulness job.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import NonFiniteLogitsError, NonFiniteScoresError, ScopeInputError
from jscopes_tl.export import missing_directory, result_axes
from jscopes_tl.result import ScopeResult
from jscopes_tl.runs import distributed, storage
from jscopes_tl.runs.manifest import RunConflictError, build_manifest, conflicts, model_identity
from jscopes_tl.runs.prompts import PromptDataset, read_prompt_dataset
from jscopes_tl.scopes import fisher_scope, semantic_scope, temperature_scope

KINDS = ("semantic", "fisher", "temperature")
# Per-prompt entries of a batch result's metadata: they become record columns, not metadata.
_PROMPT_METADATA = ("text", "word_starts", "target_str_tokens", "input_columns", "model_name")
# A scope call that fails for a prompt (its position out of range, non-finite scores, out of
# memory) makes an error row; anything else (a bug, an interrupt) stops the run.
ROW_ERRORS = (ScopeInputError, NonFiniteScoresError, NonFiniteLogitsError, RuntimeError, ValueError)


@dataclass(frozen=True)
class RunSummary:
    """What a run directory holds once every rank has finished, and how fast this run went.

    Attributes:
        out_dir: the run directory (records under ``records/``, errors under ``errors/``).
        prompts: rows in the dataset.
        prompts_done: prompts with records. ``prompts_failed``: rows in the errors table.
        records: record rows (prompt × scope kind × prediction position).
        computed_prompts: prompts this invocation scored (all ranks); ``seconds`` its wall time.
        world_size: the number of ranks of this invocation.

    Example:
        >>> import tempfile
        >>> out_dir = tempfile.mkdtemp()
        >>> summary = run_dataset(model, [prompt, ""], out_dir, progress=False)       # an empty row fails
        >>> summary.prompts, summary.prompts_done, summary.prompts_failed, summary.world_size
        (2, 1, 1, 1)
    """

    out_dir: Path
    prompts: int
    prompts_done: int
    prompts_failed: int
    records: int
    computed_prompts: int
    seconds: float
    world_size: int

    @property
    def prompts_per_second(self) -> float:
        return self.computed_prompts / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.prompts_done + self.prompts_failed == self.prompts

    @property
    def ok(self) -> bool:
        """Every row of the dataset has records (no row failed).

        Example:
            >>> import tempfile
            >>> out_dir = tempfile.mkdtemp()
            >>> run_dataset(model, [prompt], out_dir, progress=False).ok
            True
        """
        return self.complete and self.prompts_failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir), "prompts": self.prompts, "prompts_done": self.prompts_done,
            "prompts_failed": self.prompts_failed, "records": self.records,
            "computed_prompts": self.computed_prompts, "seconds": self.seconds,
            "prompts_per_second": self.prompts_per_second, "world_size": self.world_size,
        }

    def text(self) -> str:
        failed = f"; {self.prompts_failed} failed (see {self.out_dir / storage.ERRORS})" if self.prompts_failed else ""
        return (
            f"{self.prompts_done} of {self.prompts} prompts have records ({self.records} records){failed}; "
            f"this run scored {self.computed_prompts} prompts in {self.seconds:.1f} s "
            f"({self.prompts_per_second:.1f} prompts/s on {self.world_size} rank{'s' if self.world_size > 1 else ''})"
        )

    def records_frame(self) -> Any:
        """The records as a pandas DataFrame, sorted by prompt, kind and position.

        Example:
            >>> import tempfile
            >>> out_dir = tempfile.mkdtemp()
            >>> frame = run_dataset(model, [prompt], out_dir, kinds=["semantic", "fisher"], progress=False).records_frame()
            >>> frame[["prompt_id", "kind", "position"]]
               prompt_id      kind  position
            0          0    fisher         4
            1          0  semantic         4
        """
        import pandas as pd

        frame = pd.read_parquet(self.out_dir / storage.RECORDS)
        return frame.sort_values(["prompt_id", "kind", "position"], kind="stable").reset_index(drop=True)

    def errors_frame(self) -> Any:
        """The errors table as a pandas DataFrame (empty when no row failed).

        Example:
            >>> import tempfile
            >>> out_dir = tempfile.mkdtemp()
            >>> run_dataset(model, [prompt, ""], out_dir, progress=False).errors_frame()[["prompt_id", "error"]]
               prompt_id         error
            0          1  empty prompt
        """
        import pandas as pd

        paths = storage.shard_paths(self.out_dir, storage.ERRORS)
        if not paths:
            return storage.ERROR_SCHEMA.empty_table().to_pandas()
        return pd.concat([pd.read_parquet(path) for path in paths]).sort_values("prompt_id").reset_index(drop=True)


@dataclass(frozen=True)
class PlannedBatch:
    """One batch of a run's plan: its index, its prompts' ids and their tokens ``[len(prompt_ids), pos]`` (equal lengths, no padding).

    Example:
        >>> from jscopes_tl.runs.runner import PlannedBatch
        >>> batch = PlannedBatch(0, [3, 5], model.to_tokens(["a=3 b=", "c=1 d="]))
        >>> batch.prompt_ids, batch.tokens.shape
        ([3, 5], torch.Size([2, 3]))
    """

    batch: int
    prompt_ids: list[int]
    tokens: torch.Tensor  # [len(prompt_ids), pos]: equal lengths, no padding


@dataclass(frozen=True)
class RunJob:
    """What a run computes, for the loop that plans, shares, commits and resumes it (:func:`execute`).

    Attributes:
        arguments: the run's identifying arguments (``manifest["run"]``; ``"command"`` names the job).
        schema: the schema of its rows (one shard per batch).
        tokenize: a prompt's text → its token ids (the plan groups prompts by length).
        score_batch: a planned batch and the prompts' texts → its rows and its error rows; a
            prompt that fails is an error row, anything raised stops the run.
        description: the progress bar's label.

    Example:
        >>> import pyarrow as pa
        >>> from jscopes_tl.adapter import ModelAdapter
        >>> from jscopes_tl.runs.runner import RunJob
        >>> schema = pa.schema([("prompt_id", pa.int64()), ("n_tokens", pa.int64())])
        >>> def count(batch, texts):                             # one row per prompt, no error rows
        ...     return [{"prompt_id": i, "n_tokens": batch.tokens.shape[1]} for i in batch.prompt_ids], []
        >>> job = RunJob({"command": "count"}, schema, ModelAdapter(model).tokenize, count, "count tokens")
        >>> job.arguments, job.schema.names
        ({'command': 'count'}, ['prompt_id', 'n_tokens'])
    """

    arguments: dict[str, Any]
    schema: pa.Schema
    tokenize: Callable[[str], torch.Tensor]
    score_batch: Callable[["PlannedBatch", dict[int, str | None]], tuple[list[dict[str, Any]], list[dict[str, Any]]]]
    description: str


@dataclass(frozen=True)
class RunOptions:
    kinds: tuple[str, ...]
    position: int | list[int] | str
    target: Any
    rank: int | None
    batch_size: int
    top_k: int

    def as_manifest(self) -> dict[str, Any]:
        return {
            "command": "run", "kinds": list(self.kinds), "position": self.position,
            "target": list(self.target) if isinstance(self.target, tuple) else self.target,
            "fisher_rank": self.rank, "batch_size": self.batch_size, "top_k": self.top_k,
        }


def check_run_arguments(
    kinds: Any, position: Any, target: Any, rank: Any, batch_size: Any, top_k: Any, limit: Any,
    overwrite: Any, progress: Any,
) -> RunOptions:
    """The run's scope arguments, checked before anything is read or loaded (ScopeInputError)."""
    if isinstance(kinds, str):
        kinds = KINDS if kinds == "all" else (kinds,)
    if not isinstance(kinds, Sequence) or not kinds or any(kind not in KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
        raise ScopeInputError(f"kinds must be 'all' or distinct names from {list(KINDS)}; got {kinds!r}.")
    if isinstance(position, str):
        if position != "all":
            raise ScopeInputError(f"position must be an int, a list of ints or 'all'; got {position!r}.")
    elif isinstance(position, Sequence) and not isinstance(position, (bytes, bytearray)):
        if not position or not all(isinstance(p, int) and not isinstance(p, bool) for p in position):
            raise ScopeInputError(f"position must be an int, a non-empty list of ints or 'all'; got {position!r}.")
        position = list(position)
    elif isinstance(position, bool) or not isinstance(position, int):
        raise ScopeInputError(f"position must be an int, a list of ints or 'all'; got {position!r}.")
    if target is not None:
        def is_token(value: Any) -> bool:
            return isinstance(value, str) and value != "" or isinstance(value, int) and not isinstance(value, bool) and value >= 0
        pair = isinstance(target, (tuple, list)) and len(target) == 2 and all(is_token(v) for v in target)
        if not (is_token(target) or pair):
            raise ScopeInputError(
                f"target must be None (the model's top-1), a token (str or id) or a pair (a, b); got {target!r}. "
                "(A run records its arguments, so directions and callables are not accepted here.)"
            )
        if "semantic" not in kinds:
            raise ScopeInputError(f"target applies to the semantic scope only; kinds is {list(kinds)}.")
        target = tuple(target) if pair else target
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ScopeInputError(f"rank (the Fisher rank) must be a positive int or None (exact); got {rank!r}.")
    for name, value in (("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScopeInputError(f"{name} must be a positive int; got {value!r}.")
    check_run_controls(limit, overwrite, progress)
    return RunOptions(tuple(kinds), position, target, rank, batch_size, top_k)


def check_run_controls(limit: Any, overwrite: Any, progress: Any) -> None:
    """The arguments every kind of run takes besides what it computes (ScopeInputError)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ScopeInputError(f"limit must be a positive int or None (every row); got {limit!r}.")
    for name, value in (("overwrite", overwrite), ("progress", progress)):
        if not isinstance(value, bool):
            raise ScopeInputError(f"{name} must be True or False; got {value!r}.")


def check_out_dir(out_dir: Any, argument: str = "out_dir") -> Path:
    """A directory a run can write: existing, or creatable in an existing writable parent."""
    import os

    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ScopeInputError(f"{argument} must be a directory path (str or pathlib.Path); got {out_dir!r}.")
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ScopeInputError(f"{argument} {str(out_dir)!r} is a file; a run writes a directory of shards.")
    existing = path if path.is_dir() else path.resolve().parent
    if not existing.is_dir():
        raise ScopeInputError(f"cannot create {argument} {str(out_dir)!r}: {missing_directory(existing)}.")
    if not os.access(existing, os.W_OK):
        raise ScopeInputError(f"cannot write {argument} {str(out_dir)!r}: permission denied.")
    return path


def run_dataset(
    model: Any,
    dataset: Any,
    out_dir: str | Path,
    *,
    kinds: str | Sequence[str] = "semantic",
    position: int | Sequence[int] | str = -1,
    target: str | int | tuple[str | int, str | int] | None = None,
    rank: int | None = 1,
    batch_size: int = 16,
    top_k: int = 5,
    text_column: str = "text",
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model_name: str | None = None,
) -> RunSummary:
    """Score every prompt of a dataset with the chosen scopes and write the records as Parquet.

    One record per (prompt, scope kind, prediction position): ``prompt_id, kind, position, text,
    tokens, str_tokens, word_starts, target, target_str_tokens, prediction_token_ids,
    prediction_str_tokens, prediction_probabilities, scores, metadata`` (JSON), ``batch``
    (:data:`jscopes_tl.runs.storage.RECORD_SCHEMA`). Read them with
    ``pandas.read_parquet(out_dir / "records")`` or
    ``datasets.load_dataset("parquet", data_files=f"{out_dir}/records/*.parquet")``.

    Re-running the same call resumes: finished batches are skipped and the records equal an
    uninterrupted run's. Under ``torchrun --nproc-per-node N`` every rank calls this with the same
    arguments (its model on :func:`jscopes_tl.runs.distributed.rank_device`); ranks share the
    batches and rank 0 writes the manifest and ``summary.json``.

    Args:
        model: a HookedTransformer or TransformerBridge.
        dataset: a prompt file (``.jsonl``, ``.csv`` or text, one prompt a line), a
            ``datasets.Dataset`` (its ``text_column``) or a list of str.
        out_dir: the run directory (created if missing; its parent must exist).
        kinds: ``"semantic"``, ``"fisher"``, ``"temperature"``, a list of them, or ``"all"``.
        position: prediction position(s) as for the scopes: an int (negative from each prompt's
            end), a list of ints, or ``"all"``.
        target: Semantic target: None (the model's top-1), a token (str or id) or a pair ``(a, b)``.
        rank: Fisher rank (None: exact).
        batch_size: prompts of equal token length scored in one call (also the commit unit).
        top_k: the model's top-k predictions recorded per position.
        limit: only the first ``limit`` rows of the dataset.
        overwrite: delete the run in ``out_dir`` (whatever its arguments) and start afresh;
            without it a run with other arguments there is refused.
        progress: a progress bar per rank (prompts done / total, ETA) on stderr.
        model_name: the name recorded in the manifest (default: the model's ``cfg.model_name``).

    Returns:
        A :class:`RunSummary`; ``summary.ok`` is False when some row failed (see
        ``summary.errors_frame()``).

    Example:
        >>> import tempfile
        >>> out_dir = tempfile.mkdtemp()
        >>> summary = run_dataset(model, [prompt, "c=1 d=5 c="], out_dir, kinds="all", progress=False)
        >>> summary.ok, summary.records, summary.records_frame()["kind"].tolist()[:3]
        (True, 6, ['fisher', 'semantic', 'temperature'])
    """
    options = check_run_arguments(kinds, position, target, rank, batch_size, top_k, limit, overwrite, progress)
    path = check_out_dir(out_dir)
    adapter = ModelAdapter(model)
    data = limited(read_prompt_dataset(dataset, text_column=text_column), limit)
    job = RunJob(
        arguments=options.as_manifest(), schema=storage.RECORD_SCHEMA, tokenize=adapter.tokenize,
        score_batch=lambda batch, texts: score_batch(model, batch, texts, options), description="jscopes run",
    )
    return execute(model, data, path, job, options.batch_size, overwrite, progress, model_name)


def execute(
    model: Any, data: PromptDataset, out_dir: Path, job: RunJob, batch_size: int, overwrite: bool, progress: bool,
    model_name: str | None,
) -> RunSummary:
    """Run ``job`` over ``data`` into ``out_dir`` on every rank (module docstring): refuse another
    run's directory, plan, skip the committed batches, share the rest, commit each by rename.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import pyarrow as pa
        >>> from jscopes_tl.adapter import ModelAdapter
        >>> from jscopes_tl.runs.prompts import read_prompt_dataset
        >>> from jscopes_tl.runs.runner import RunJob, execute
        >>> schema = pa.schema([("prompt_id", pa.int64()), ("n_tokens", pa.int64())])
        >>> def count(batch, texts):                             # one row per prompt, no error rows
        ...     return [{"prompt_id": i, "n_tokens": batch.tokens.shape[1]} for i in batch.prompt_ids], []
        >>> job = RunJob({"command": "count"}, schema, ModelAdapter(model).tokenize, count, "count tokens")
        >>> data = read_prompt_dataset([prompt, "c=1 d="])
        >>> summary = execute(model, data, Path(tempfile.mkdtemp()), job, 8, False, False, None)
        >>> summary.ok, summary.records, summary.prompts_done
        (True, 2, 2)
    """
    info = distributed.setup()
    try:
        with _directory_lock(out_dir, info):
            return _run(model, ModelAdapter(model), data, out_dir, job, batch_size, info, overwrite, progress, model_name)
    finally:
        distributed.teardown(info)


@contextmanager
def _directory_lock(out_dir: Path, info: distributed.RankInfo) -> Iterator[None]:
    """One run at a time on ``out_dir``: rank 0 holds its lock for the run (the ranks of one run do
    not lock each other out), and every rank refuses when rank 0 could not take it."""
    lock, refusal = None, None
    if info.is_main:
        try:
            lock = storage.lock_directory(out_dir)
        except storage.RunInUseError as error:
            refusal = error
    if not distributed.all_ranks_ok(info, refusal is None):
        raise refusal or storage.RunInUseError(f"out_dir {str(out_dir)!r} is in use by another run (rank 0 found it locked).")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def limited(data: PromptDataset, limit: int | None) -> PromptDataset:
    """The first ``limit`` rows (a different dataset for the manifest)."""
    if limit is None:
        return data
    return PromptDataset(data.rows[:limit], data.source, f"{data.fingerprint}[:{limit}]")


def check_resumable(
    out_dir: Path, arguments: dict[str, Any], data: PromptDataset, limit: int | None, overwrite: bool
) -> None:
    """Refuse at once (before a model loads) a run whose arguments (``RunJob.arguments``) or
    dataset differ from the run already in ``out_dir``, or whose files are damaged; the model's
    identity is compared by :func:`execute`. A directory another run holds is refused too (in a
    single process: under ``torchrun`` the ranks' own checks would race with rank 0's lock)."""
    if not distributed.launched_distributed():
        storage.check_not_in_use(out_dir)
    _, refusal = resume_refusal(out_dir, build_manifest(arguments, limited(data, limit), {}, 1), overwrite, model_known=False)
    if refusal is not None:
        raise refusal


def resume_refusal(
    out_dir: Path, manifest: dict[str, Any], overwrite: bool, *, model_known: bool = True
) -> tuple[dict[str, Any] | None, ScopeInputError | None]:
    """The manifest already in ``out_dir`` (None: none, or ``overwrite``) and why a run with
    ``manifest`` cannot resume it (None: it can): damaged files, records without a manifest, other
    arguments. ``model_known=False``: the model is not loaded yet, its identity is not compared."""
    if overwrite:
        return None, None
    try:
        previous = storage.read_json(out_dir / storage.MANIFEST)
        storage.check_shards_readable(out_dir)
    except storage.DamagedRunError as error:
        return None, error
    if previous is None:
        return None, _stale_records_error(out_dir) if storage.committed_batches(out_dir) else None
    if not model_known:
        manifest = {**manifest, "model": previous.get("model") or {}}
    differences = conflicts(previous, manifest)
    return previous, _conflict_error(out_dir, differences) if differences else None


def _stale_records_error(out_dir: Path) -> RunConflictError:
    return RunConflictError(
        f"out_dir {str(out_dir)!r} holds record shards but no manifest.json: it is not a run this "
        "version can resume. Use another directory, or overwrite=True (--overwrite) to replace it."
    )


def _conflict_error(out_dir: Path, differences: list[str]) -> RunConflictError:
    return RunConflictError(
        f"out_dir {str(out_dir)!r} holds a run with other arguments ({'; '.join(differences)}). "
        "Re-run with the same arguments to resume it, use another directory, or overwrite=True "
        "(--overwrite) to replace it."
    )


def _run(
    model: Any, adapter: ModelAdapter, data: PromptDataset, out_dir: Path, job: RunJob, batch_size: int,
    info: distributed.RankInfo, overwrite: bool, progress: bool, model_name: str | None,
) -> RunSummary:
    start = time.perf_counter()
    manifest = build_manifest(job.arguments, data, model_identity(model, model_name), info.world_size)
    previous, refusal = resume_refusal(out_dir, manifest, overwrite)
    if not distributed.all_ranks_ok(info, refusal is None):
        raise refusal or RunConflictError(f"out_dir {str(out_dir)!r} cannot be resumed: another rank refused it (see its message).")
    distributed.barrier(info)  # every rank has read the old manifest before rank 0 replaces it
    plan, input_errors = plan_batches(adapter, data, batch_size, job.tokenize)
    if info.is_main:
        out_dir.mkdir(exist_ok=True)
        if overwrite:
            storage.remove_run(out_dir)
        storage.remove_temporaries(out_dir)
        (out_dir / storage.RECORDS).mkdir(exist_ok=True)
        (out_dir / storage.ERRORS).mkdir(exist_ok=True)
        if overwrite or previous is None:
            storage.write_json(out_dir / storage.MANIFEST, manifest)
        storage.write_table(out_dir / storage.ERRORS / storage.INPUT_ERRORS, input_errors, storage.ERROR_SCHEMA)
    distributed.barrier(info)
    done = storage.committed_batches(out_dir)
    distributed.barrier(info)  # every rank plans from the same finished set before any rank commits
    remaining = [batch for batch in plan if batch.batch not in done]
    mine = remaining[info.rank :: info.world_size]
    texts = {row.prompt_id: row.text for row in data.rows}

    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(len(batch.prompt_ids) for batch in mine),
        desc=f"rank {info.rank}/{info.world_size}" if info.distributed else job.description,
        unit="prompt", position=info.rank, file=sys.stderr, disable=not progress, dynamic_ncols=True,
    )
    computed = 0
    with bar:
        for batch in mine:
            records, errors = job.score_batch(batch, texts)
            if errors:
                storage.write_table(out_dir / storage.ERRORS / storage.part_name(batch.batch), errors, storage.ERROR_SCHEMA)
            storage.write_table(out_dir / storage.RECORDS / storage.part_name(batch.batch), records, job.schema)
            computed += len(batch.prompt_ids)
            bar.update(len(batch.prompt_ids))
    elapsed = time.perf_counter() - start
    computed_total = int(distributed.sum_over_ranks(info, [float(computed)])[0])
    seconds = distributed.max_over_ranks(info, elapsed)
    distributed.barrier(info)
    if info.is_main:
        summary = _summarise(out_dir, len(data.rows), computed_total, seconds, info.world_size)
        storage.write_json(out_dir / storage.SUMMARY, summary.to_dict())
    distributed.barrier(info)
    written = storage.read_json(out_dir / storage.SUMMARY)
    return RunSummary(
        out_dir=out_dir, prompts=written["prompts"], prompts_done=written["prompts_done"],
        prompts_failed=written["prompts_failed"], records=written["records"],
        computed_prompts=written["computed_prompts"], seconds=written["seconds"], world_size=written["world_size"],
    )


def _summarise(out_dir: Path, n_rows: int, computed: int, seconds: float, world_size: int) -> RunSummary:
    record_paths = storage.shard_paths(out_dir, storage.RECORDS)
    error_paths = storage.shard_paths(out_dir, storage.ERRORS)
    return RunSummary(
        out_dir=out_dir,
        prompts=n_rows,
        prompts_done=len(set(storage.read_column(record_paths, "prompt_id"))),
        prompts_failed=len(set(storage.read_column(error_paths, "prompt_id"))),
        records=storage.count_rows(record_paths),
        computed_prompts=computed,
        seconds=seconds,
        world_size=world_size,
    )


# ------------------------------------------------------------------------------------ plan
def plan_batches(
    adapter: ModelAdapter, data: PromptDataset, batch_size: int, tokenize: Callable[[str], torch.Tensor] | None = None
) -> tuple[list[PlannedBatch], list[dict[str, Any]]]:
    """Batches of equal-length prompts (by length, then prompt id) and the rows that are no prompt.
    ``tokenize`` defaults to the model's own tokenisation (BOS convention included)."""
    tokenize = tokenize or adapter.tokenize
    errors: list[dict[str, Any]] = []
    by_length: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for row in data.rows:
        if row.error is not None:
            errors.append(error_row(row.prompt_id, "read", row.error, row.text, row.line, None))
            continue
        try:
            tokens = tokenize(row.text).cpu()
        except Exception as error:  # a tokenizer's failure on one row must not stop the run
            errors.append(error_row(row.prompt_id, "tokenize", f"{type(error).__name__}: {error}", row.text, row.line, None))
            continue
        if len(tokens) > adapter.n_ctx:
            message = f"too long: {len(tokens)} tokens, the model's context is n_ctx={adapter.n_ctx}"
            errors.append(error_row(row.prompt_id, "tokenize", message, row.text, row.line, None))
            continue
        by_length.setdefault(len(tokens), []).append((row.prompt_id, tokens))
    plan = []
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            plan.append(PlannedBatch(len(plan), [prompt_id for prompt_id, _ in chunk], torch.stack([t for _, t in chunk])))
    return plan, errors


def error_row(prompt_id: int, stage: str, error: str, text: str | None, line: int | None, batch: int | None) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "stage": stage, "error": error, "text": text, "line": line, "batch": batch}


# ------------------------------------------------------------------------------------ scoring
def _scope(model: Any, kind: str, tokens: torch.Tensor, options: RunOptions) -> ScopeResult:
    common = {"position": options.position, "top_k": options.top_k}
    if kind == "semantic":
        return semantic_scope(model, tokens, target=options.target, **common)
    if kind == "fisher":
        return fisher_scope(model, tokens, rank=options.rank, **common)
    return temperature_scope(model, tokens, **common)


def score_batch(
    model: Any, batch: PlannedBatch, texts: dict[int, str | None], options: RunOptions
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records of one batch, and error rows for prompts that failed (retried one by one)."""
    try:
        results = [_scope(model, kind, batch.tokens, options) for kind in options.kinds]
        return _records(batch.batch, batch.prompt_ids, texts, results), []
    except ROW_ERRORS as batch_error:
        if len(batch.prompt_ids) == 1:
            error = error_row(batch.prompt_ids[0], "scope", describe(batch_error), texts[batch.prompt_ids[0]], None, batch.batch)
            return [], [error]
    records, errors = [], []
    for index, prompt_id in enumerate(batch.prompt_ids):
        try:
            results = [_scope(model, kind, batch.tokens[index : index + 1], options) for kind in options.kinds]
        except ROW_ERRORS as error:
            errors.append(error_row(prompt_id, "scope", describe(error), texts[prompt_id], None, batch.batch))
            continue
        records.extend(_records(batch.batch, [prompt_id], texts, results))
    return records, errors


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _records(batch: int, prompt_ids: list[int], texts: dict[int, str | None], results: list[ScopeResult]) -> list[dict[str, Any]]:
    per_prompt: list[list[dict[str, Any]]] = [[] for _ in prompt_ids]
    for result in results:
        axes = result_axes(result)
        scores = axes.expand_score(result.scores)[:, :, 0].float().cpu()
        positions = axes.expand_prediction(result.position).cpu()
        target = None if result.target is None else axes.expand_prediction(result.target).cpu()
        prediction = result.prediction
        top_ids = axes.expand_prediction(prediction.token_ids).cpu()
        top_probabilities = axes.expand_prediction(prediction.probabilities).float().cpu()
        top_strings = axes.expand_nested(prediction.str_tokens)
        metadata = result.metadata
        for row, prompt_id in enumerate(prompt_ids):
            length = int(result.lengths[row])
            for column in range(positions.shape[1]):
                per_prompt[row].append({
                    "prompt_id": prompt_id,
                    "kind": result.kind,
                    "position": int(positions[row, column]),
                    "text": texts[prompt_id],
                    "tokens": result.tokens[row, :length].tolist(),
                    "str_tokens": result.str_tokens[row],
                    "word_starts": metadata["word_starts"][row] if metadata.get("word_starts") else None,
                    "target": None if target is None else target[row, column].tolist(),
                    "target_str_tokens": (
                        None if metadata.get("target_str_tokens") is None else metadata["target_str_tokens"][row][column]
                    ),
                    "prediction_token_ids": top_ids[row, column].tolist(),
                    "prediction_str_tokens": top_strings[row][column],
                    "prediction_probabilities": top_probabilities[row, column].tolist(),
                    "scores": scores[row, column, :length].tolist(),
                    "metadata": json.dumps(_record_metadata(metadata, row, column, axes.positions), sort_keys=True),
                    "batch": batch,
                })
    return [record for records in per_prompt for record in records]


def _record_metadata(metadata: dict[str, Any], row: int, column: int, positions_axis: bool) -> dict[str, Any]:
    """A batch result's metadata for one prompt and position: per-prompt tensors indexed, the rest kept."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in _PROMPT_METADATA:
            continue
        if isinstance(value, torch.Tensor):
            value = value[row]
            if positions_axis and value.ndim >= 1:
                value = value[column]
            value = value.tolist()
        out[key] = value
    return out
