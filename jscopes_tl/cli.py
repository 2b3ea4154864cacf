"""Command line ``jscopes`` (also ``python -m jscopes_tl``).

* ``jscopes scope "TEXT" --model NAME --kind semantic|fisher|temperature|all [--target T
  [--contrast C]] [--position N|all] [--rank K] [--out view.html] [--json scores.json]``:
  score every token of a prompt; the top tokens go to stdout, the view (every scope asked for,
  every position) and scores to files.
* ``jscopes ground-truth [--models recall induction periodic] [--prompts N]``: how often each
  scope and baseline ranks the known source token first on the bundled models' held-out prompts.
* ``jscopes eval PROMPTS --model NAME [--out-dir DIR [--shard-size N] [--overwrite]]``: the
  faithfulness table (AOPC under ablation, agreement with leave-one-out;
  :mod:`jscopes_tl.faithfulness`) over a file of prompts whose *final token is the answer* the
  model predicts, read as ``run`` reads its files (:mod:`jscopes_tl.runs.prompts`;
  :data:`EVAL_FORMAT`; ``demos/prompts_recall.jsonl`` is an example). When half the prompts or
  more end with a token the model finds implausible (the answer left out, most often), a warning
  on stderr names them. Without ``--out-dir`` everything stays in memory and a bad row is an
  error (exit 2); with it the per-prompt rows go to ``DIR/records`` as Parquet shards with a
  manifest (:func:`jscopes_tl.runs.run_faithfulness`), resumable and data parallel as ``run``,
  bad rows go to ``DIR/errors`` (exit code 3), and the table is computed from the rows on disk.
* ``jscopes run PROMPTS --model NAME --out-dir DIR [--kind ...] [--position N|all] [--target T
  [--contrast C]] [--rank K] [--batch-size N] [--overwrite]``: attribution records for every
  prompt of a file (:data:`RUN_FORMAT`) as Parquet shards in ``DIR/records`` with a manifest
  (:func:`jscopes_tl.runs.run_dataset`); re-running the same command resumes an interrupted run,
  and under ``torchrun --nproc-per-node N`` the ranks share the prompts. Exit code 3 when some
  rows failed (they are listed in ``DIR/errors``; the run goes on past them).
* ``jscopes models``: the bundled models, their held-out accuracy and an example command each.

``--model`` is required (there is no default model: a random toy model's predictions are noise,
and a bundled model knows only its task's words) and takes a bundled model (``recall``,
``induction``, ``periodic``), a random toy model (``toy-gpt2``, ``toy-llama``, ``toy-gemma2``), a
Hugging Face hub name or a local directory of a saved model; a name close to a bundled or toy
name is taken as a typo. Hub and local checkpoints load unprocessed (see
:func:`jscopes_tl.adapter.load_pretrained`). Exit codes: 0 success, 2 bad arguments (including a
prompt longer than the model's context, an unreadable prompt file, an output path that cannot be
written: the last two checked before a model is loaded, all before any computation), 1 runtime
failure (e.g. a model that cannot be loaded), 3 a run that finished with failed rows, 130
interrupted (Ctrl-C, or SIGTERM during ``run`` and ``eval --out-dir``). Errors and warnings go to
stderr; results to stdout or the files named.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jscopes_tl import models
from jscopes_tl.adapter import ModelLoadError, hooked_transformer_available, load_pretrained
from jscopes_tl.errors import ScopeInputError, UnsupportedModelError
from jscopes_tl.export import check_output_path
from jscopes_tl.result import ScopeResult
from jscopes_tl.scopes import fisher_scope, semantic_scope, temperature_scope

TOY_MODELS = {"toy-gpt2": "gpt2", "toy-llama": "llama", "toy-gemma2": "gemma2"}
KINDS = ("semantic", "fisher", "temperature")


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


def _known_models() -> str:
    return f"bundled: {', '.join(models.BUNDLED_MODELS)}; random toys: {', '.join(TOY_MODELS)}"


def load_model(name: str | None) -> Any:
    """A bundled model, a toy model, a hub name or a local directory, as a TransformerLens model."""
    if not name:
        raise UsageError(f"--model is required: {_known_models()}; or a Hugging Face hub name or a local directory")
    if models.is_bundled(name):
        return models.load(name)
    if name in TOY_MODELS:
        from jscopes_tl.toy import toy_model

        family = "hooked" if hooked_transformer_available() else "bridge"
        return toy_model(TOY_MODELS[name], family=family, init_scale=0.3)
    close = difflib.get_close_matches(name, [*models.BUNDLED_MODELS, *TOY_MODELS], n=1, cutoff=0.75)
    if close and not Path(name).expanduser().exists():
        raise UsageError(f"unknown model {name!r}; did you mean {close[0]!r}? ({_known_models()})")
    try:
        return load_pretrained(name)
    except ModelLoadError as error:
        raise ModelLoadError(f"{error}\nThe models that need no download are: {_known_models()}.") from error


def _position(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--position must be an int or 'all'; got {text!r}") from None


def _token(text: str) -> int | str:
    """A target given as ``id:123`` is a token id; anything else is token text."""
    if text.startswith("id:"):
        try:
            return int(text[3:])
        except ValueError:
            raise argparse.ArgumentTypeError(f"a token id is written id:N; got {text!r}") from None
    return text


def _rank(text: str) -> int:
    try:
        rank = int(text)
    except ValueError:
        rank = -1
    if rank < 0:
        raise argparse.ArgumentTypeError(f"--rank must be an int >= 1, or 0 for exact; got {text!r}")
    return rank


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {text!r}")
    return value


MODEL_HELP = (
    f"bundled: {', '.join(models.BUNDLED_MODELS)}; random toys: {', '.join(TOY_MODELS)}; "
    "or a Hugging Face hub name or a local directory of a saved model"
)

EVAL_FORMAT = """\
prompt file format: one prompt a line, each ENDING WITH THE ANSWER the model should predict.
eval scores the prediction of every prompt's final token from the tokens before it (the
paper's protocol), so give "a=3 b=7 c=1 b= 7", not the question "a=3 b=7 c=1 b=".
  .jsonl  one JSON string or object with a "text" field a line:  {"text": "a=3 b=7 c=1 b= 7"}
  .csv    a header line naming a "text" column (else a "prompt" column)
  other   plain text, one prompt a line
