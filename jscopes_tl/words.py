"""Word-level aggregation: merge sub-word tokens into the words people actually read.

Byte-level BPE splits " Zuschreibung" into pieces such as " Zus", "chre", "ibung"; a score per
piece is hard to read. A word here is a maximal run of tokens in which every token after the
first continues the previous one. A token *starts* a new word when

* it begins with whitespace (or a SentencePiece ``▁`` / GPT-2 ``Ġ`` space marker),
* the previous token ends in punctuation or whitespace, or
* it or the previous token is a special token (BOS ``<|endoftext|>``, ``<s>``, ...), which always
  stays a unit of its own.

So ``["<|endoftext|>", "Tom", " lo", "ves", " food", "."]`` gives the words
``["<|endoftext|>", "Tom", " loves", " food."]``. A word's score is the sum (total influence of
the word) or the max (its strongest piece) of its tokens' scores; for signed scores "max" keeps
the value of largest magnitude, with its sign.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float

Reduction = Literal["sum", "max"]
REDUCTIONS = ("sum", "max")
SPACE_MARKERS = ("▁", "Ġ")
_SPECIAL_TOKEN = re.compile(r"^(<\|[^|<>]*\|>|</?(s|bos|eos|pad|unk)>|\[(CLS|SEP|PAD|BOS|EOS)\])$")


def is_special_token(token: str) -> bool:
    """``<|endoftext|>``, ``<|begin_of_text|>``, ``<s>``, ``<bos>``, ``[CLS]``-style tokens."""
    return bool(_SPECIAL_TOKEN.match(token))


def _ends_word(token: str) -> bool:
    if not token:
        return False
    last = token[-1]
    return last.isspace() or unicodedata.category(last).startswith("P")


def _starts_word(token: str) -> bool:
    return bool(token) and (token[0].isspace() or token.startswith(SPACE_MARKERS))


def word_spans(str_tokens: Sequence[str], special_tokens: Collection[str] | None = None) -> list[tuple[int, int]]:
    """Token index ranges ``[start, stop)`` of the words of ``str_tokens``, in order.

    Args:
        str_tokens: the tokens as strings, e.g. ``model.to_str_tokens(text)``.
        special_tokens: tokens that are always a unit of their own; default: anything that looks
            like a special token (:func:`is_special_token`).
    """
    special = (lambda token: token in special_tokens) if special_tokens is not None else is_special_token
    spans: list[tuple[int, int]] = []
    for index, token in enumerate(str_tokens):
        if index == 0:
            spans.append((0, 1))
            continue
        previous = str_tokens[index - 1]
        new_word = _starts_word(token) or _ends_word(previous) or special(token) or special(previous)
        if new_word:
            spans.append((index, index + 1))
        else:
            spans[-1] = (spans[-1][0], index + 1)
    return spans


@dataclass(frozen=True)
class WordScores:
    """Scores merged to words: the words, the token span of each, and the merged values."""

    words: list[str]
    spans: list[tuple[int, int]]
    values: Float[torch.Tensor, "... n_words"]


def aggregate_words(
    str_tokens: Sequence[str],
    values: Float[torch.Tensor, "... pos"],
    reduction: Reduction = "sum",
    special_tokens: Collection[str] | None = None,
) -> WordScores:
    """Merge token values (last axis) into word values by ``reduction`` (``"sum"`` or ``"max"``).

    Example:
        >>> merged = aggregate_words(result.str_tokens, result.scores, "sum")
        >>> list(zip(merged.words, merged.values.tolist()))
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}.")
    if values.shape[-1] != len(str_tokens):
        raise ValueError(
            f"str_tokens has {len(str_tokens)} tokens but values has {values.shape[-1]} along its last "
            f"axis (shape {tuple(values.shape)}); they must match one to one."
        )
    spans = word_spans(str_tokens, special_tokens)
    merged = []
    for start, stop in spans:
        piece = values[..., start:stop]
        if reduction == "sum":
            merged.append(piece.sum(-1))
        else:
            strongest = piece.abs().argmax(-1, keepdim=True)
            merged.append(piece.gather(-1, strongest).squeeze(-1))
    return WordScores(
        words=["".join(str_tokens[start:stop]) for start, stop in spans],
        spans=spans,
        values=torch.stack(merged, dim=-1),
    )
