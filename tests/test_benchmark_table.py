"""The README's performance table is the newest benchmark run, figure for figure.

The README holds, between ``<!-- benchmark-table: FILE -->`` and ``<!-- /benchmark-table -->``, the
table ``benchmarks/table.py`` prints for the results file FILE. These tests fail when that file is
missing, when it is not the newest in benchmarks/results, when the block is not what the script
prints for it, when a figure in the README's rows differs from the JSON (read here independently
of the script's formatting), and when a results file has no entry in benchmarks/README.md's
history. A new run is recorded by ``python benchmarks/table.py --readme README.md``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def load_table_script() -> Any:
    spec = importlib.util.spec_from_file_location("benchmark_table", ROOT / "benchmarks" / "table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


table = load_table_script()


def cited_results() -> Path:
    match = table.BEGIN_PATTERN.search(README)
    assert match is not None, "the README has no '<!-- benchmark-table: FILE -->' block"
    path = ROOT / match.group(1)
    assert path.is_file(), f"the README's performance table cites {match.group(1)}, which does not exist"
    return path


def readme_block() -> str:
    start = table.BEGIN_PATTERN.search(README).start()
    return README[start : README.index(table.END, start) + len(table.END)]


def test_the_readme_cites_the_newest_results_file() -> None:
    assert cited_results() == table.newest_results()


def test_the_readme_table_is_what_the_script_prints_for_its_results_file() -> None:
    assert readme_block() == table.readme_block(cited_results())


def numbers(cell: str) -> list[tuple[float, float]]:
    """Each figure of a cell and half its last printed digit (``1,234``, ``0.41``, ``3e-05``)."""
    figures = []
    for text in re.findall(r"\d[\d,]*\.?\d*(?:e[-+]\d+)?", cell):
        mantissa, _, exponent = text.replace(",", "").partition("e")
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        figures.append((float(text.replace(",", "")), 0.5 * 10.0 ** (int(exponent or 0) - decimals)))
    return figures


def readme_tables() -> list[dict[str, list[list[tuple[float, float]]]]]:
    """The README block's tables: row label -> the figures of each model column."""
    tables: list[dict[str, list[list[tuple[float, float]]]]] = []
    for line in readme_block().splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-"}:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[-1] == "target":  # a header
            tables.append({})
        else:
            tables[-1][cells[0]] = [numbers(cell) for cell in cells[1:-1]]
    return tables


@pytest.mark.parametrize("kind", ["speed", "memory", "dataset"])
def test_every_figure_of_the_readme_table_equals_the_results_file(kind: str) -> None:
    results = json.loads(cited_results().read_text(encoding="utf-8"))
    records = {record["model"]: record for record in results.get(kind, [])}
    specs = {"speed": (table.SPEED_ROWS, table.COLUMNS), "memory": (table.MEMORY_ROWS, table.COLUMNS),
             "dataset": (table.DATASET_ROWS, table.DATASET_COLUMNS)}[kind]
    labels = {row.label for row in specs[0]}
    [rows] = [rows for rows in readme_tables() if set(rows) <= labels] or [{}]
    present = [model for model in specs[1] if model in records]
    checked = 0
    for row in specs[0]:
        if row.label not in rows:
            assert all(any(key not in records[model] for key in row.keys) for model in present), f"{row.label!r} was measured but is not in the README"
            continue
        for model, figures in zip(present, rows[row.label]):
            expected = [records[model][key] * (100 if row.unit == "%" else 1) for key in row.keys]
            assert len(figures) == len(expected), (row.label, model, figures)
            for (shown, half_digit), value in zip(figures, expected):
                assert abs(shown - value) <= half_digit * (1 + 1e-9), f"{row.label} ({model}): README {shown}, results {value}"
                checked += 1
    assert checked > 0 or not present


def test_every_results_file_has_an_entry_in_the_benchmark_history() -> None:
    history = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert [path.name for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")) if f"results/{path.name}" not in history] == []


def test_the_readme_option_rewrites_the_block_in_place(tmp_path: Path) -> None:
    stale = README.replace(readme_block(), table.readme_block(ROOT / "benchmarks" / "results" / "tl4.3-cpu2-2026-11-27.json"))
    copy = tmp_path / "README.md"
    copy.write_text(stale, encoding="utf-8")
    assert table.main(["--readme", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == README
