"""Turning what a user passes (text, texts, token ids, an attention mask; positions) into a
right-padded token batch.

Prompts are tokenised one at a time with the model's own tokenizer and BOS convention and then
right-padded. With causal attention, right padding never reaches a real token, so every prompt
in a batch sees exactly what it would see alone: no attention mask or position-id correction is
needed, on HookedTransformer and TransformerBridge alike. Positions are counted within each
prompt's real tokens (``-1`` is each prompt's own last token), so padding never shifts them.

Token tensors carry no padding information of their own (a pad token may equal a real one, e.g.
GPT-2's ``<|endoftext|>`` is BOS, EOS and pad): without ``attention_mask`` every token of a
tensor is scored as a real token, exactly as given, and a tensor that *looks* padded (rows that
start or end with different numbers of pad tokens) gets a warning. With ``attention_mask``, the
tokens it marks real are moved to the front of their row, in order, and the row is right-padded:
a left-padded batch (``model.to_tokens([...], padding_side="left")``) then gives each prompt
exactly the scores it gets alone. This is the same computation a masked forward pass does
(masked tokens are invisible and the real tokens' positions are ``cumsum(mask) - 1``), without
relying on each model family's mask handling. Results are in the packed layout; the batch
records which column of the user's tensor each real token came from (``input_columns``).

Everything is checked here, before the model runs: a prompt longer than the model's context
``n_ctx`` is an error (TransformerLens would silently cut text at ``n_ctx`` and fail on longer
tensors deep inside the forward pass); a whitespace-only prompt or one whose tokens are all the
tokenizer's unknown token gets a warning (the model sees no content).
"""

from __future__ import annotations

import operator
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from jaxtyping import Bool, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import ScopeInputError

Inputs = Union[str, Sequence[str], torch.Tensor]
Position = Union[int, Sequence[int], Literal["all"]]

_PACKAGE_DIRECTORY = str(Path(__file__).resolve().parent)


