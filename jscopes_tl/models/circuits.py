"""Component-level ground truth on the bundled ``induction`` model: which head, at which token?

The token-level ground truth (:mod:`jscopes_tl.models.ground_truth`) knows the token an answer is
copied from. One level down the question is which attention head carries the answer, and at
which token. Two references answer it here:

* **Attention patterns**, TransformerLens's standard detectors
  (:func:`jscopes_tl.components.head_pattern_scores`): previous-token heads attend to ``t - 1``;
  induction heads attend, on a repeated random sequence, to the token after the current token's
  previous occurrence. They say what a head *reads*, not whether the prediction depends on it.
* **Head-level activation patching** (:func:`jscopes_tl.patching.compare_components_with_patching`):
  restore one head's output at one token from the clean run into a corrupted run and measure
  ``log p(answer)``. Two corruptions of a labelled prompt ``[BOS] s s[:k]`` (answer ``s[k]``):
  ``"answer"`` replaces the answer's occurrence in the first copy, ``"previous_occurrence"``
  replaces the earlier occurrence of the current (last) token, which an induction circuit
  matches on. The replacement is a word that does not occur in the prompt.

:func:`induction_circuit_check` runs the component scope (Semantic, reading the same metric, on
the clean prompt) beside patching on held-out prompts and reports where each puts the largest
cell (layer, head, token) and head, how often they agree, their rank correlations, and where the
pattern-identified heads rank. It reports what it measures; it assumes no particular circuit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.components import HeadPatternScores, head_pattern_scores
from jscopes_tl.models.tasks import LabelledPrompt, get_task
from jscopes_tl.patching import ComponentPatchingComparison, compare_components_with_patching

CORRUPTIONS = ("answer", "previous_occurrence")

Cell = tuple[int, int, int]  # (layer, head, token index)


@dataclass(frozen=True)
class PromptCheck:
    """Scope and patching on one labelled prompt under one corruption.

    ``*_top_cell``: the (layer, head, token) with the largest score / ``|patching effect|``;
    ``*_top_head``: the (layer, head) with the largest total / ``|all-position patching effect|``;
    ``scope_rank_of_patching_cell``: where patching's top cell ranks among the scope's cells (1: first).

    What the heads read there (attention probabilities on the clean prompt):
    ``scope_cell_attention_to_source``: from the scope's top cell (its head, at its token) to the
    answer's occurrence in the first copy; ``patching_cell_attention_to_previous_occurrence``: from
    patching's top cell to the current token's earlier occurrence; ``prediction_attention_to_scope_cell``:
    from the prediction position to the scope's top token, averaged over the next layer's heads
    (NaN when the cell is in the last layer).

    Example:
        >>> from jscopes_tl.models.circuits import induction_circuit_check
        >>> first = induction_circuit_check(n_prompts=1, max_tokens=12).checks[0]
        >>> first.corruption, first.scope_top_head, first.patching_top_head        # (layer, head)
        ('answer', (0, 3), (0, 3))
    """

    prompt: LabelledPrompt
    corruption: str
    scope_top_cell: Cell
    patching_top_cell: Cell
    scope_top_head: tuple[int, int]
    patching_top_head: tuple[int, int]
    rank_correlations: dict[str, float]
    scope_rank_of_patching_cell: int
    scope_cell_attention_to_source: float
    patching_cell_attention_to_previous_occurrence: float
    prediction_attention_to_scope_cell: float
    comparison: ComponentPatchingComparison

    @property
    def cells_agree(self) -> bool:
        return self.scope_top_cell == self.patching_top_cell

    @property
    def heads_agree(self) -> bool:
        return self.scope_top_head == self.patching_top_head


@dataclass(frozen=True)
class InductionCircuitCheck:
    """Attention-pattern head scores, and scope vs patching on every (prompt, corruption).

    Example:
        >>> from jscopes_tl.models.circuits import induction_circuit_check
        >>> check = induction_circuit_check(n_prompts=2, max_tokens=12)
        >>> sorted(check.summary()), check.top_cell_counts("answer", "scope")
        (['answer', 'previous_occurrence'], {(0, 3): 2})
    """

    pattern_scores: HeadPatternScores
    checks: list[PromptCheck]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per corruption: agreement rates, mean rank correlations, and token / head statistics.

        Example:
            >>> from jscopes_tl.models.circuits import induction_circuit_check
            >>> sorted(induction_circuit_check(n_prompts=2, max_tokens=12).summary()["answer"])[:3]
            ['mean rho heads: activation_vs_attribution', 'mean rho heads: activation_vs_scope', 'mean rho heads: attribution_vs_scope']
        """
        table: dict[str, dict[str, float]] = {}
        for corruption in sorted({check.corruption for check in self.checks}):
            rows = [check for check in self.checks if check.corruption == corruption]
            n = len(rows)

            def mean(values: Sequence[float]) -> float:
                return float(sum(values) / len(values))

            table[corruption] = {
                "prompts": n,
                "top_cell_agreement": mean([row.cells_agree for row in rows]),
                "top_cell_head_agreement": mean([row.scope_top_cell[:2] == row.patching_top_cell[:2] for row in rows]),
                "top_cell_token_agreement": mean([row.scope_top_cell[2] == row.patching_top_cell[2] for row in rows]),
                "top_head_agreement": mean([row.heads_agree for row in rows]),
                "median scope rank of the patching top cell": float(
                    torch.tensor([row.scope_rank_of_patching_cell for row in rows]).float().median()
                ),
                "min attention, scope cell to source": min(row.scope_cell_attention_to_source for row in rows),
                "min attention, patching cell to previous occurrence": min(
                    row.patching_cell_attention_to_previous_occurrence for row in rows
                ),
                "min attention, prediction to scope cell": min(row.prediction_attention_to_scope_cell for row in rows),
                **{
                    f"mean rho {key}": mean([row.rank_correlations[key] for row in rows])
                    for key in rows[0].rank_correlations
                },
            }
        return table

    def top_cell_counts(self, corruption: str, method: str) -> dict[tuple[int, int], int]:
        """How often each (layer, head) holds ``method``'s (``"scope"`` / ``"patching"``) top cell.

        Example:
            >>> from jscopes_tl.models.circuits import induction_circuit_check
            >>> induction_circuit_check(n_prompts=2, max_tokens=12).top_cell_counts("answer", "patching")
            {(0, 3): 2}
        """
        counts: dict[tuple[int, int], int] = {}
        for check in self.checks:
            if check.corruption == corruption:
                cell = check.scope_top_cell if method == "scope" else check.patching_top_cell
                counts[cell[:2]] = counts.get(cell[:2], 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _argmax_cell(values: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(values.argmax(), values.shape))


def corrupt(adapter: ModelAdapter, tokens: torch.Tensor, prompt: LabelledPrompt, corruption: str) -> torch.Tensor:
    """``tokens`` with the answer's first occurrence (``"answer"``) or the current token's earlier
    occurrence (``"previous_occurrence"``) replaced by the lowest-id word absent from the prompt."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}; got {corruption!r}.")
    index = prompt.source_indices[0] - (corruption == "previous_occurrence")
    bos = getattr(adapter.model.tokenizer, "bos_token_id", None)
    present = set(tokens.tolist()) | {bos}
    corrupted = tokens.clone()
    corrupted[index] = next(token for token in range(adapter.d_vocab) if token not in present)
    return corrupted


def check_prompt(model: Any, prompt: LabelledPrompt, corruption: str, *, backend: str = "auto") -> PromptCheck:
    """Component scope and head-level patching of ``log p(answer)`` on one prompt."""
    adapter = ModelAdapter(model)
    tokens = adapter.tokenize(prompt.text)
    answer = int(adapter.tokenize_fragment(prompt.answer)[0])

    def log_probability_of_answer(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.float(), dim=-1)[:, answer]

    comparison = compare_components_with_patching(
        model, tokens, corrupt(adapter, tokens, prompt, corruption), log_probability_of_answer, backend=backend
    )
    patching, scope = comparison.activation_patching, comparison.scope
    scope_cell, patching_cell = _argmax_cell(scope.heads), _argmax_cell(patching.heads_effect.abs())
    patterns = adapter.attention_patterns(tokens)  # [n_layers, n_heads, query, key]
    source, last = prompt.source_indices[0], len(tokens) - 1
    layer, head, token = scope_cell
    return PromptCheck(
        prompt=prompt,
        corruption=corruption,
        scope_top_cell=scope_cell,
        patching_top_cell=patching_cell,
        scope_top_head=_argmax_cell(scope.head_totals),
        patching_top_head=_argmax_cell(patching.heads_all_pos_effect.abs()),
        rank_correlations=comparison.rank_correlations,
        scope_rank_of_patching_cell=1 + int((scope.heads > scope.heads[patching_cell]).sum()),
        scope_cell_attention_to_source=float(patterns[layer, head, token, source]),
        patching_cell_attention_to_previous_occurrence=float(patterns[patching_cell][source - 1]),
        prediction_attention_to_scope_cell=(
            float(patterns[layer + 1, :, last, token].mean()) if layer + 1 < adapter.n_layers else math.nan
        ),
        comparison=comparison,
    )


def induction_prompts(n: int, *, seed: int = 0, max_tokens: int | None = None) -> list[LabelledPrompt]:
    """``n`` held-out induction prompts (of at most ``max_tokens`` tokens, BOS included, if given).

    Example:
        >>> from jscopes_tl.models.circuits import induction_prompts
        >>> labelled = induction_prompts(1, max_tokens=10)[0]
        >>> labelled.tokens, labelled.answer
        (['<bos>', 'cat', 'ski', 'sun', 'pig', 'bow', 'fox', 'cat', 'ski'], 'sun')
    """
    task = get_task("induction")
    if max_tokens is None:
        return task.labelled_prompts(n, seed=seed)
    shortest = 1 + task.min_length + 1  # BOS, one copy of the shortest sequence, one copied word
    if max_tokens < shortest:
        raise ValueError(f"max_tokens must be at least {shortest} (the shortest induction prompt); got {max_tokens}.")
    chosen: list[LabelledPrompt] = []
    batch = 0
    while len(chosen) < n:
        candidates = task.labelled_prompts(50, seed=1000 * seed + batch)
        chosen += [prompt for prompt in candidates if len(prompt.tokens) <= max_tokens][: n - len(chosen)]
        batch += 1
    return chosen


def induction_circuit_check(
    model: Any = None,
    *,
    n_prompts: int = 20,
    seed: int = 0,
    max_tokens: int | None = None,
    corruptions: Sequence[str] = CORRUPTIONS,
    backend: str = "auto",
) -> InductionCircuitCheck:
    """Pattern-identified heads, and component scope vs head-level patching on induction prompts.

    Args:
        model: the bundled induction model (default: ``jscopes_tl.models.load("induction")``).
        n_prompts, seed, max_tokens: which held-out prompts (see :func:`induction_prompts`).
        corruptions: which of :data:`CORRUPTIONS` to patch with.
        backend: the patching backend (see :func:`jscopes_tl.patching.component_activation_patching`).

    Example:
        >>> from jscopes_tl.models.circuits import induction_circuit_check
        >>> check = induction_circuit_check(n_prompts=2, max_tokens=12)
        >>> check.pattern_scores.induction_head, len(check.checks)         # 2 prompts x 2 corruptions
        ((0, 2), 4)
    """
    if model is None:
        from jscopes_tl import models

        model = models.load("induction")
    for corruption in corruptions:
        if corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}; got {corruption!r}.")
    prompts = induction_prompts(n_prompts, seed=seed, max_tokens=max_tokens)
    checks = [check_prompt(model, prompt, corruption, backend=backend) for prompt in prompts for corruption in corruptions]
    return InductionCircuitCheck(pattern_scores=head_pattern_scores(model), checks=checks)
