"""ScopeResult: what a scope returns, in the shapes users index by hand.

Axis rules (one prompt vs a batch, one position vs several) are applied here, once:

* ``scores``: ``[pos]`` for one prompt and one position; ``[batch, pos]`` for a batch; with an
  extra positions axis before ``pos`` when several positions (or ``"all"``) were asked for:
  ``[n_positions, pos]`` or ``[batch, n_positions, pos]``. Padding scores are 0.
* per-prediction fields (``position``, ``target``, prediction) drop the same axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from jscopes_tl.errors import ScopeInputError

if TYPE_CHECKING:
    import numpy as np
    import pandas


def check_count(k: Any, method: str) -> int:
    """The ``k`` of a ``top_*`` method: a positive int (topk's own error on -1 names nothing)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ScopeInputError(f"{method}(k): k must be a positive int, how many to list; got {k!r}.")
    return k


@dataclass(frozen=True)
class ResultAxes:
    """Which of the optional axes (prompts, positions, layers) a result kept.

    Scopes compute the full form ``[batch, n_positions, n_layers, ...]`` and ``squeeze_*`` drops
    the axes the user asked away; ``expand_*`` restores them (export, views).

    Example:
        >>> semantic_scope(model, [prompt, "c=1 d="], position="all").axes     # [batch, n_positions, pos]
        ResultAxes(prompts=True, positions=True, layers=False)
        >>> semantic_scope(model, prompt).axes                                  # [pos]
        ResultAxes(prompts=False, positions=False, layers=False)
    """

    prompts: bool
    positions: bool
    layers: bool

    def squeeze_prediction(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-prediction tensor ``[batch, n_positions, ...]`` → the kept axes only."""
        return self._squeeze(tensor, (self.prompts, self.positions))

    def squeeze_score(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-score tensor ``[batch, n_positions, n_layers, pos, ...]`` → the kept axes only."""
        return self._squeeze(tensor, (self.prompts, self.positions, self.layers))

    @staticmethod
    def _squeeze(tensor: torch.Tensor, kept: tuple[bool, ...]) -> torch.Tensor:
        dropped = tuple(axis for axis, keep in enumerate(kept) if not keep)
        return tensor.squeeze(dropped) if dropped else tensor  # one view for all dropped axes

    def expand_prediction(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-prediction tensor ``[...]`` → ``[batch, n_positions, ...]``."""
        if not self.prompts:
            tensor = tensor.unsqueeze(0)
        if not self.positions:
            tensor = tensor.unsqueeze(1)
        return tensor

    def expand_score(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-score tensor ``[..., pos, ...]`` → ``[batch, n_positions, n_layers, pos, ...]``."""
        tensor = self.expand_prediction(tensor)
        return tensor if self.layers else tensor.unsqueeze(2)

    def expand_nested(self, values: list[Any]) -> list[list[Any]]:
        """Nested per-prediction lists (e.g. predicted strings) → ``[batch][n_positions]``."""
        if not self.prompts:
            values = [values]
        if not self.positions:
            values = [[row] for row in values]
        return values


@dataclass(frozen=True)
class Prediction:
    """The model's top-k next-token prediction at each scored position.

    Example:
        >>> prediction = semantic_scope(model, prompt).prediction
        >>> prediction.str_tokens[:2], prediction.token_ids.shape         # top-k, k = 5
        (['7', '6'], torch.Size([5]))
    """

    token_ids: Int[torch.Tensor, "... k"]
    probabilities: Float[torch.Tensor, "... k"]
    str_tokens: list[Any]


@dataclass(frozen=True)
class ScopeResult:
    """Token-level Jacobian Scope scores for one prompt or a batch.

    Attributes:
        kind: ``"semantic"``, ``"fisher"`` or ``"temperature"``.
        scores: float32 CPU tensor; see the module docstring for its shape. Semantic and
            Temperature scores are L2 norms; Fisher scores are ``tr(J_t^T F J_t)`` (squared units).
        tokens: the token ids scored, ``[pos]`` or ``[batch, pos]`` (right-padded).
        str_tokens: the tokens as strings (real tokens only, per prompt).
        lengths: number of real tokens of each prompt, ``[batch]``.
        position: absolute prediction position(s) within each prompt.
        target: target token id(s) of a Semantic Scope (a trailing axis of 2 for a contrast
            ``(a, b)``), otherwise None.
        prediction: top-k tokens and probabilities at each prediction position; None when the
            scope read an internal hook (``readout_hook=``: no logits are computed; the value read
            is ``metadata["readout_value"]``).
        gradient_x_input: signed variant ``(u^T J_t) · x_t`` for single-direction scopes.
        gradients: ``u^T J_t`` itself (``[..., pos, d_model]``) when requested.
        metadata: numerics (folded/centred weights, hook names), Fisher rank and error bounds.

    Example:
        >>> result = semantic_scope(model, prompt)
        >>> result.kind, result.str_tokens, result.scores.shape   # scores [pos] for one prompt and position
        ('semantic', ['<bos>', 'a=3', 'b=7', 'c=1', 'b='], torch.Size([5]))
        >>> result.prediction.str_tokens[0], result.target
        ('7', tensor([294]))
    """

    kind: str
    scores: Float[torch.Tensor, "..."]
    tokens: Int[torch.Tensor, "..."]
    str_tokens: list[Any]
    lengths: Int[torch.Tensor, " batch"]
    position: Int[torch.Tensor, "..."]
    target: Int[torch.Tensor, "..."] | None
    prediction: Prediction | None
    gradient_x_input: Float[torch.Tensor, "..."] | None = None
    gradients: Float[torch.Tensor, "..."] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    # Facts about this result's shape, read by export, views and runs alike.
    @property
    def axes(self) -> ResultAxes:
        """Which of the optional axes (prompts, positions, layers) this result kept.

        Example:
            >>> result = semantic_scope(model, ["a=3 b=", "c=1 d="], position="all")
            >>> result.axes
            ResultAxes(prompts=True, positions=True, layers=False)
        """
        prompts = self.tokens.ndim == 2
        return ResultAxes(
            prompts=prompts,
            positions=self.position.ndim == (2 if prompts else 1),
            layers=isinstance(self.metadata.get("layer"), (list, tuple)),
        )

    @property
    def layers(self) -> list[int]:
        """The layers scored, in the order of the layers axis (one layer when there is no such axis).

        Example:
            >>> semantic_scope(model, prompt, layer=[0, 1]).layers
            [0, 1]
        """
        layer = self.metadata.get("layer", 0)
        return list(layer) if isinstance(layer, (list, tuple)) else [int(layer)]

    @property
    def str_tokens_per_prompt(self) -> list[list[str]]:
        """``str_tokens`` with the prompts axis: one list of token strings per prompt.

        Example:
            >>> semantic_scope(model, ["a=3 b=", "c=1 d=5 c="]).str_tokens_per_prompt
            [['<bos>', 'a=3', 'b='], ['<bos>', 'c=1', 'd=5', 'c=']]
        """
        return self.str_tokens if self.axes.prompts else [self.str_tokens]

    @property
    def word_starts_per_prompt(self) -> list[list[bool] | None]:
        """The tokenizer's word boundaries of each prompt (``metadata["word_starts"]``; None if unknown).

        Example:
            >>> semantic_scope(model, prompt).word_starts_per_prompt
            [[True, True, True, True, True]]
        """
        starts = self.metadata.get("word_starts")
        if starts is None:
            return [None] * len(self.str_tokens_per_prompt)
        return starts if self.axes.prompts else [starts]

    def top_tokens(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring (index, token, score) of a single-prompt, single-position result.

        Example:
            >>> semantic_scope(model, prompt).top_tokens(2)
            [(2, 'b=7', 5.64...), (4, 'b=', 0.953...)]
        """
        check_count(k, "top_tokens")
        if self.scores.ndim != 1:
            raise ValueError(
                f"top_tokens needs a result for one prompt and one position; scores have shape {tuple(self.scores.shape)}."
            )
        values, indices = self.scores.topk(min(k, self.scores.shape[0]))
        return [(int(i), self.str_tokens[int(i)], float(v)) for v, i in zip(values, indices)]

    # Views live in jscopes_tl.views and read this plain data; they import this module, so the
    # methods below import them when called. View options: prompt, position, layer, values
    # ("scores" | "gradient_x_input"), words ("sum" | "max"), log_scale, header.
    def to_html(self, **view_options: Any) -> str:
        """A self-contained HTML page of this result (see :func:`jscopes_tl.views.token_view`).

        Example:
            >>> html = semantic_scope(model, prompt).to_html(words="sum")
            >>> html.startswith("<!DOCTYPE html>"), "cdn" in html              # one offline page
            (True, False)
        """
        from jscopes_tl.views.tokens import token_view

        return token_view(self, **view_options).to_html()

    def save_html(self, path: str | Path, **view_options: Any) -> Path:
        """Write :meth:`to_html` to ``path``; the file works offline, with no server.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> out = Path(tempfile.mkdtemp()) / "fisher.html"
            >>> path = fisher_scope(model, prompt).save_html(out, log_scale=True)
            >>> path == out, path.stat().st_size > 0
            (True, True)
        """
        from jscopes_tl.views.tokens import token_view

        return token_view(self, **view_options).save_html(path)

    def show(self, **view_options: Any) -> None:
        """Display the token view in a Jupyter notebook (needs IPython: the ``notebook`` extra).

        The circuitsvis JavaScript goes into the first view shown in a kernel only; see
        :mod:`jscopes_tl.views.html`. A result that is a cell's last expression displays the
        same view by itself (:meth:`_repr_html_`).

        Example:
            >>> semantic_scope(model, prompt, position="all").show(words="sum")  # a notebook shows the view
            <IPython.core.display.HTML object>
        """
        from jscopes_tl.views.tokens import token_view

        token_view(self, **view_options).show()

    def _repr_html_(self) -> str | None:
        """The default token view in a notebook; None (plain repr) for a batch or a result with
        both several positions and several layers, which need a choice (use :meth:`show`).

        Example:
            >>> batch = semantic_scope(model, [prompt, prompt])
            >>> semantic_scope(model, prompt)._repr_html_() is not None, batch._repr_html_()
            (True, None)
        """
        from jscopes_tl.views.tokens import token_view

        try:
            page = token_view(self)
        except ValueError:
            return None
        return page._repr_html_()

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-compatible data; :meth:`from_dict` inverts it exactly.

        Example:
            >>> data = semantic_scope(model, prompt).to_dict()
            >>> data["kind"], data["str_tokens"]
            ('semantic', ['<bos>', 'a=3', 'b=7', 'c=1', 'b='])
        """
        from jscopes_tl.export import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScopeResult:
        """The result :meth:`to_dict` exported, checked against the schema (:func:`~jscopes_tl.export.validate`) first.

        Example:
            >>> result = semantic_scope(model, prompt)
            >>> ScopeResult.from_dict(result.to_dict()).top_tokens(1) == result.top_tokens(1)
            True
        """

        from jscopes_tl.export import from_dict

        return from_dict(data)

    def to_json(self, indent: int | None = None) -> str:
        """Every field as a JSON string (:meth:`to_dict`; ``indent`` as in ``json.dumps``).

        Example:
            >>> semantic_scope(model, prompt).to_json()[:40]
            '{"format": "jscopes_tl.ScopeResult", "ve'
        """

        from jscopes_tl.export import to_json

        return to_json(self, indent)

    @classmethod
    def from_json(cls, text: str) -> ScopeResult:
        """The result :meth:`to_json` wrote, checked against the schema first.

        Example:
            >>> result = fisher_scope(model, prompt)
            >>> torch.equal(ScopeResult.from_json(result.to_json()).scores, result.scores)
            True
        """

        from jscopes_tl.export import from_json

        return from_json(text)

    def to_numpy(self) -> np.ndarray:
        """``scores`` as a numpy array.

        Example:
            >>> array = semantic_scope(model, prompt).to_numpy()
            >>> array.shape, array.dtype
            ((5,), dtype('float32'))
        """
        from jscopes_tl.export import to_numpy

        return to_numpy(self)

    def to_pandas(self, words: str | None = None) -> pandas.DataFrame:
        """A tidy long table of scores (see :func:`jscopes_tl.export.to_pandas`).

        Example:
            >>> semantic_scope(model, prompt).to_pandas()[["token", "score"]].round(3)
               token  score
            0  <bos>  0.807
            1    a=3  0.507
            2    b=7  5.650
            3    c=1  0.488
            4     b=  0.954
        """
        from jscopes_tl.export import to_pandas

        return to_pandas(self, words)

    def __repr__(self) -> str:
        read = (
            f"readout_hook={self.metadata.get('numerics', {}).get('readout_hook')!r}"
            if self.prediction is None
            else f"prediction={self.prediction.str_tokens!r}"
        )
        return (
            f"ScopeResult(kind={self.kind!r}, scores={tuple(self.scores.shape)}, "
            f"position={self.position.tolist()}, {read})"
        )