def warn_at_caller(message: str) -> None:
    """A ``UserWarning`` attributed to the first stack frame outside jscopes_tl (the user's line)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE_DIRECTORY):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


@dataclass(frozen=True)
class TokenBatch:
    """A right-padded batch of prompts."""

    tokens: Int[torch.Tensor, "batch pos"]
    lengths: Int[torch.Tensor, " batch"]
    single: bool  # the user passed one prompt: results drop the batch axis
    # With an attention mask: the column of the user's tensor each real token came from (-1 on padding).
    input_columns: Int[torch.Tensor, "batch pos"] | None = None

    @property
    def real_token_mask(self) -> Bool[torch.Tensor, "batch pos"]:
        positions = torch.arange(self.tokens.shape[1])
        return positions[None, :] < self.lengths[:, None]

    def rows(self, index: slice) -> TokenBatch:
        """Some of the prompts (same width)."""
        columns = None if self.input_columns is None else self.input_columns[index]
        return TokenBatch(tokens=self.tokens[index], lengths=self.lengths[index], single=False, input_columns=columns)


def _pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences])
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = sequence
    return tokens, lengths


def _check_length(adapter: ModelAdapter, n_tokens: int, argument: str) -> None:
    if n_tokens > adapter.n_ctx:
        raise ScopeInputError(
            f"{argument} has {n_tokens} tokens, more than the model's context of n_ctx={adapter.n_ctx} tokens; "
            f"shorten it to at most {adapter.n_ctx} tokens (TransformerLens would cut it silently, and the "
            "scope would explain a different position)."
        )


def _warn_if_no_content(adapter: ModelAdapter, text: str, tokens: torch.Tensor, argument: str) -> None:
    """A prompt the model sees as nothing: whitespace only, or only special and unknown tokens."""
    if not text.strip():
        warn_at_caller(
            f"{argument} is whitespace only ({text!r}): there is no content to attribute the prediction to."
        )
        return
    special, unknown = adapter.special_token_ids, adapter.unk_token_id
    content = [int(t) for t in tokens if int(t) not in special or int(t) == unknown]
    if not content or (unknown is not None and all(t == unknown for t in content)):
        pieces = adapter.str_tokens(tokens)
        warn_at_caller(
            f"{argument} {text!r} tokenises to {pieces}: the tokenizer knows none of its words (unknown or "
            "special tokens only), so the model sees no content. Check that the prompt suits this model's tokenizer."
        )


def _warn_if_looks_padded(adapter: ModelAdapter, tokens: torch.Tensor, argument: str) -> None:
    """Rows that start (or end) with different numbers of the pad token are most likely padded."""
    pad = getattr(getattr(adapter.model, "tokenizer", None), "pad_token_id", None)
    if pad is None or tokens.shape[0] < 2:
        return
    is_pad = tokens == int(pad)
    leading = is_pad.long().cumprod(dim=1).sum(dim=1)
    trailing = is_pad.flip(1).long().cumprod(dim=1).sum(dim=1)
    for side, runs in (("left", leading), ("right", trailing)):
        if int(runs.max()) != int(runs.min()):
            warn_at_caller(
                f"{argument} looks {side}-padded: its rows {'start' if side == 'left' else 'end'} with between "
                f"{int(runs.min())} and {int(runs.max())} copies of the pad token {int(pad)}. A token tensor without "
                "attention_mask is scored exactly as given, padding included (and position=-1 is the last "
                "column). Pass attention_mask= (1 for real tokens) so that each prompt gets its own scores; "
                f"attention_mask=torch.ones_like({argument}) says there is no padding."
            )
            return


def _mask_rows(attention_mask: Any, shape: torch.Size) -> Bool[torch.Tensor, "batch pos"]:
    if not isinstance(attention_mask, torch.Tensor):
        raise ScopeInputError(
            f"attention_mask must be a tensor of 0/1 (or bools) shaped like inputs; got {type(attention_mask).__name__}."
        )
    if tuple(attention_mask.shape) != tuple(shape):
        raise ScopeInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but inputs has shape {tuple(shape)}; "
            "give one 0/1 entry per token."
        )
    if attention_mask.is_complex():
        raise ScopeInputError(f"attention_mask must hold 0/1 values; got dtype {attention_mask.dtype}.")
    mask = attention_mask.detach().cpu()
    if not ((mask == 0) | (mask == 1)).all():
        raise ScopeInputError(f"attention_mask must hold only 0 and 1; found {sorted(set(mask.flatten().tolist()))[:5]}.")
    mask = mask.bool().reshape(-1, shape[-1])
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ScopeInputError(f"attention_mask marks no real token in row {empty[0]}; every prompt needs at least one.")
    return mask


def _token_tensor(adapter: ModelAdapter, inputs: torch.Tensor, attention_mask: Any, argument: str) -> TokenBatch:
    if inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool:
        raise ScopeInputError(f"{argument} tensor must hold integer token ids; got dtype {inputs.dtype}.")
    if inputs.ndim not in (1, 2) or inputs.shape[-1] == 0 or inputs.numel() == 0:
        raise ScopeInputError(
            f"{argument} tensor must have shape [pos] or [batch, pos] with pos >= 1; got {tuple(inputs.shape)}."
        )
    tokens = inputs.detach().cpu().long()
    low, high = map(int, torch.aminmax(tokens))
    if low < 0 or high >= adapter.d_vocab:
        raise ScopeInputError(f"{argument} holds token ids outside [0, {adapter.d_vocab - 1}] (found {low}..{high}).")
    single = tokens.ndim == 1
    tokens = tokens.reshape(-1, tokens.shape[-1])
    if attention_mask is None:
        _check_length(adapter, tokens.shape[1], argument)
        _warn_if_looks_padded(adapter, tokens, argument)
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        return TokenBatch(tokens=tokens, lengths=lengths, single=single)
    mask = _mask_rows(attention_mask, inputs.shape)
    columns = [row.nonzero().flatten() for row in mask]
    for row, real in enumerate(columns):
        _check_length(adapter, len(real), argument if single else f"{argument}[{row}] (its real tokens)")
    packed, lengths = _pad([tokens[row, real] for row, real in enumerate(columns)], adapter.pad_token_id)
    input_columns, _ = _pad(columns, -1)
    return TokenBatch(tokens=packed, lengths=lengths, single=single, input_columns=input_columns)


def prepare_tokens(
    adapter: ModelAdapter, inputs: Inputs, attention_mask: Any = None, argument: str = "inputs"
) -> TokenBatch:
    """Tokenise or validate ``inputs``.

    * ``str``: one prompt, tokenised with the model's BOS convention.
    * list of ``str``: a batch, each tokenised alone and right-padded.
    * integer tensor ``[pos]`` or ``[batch, pos]``: used exactly as given (no BOS added); every
      token is real unless ``attention_mask`` (same shape, 1 = real token, 0 = padding) says
      otherwise, in which case each row's real tokens are packed to the front (module docstring).

    ``argument`` is the name error messages and warnings give the prompt(s).
    """
    if isinstance(inputs, torch.Tensor):
        return _token_tensor(adapter, inputs, attention_mask, argument)
    if attention_mask is not None:
        raise ScopeInputError(
            "attention_mask applies to token-id tensors only; text prompts are tokenised and padded here, "
            "so pass them without a mask."
        )
    if isinstance(inputs, str):
        if not inputs:
            raise ScopeInputError(f"{argument} is an empty string; give a prompt with at least one character.")
        tokens = adapter.tokenize(inputs).cpu()
        _check_length(adapter, len(tokens), argument)
        _warn_if_no_content(adapter, inputs, tokens, argument)
        padded, lengths = _pad([tokens], adapter.pad_token_id)
        return TokenBatch(padded, lengths, single=True)
    if isinstance(inputs, Sequence) and len(inputs) > 0:
        for index, text in enumerate(inputs):
            if not isinstance(text, str):
                raise ScopeInputError(
                    f"{argument}[{index}] is {type(text).__name__}, not str: a list holds prompt strings "
                    "(token ids go in an integer tensor [batch, pos])."
                )
            if not text:
                raise ScopeInputError(f"{argument}[{index}] is an empty string; every prompt needs text.")
        sequences = []
        for index, text in enumerate(inputs):
            tokens = adapter.tokenize(text).cpu()
            _check_length(adapter, len(tokens), f"{argument}[{index}]")
            _warn_if_no_content(adapter, text, tokens, f"{argument}[{index}]")
            sequences.append(tokens)
        padded, lengths = _pad(sequences, adapter.pad_token_id)
        return TokenBatch(padded, lengths, single=False)
    what = "an empty list" if isinstance(inputs, Sequence) else type(inputs).__name__
    raise ScopeInputError(
        f"{argument} must be a prompt string, a non-empty list of prompt strings, or an integer tensor "
        f"of token ids; got {what}."
    )


@dataclass(frozen=True)
class Positions:
    """Prediction positions, absolute within each prompt.

    Repeated requested positions are computed once: ``index`` holds the distinct ones and
    ``expand`` (when some were repeated) maps each requested position to its column of ``index``.
    """

    index: Int[torch.Tensor, "batch n_positions"]
    valid: Bool[torch.Tensor, "batch n_positions"]  # False only for padding rows of position="all"
    single: bool  # the user passed one int: results drop the positions axis
    # Per column, the prefix its predictions need: 1 + the largest valid position (0: no prompt has it).
    prefix: list[int]
    expand: Int[torch.Tensor, " n_requested"] | None = None

    @property
    def n_positions(self) -> int:
        return self.index.shape[1]

    def rows(self, index: slice) -> Positions:
        """The positions of some of the prompts."""
        valid, positions = self.valid[index], self.index[index]
        return Positions(
            index=positions, valid=valid, single=self.single, prefix=_prefix(positions, valid), expand=self.expand
        )


def _prefix(index: torch.Tensor, valid: torch.Tensor) -> list[int]:
    return torch.where(valid, index + 1, 0).max(dim=0).values.tolist()


def _as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (Python, numpy or a 0-d integer tensor), not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def resolve_positions(position: Position, batch: TokenBatch) -> Positions:
    """Absolute prediction positions for every prompt; negative ints count from each prompt's end."""
    n_prompts, width = batch.tokens.shape
    lengths = batch.lengths
    if isinstance(position, str):
        if position != "all":
            raise ScopeInputError(f"position must be an int, a list of ints or 'all'; got {position!r}.")
        index = torch.arange(width).expand(n_prompts, width).clone()
        valid = index < lengths[:, None]
        index = torch.where(valid, index, 0)
        return Positions(index=index, valid=valid, single=False, prefix=_prefix(index, valid))
    single = _as_int(position) is not None
    requested = [position] if single else position
    if isinstance(requested, (torch.Tensor, np.ndarray)):
        requested = requested.tolist() if requested.ndim == 1 else None
    if not isinstance(requested, Sequence) or isinstance(requested, str):
        raise ScopeInputError(f"position must be an int, a non-empty list of ints or 'all'; got {position!r}.")
    if len(requested) == 0:
        raise ScopeInputError("position is an empty list; give at least one position, or 'all'.")
    values = [_as_int(p) for p in requested]
    if None in values:
        bad = requested[values.index(None)]
        raise ScopeInputError(f"position must be an int, a non-empty list of ints or 'all'; got the element {bad!r}.")
    length_list = lengths.tolist()
    shortest = min(length_list)
    shortest_row = length_list.index(shortest)
    out_of_range = [p for p in values if not -shortest <= p < shortest]
    if out_of_range:
        row = shortest_row if n_prompts > 1 else 0
        raise ScopeInputError(
            f"position {out_of_range[0]} is out of range for prompt {row}, which has {shortest} tokens "
            f"(valid: {-shortest}..{shortest - 1})."
        )
    rows = [[p + length if p < 0 else p for p in values] for length in length_list]
    index = torch.tensor(rows)
    prefix = [max(column) + 1 for column in zip(*rows)]  # in Python: the usual call's path
    expand = None
    if len(values) > 1:
        unique, inverse = torch.unique(index, dim=1, return_inverse=True)
        if unique.shape[1] < index.shape[1]:
            index, expand = unique, inverse
    valid = torch.ones_like(index, dtype=torch.bool)
    if expand is not None:
        prefix = _prefix(index, valid)
    return Positions(index=index, valid=valid, single=single, prefix=prefix, expand=expand)
