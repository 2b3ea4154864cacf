"""Faithfulness over a whole dataset: ``jscopes eval`` rows on disk, resumable, data parallel.

:func:`run_faithfulness` is :func:`~jscopes_tl.faithfulness.evaluate_faithfulness` run by the
dataset runner (:func:`jscopes_tl.runs.runner.execute`), so it plans, shares, commits and resumes
exactly as :func:`~jscopes_tl.runs.run_dataset` does. What keeps it exact:

* **Each prompt is evaluated alone** (:func:`~jscopes_tl.faithfulness.evaluate_prompt`, the
  function the in-memory evaluation loops over), and its random draws are seeded from the run's
  seed and the prompt's id (:func:`~jscopes_tl.faithfulness.prompt_seed`): a prompt's rows do not
  depend on which prompts ran before it, in this process or on this rank, so a resumed run's rows
  equal an uninterrupted run's, and equal the in-memory report's for the same prompts.
* **A batch is a commit unit only.** ``shard_size`` prompts (of equal token length, as the plan
  groups them) go to one shard; within it each prompt runs its own ablated forwards
  (``batch_size`` at a time, as in memory).
* **The table is computed from the rows read back** (:meth:`FaithfulnessRunSummary.summary`, the
  same function as :meth:`~jscopes_tl.faithfulness.FaithfulnessReport.summary`), so the table of
  a resumed or multi-rank run is the one its files hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from jscopes_tl.errors import ScopeInputError
from jscopes_tl.faithfulness import (
    DEFAULT_FRACTIONS,
    DEFAULT_SCORERS,
    FaithfulnessSettings,
    PromptEvaluation,
    delta_column,
    diagnostic_columns,
    check_faithfulness_arguments,
    check_prompt_tokens,
    evaluate_prompt,
    faithfulness_settings,
    row_columns,
    summarise_rows,
)
from jscopes_tl.runs import storage
from jscopes_tl.runs.prompts import read_prompt_dataset
from jscopes_tl.runs.runner import (
    ROW_ERRORS,
    PlannedBatch,
    RunJob,
    RunSummary,
    check_out_dir,
    check_run_controls,
    describe,
    error_row,
    execute,
    limited,
)


# Prompts per committed shard when the caller does not say (the most an interrupted run loses).
DEFAULT_SHARD_SIZE = 8

@dataclass(frozen=True)
class FaithfulnessRunSummary(RunSummary):
    """A :class:`~jscopes_tl.runs.RunSummary` of ``jscopes eval`` rows, with the table read from them.

    ``records`` counts rows (prompt × scorer); ``scorers``, ``fractions`` and ``protocol`` are
    the run's (from its manifest).

    Example:
        >>> import tempfile
        >>> out_dir = tempfile.mkdtemp()
        >>> run = run_faithfulness(model, ["a=3 b=7 c=1 b= 7", "d=1 e=2 d= 1"], out_dir, ["semantic", "random"],
        ...                        progress=False)
        >>> run.scorers, run.fractions, run.protocol
        (('semantic', 'random'), (0.05, 0.1, 0.2), 'default')
    """

    scorers: tuple[str, ...] = ()
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    protocol: str = "default"

    def report_rows(self) -> list[dict[str, Any]]:
        """The rows as :attr:`FaithfulnessReport.rows <jscopes_tl.faithfulness.FaithfulnessReport>`
        holds them (``prompt`` is the prompt id), by prompt and then in the scorers' order; only
        those columns are read.

        Example:
            >>> import tempfile
            >>> out_dir = tempfile.mkdtemp()
            >>> run = run_faithfulness(model, ["a=3 b=7 c=1 b= 7", "d=1 e=2 d= 1"], out_dir, ["semantic", "random"],
            ...                        progress=False)
            >>> rows = run.report_rows()                  # as FaithfulnessReport.rows: one per (prompt, scorer)
            >>> len(rows), rows[0]["scorer"]
            (4, 'semantic')
        """
        columns = row_columns(self.fractions, self.protocol)  # type: ignore[arg-type]
        read = ["prompt_id", *columns[1:]]
        rows = []
        for path in storage.shard_paths(self.out_dir, storage.RECORDS):
            for row in pq.read_table(path, columns=read).to_pylist():
                rows.append({"prompt": row.pop("prompt_id"), **row})
        order = {name: index for index, name in enumerate(self.scorers)}
        return sorted(rows, key=lambda row: (row["prompt"], order[row["scorer"]]))

    def summary(self) -> list[dict[str, Any]]:
        """Per scorer, the mean of every numeric column over the prompts that have rows (the
        faithfulness table, as :meth:`FaithfulnessReport.summary` computes it).

        Example:
            >>> import tempfile
            >>> out_dir = tempfile.mkdtemp()
            >>> run = run_faithfulness(model, ["a=3 b=7 c=1 b= 7", "d=1 e=2 d= 1"], out_dir, ["semantic", "random"],
            ...                        progress=False)
            >>> [(row["scorer"], row["n_prompts"]) for row in run.summary()]
            [('semantic', 2), ('random', 2)]
        """
        return summarise_rows(self.report_rows(), self.fractions)

    def records_frame(self) -> Any:
        """Every row with every column, as a pandas DataFrame, by prompt and then scorer order.

        Example:
            >>> import tempfile
            >>> out_dir = tempfile.mkdtemp()
            >>> run = run_faithfulness(model, ["a=3 b=7 c=1 b= 7", "d=1 e=2 d= 1"], out_dir, ["semantic", "random"],
            ...                        progress=False)
            >>> run.records_frame()[["prompt_id", "scorer"]]
               prompt_id    scorer
            0          0  semantic
            1          0    random
            2          1  semantic
            3          1    random
        """
        import pandas as pd

        frame = pd.read_parquet(self.out_dir / storage.RECORDS)
        frame["_order"] = frame["scorer"].map({name: index for index, name in enumerate(self.scorers)})
        frame = frame.sort_values(["prompt_id", "_order"], kind="stable").drop(columns="_order")
        return frame.reset_index(drop=True)

    def text(self) -> str:
        failed = f"; {self.prompts_failed} failed (see {self.out_dir / storage.ERRORS})" if self.prompts_failed else ""
        ranks = f"{self.world_size} rank{'s' if self.world_size > 1 else ''}"
        return (
            f"{self.prompts_done} of {self.prompts} prompts evaluated ({self.records} rows){failed}; "
            f"this run evaluated {self.computed_prompts} prompts in {self.seconds:.1f} s "
            f"({self.prompts_per_second:.2f} prompts/s on {ranks})"
        )


def faithfulness_run_arguments(
    scorers: Any, fractions: Any, ablation: Any, protocol: Any, batch_size: Any, seed: Any, shard_size: Any,
) -> dict[str, Any]:
    """The run's identifying arguments (``manifest["run"]``), checked before anything is read or
    loaded (ScopeInputError naming the argument)."""
    if isinstance(scorers, str) or not isinstance(scorers, Sequence) or not scorers:
        raise ScopeInputError(
            f"scorers must be a non-empty list of names from {list(DEFAULT_SCORERS)}; got {scorers!r}. "
            "(A run records its arguments, so scorer callables are not accepted here: "
            "use evaluate_faithfulness.)"
        )
    unknown = [name for name in scorers if name not in DEFAULT_SCORERS]
    if unknown or len(set(scorers)) != len(scorers):
        raise ScopeInputError(
            f"scorers must be distinct names from {list(DEFAULT_SCORERS)}; got {list(scorers)!r}."
        )
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ScopeInputError(f"shard_size must be a positive int; got {shard_size!r}.")
    fractions, seed = check_faithfulness_arguments(fractions, ablation, protocol, batch_size, seed)
    return {
        "command": "eval", "scorers": list(scorers), "fractions": list(fractions), "ablation": ablation,
        "protocol": protocol, "batch_size": batch_size, "seed": seed, "shard_size": shard_size,
    }


def run_faithfulness(
    model: Any,
    dataset: Any,
    out_dir: str | Path,
    scorers: Sequence[str] = DEFAULT_SCORERS,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ablation: str = "zero",
    protocol: str = "default",
    batch_size: int = 64,
    seed: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    text_column: str = "text",
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model_name: str | None = None,
) -> FaithfulnessRunSummary:
    """:func:`~jscopes_tl.faithfulness.evaluate_faithfulness` over a dataset, its rows written as
    Parquet shards (resumable, data parallel: :func:`~jscopes_tl.runs.run_dataset`'s machinery).

    One row per (prompt, scorer) under ``out_dir/records/``: the report row's columns
    (``prompt_id, scorer, n_candidates, delta_5, delta_10, delta_20, aopc, loo_spearman,
    loo_percentile_of_top`` [, ``loo_rank_percentage``], ``completeness_gap,
    relative_completeness_gap, ig_evaluations`` (null but for Integrated Gradients)
    [, ``loo_completeness_gap, loo_relative_completeness_gap, loo_ig_evaluations``],
    ``top_token, predicted_token, gold_token``) and the prompt's measurements (``text, tokens, str_tokens, candidates, scores,
    loo_scores, ablated, leave_one_out_kl``; :func:`jscopes_tl.runs.storage.faithfulness_schema`).
    For the same prompts they equal :func:`~jscopes_tl.faithfulness.evaluate_faithfulness`'s, with
    the prompt's row index in the dataset as its index. Prompts that cannot be evaluated (empty,
    undecodable, too long, too short) go to ``out_dir/errors/`` and the run goes on. Re-running
    the same call resumes; other arguments on the same directory are refused unless
    ``overwrite=True``.

    Args:
        model: a HookedTransformer or TransformerBridge.
        dataset: a prompt file (``.jsonl``, ``.csv`` or text, one prompt a line, each ending with
            its answer), a ``datasets.Dataset`` (its ``text_column``) or a list of str.
        out_dir: the run directory (created if missing; its parent must exist).
        scorers: names of built-in scorers (:data:`~jscopes_tl.faithfulness.DEFAULT_SCORERS`).
        fractions, ablation, protocol, batch_size, seed: as for
            :func:`~jscopes_tl.faithfulness.evaluate_faithfulness` (``batch_size``: ablated
            forwards per batch).
        shard_size: prompts per committed shard (the most a killed run loses).
        limit: only the first ``limit`` rows of the dataset.
        overwrite: delete the run in ``out_dir`` and start afresh.
        progress: a progress bar per rank on stderr.
        model_name: the name recorded in the manifest (default: the model's ``cfg.model_name``).

    Returns:
        A :class:`FaithfulnessRunSummary`: ``summary.summary()`` is the table (from the rows on
        disk), ``summary.ok`` is False when some prompt failed (``summary.errors_frame()``).

    Example:
        >>> import tempfile
        >>> out_dir = tempfile.mkdtemp()
        >>> run = run_faithfulness(model, ["a=3 b=7 c=1 b= 7", "d=1 e=2 d= 1"], out_dir, ["semantic", "random"],
        ...                        progress=False)
        >>> run.prompts_done, [row["scorer"] for row in run.summary()]
        (2, ['semantic', 'random'])
    """
    arguments = faithfulness_run_arguments(scorers, fractions, ablation, protocol, batch_size, seed, shard_size)
    check_run_controls(limit, overwrite, progress)
    path = check_out_dir(out_dir)
    data = limited(read_prompt_dataset(dataset, text_column=text_column), limit)
    settings = faithfulness_settings(
        model, arguments["scorers"], arguments["fractions"], ablation, protocol, batch_size, arguments["seed"]
    )
    schema = storage.faithfulness_schema(
        [delta_column(k) for k in settings.fractions], settings.paper, diagnostic_columns(settings.protocol)
    )
    job = RunJob(
        arguments=arguments, schema=schema, tokenize=settings.tokenize,
        score_batch=lambda batch, texts: score_batch(settings, batch, texts), description="jscopes eval",
    )
    summary = execute(model, data, path, job, shard_size, overwrite, progress, model_name)
    return FaithfulnessRunSummary(
        **{field.name: getattr(summary, field.name) for field in fields(RunSummary)},
        scorers=tuple(arguments["scorers"]), fractions=settings.fractions, protocol=protocol,
    )


def score_batch(
    settings: FaithfulnessSettings, batch: PlannedBatch, texts: dict[int, str | None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of one batch's prompts, each evaluated alone, and error rows for those that fail."""
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, prompt_id in enumerate(batch.prompt_ids):
        tokens = batch.tokens[index]
        try:
            check_prompt_tokens(settings, tokens, f"prompt {prompt_id}")
            report_rows, evaluation = evaluate_prompt(settings, tokens, prompt_id)
        except ROW_ERRORS as error:
            errors.append(error_row(prompt_id, "eval", describe(error), texts[prompt_id], None, batch.batch))
            continue
        rows.extend(_stored_rows(report_rows, evaluation, tokens, texts[prompt_id], batch.batch))
    return rows, errors


def _stored_rows(
    report_rows: list[dict[str, Any]],
    evaluation: PromptEvaluation,
    tokens: torch.Tensor,
    text: str | None,
    batch: int,
) -> list[dict[str, Any]]:
    stored = []
    for row in report_rows:
        name = row["scorer"]
        stored.append({
            "prompt_id": row["prompt"],
            **{key: value for key, value in row.items() if key != "prompt"},
            "text": text,
            "tokens": tokens.tolist(),
            "str_tokens": evaluation.str_tokens,
            "candidates": evaluation.candidates.tolist(),
            "scores": evaluation.scores[name].tolist(),
            "loo_scores": evaluation.loo_scores[name].tolist(),
            "ablated": [positions.tolist() for positions in evaluation.ablated[name]],
            "leave_one_out_kl": evaluation.leave_one_out_kl.tolist(),
            "batch": batch,
        })
    return stored
