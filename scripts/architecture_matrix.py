"""Print the architecture matrix for the installed TransformerLens: every model family, every load
mode, each scope's error against a float64 oracle on the Hugging Face model, half precision.

    OMP_NUM_THREADS=1 python scripts/architecture_matrix.py                 # the full matrix
    python scripts/architecture_matrix.py --families gpt2,bloom --no-half   # a subset
    python scripts/architecture_matrix.py --summary docs/architecture_matrix.md  # docs/guide/architectures.md's table

Exits non-zero when a cell fails (a mismatch or an unexpected error; families TransformerLens
cannot load are listed as unsupported, with the reason). See tests/architecture_matrix.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


GENERATION_COLUMNS = {  # load mode -> the summary's column
    "bridge": "TL 4.3 bridge",
    "bridge-compat": "… compatibility mode",
    "hooked": "TL 2.18 unprocessed",
    "hooked-processed": "… processed (folded)",
}


def summary(matrix_markdown: str) -> str:
    """The compact table of docs/guide/architectures.md from the measured matrix (docs/architecture_matrix.md): per family
    and load mode, the status and the largest error of any scope against the float64 oracle."""
    cells: dict[str, dict[str, str]] = {}
    for line in matrix_markdown.splitlines():
        parts = [part.strip() for part in line.strip().strip("|").split("|")]
        if len(parts) < 4 or parts[1] not in GENERATION_COLUMNS:
            continue
        family, mode, status, error = parts[:4]
        if status == "ok":
            cell = f"✓ {error}"
        elif status.startswith("unsupported"):
            cell = "refused ¹"
        elif status.startswith("warned"):
            cell = f"warned ² ({error})"
        else:
            cell = f"**{status.split(':')[0]}**"
        cells.setdefault(family, {})[GENERATION_COLUMNS[mode]] = cell
    header = ["family", *GENERATION_COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family, row in cells.items():
        lines.append("| " + " | ".join([family, *(row.get(column, "–") for column in header[1:])]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--summary"]:
        if len(argv) != 2:
            raise SystemExit("usage: architecture_matrix.py --summary docs/architecture_matrix.md")
        print(summary(Path(argv[1]).read_text(encoding="utf-8")))
        return 0
    import architecture_matrix as matrix

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(matrix.families()), help="comma-separated family names")
    parser.add_argument("--modes", default=None, help="comma-separated load modes (default: all the installed TransformerLens has)")
    parser.add_argument("--no-half", action="store_true", help="skip bf16 / fp16")
    parser.add_argument("--fast", action="store_true", help="logits, one scope and the model-state check only")
    arguments = parser.parse_args(argv)
    families = [name for name in arguments.families.split(",") if name]
    unknown = sorted(set(families) - set(matrix.families()))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {matrix.families()}")
    modes = arguments.modes.split(",") if arguments.modes else matrix.load_modes()

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens 2.x prints as it casts a model
        rows = [
            matrix.check(family, mode, fast=arguments.fast, half=not arguments.no_half)
            for family in families
            for mode in modes
        ]
    print(f"## {matrix.generation()}, torch {__import__('torch').__version__}, "
          f"transformers {__import__('transformers').__version__}\n")
    print(matrix.format_matrix(rows))
    failed = [row for row in rows if not row.passed]
    print(f"\n{len(rows)} cells, {len(failed)} failed; tolerance {matrix.TOLERANCE:g} (float32 vs float64), "
          f"half precision bf16 ≤ {matrix.HALF_TOLERANCE[__import__('torch').bfloat16]:g}, "
          f"fp16 ≤ {matrix.HALF_TOLERANCE[__import__('torch').float16]:g} (vs float32); "
          f"{time.perf_counter() - start:.0f} s")
    for row in failed:
        print(f"FAILED {row.family} {row.mode}: {row.status}")
    known: dict[str, list[str]] = {}  # family -> its cells that fail inside TransformerLens, as recorded
    for row in rows:
        for name, value in row.half.items():
            if matrix.known_upstream_failure(row.family, value):
                known.setdefault(row.family, []).append(f"{name} {row.mode}: {value.removeprefix(matrix.TL_FAILS)}")
            elif isinstance(value, str):
                print(f"{name} {row.family} {row.mode}: {value}")
        for name in matrix.half_flags(row):
            print(f"{name} {row.family} {row.mode}: {row.half[name]:.2f} of the largest float32 score, above the stated tolerance (in bold)")
    for family, cells in known.items():
        print(f"{family}, known upstream limitation ({matrix.FAMILIES[family].half_precision_reason}):")
        for cell in cells:
            print(f"    {cell}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
