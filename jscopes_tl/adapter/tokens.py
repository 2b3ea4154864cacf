"""Tokens: the model's own tokenizer and BOS convention, and each token's string.

What this module guarantees (``TokenizerAccess``, a part of
:class:`~jscopes_tl.adapter.ModelAdapter`):

* Prompts are tokenised exactly as ``model.to_tokens`` does (the model's BOS convention), never
  truncated, and left on the CPU for ``ModelAdapter.forward()`` to place.
* Token strings are ``model.to_str_tokens``'s, decoded once per tokenizer and token id (the
  tokenizer held weakly): a new tokenizer gets its own strings.
* A model without a tokenizer gets an actionable :class:`~jscopes_tl.errors.ScopeInputError` when
  text must be tokenised, and ``<id>`` strings for display.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from jaxtyping import Int

from jscopes_tl.errors import ScopeInputError

# Per tokenizer (held weakly), the string of every token id decoded so far (ModelAdapter.str_tokens).
_token_strings: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


class TokenizerAccess:
    """The part of :class:`~jscopes_tl.adapter.ModelAdapter` that tokenises and decodes."""

    model: Any

    @property
    def tokenizer(self) -> Any:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            raise ScopeInputError(
                "this model has no tokenizer, so text cannot be tokenised: pass inputs as an "
                "integer tensor of token ids and targets as token ids."
            )
        return tokenizer

    def tokenize(self, text: str) -> Int[torch.Tensor, " pos"]:
        """Tokenise a prompt with the model's own tokenizer and BOS convention, never truncated
        (TransformerLens cuts at ``n_ctx`` by default; the caller checks the length), on the CPU:
        :meth:`forward` places them (``cfg.device`` is ``meta`` on a bridge whose embedding is offloaded)."""
        self.tokenizer  # noqa: B018 - raises the clear error when there is no tokenizer
        return self.model.to_tokens(text, truncate=False, move_to_device=False)[0]

    def tokenize_fragment(self, text: str) -> Int[torch.Tensor, " pos"]:
        """Tokenise a piece of text with no BOS (for targets such as ``" liberal"``)."""
        self.tokenizer  # noqa: B018
        return self.model.to_tokens(text, prepend_bos=False, truncate=False, move_to_device=False)[0]

    def str_tokens(self, tokens: Int[torch.Tensor, " pos"]) -> list[str]:
        """Each token's string, as ``model.to_str_tokens`` gives it. That decodes one id at a time
        (TransformerLens 2.x and the bridge alike), so each id's string is kept per tokenizer and
        only ids not seen before are decoded."""
        return self.id_strings(tokens.reshape(-1).tolist())

    def id_strings(self, ids: list[int]) -> list[str]:
        """:meth:`str_tokens` of token ids given as a list."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return [f"<{i}>" for i in ids]
        try:
            strings = _token_strings.setdefault(tokenizer, {})
        except TypeError:  # a tokenizer that cannot be held weakly or hashed: decode every time
            return list(self.model.to_str_tokens(torch.tensor(ids, dtype=torch.long)))
        missing = [i for i in dict.fromkeys(ids) if i not in strings]
        if missing:
            strings.update(zip(missing, self.model.to_str_tokens(torch.tensor(missing))))
        return [strings[i] for i in ids]

    def text(self, tokens: Int[torch.Tensor, " pos"]) -> str | None:
        """The tokens as the tokenizer writes them out, special tokens left out (None: no tokenizer)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return None
        return tokenizer.decode(tokens.detach().cpu().tolist(), skip_special_tokens=True)

    def word_starts(self, tokens: Int[torch.Tensor, " pos"], str_tokens: list[str]) -> list[bool] | None:
        """Per token, whether the tokenizer starts a word there (None: no tokenizer); see
        :func:`jscopes_tl.words.tokenizer_word_starts`."""
        from jscopes_tl.words import tokenizer_word_starts

        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return None
        return tokenizer_word_starts(tokenizer, tokens.detach().cpu().tolist(), str_tokens)

    @property
    def unk_token_id(self) -> int | None:
        """The tokenizer's unknown token, when it is a token of its own (None when the tokenizer has
        none, or reuses BOS/EOS/pad for it, as GPT-2-style byte-level tokenizers that never need it do)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        unknown = getattr(tokenizer, "unk_token_id", None)
        shared = {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return None if unknown is None or unknown in shared else int(unknown)

    @property
    def special_token_ids(self) -> set[int]:
        """BOS, EOS, pad and the tokenizer's other special tokens (not content)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        ids = set(getattr(tokenizer, "all_special_ids", None) or [])
        ids |= {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return {int(i) for i in ids if i is not None}

    @property
    def pad_token_id(self) -> int:
        tokenizer = getattr(self.model, "tokenizer", None)
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                return int(value)
        return 0
