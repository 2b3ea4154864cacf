"""Print the README's performance table from one results file of benchmarks/benchmark.py.

    python benchmarks/table.py                                   # the newest file in benchmarks/results
    python benchmarks/table.py benchmarks/results/FILE.json      # a given one
    python benchmarks/table.py --readme README.md                # rewrite the README's table in place

The README holds the table of the newest run between the comment lines
``<!-- benchmark-table: benchmarks/results/FILE.json -->`` and ``<!-- /benchmark-table -->``, and
tests/test_benchmark_table.py checks that it is exactly what this script prints for that file, so
a new run is recorded by adding its JSON to benchmarks/results (and its commentary to
benchmarks/README.md) and running the ``--readme`` line. Rows whose figures a run did not measure
(``--skip-exact``, ``--skip-memory``, ``--dataset-models ''``, ``--all-lengths 128``) are left out
and named under the table; ✓ / ✗ are computed from the figures and the targets below.
"""

from __future__ import annotations

import argparse
import json
import operator
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN = "<!-- benchmark-table: {} -->"
END = "<!-- /benchmark-table -->"
BEGIN_PATTERN = re.compile(r"<!-- benchmark-table: (\S+) -->")
COLUMNS = {"gpt2": "GPT-2 size", "llama": "Llama size"}  # the speed and memory rows' models
DATASET_COLUMNS = {"gpt2 (dataset)": "GPT-2 size", "recall (dataset)": "bundled `recall`"}
COMPARISONS: dict[str, Callable[[float, float], bool]] = {"≤": operator.le, "≥": operator.ge}


@dataclass(frozen=True)
class Row:
    """One line of a table: its label, the figures it prints (several joined by ' / '), a target."""

    label: str
    keys: tuple[str, ...]
    unit: str = ""  # "s", "ms", "%", "MB", or "" for a ratio
    target: tuple[str, float] | None = None  # ("≤", 1.1): every printed figure's first key is held to it
    bold: bool = False  # a headline figure

    def format(self, value: float) -> str:
        if self.unit == "%":
            return f"{100 * value:.0f} %"
        if self.unit == "MB":
            return f"{value:,.0f} MB" if value >= 100 else f"{value:.1f} MB"
        if not self.unit and 0 < abs(value) < 0.01:  # a small ratio (a relative gap)
            return f"{value:.0e}"
        digits = 3 if self.unit == "s" and value < 1 else 0 if value >= 100 else 2
        text = f"{value:,.{digits}f}"
        return f"{text} {self.unit}" if self.unit else text

    def cell(self, figures: dict[str, Any]) -> str | None:
        values = [figures.get(key) for key in self.keys]
        if any(value is None for value in values):
            return None
        texts = [f"{value:,}" if isinstance(value, int) else self.format(value) for value in values]  # counts as counts
        if self.bold:
            texts[0] = f"**{texts[0]}**"
        return " / ".join(texts)

    def meets_target(self, figures: dict[str, Any]) -> bool:
        comparison, threshold = self.target
        return COMPARISONS[comparison](figures[self.keys[0]], threshold)


SPEED_ROWS = [
    Row("floor: forward + backward, one logit", ("forward_backward_s",), "s"),
    Row("a scope's own parts: forward recording δ's graph / one backward vector", ("scope_forward_s", "scope_backward_vector_s"), "s"),
    Row("Semantic ÷ floor", ("semantic_vs_floor",), target=("≤", 1.1), bold=True),
    Row("Temperature ÷ floor", ("temperature_vs_floor",), target=("≤", 1.1), bold=True),
    Row("Fisher rank 1 ÷ Semantic, peaked (entropy 3.3 nats)", ("peaked_fisher_rank1_vs_semantic",), target=("≤", 1.4), bold=True),
    Row("Fisher rank 1 ÷ Semantic, confident (1 − p_max = 1e-6)", ("confident_fisher_rank1_vs_semantic",), target=("≤", 1.4)),
    Row("Fisher rank 1 ÷ Semantic, random weights (flat)", ("fisher_rank1_vs_semantic",), target=("≤", 1.4)),
    Row("eigen-solve share of the rank-1 scope, peaked / flat", ("peaked_eigensolve_share_of_fisher_rank1", "eigensolve_share_of_fisher_rank1"), "%", target=("≤", 0.10)),
    Row("component scope (every head and MLP, per token) ÷ Semantic", ("component_vs_semantic",), target=("≤", 1.5), bold=True),
    Row("Integrated Gradients: one gradient evaluation of a fixed 32-node rule, batched over α, ÷ Semantic", ("ig_evaluation_vs_semantic",), target=("≤", 1.0), bold=True),
    Row("Integrated Gradients, adaptive, zero baseline: gradient evaluations / rounds / relative completeness gap", ("ig_adaptive_evaluations", "ig_adaptive_rounds", "ig_adaptive_relative_gap")),
    Row("… its time", ("ig_adaptive_s",), "s"),
    Row("Fisher rank 8 ÷ Semantic, flat / peaked", ("fisher_rank8_vs_semantic", "peaked_fisher_rank8_vs_semantic")),
    Row("Fisher rank 64 ÷ Semantic, flat / peaked", ("fisher_rank64_vs_semantic", "peaked_fisher_rank64_vs_semantic"), target=("≤", 6)),
    Row("… its floor, (forward + 64 backward vectors) ÷ (forward + 1)", ("fisher_rank64_floor_vs_semantic",)),
    Row("Fisher exact (d_model directions) ÷ Semantic", ("fisher_exact_vs_semantic",)),
    Row("bookkeeping beyond a Semantic Scope's passes, median / fastest call", ("bookkeeping_ms", "bookkeeping_min_ms"), "ms", target=("≤", 3), bold=True),
    Row("freeing the forward pass's graph after its backward pass", ("graph_release_ms",), "ms"),
    Row("batch of 16 prompts: throughput ÷ one by one", ("batch16_throughput_ratio",), target=("≥", 2.5)),
    Row('`position="all"`, 128 tokens: speed-up over a loop of positions', ("all_128_speedup_vs_loop",), bold=True),
    Row('`position="all"`, 512 tokens: speed-up over a loop of positions', ("all_512_speedup_vs_loop",), target=("≥", 2.5)),
    Row("… its bound, (forward + backward) ÷ backward", ("all_speedup_bound",)),
]
MEMORY_ROWS = [
    Row("floor (forward + backward with parameter gradients)", ("floor_peak_mb",), "MB"),
    Row("Semantic ÷ floor", ("semantic_vs_floor",), target=("≤", 1.5), bold=True),
    Row("Fisher rank 8 ÷ floor", ("fisher_rank8_vs_floor",), target=("≤", 1.5), bold=True),
]
DATASET_ROWS = [
    Row("`run_dataset` ÷ a loop of `semantic_scope` (throughput)", ("dataset_run_vs_loop",), target=("≥", 1.2), bold=True),
    Row("… prompts per second", ("dataset_run_prompts_per_s",)),
]


