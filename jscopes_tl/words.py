"""Word-level aggregation: merge sub-word tokens into the words people actually read.

Byte-level BPE splits " Zuschreibung" into pieces such as " Zus", "chre", "ibung"; a score per
piece is hard to read. A word here is a maximal run of tokens in which every token after the
first continues the previous one. A token *starts* a new word when

* the tokenizer puts whitespace before it when it decodes the text (``word_starts``, from
  :func:`tokenizer_word_starts`): word-level and WordPiece tokenizers drop the spaces from the
  tokens themselves (``a=3``, ``b=7``) and SentencePiece's ``▁`` is gone from decoded tokens, so
  only the tokenizer knows these boundaries; scopes record them in
  ``result.metadata["word_starts"]``,
* it begins with whitespace (or a SentencePiece ``▁`` / GPT-2 ``Ġ`` space marker),
* the previous token ends in punctuation or whitespace (a token that is only whitespace joins
  the word after it), or
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
from typing import Any, Literal

import torch
from jaxtyping import Float

Reduction = Literal["sum", "max"]
REDUCTIONS = ("sum", "max")
SPACE_MARKERS = ("▁", "Ġ")
_SPECIAL_TOKEN = re.compile(r"^(<\|[^|<>]*\|>|</?(s|bos|eos|pad|unk)>|\[(CLS|SEP|PAD|BOS|EOS)\])$")


def is_special_token(token: str) -> bool:
    """``<|endoftext|>``, ``<|begin_of_text|>``, ``<s>``, ``<bos>``, ``[CLS]``-style tokens.

    Example:
        >>> from jscopes_tl.words import is_special_token
        >>> is_special_token("<|endoftext|>"), is_special_token("[CLS]"), is_special_token(" cat")
        (True, True, False)
    """
    return bool(_SPECIAL_TOKEN.match(token))


def _ends_word(token: str) -> bool:
    if not token:
        return False
    last = token[-1]
    return last.isspace() or unicodedata.category(last).startswith("P")


def _is_blank(token: str) -> bool:
    return all(character.isspace() or character in SPACE_MARKERS for character in token)


def _starts_word(token: str) -> bool:
    return bool(token) and (token[0].isspace() or token.startswith(SPACE_MARKERS))


def tokenizer_word_starts(tokenizer: Any, token_ids: Sequence[int], str_tokens: Sequence[str]) -> list[bool]:
    """Per token: does ``tokenizer`` put whitespace between it and the previous token when decoding?

    ``str_tokens`` are the tokens decoded one by one (``model.to_str_tokens``). Where decoding the
    whole sequence gives exactly their concatenation (byte-level BPE such as GPT-2's), the tokens
    carry their own spaces and no token is marked; otherwise each adjacent pair is decoded and a
    token is marked when the pair decodes to ``previous + whitespace + token``. A pair that
    decodes differently for another reason (two halves of one multi-byte character) is no
    boundary. The first token is always marked.

    Example:
        >>> from jscopes_tl.words import tokenizer_word_starts
        >>> tokens = model.to_tokens("a=3 b=7 b=")[0]      # a bundled model's word-level tokenizer
        >>> tokenizer_word_starts(model.tokenizer, tokens, model.to_str_tokens(tokens))
        [True, True, True, True]
    """
    ids = [int(token_id) for token_id in token_ids]
    if len(ids) != len(str_tokens):
        raise ValueError(f"token_ids has {len(ids)} ids but str_tokens has {len(str_tokens)} tokens.")
    starts = [True] + [False] * (len(ids) - 1)
    if len(ids) < 2 or tokenizer.decode(ids, clean_up_tokenization_spaces=False) == "".join(str_tokens):
        return starts
    adjacent = [ids[i - 1 : i + 1] for i in range(1, len(ids))]
    pairs = tokenizer.batch_decode(adjacent, clean_up_tokenization_spaces=False)
    for index, pair in enumerate(pairs, start=1):
        previous, token = str_tokens[index - 1], str_tokens[index]
        if len(pair) > len(previous) + len(token) and pair.startswith(previous) and pair.endswith(token):
            starts[index] = pair[len(previous) : len(pair) - len(token)].isspace()
    return starts


def word_spans(
    str_tokens: Sequence[str],
    special_tokens: Collection[str] | None = None,
    word_starts: Sequence[bool] | None = None,
) -> list[tuple[int, int]]:
    """Token index ranges ``[start, stop)`` of the words of ``str_tokens``, in order.

    Args:
        str_tokens: the tokens as strings, e.g. ``model.to_str_tokens(text)``.
        special_tokens: tokens that are always a unit of their own; default: anything that looks
            like a special token (:func:`is_special_token`).
        word_starts: per token, whether the tokenizer starts a word there
            (:func:`tokenizer_word_starts`; ``result.metadata["word_starts"]``). Without it, word
            boundaries come from the token strings alone, which on a word-level tokenizer (no
            spaces in its tokens) cannot see them.

    Example:
        >>> from jscopes_tl.words import word_spans
        >>> word_spans(["<|endoftext|>", "The", " ca", "t", " sat"])    # GPT-2 style: a space starts a word
        [(0, 1), (1, 2), (2, 4), (4, 5)]
    """
    if word_starts is not None and len(word_starts) != len(str_tokens):
        raise ValueError(f"word_starts has {len(word_starts)} entries but str_tokens has {len(str_tokens)} tokens.")
    special = (lambda token: token in special_tokens) if special_tokens is not None else is_special_token
    spans: list[tuple[int, int]] = []
    for index, token in enumerate(str_tokens):
        if index == 0:
            spans.append((0, 1))
            continue
        previous = str_tokens[index - 1]
        new_word = (
            (word_starts is not None and bool(word_starts[index]))
            or special(token)
            or special(previous)
            # a token that is only a space (GPT-2's "Ġ" before a rare word) belongs to the next word
            or (not _is_blank(previous) and (_starts_word(token) or _ends_word(previous)))
        )
        if new_word:
            spans.append((index, index + 1))
        else:
            spans[-1] = (spans[-1][0], index + 1)
    return spans


@dataclass(frozen=True)
class WordScores:
    """Scores merged to words: the words, the token span of each, and the merged values.

    Example:
        >>> from jscopes_tl.words import aggregate_words
        >>> words = aggregate_words(["<bos>", "The", " ca", "t"], torch.tensor([0.0, 1.0, 2.0, 3.0]), "max")
        >>> words.words, words.spans, words.values
        (['<bos>', 'The', ' cat'], [(0, 1), (1, 2), (2, 4)], tensor([0., 1., 3.]))
    """

    words: list[str]
    spans: list[tuple[int, int]]
    values: Float[torch.Tensor, "... n_words"]


def aggregate_words(
    str_tokens: Sequence[str],
    values: Float[torch.Tensor, "... pos"],
    reduction: Reduction = "sum",
    special_tokens: Collection[str] | None = None,
    word_starts: Sequence[bool] | None = None,
) -> WordScores:
    """Merge token values (last axis) into word values by ``reduction`` (``"sum"`` or ``"max"``).

    ``word_starts``: the tokenizer's word boundaries (see :func:`word_spans`); pass
    ``result.metadata["word_starts"]`` so that word-level and SentencePiece tokenizers split
    where they put spaces.

    Example:
        >>> from jscopes_tl.words import aggregate_words
        >>> result = semantic_scope(model, "a=3 b=7 b=")
        >>> starts = result.metadata["word_starts"]
        >>> merged = aggregate_words(result.str_tokens, result.scores, word_starts=starts)
        >>> merged.words, merged.values.shape                     # [n_words]
        (['<bos>', 'a=3', 'b=7', 'b='], torch.Size([4]))
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}.")
    if values.shape[-1] != len(str_tokens):
        raise ValueError(
            f"str_tokens has {len(str_tokens)} tokens but values has {values.shape[-1]} along its last "
            f"axis (shape {tuple(values.shape)}); they must match one to one."
        )
    spans = word_spans(str_tokens, special_tokens, word_starts)
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