Blank lines are skipped (the same reader as 'jscopes run'). Example file:
demos/prompts_recall.jsonl (for --model recall). When half the prompts or more end with a token
the model gives probability below 0.001 (a question without its answer, most often), a warning
on stderr names them.
Large runs: with --out-dir DIR the rows (one per prompt and scorer) go to DIR/records/*.parquet
with DIR/manifest.json, as 'jscopes run' writes records: run the same command again to resume,
other arguments on DIR are refused unless --overwrite, rows that cannot be evaluated go to
DIR/errors (exit code 3), and the table is computed from the rows on disk."""

IMPLAUSIBLE_ANSWER_PROBABILITY = 1e-3

RUN_FORMAT = """\
prompt file format: one prompt a line.
  .jsonl  one JSON string or object with a "text" field a line:  {"text": "a=3 b=7 c=1 b="}
  .csv    a header line naming a "text" column (else a "prompt" column)
  other   plain text, one prompt a line
Blank lines are skipped; a prompt's id is its index among the other lines. Rows that are not
prompts (not UTF-8, not JSON, empty, longer than the model's context) go to DIR/errors, the run
goes on, and the exit code is 3.
Output: DIR/manifest.json (arguments, dataset fingerprint, model name, dtype, load mode, weight
hash, versions), DIR/records/part-*.parquet (one row per prompt, scope and position), DIR/errors/,
DIR/summary.json. Read them with pandas.read_parquet("DIR/records") or
datasets.load_dataset("parquet", data_files="DIR/records/*.parquet").
Resume: run the same command again; finished batches are kept. Other arguments on the same DIR
are refused unless --overwrite.
Several processes: torchrun --nproc-per-node N -m jscopes_tl run ... (one rank per GPU, else CPU)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (where it has one) and keeps descriptions' lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        no_default = default is None or default is False or default == argparse.SUPPRESS
        if no_default or "%(default)" in help_text or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)"


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from jscopes_tl.adapter import transformer_lens_version

    try:
        ours = version("jscopes_tl")
    except PackageNotFoundError:
        ours = "(not installed)"
    return f"jscopes {ours} (TransformerLens {transformer_lens_version()}, torch {torch.__version__})"


def _add_scope_options(parser: argparse.ArgumentParser, position_help: str) -> None:
    """The options ``scope`` and ``run`` share: the model, which scope, its target and position."""
    parser.add_argument("--model", help=f"required; {MODEL_HELP}")
    parser.add_argument("--kind", choices=(*KINDS, "all"), default="semantic", help="which scope ('all': the three)")
    parser.add_argument(
        "--target", type=_token, help="semantic target token text (e.g. ' Paris') or id:N; default: the model's top-1"
    )
    parser.add_argument("--contrast", type=_token, help="second token: score the logit difference target - contrast")
    parser.add_argument("--position", type=_position, default=-1, help=position_help)
    parser.add_argument("--rank", type=_rank, default=1, help="Fisher rank (0 for exact)")


def build_parser() -> argparse.ArgumentParser:
    from jscopes_tl.faithfulness import DEFAULT_SCORERS

    parser = argparse.ArgumentParser(
        prog="jscopes",
        description="Jacobian Scopes (arXiv 2601.16407) for TransformerLens models. "
        "Run 'jscopes COMMAND --help' for a command's options.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, help_text: str, **options: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=options.pop("description", help_text),
                                   formatter_class=HelpFormatter, **options)

    scope = add_command(
        "scope",
        "score every token of a prompt for one prediction",
        epilog='example: jscopes scope "a=3 b=7 c=1 b=" --model recall --kind all --out scope.html',
    )
    scope.add_argument("text", help="the prompt")
    _add_scope_options(scope, "prediction position (int, negative from the end) or 'all'")
    scope.add_argument("--top", type=_positive, default=5, help="how many top tokens to print")
    scope.add_argument("--out", type=Path, help="write an offline HTML view of every scope and position here")
    scope.add_argument("--json", dest="json_path", type=Path, help="write the scores as JSON here")

    ground_truth = add_command(
        "ground-truth", "how often each scope and baseline ranks the known source first (bundled models)"
    )
    ground_truth.add_argument("--models", nargs="+", choices=models.BUNDLED_MODELS, default=list(models.BUNDLED_MODELS),
                              help="bundled models to evaluate")
    ground_truth.add_argument("--prompts", type=_positive, default=200, help="held-out prompts per model")
    ground_truth.add_argument("--seed", type=int, default=0, help="seed of the held-out prompts")
    ground_truth.add_argument("--json", dest="json_path", type=Path, help="write the accuracies as JSON here")

    evaluate = add_command(
        "eval",
        "faithfulness (AOPC, leave-one-out) of scopes and baselines over prompts",
        description="Faithfulness (AOPC under ablation, agreement with leave-one-out) of scopes and baselines.",
        epilog=EVAL_FORMAT + "\n\nexample: jscopes eval demos/prompts_recall.jsonl --model recall",
    )
    evaluate.add_argument(
        "prompts", type=Path, help="a .jsonl, .csv or text file, one prompt a line, each ending with its answer"
    )
    evaluate.add_argument("--model", help=f"required; {MODEL_HELP}")
    evaluate.add_argument(
        "--scorers", nargs="+", metavar="SCORER", help=f"scorers to compare, from: {', '.join(DEFAULT_SCORERS)} (default: all)"
    )
    evaluate.add_argument("--ablation", choices=("zero", "pad"), default="zero",
                          help="how a top-ranked token is removed: zero its embedding, or substitute the pad token")
    evaluate.add_argument(
        "--protocol", choices=("default", "paper"), default="default",
        help="'paper': the authors' benchmark scripts choice by choice (docs/guide/faithfulness.md)",
    )
    evaluate.add_argument("--limit", type=_positive, help="use only the first N prompts")
    evaluate.add_argument(
        "--seed", type=int, help="seed of the random baseline's draws (each prompt's own, from this and its index; "
        "default: the protocol's)",
    )
    evaluate.add_argument("--json", dest="json_path", type=Path, help="write the per-prompt rows and summary as JSON here")
    evaluate.add_argument(
        "--out-dir", type=Path,
        help="write the per-prompt rows as Parquet shards here (resumable; its parent must exist)",
    )
    evaluate.add_argument(
        "--shard-size", type=_positive,
        help="with --out-dir: prompts per committed shard (the most an interrupted run loses; default 8)",
    )
    evaluate.add_argument(
        "--overwrite", action="store_true", help="with --out-dir: delete the run there and start afresh"
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    run = add_command(
        "run",
        "attribution records for every prompt of a file, as Parquet shards (resumable, data parallel)",
        epilog=RUN_FORMAT + "\n\nexample: jscopes run demos/prompts_recall.jsonl --model recall --kind all "
        "--out-dir runs/recall",
    )
    run.add_argument("prompts", type=Path, help="a .jsonl, .csv or text file, one prompt a line")
    _add_scope_options(run, "prediction position (int, negative from each prompt's end) or 'all'")
    run.add_argument("--out-dir", type=Path, help="required; the run directory (created; its parent must exist)")
    run.add_argument("--batch-size", type=_positive, default=16, help="prompts of equal length scored together (the commit unit)")
    run.add_argument("--top-k", type=_positive, default=5, help="the model's top predictions recorded per position")
    run.add_argument("--limit", type=_positive, help="use only the first N prompts")
    run.add_argument("--overwrite", action="store_true", help="delete the run in --out-dir (whatever its arguments) and start afresh")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    add_command("models", "list the bundled models, their held-out accuracy and an example command each")
    return parser


def _result_record(result: ScopeResult, model_name: str, text: str) -> dict[str, Any]:
    return {
        "kind": result.kind,
        "model": model_name,
        "text": text,
        "tokens": result.str_tokens,
        "token_ids": result.tokens.tolist(),
        "position": result.position.tolist(),
        "target": None if result.target is None else result.target.tolist(),
        "scores": result.scores.tolist(),
        "prediction": {
            "tokens": result.prediction.str_tokens,
            "probabilities": result.prediction.probabilities.tolist(),
        },
        "numerics": result.metadata.get("numerics"),
    }


def _check_writable(path: Path | None, option: str) -> None:
    """Output files are checked before the model is loaded, so a bad path fails at once."""
    if path is not None:
        check_output_path(path, option)


def _semantic_target(args: argparse.Namespace) -> Any:
    """The --target / --contrast pair as a scope's ``target``, checked (scope and run share it)."""
    if args.contrast is not None and args.target is None:
        raise UsageError("--contrast needs --target (the token the difference is taken from)")
    if args.target is not None and args.kind not in ("semantic", "all"):
        raise UsageError(f"--target applies to the semantic scope only; --kind is {args.kind!r}")
    return (args.target, args.contrast) if args.contrast is not None else args.target


def run_scope_command(args: argparse.Namespace) -> int:
    target = _semantic_target(args)
    if not args.text:
        raise UsageError("the prompt is empty")
    _check_writable(args.out, "--out")
    _check_writable(args.json_path, "--json")
    model = load_model(args.model)
    kinds = KINDS if args.kind == "all" else (args.kind,)
    results = []
    for kind in kinds:
        if kind == "semantic":
            results.append(semantic_scope(model, args.text, target=target, position=args.position))
        elif kind == "fisher":
            results.append(fisher_scope(model, args.text, rank=args.rank or None, position=args.position))
        else:
            results.append(temperature_scope(model, args.text, position=args.position))
    for result in results:
        prediction = result.prediction.str_tokens
        print(f"{result.kind} (prediction position {result.position.tolist()}; model's top tokens {prediction!r}):")
        if result.scores.ndim == 1:
            for index, token, score in result.top_tokens(args.top):
                print(f"  {index:4d} {token!r:>16} {score:.4g}")
        else:
            print(f"  scores of shape {tuple(result.scores.shape)} (prediction positions × tokens)")
    if args.out:
        from jscopes_tl.views import scopes_page

        # Every scope asked for, every position: one tab each, each with its own colour scale.
        print(f"wrote {scopes_page(results).save_html(args.out)}")
    if args.json_path:
        payload = [_result_record(result, args.model, args.text) for result in results]
        args.json_path.write_text(json.dumps(payload), encoding="utf-8")
        print(f"wrote {args.json_path}")
    return 0


def run_ground_truth_command(args: argparse.Namespace) -> int:
    from jscopes_tl.models.ground_truth import format_table, ground_truth_accuracy

    _check_writable(args.json_path, "--json")
    reports = []
    for name in args.models:  # one progress bar per model, over its prompts
        model = models.load(name)
        reports.append(ground_truth_accuracy(model, name, n_prompts=args.prompts, seed=args.seed, progress=True))
    print(format_table(reports))
    if args.json_path:
        payload = {
            report.task: {
                "prompts": report.n_prompts,
                "accuracy": report.accuracy,
                "chance": report.chance,
                "model_accuracy": report.model_accuracy,
            }
            for report in reports
        }
        args.json_path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"wrote {args.json_path}")
    return 0


def read_prompts(path: Path, limit: int | None = None, argument: str = "PROMPTS") -> list[str]:
    """The prompts of a JSON-lines, CSV or plain-text file (:mod:`jscopes_tl.runs.prompts`, the
    reader ``run`` uses), the first ``limit`` of them; a row that is not a prompt is an error
    naming the file and its line."""
    return [row.text for row in _prompt_rows(path, limit, argument)]


def _prompt_rows(path: Path, limit: int | None, argument: str) -> list[Any]:
    """:func:`read_prompts`' rows (:class:`~jscopes_tl.runs.prompts.PromptRow`: text and line)."""
    from jscopes_tl.runs.prompts import read_prompt_dataset
    from jscopes_tl.runs.runner import limited

    data = limited(read_prompt_dataset(path, argument=argument), limit)
    for row in data.rows:
        if row.error is None:
            continue
        if row.error.startswith(("not UTF-8", "not text")):
            raise UsageError(
                f"{argument} {str(path)!r} is not a UTF-8 text file (line {row.line}: {row.error}); "
                "prompts go in a .jsonl, .csv or plain-text file"
            )
        raise UsageError(f"{argument} {str(path)!r} line {row.line}: {row.error} (see 'jscopes eval --help')")
    return data.rows


def implausible_answers(model: Any, prompts: Sequence[str]) -> list[tuple[int, str, float]]:
    """(index, final token, its probability) of prompts whose final token the model finds implausible.

    eval explains the prediction of each prompt's final token; a final token below
    :data:`IMPLAUSIBLE_ANSWER_PROBABILITY` at the position before it most often means the prompt
    is a question without its answer.
    """
    import torch

    from jscopes_tl.adapter import ModelAdapter

    adapter = ModelAdapter(model)
    flagged = []
    with torch.no_grad():
        for index, prompt in enumerate(prompts):
            tokens = adapter.tokenize(prompt)
            if not 2 <= len(tokens) <= adapter.n_ctx:
                continue  # evaluate_faithfulness rejects it with its own message
            logits = adapter.forward(tokens[None])[0, -2]
            probability = float(torch.softmax(logits.double(), dim=-1)[int(tokens[-1])])
            if probability < IMPLAUSIBLE_ANSWER_PROBABILITY:
                flagged.append((index, adapter.str_tokens(tokens[-1:])[0], probability))
    return flagged


def _warn_about_implausible_answers(model: Any, prompts: Sequence[str]) -> None:
    """Warn when at least half the prompts look like questions without their answer (a few
    unlikely final tokens are normal on natural text)."""
    flagged = implausible_answers(model, prompts)
    if not prompts or 2 * len(flagged) < len(prompts):
        return
    examples = "; ".join(f"prompt {index} ends with {token!r} (p={p:.1e})" for index, token, p in flagged[:3])
    print(
        f"jscopes: warning: {len(flagged)} of {len(prompts)} prompts end with a token the model gives probability "
        f"below {IMPLAUSIBLE_ANSWER_PROBABILITY:g} at the position before it ({examples}). eval explains the "
        "prediction of each prompt's FINAL token, so a prompt must end with its answer "
        "(e.g. 'a=3 b=7 c=1 b= 7', not 'a=3 b=7 c=1 b='). See 'jscopes eval --help'.",
        file=sys.stderr,
    )


def summary_table(summary: Sequence[dict[str, Any]]) -> str:
    """The faithfulness table as Markdown (floats to 3 decimals; "–" where a scorer
    has no value, e.g. the completeness gap of a scorer that is not an integral)."""
    columns = list(summary[0])
    lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for row in summary:
        cells = [
            "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_eval_command(args: argparse.Namespace) -> int:
    from jscopes_tl.faithfulness import (
        DEFAULT_FRACTIONS,
        DEFAULT_SCORERS,
        checked_prompts,
        evaluate_faithfulness,
        faithfulness_settings,
    )

    _check_writable(args.json_path, "--json")
    scorers = args.scorers or list(DEFAULT_SCORERS)
    unknown = [name for name in scorers if name not in DEFAULT_SCORERS]
    if unknown:
        raise UsageError(f"unknown scorer(s) {unknown}; choose from {list(DEFAULT_SCORERS)}")
    if args.out_dir is not None:
        return _run_eval_to_directory(args, scorers)
    if args.overwrite:
        raise UsageError("--overwrite applies with --out-dir (a run directory to replace)")
    if args.shard_size is not None:
        raise UsageError("--shard-size applies with --out-dir (the shards of a run directory)")
    rows = _prompt_rows(args.prompts, args.limit, "PROMPTS")
    model = load_model(args.model)
    # Every prompt checked (length, a context before its answer) before anything is computed.
    settings = faithfulness_settings(model, scorers, DEFAULT_FRACTIONS, args.ablation, args.protocol, 64, args.seed)
    labels = [f"PROMPTS {str(args.prompts)!r} line {row.line} (prompt {index})" for index, row in enumerate(rows)]
    token_lists = checked_prompts(settings, [row.text for row in rows], labels=labels)
    _warn_about_implausible_answers(model, [row.text for row in rows])
    report = evaluate_faithfulness(
        model, token_lists, scorers, ablation=args.ablation, protocol=args.protocol, seed=args.seed,
        progress=not args.no_progress,
    )
    summary = report.summary()
    print(summary_table(summary))
    _write_eval_json(args, summary, report.rows)
    return 0


def _write_eval_json(args: argparse.Namespace, summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    if args.json_path:
        payload = {
            "model": args.model, "ablation": args.ablation, "protocol": args.protocol, "summary": summary, "rows": rows,
        }
        args.json_path.write_text(json.dumps(payload, default=float), encoding="utf-8")
        print(f"wrote {args.json_path}")


def _run_eval_to_directory(args: argparse.Namespace, scorers: list[str]) -> int:
    """``eval --out-dir``: the rows as Parquet shards (:func:`jscopes_tl.runs.run_faithfulness`),
    refused before the model loads when the directory holds another run; the table read back."""
    from jscopes_tl.faithfulness import DEFAULT_FRACTIONS
    from jscopes_tl.runs import distributed
    from jscopes_tl.runs.faithfulness import DEFAULT_SHARD_SIZE, faithfulness_run_arguments, run_faithfulness
    from jscopes_tl.runs.prompts import check_prompt_file, read_prompt_dataset
    from jscopes_tl.runs.runner import check_out_dir, check_resumable, limited

    shard_size = args.shard_size or DEFAULT_SHARD_SIZE
    arguments = faithfulness_run_arguments(
        scorers, DEFAULT_FRACTIONS, args.ablation, args.protocol, 64, args.seed, shard_size
    )
    check_prompt_file(args.prompts, "PROMPTS")
    out_dir = check_out_dir(args.out_dir, "--out-dir")
    data = read_prompt_dataset(args.prompts, argument="PROMPTS")
    check_resumable(out_dir, arguments, data, args.limit, args.overwrite)
    model = load_model(args.model)
    _stop_on_sigterm()
    device = distributed.rank_device()
    if distributed.launched_distributed() and device.type != "cpu":
        model = model.to(device)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        prompts = [row.text for row in limited(data, args.limit).rows if row.error is None]
        _warn_about_implausible_answers(model, prompts)
    run = run_faithfulness(
        model, args.prompts, out_dir, scorers, ablation=args.ablation, protocol=args.protocol,
        seed=arguments["seed"], shard_size=shard_size, limit=args.limit, overwrite=args.overwrite,
        progress=not args.no_progress, model_name=args.model,
    )
    if main_rank:
        summary = run.summary()
        if summary:
            print(summary_table(summary))
        print(run.text())
        print(f"wrote {out_dir / 'records'}")
        _write_eval_json(args, summary, run.report_rows())
    return 0 if run.ok else 3


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's, torchrun's) stops a run as Ctrl-C does: the batch in flight is
    dropped, its temporary file removed, and the command exits 130 saying how to resume."""
    import signal
    import threading

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run_run_command(args: argparse.Namespace) -> int:
    from jscopes_tl.runs import distributed
    from jscopes_tl.runs.prompts import check_prompt_file, read_prompt_dataset
    from jscopes_tl.runs.runner import check_out_dir, check_resumable, check_run_arguments, run_dataset

    if args.out_dir is None:
        raise UsageError("--out-dir is required: the directory the records, errors and manifest go to")
    target = _semantic_target(args)
    options = check_run_arguments(
        args.kind, args.position, target, args.rank or None, args.batch_size, args.top_k, args.limit,
        args.overwrite, not args.no_progress,
    )
    check_prompt_file(args.prompts, "PROMPTS")
    out_dir = check_out_dir(args.out_dir, "--out-dir")
    # A run that cannot resume is refused before the model loads (the model's identity is
    # checked again once it has).
    check_resumable(out_dir, options.as_manifest(), read_prompt_dataset(args.prompts, argument="PROMPTS"), args.limit, args.overwrite)
    model = load_model(args.model)
    _stop_on_sigterm()
    device = distributed.rank_device()
    if distributed.launched_distributed() and device.type != "cpu":
        model = model.to(device)
    summary = run_dataset(
        model, args.prompts, out_dir, kinds=options.kinds, position=options.position, target=options.target,
        rank=options.rank, batch_size=options.batch_size, top_k=options.top_k, limit=args.limit,
        overwrite=args.overwrite, progress=not args.no_progress, model_name=args.model,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary.text())
        print(f"wrote {out_dir / 'records'}")
    return 0 if summary.ok else 3


def _plain(text: str) -> str:
    """Docstring markup (RST ``literals``) as plain text."""
    return re.sub(r"``(.*?)``", r"\1", text)


def run_models_command(args: argparse.Namespace) -> int:
    for name in models.BUNDLED_MODELS:
        record = models.training_record(name)
        task = models.get_task(name)
        example = min(task.labelled_prompts(20, seed=0), key=lambda prompt: len(prompt.tokens))
        source = ", ".join(f"{example.tokens[index]!r} (token {index})" for index in example.source_indices)
        print(
            f"{name}\n"
            f"  task      {_plain(task.__doc__.splitlines()[0])}\n"
            f"  accuracy  {record['held_out_accuracy']:.3f} on {record['held_out_prompts']} held-out prompts\n"
            f"  example   jscopes scope \"{example.text}\" --model {name} --kind all --out {name}.html\n"
            f"            answer {example.answer!r}, read from {source}\n"
        )
    return 0


COMMANDS = {
    "scope": run_scope_command,
    "ground-truth": run_ground_truth_command,
    "eval": run_eval_command,
    "run": run_run_command,
    "models": run_models_command,
}


def _quiet_libraries() -> None:
    """Loading progress bars and padding advice from transformers are noise on a command line."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """A library warning as one line like the command's own (``python -W error`` still raises it)."""
    print(f"jscopes: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    _quiet_libraries()
    with warnings.catch_warnings():  # restores warnings.showwarning for a caller of main()
        warnings.showwarning = _show_warning
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        resumable = args.command == "run" or args.command == "eval" and args.out_dir is not None
        resume = " (finished batches are kept: run the same command again to resume)" if resumable else ""
        print(f"jscopes: interrupted{resume}", file=sys.stderr)
        return 130
    except (UsageError, ScopeInputError) as error:
        print(f"jscopes: error: {error}", file=sys.stderr)
        return 2
    except (ModelLoadError, UnsupportedModelError, RuntimeError, OSError, KeyError) as error:
        print(f"jscopes: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
