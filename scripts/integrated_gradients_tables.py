"""The README's Integrated Gradients measurements on the bundled models, old rule beside the new.

For each bundled task, on its held-out prompts (``labelled_prompts(n, seed=0)``, the ground-truth
table's), each prompt ending with its answer:

* ground truth: :func:`jscopes_tl.models.ground_truth.ground_truth_accuracy` with every scorer,
  plus the scorer Integrated Gradients was before issue 22 (mean of ``∇ log p(gold)`` at ``α·x``
  for ``α ∈ {0.2, …, 1.0}``, times ``x``: captum's 5-step right Riemann sum);
* faithfulness (AOPC, leave-one-out) under both protocols with the built-in scorers, and that old
  rule under the default protocol (the paper protocol's Integrated Gradients is the authors' own
  and did not change), with the completeness gaps;
* the time per prompt of the new and the old Integrated Gradients scorers, interleaved.

    python scripts/integrated_gradients_tables.py --prompts 200 --threads 1 --json ig_tables.json

Prints Markdown tables; ``--json`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from jscopes_tl import evaluate_faithfulness, integrated_gradients, models
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.faithfulness import DEFAULT_SCORERS, ScorerOutput, integral_output, integrated_gradients_scorer
from jscopes_tl.models.ground_truth import format_table, ground_truth_accuracy, scorers

OLD = "integrated_gradients (5-step mean, before)"


def old_integrated_gradients(model: Any, context: torch.Tensor, gold: int) -> ScorerOutput:
    """The scorer before issue 22, with its completeness gap (it warns on every prompt: silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = integrated_gradients(model, context, target=gold, n_steps=5, method="riemann_right")
    return integral_output(
        result.scores, result.completeness_gap, result.relative_completeness_gap, result.n_evaluations
    )


def passages(name: str, n_prompts: int, seed: int) -> list[str]:
    """The held-out prompts with their answers appended: what the faithfulness evaluation explains."""
    return [f"{prompt.text} {prompt.answer}" for prompt in models.get_task(name).labelled_prompts(n_prompts, seed=seed)]


def timing(model: Any, texts: list[str], repeats: int = 1) -> dict[str, float]:
    """Seconds per prompt of the new and the old scorer, calls interleaved (so load hits both)."""
    spent = {"adaptive": 0.0, "old": 0.0}
    for text in texts:
        tokens = ModelAdapter(model).tokenize(text)
        context, gold = tokens[:-1], int(tokens[-1])
        for _ in range(repeats):
            for label, scorer in (("adaptive", integrated_gradients_scorer), ("old", old_integrated_gradients)):
                start = time.perf_counter()
                scorer(model, context, gold)
                spent[label] += time.perf_counter() - start
    return {label: seconds / (len(texts) * repeats) for label, seconds in spent.items()}


def faithfulness_table(summaries: dict[str, list[dict[str, Any]]], paper: bool) -> str:
    loo = "loo_rank_percentage" if paper else "loo_spearman"
    tasks = list(summaries)
    header = "| scorer | " + " | ".join(f"{task}: AOPC / {'LOO rank %' if paper else 'LOO ρ'}" for task in tasks)
    header += " | IG relative gap (" + " / ".join(tasks) + ") |"
    lines = [header, "|---|" + "---:|" * (len(tasks) + 1)]
    for index, row in enumerate(summaries[tasks[0]]):
        rows = [summaries[task][index] for task in tasks]
        cells = [f"{r['aopc']:.3f} / {r[loo]:.{1 if paper else 2}f}" for r in rows]
        gaps = [r.get("relative_completeness_gap") for r in rows]
        gap = " / ".join(f"{g:.2g}" for g in gaps) if gaps[0] is not None else "–"
        lines.append(f"| {row['scorer']} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts per task")
    parser.add_argument("--timing-prompts", type=int, default=50, help="prompts per task for the timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(models.BUNDLED_MODELS))
    parser.add_argument("--json", dest="json_path", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads (1 keeps timings steady on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"ground_truth": {}, "default": {}, "paper": {}, "timing": {}}
    reports = []
    for name in args.tasks:
        model = models.load(name)
        report = ground_truth_accuracy(
            model, name, n_prompts=args.prompts, seed=args.seed,
            scorers_by_name={**scorers(args.seed), OLD: old_integrated_gradients}, progress=True,
        )
        reports.append(report)
        results["ground_truth"][name] = report.accuracy
        texts = passages(name, args.prompts, args.seed)
        default = evaluate_faithfulness(model, texts, list(DEFAULT_SCORERS))
        old = evaluate_faithfulness(model, texts, {OLD: old_integrated_gradients})
        results["default"][name] = default.summary() + old.summary()
        results["paper"][name] = evaluate_faithfulness(model, texts, list(DEFAULT_SCORERS), protocol="paper").summary()
        results["timing"][name] = timing(model, texts[: args.timing_prompts])
        print(name, "seconds per prompt:", results["timing"][name], file=sys.stderr, flush=True)
    print("Ground truth (top-1 accuracy):\n" + format_table(reports))
    print("\nFaithfulness, default protocol:\n" + faithfulness_table(results["default"], paper=False))
    print("\nFaithfulness, paper protocol:\n" + faithfulness_table(results["paper"], paper=True))
    print("\nSeconds per prompt (adaptive / old 5-step):", json.dumps(results["timing"]))
    if args.json_path:
        args.json_path.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
