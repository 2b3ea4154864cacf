"""Turning what a user passes (text, texts, token ids; positions) into a padded token batch.

Prompts are tokenised one at a time with the model's own tokenizer and BOS convention and then
right-padded. With causal attention, right padding never reaches a real token, so every prompt
in a batch sees exactly what it would see alone: no attention mask or position-id correction is
needed, on HookedTransformer and TransformerBridge alike. Positions are counted within each
prompt's real tokens (``-1`` is each prompt's own last token), so padding never shifts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
from jaxtyping import Bool, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import ScopeInputError

Inputs = Union[str, Sequence[str], torch.Tensor]
Position = Union[int, Sequence[int], Literal["all"]]


@dataclass(frozen=True)
class TokenBatch:
    """A right-padded batch of prompts."""

    tokens: Int[torch.Tensor, "batch pos"]
    lengths: Int[torch.Tensor, " batch"]
    single: bool  # the user passed one prompt: results drop the batch axis

    @property
    def real_token_mask(self) -> Bool[torch.Tensor, "batch pos"]:
        positions = torch.arange(self.tokens.shape[1])
        return positions[None, :] < self.lengths[:, None]

    def rows(self, index: slice) -> TokenBatch:
        """Some of the prompts (same width)."""
        return TokenBatch(tokens=self.tokens[index], lengths=self.lengths[index], single=False)


def _pad(sequences: list[torch.Tensor], pad_id: int) -> TokenBatch:
    lengths = torch.tensor([len(s) for s in sequences])
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = sequence
    return TokenBatch(tokens=tokens, lengths=lengths, single=False)


def prepare_tokens(adapter: ModelAdapter, inputs: Inputs) -> TokenBatch:
    """Tokenise or validate ``inputs``.

    * ``str``: one prompt, tokenised with the model's BOS convention.
    * list of ``str``: a batch, each tokenised alone and right-padded.
    * integer tensor ``[pos]`` or ``[batch, pos]``: used exactly as given (no BOS added; a
      ``[batch, pos]`` tensor is taken to have no padding).
    """
    if isinstance(inputs, str):
        if not inputs:
            raise ScopeInputError("inputs is an empty string; give a prompt with at least one character.")
        batch = _pad([adapter.tokenize(inputs).cpu()], adapter.pad_token_id)
        return TokenBatch(batch.tokens, batch.lengths, single=True)
    if isinstance(inputs, torch.Tensor):
        if inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool:
            raise ScopeInputError(f"inputs tensor must hold integer token ids; got dtype {inputs.dtype}.")
        if inputs.ndim not in (1, 2) or inputs.shape[-1] == 0 or inputs.numel() == 0:
            raise ScopeInputError(
                f"inputs tensor must have shape [pos] or [batch, pos] with pos >= 1; got {tuple(inputs.shape)}."
            )
        tokens = inputs.detach().cpu().long()
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= adapter.d_vocab:
            raise ScopeInputError(
                f"inputs holds token ids outside [0, {adapter.d_vocab - 1}] (found {low}..{high})."
            )
        single = tokens.ndim == 1
        tokens = tokens.reshape(-1, tokens.shape[-1])
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        return TokenBatch(tokens=tokens, lengths=lengths, single=single)
    if isinstance(inputs, Sequence) and len(inputs) > 0 and all(isinstance(s, str) for s in inputs):
        empty = [i for i, s in enumerate(inputs) if not s]
        if empty:
            raise ScopeInputError(f"inputs[{empty[0]}] is an empty string; every prompt needs text.")
        return _pad([adapter.tokenize(s).cpu() for s in inputs], adapter.pad_token_id)
    raise ScopeInputError(
        "inputs must be a prompt string, a non-empty list of prompt strings, or an integer tensor "
        f"of token ids; got {type(inputs).__name__}{' (empty)' if isinstance(inputs, Sequence) else ''}."
    )


@dataclass(frozen=True)
class Positions:
    """Prediction positions, absolute within each prompt."""

    index: Int[torch.Tensor, "batch n_positions"]
    valid: Bool[torch.Tensor, "batch n_positions"]  # False only for padding rows of position="all"
    single: bool  # the user passed one int: results drop the positions axis

    @property
    def n_positions(self) -> int:
        return self.index.shape[1]

    def rows(self, index: slice) -> Positions:
        """The positions of some of the prompts."""
        return Positions(index=self.index[index], valid=self.valid[index], single=self.single)


def resolve_positions(position: Position, batch: TokenBatch) -> Positions:
    """Absolute prediction positions for every prompt; negative ints count from each prompt's end."""
    n_prompts, width = batch.tokens.shape
    lengths = batch.lengths
    if isinstance(position, str):
        if position != "all":
            raise ScopeInputError(f"position must be an int, a list of ints or 'all'; got {position!r}.")
        index = torch.arange(width).expand(n_prompts, width).clone()
        valid = index < lengths[:, None]
        return Positions(index=torch.where(valid, index, 0), valid=valid, single=False)
    single = isinstance(position, int) and not isinstance(position, bool)
    requested = [position] if single else position
    if (
        not isinstance(requested, Sequence)
        or len(requested) == 0
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in requested)
    ):
        raise ScopeInputError(f"position must be an int, a non-empty list of ints or 'all'; got {position!r}.")
    relative = torch.tensor(list(requested))
    for row, length in enumerate(lengths.tolist()):
        bad = [p for p in requested if not -length <= p < length]
        if bad:
            raise ScopeInputError(
                f"position {bad[0]} is out of range for prompt {row}, which has {length} tokens "
                f"(valid: {-length}..{length - 1})."
            )
    index = torch.where(relative[None, :] < 0, relative[None, :] + lengths[:, None], relative[None, :])
    return Positions(index=index, valid=torch.ones_like(index, dtype=torch.bool), single=single)
