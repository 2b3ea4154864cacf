"""What every demo shares: the ``--model`` / ``--out`` arguments and loading a model by name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jscopes_tl import models
from jscopes_tl.cli import load_model


def demo_parser(description: str, default_model: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--model",
        default=default_model,
        help=f"a bundled model (default {default_model!r}, offline) or a Hugging Face name / local directory, e.g. gpt2",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="directory for the HTML views")
    return parser


def prepare(args: argparse.Namespace) -> tuple[Any, bool]:
    """The model and whether it is a bundled (synthetic-task) model rather than a language model."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args.out.mkdir(parents=True, exist_ok=True)
    return load_model(args.model), models.is_bundled(args.model)


def show(result: Any, k: int = 3) -> str:
    return ", ".join(f"{token!r}@{index} ({score:.3g})" for index, token, score in result.top_tokens(k))
