"""Prompt datasets for a run: JSON lines, CSV, plain text or a Hugging Face ``datasets.Dataset``.

Every row of the dataset becomes a :class:`PromptRow` with a stable ``prompt_id`` (its 0-based
index among the dataset's rows; blank lines of a file are not rows), so that a resumed or
differently sharded run names the same prompt the same way. A row that cannot be a prompt (not
UTF-8, not JSON, no text field, empty text) is kept as a row with an ``error``: the run records it
in its errors table and goes on.

File formats (one prompt a line):

* ``.jsonl``: a JSON string, or an object with a ``"text"`` field;
* ``.csv``: a header line naming a ``text`` column (else a ``prompt`` column), then one row a line
  (no multi-line quoted fields); a file whose first line names neither is refused, naming the
  columns it found (its header cell would otherwise be read as a prompt);
* anything else: plain text, one prompt a line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jscopes_tl.errors import ScopeInputError

FILE_FORMATS = ".jsonl (a string or {\"text\": ...} a line), .csv (a text or prompt column) or plain text (one prompt a line)"


@dataclass(frozen=True)
class PromptRow:
    """One row of a prompt dataset: its text, or why it is not a prompt.

    Example:
        >>> from jscopes_tl.runs.prompts import read_prompt_dataset
        >>> [(row.prompt_id, row.text, row.error) for row in read_prompt_dataset(["a=3 b=", ""]).rows]
        [(0, 'a=3 b=', None), (1, None, 'empty prompt')]
    """

    prompt_id: int
    text: str | None
    error: str | None = None
    line: int | None = None  # 1-based line of a file


@dataclass(frozen=True)
class PromptDataset:
    """The rows of a dataset and a fingerprint of its content (a resumed run checks it).

    Example:
        >>> from jscopes_tl.runs.prompts import read_prompt_dataset
        >>> data = read_prompt_dataset([prompt, "c=1 d= 5"])
        >>> len(data.rows), data.source, len(data.fingerprint)
        (2, 'list of 2 prompts', 71)
    """

    rows: list[PromptRow]
    source: str
    fingerprint: str


def read_prompt_dataset(dataset: Any, *, text_column: str = "text", argument: str = "dataset") -> PromptDataset:
    """A prompt file path, a ``datasets.Dataset`` or a list of str, as :class:`PromptDataset`."""
    if isinstance(dataset, (str, os.PathLike)):
        return _read_file(Path(dataset).expanduser(), argument)
    if _is_hf_dataset(dataset):
        return _read_hf_dataset(dataset, text_column, argument)
    if isinstance(dataset, Sequence) and not isinstance(dataset, (bytes, bytearray)):
        if len(dataset) == 0:
            raise ScopeInputError(f"{argument} is an empty list; give at least one prompt.")
        rows = [
            PromptRow(index, text) if isinstance(text, str) and text.strip()
            else PromptRow(index, None, _not_a_prompt(text))
            for index, text in enumerate(dataset)
        ]
        digest = hashlib.sha256(json.dumps([row.text for row in rows]).encode()).hexdigest()
        return PromptDataset(rows, f"list of {len(rows)} prompts", f"sha256:{digest}")
    raise ScopeInputError(
        f"{argument} must be a prompt file ({FILE_FORMATS}), a datasets.Dataset or a list of str; "
        f"got {type(dataset).__name__}."
    )


def check_prompt_file(path: Path, argument: str = "dataset") -> None:
    """Fail early (before a model loads) when ``path`` is not a readable file."""
    if not path.is_file():
        raise ScopeInputError(f"{argument}: no such prompts file: {str(path)!r}.")
    if not os.access(path, os.R_OK):
        raise ScopeInputError(f"{argument}: cannot read {str(path)!r}: permission denied.")


def _not_a_prompt(value: Any) -> str:
    if isinstance(value, str):
        return "empty prompt"
    return f"not text: {type(value).__name__} {value!r}"[:200]


def _is_hf_dataset(value: Any) -> bool:
    return any(cls.__module__.startswith("datasets.") and cls.__name__ == "Dataset" for cls in type(value).__mro__)


def _read_hf_dataset(dataset: Any, text_column: str, argument: str) -> PromptDataset:
    if text_column not in dataset.column_names:
        raise ScopeInputError(
            f"{argument} has no column {text_column!r} (its columns: {dataset.column_names}); pass text_column=."
        )
    if len(dataset) == 0:
        raise ScopeInputError(f"{argument} has no rows.")
    rows = [
        PromptRow(index, text) if isinstance(text, str) and text.strip() else PromptRow(index, None, _not_a_prompt(text))
        for index, text in enumerate(dataset[text_column])
    ]
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        fingerprint = "sha256:" + hashlib.sha256(json.dumps([row.text for row in rows]).encode()).hexdigest()
    return PromptDataset(rows, f"datasets.Dataset column {text_column!r} ({len(rows)} rows)", f"datasets:{fingerprint}")


def _read_file(path: Path, argument: str) -> PromptDataset:
    check_prompt_file(path, argument)
    content = path.read_bytes()
    fingerprint = "sha256:" + hashlib.sha256(content).hexdigest()
    lines: list[tuple[int, str | None, str | None]] = []  # (line number, text, error)
    for number, raw in enumerate(content.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            lines.append((number, None, f"not UTF-8 (unexpected byte at column {error.start + 1})"))
            continue
        if "\0" in decoded:
            lines.append((number, None, "not text (holds a NUL byte)"))
            continue
        lines.append((number, decoded, None))
    if path.suffix == ".jsonl":
        rows = [_jsonl_row(index, number, text, error) for index, (number, text, error) in enumerate(lines)]
    elif path.suffix == ".csv":
        rows = _csv_rows(lines, path, argument)
    else:
        rows = [
            PromptRow(index, text, error, number) for index, (number, text, error) in enumerate(lines)
        ]
    if not rows:
        raise ScopeInputError(f"{argument} {str(path)!r} holds no prompts ({FILE_FORMATS}).")
    return PromptDataset(rows, str(path), fingerprint)


def _jsonl_row(index: int, number: int, line: str | None, error: str | None) -> PromptRow:
    if error is not None:
        return PromptRow(index, None, error, number)
    try:
        value = json.loads(line)
    except json.JSONDecodeError as decode_error:
        return PromptRow(index, None, f"not JSON ({decode_error.msg})", number)
    text = value if isinstance(value, str) else value.get("text") if isinstance(value, dict) else None
    if text is None:
        return PromptRow(index, None, 'expected a JSON string or an object with "text"', number)
    if not isinstance(text, str) or not text.strip():
        return PromptRow(index, None, _not_a_prompt(text), number)
    return PromptRow(index, text, None, number)


def _csv_rows(lines: list[tuple[int, str | None, str | None]], path: Path, argument: str) -> list[PromptRow]:
    number, first, error = lines[0] if lines else (1, None, "empty")
    # A spreadsheet's UTF-8 byte-order mark sticks to the first header cell.
    header = next(csv.reader([first.removeprefix("\ufeff")])) if first is not None else []
    if "text" not in header and "prompt" not in header:
        found = f"names the columns {header}" if first is not None else f"is {error}"
        raise ScopeInputError(
            f"{argument} {str(path)!r} is a CSV file with no 'text' or 'prompt' column: its first line (line {number}) "
            f"{found}. Give the prompts' column the header 'text' (or 'prompt'), or write the prompts to a .txt "
            "file, one a line."
        )
    column = header.index("text") if "text" in header else header.index("prompt")
    rows = []
    for index, (number, text, error) in enumerate(lines[1:]):
        if error is not None:
            rows.append(PromptRow(index, None, error, number))
            continue
        fields = next(csv.reader([text]), [])
        value = fields[column] if len(fields) > column else ""
        rows.append(PromptRow(index, value, None, number) if value.strip() else PromptRow(index, None, "empty prompt", number))
    return rows