def table(title: str, rows: list[Row], records: dict[str, dict[str, Any]], columns: dict[str, str]) -> tuple[list[str], list[str]]:
    """The Markdown lines of one table, and the labels of the rows this run did not measure."""
    present = [model for model in columns if model in records]
    if not present:
        return [], [row.label for row in rows]
    lines = [f"| {title} | " + " | ".join(columns[model] for model in present) + " | target |", "|---" * (len(present) + 2) + "|"]
    missing = []
    for row in rows:
        cells = [row.cell(records[model]) for model in present]
        if all(cell is None for cell in cells):
            missing.append(row.label)
            continue
        target = ""
        if row.target is not None:
            marks = ["–" if cell is None else "✓" if row.meets_target(records[model]) else "✗" for model, cell in zip(present, cells)]
            target = f"{row.target[0]} {row.format(row.target[1])} " + " / ".join(dict.fromkeys(marks))
        lines.append(f"| {row.label} | " + " | ".join(cell or "–" for cell in cells) + f" | {target} |")
    return lines, missing


def render(results: dict[str, Any], source: str) -> str:
    """The README's table (with a line saying what was measured where) for one results file."""
    machine = results["machine"]
    speed = {row["model"]: row for row in results.get("speed", [])}
    memory = {row["model"]: row for row in results.get("memory", [])}
    dataset = {row["model"]: row for row in results.get("dataset", [])}
    length = next(iter(speed.values()))["tokens"] if speed else 128
    parts = [
        f"Measured by `benchmarks/benchmark.py` ({source}): TransformerLens {machine['transformer_lens']}, torch "
        f"{machine['torch']}, {machine['threads']} CPU threads, random weights at {machine['model_size']} size.",
        "",
    ]
    missing: list[str] = []
    lines, gone = table(f"{length} tokens", SPEED_ROWS, speed, COLUMNS)
    parts += lines
    missing += gone
    if memory:
        tokens = next(iter(memory.values()))["tokens"]
        lines, gone = table(f"peak memory above the loaded model, {tokens:,} tokens", MEMORY_ROWS, memory, COLUMNS)
        parts += ["", *lines]
    else:
        gone = ["peak memory"]
    missing += gone
    lines, gone = table("dataset runs (200 prompts)", DATASET_ROWS, dataset, DATASET_COLUMNS)
    parts += ["", *lines] if lines else []
    missing += ["dataset runs"] if not lines else gone
    if missing:
        parts += ["", "Not measured in this run: " + "; ".join(label.replace("`", "") for label in missing) + "."]
    return "\n".join(parts)


def run_order(path: Path) -> tuple[str, str]:
    """Results files sort by the date in their name, then by the letter after it (…-2026-12-06b)."""
    match = re.search(r"(\d{4}-\d{2}-\d{2})([a-z]?)\.json$", path.name)
    if match is None:
        raise ValueError(f"{path.name}: results files are named …-YYYY-MM-DD[letter].json")
    return match.group(1), match.group(2)


def newest_results() -> Path:
    return max(RESULTS.glob("*.json"), key=run_order)


def readme_block(path: Path) -> str:
    """The text that stands between the markers: the table of the results file at ``path``."""
    relative = path.resolve().relative_to(ROOT).as_posix()
    return f"{BEGIN.format(relative)}\n{render(json.loads(path.read_text(encoding='utf-8')), f'`{relative}`')}\n{END}"


def replace_block(text: str, block: str) -> str:
    start = BEGIN_PATTERN.search(text)
    end = text.find(END)
    if start is None or end < start.start():
        raise ValueError(f"no '{BEGIN.format('…')}' … '{END}' block to replace")
    return text[: start.start()] + block + text[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="a results JSON (default: the newest in benchmarks/results)")
    parser.add_argument("--readme", type=Path, help="rewrite the table block of this file instead of printing it")
    arguments = parser.parse_args(argv)
    path = arguments.results or newest_results()
    block = readme_block(path)
    if arguments.readme is None:
        print(block)
    else:
        arguments.readme.write_text(replace_block(arguments.readme.read_text(encoding="utf-8"), block), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
