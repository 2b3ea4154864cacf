"""Token views of scope results (circuitsvis ``ColoredTokens`` / ``ColoredTokensMulti``).

One prompt's tokens are coloured by their scores. A view shows one *column* of values
(``ColoredTokens``) or several side by side (``ColoredTokensMulti``, one button per column): several
scopes of the same prompt (Semantic / Fisher / Temperature), several prediction positions, or
several layers. The prediction each column explains (top-k tokens and probabilities) is shown
above the tokens.

Colour scales: unsigned scores (norms, Fisher traces) use a sequential scale from 0 (white) to the
column's maximum; signed values (``values="gradient_x_input"``, or any negative score) use a
diverging scale centred on 0 with symmetric bounds ``±max|v|``. ``log_scale=True`` colours
``log10`` of unsigned scores over :data:`LOG_SCALE_DECADES` decades below the maximum, which suits
Fisher scores (squared quantities spanning orders of magnitude); hover values are then decades
above that floor.

circuitsvis writes token text into the page as HTML, so tokens are HTML-escaped before they are
handed over: ``<b>`` shows as ``<b>``, not as bold.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float

from jscopes_tl.export import layer_list, result_axes, str_tokens_per_prompt
from jscopes_tl.result import ScopeResult
from jscopes_tl.views.html import Component, Page, text, token_text
from jscopes_tl.words import Reduction, aggregate_words

ValueField = Literal["scores", "gradient_x_input"]
LOG_SCALE_DECADES = 4
NEGATIVE_COLOR = "#d81b60"
POSITIVE_COLOR = "#1e63c8"


@dataclass(frozen=True)
class TokenColumns:
    """What a token view shows: one prompt's tokens (or words) and columns of values over them."""

    str_tokens: list[str]
    values: Float[torch.Tensor, "n_columns pos"]
    labels: list[str]
    positions: list[int]  # the prediction position each column explains
    predictions: list[list[tuple[str, float]]]  # top-k (token, probability) per column
    signed: bool

    def merged_into_words(self, reduction: Reduction) -> TokenColumns:
        merged = aggregate_words(self.str_tokens, self.values, reduction)
        return TokenColumns(merged.words, merged.values, self.labels, self.positions, self.predictions, self.signed)


def _pick(name: str, requested: int | None, available: list[int], what: str) -> list[int]:
    """Indices into ``available`` for ``requested`` (None: all)."""
    if requested is None:
        return list(range(len(available)))
    if requested not in available:
        raise ValueError(f"{name}={requested!r} is not one of the result's {what}: {available}.")
    return [available.index(requested)]


def select_columns(
    result: ScopeResult,
    *,
    prompt: int | None = None,
    position: int | None = None,
    layer: int | None = None,
    values: ValueField = "scores",
) -> TokenColumns:
    """The columns a token view of ``result`` shows, after choosing a prompt, position and layer.

    Args:
        prompt: index of the prompt in a batch result (required when there are several).
        position: a prediction position the result scored (negative counts from the prompt's end);
            default: all of them, one column each.
        layer: a perturbation layer the result scored; default: all of them.
        values: ``"scores"`` or the signed ``"gradient_x_input"``.

    At most one of positions and layers may be left with several entries: they become the columns.
    """
    axes = result_axes(result)
    prompts = str_tokens_per_prompt(result)
    if prompt is None:
        if len(prompts) > 1:
            raise ValueError(
                f"result holds a batch of {len(prompts)} prompts; choose one with prompt=i "
                f"(0 <= i < {len(prompts)})."
            )
        prompt = 0
    if not isinstance(prompt, int) or not 0 <= prompt < len(prompts):
        raise ValueError(f"prompt must be an int in [0, {len(prompts)}); got {prompt!r}.")
    if values not in ("scores", "gradient_x_input"):
        raise ValueError(f"values must be 'scores' or 'gradient_x_input'; got {values!r}.")
    tensor = getattr(result, values)
    if tensor is None:
        raise ValueError(
            f"this {result.kind} result has no {values}: it is computed for single-direction scopes "
            "(Semantic, Temperature); use values='scores'."
        )
    str_tokens = prompts[prompt]
    length = len(str_tokens)
    full = axes.expand_score(tensor)[prompt, ..., :length]  # [n_positions, n_layers, pos]
    scored_positions = axes.expand_prediction(result.position)[prompt].tolist()
    if position is not None and position < 0:
        position += length
    position_indices = _pick("position", position, scored_positions, "prediction positions")
    layers = layer_list(result)
    layer_indices = _pick("layer", layer, layers, "layers")
    if len(position_indices) > 1 and len(layer_indices) > 1:
        raise ValueError(
            f"result has {len(position_indices)} positions and {len(layer_indices)} layers; a token view "
            "shows one of them side by side: choose position=... or layer=...."
        )
    # An internal readout (readout_hook=) has no next-token prediction: its columns show none.
    predicted = None if result.prediction is None else axes.expand_nested(result.prediction.str_tokens)[prompt]
    probabilities = None if result.prediction is None else axes.expand_prediction(result.prediction.probabilities)[prompt]
    columns, labels, positions, predictions = [], [], [], []
    for position_index in position_indices:
        for layer_index in layer_indices:
            columns.append(full[position_index, layer_index])
            absolute = scored_positions[position_index]
            label = f"{result.kind.capitalize()}"
            if len(position_indices) > 1:
                label = f"pos {absolute} {str_tokens[absolute]!r}"
            elif len(layer_indices) > 1:
                label = f"layer {layers[layer_index]}"
            labels.append(label)
            positions.append(absolute)
            top = [] if predicted is None else zip(predicted[position_index], probabilities[position_index].tolist())
            predictions.append(list(top))
    stacked = torch.stack(columns).float()
    return TokenColumns(
        str_tokens=list(str_tokens),
        values=stacked,
        labels=labels,
        positions=positions,
        predictions=predictions,
        signed=values == "gradient_x_input" or bool((stacked < 0).any()),
    )


def _log_scaled(values: Float[torch.Tensor, "n_columns pos"]) -> Float[torch.Tensor, "n_columns pos"]:
    peak = values.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    decades = torch.log10(values.clamp_min(0) / peak).nan_to_num(neginf=-LOG_SCALE_DECADES)
    return (decades + LOG_SCALE_DECADES).clamp_min(0)


def _bounds(values: Float[torch.Tensor, "n_columns pos"], signed: bool) -> tuple[list[float], list[float]]:
    """Per-column (negative, positive) colour bounds: symmetric when signed, [0, max] otherwise."""
    magnitude = (values.abs() if signed else values.clamp_min(0)).amax(dim=-1)
    magnitude = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude)).tolist()
    negative = [-m for m in magnitude] if signed else [-1e-7] * len(magnitude)
    return negative, magnitude


def _prediction_table(columns: TokenColumns) -> str:
    rows = []
    for label, position, top in zip(columns.labels, columns.positions, columns.predictions):
        predicted = ", ".join(f"{token_text(token)}&nbsp;({probability:.3f})" for token, probability in top)
        rows.append(f"<tr><td>{text(label)}</td><td>{position}</td><td>{predicted}</td></tr>")
    return (
        "<table class='jscopes-table jscopes-prediction'><tr><th>view</th><th>position</th>"
        "<th>prediction (probability)</th></tr>" + "".join(rows) + "</table>"
    )


def columns_component(columns: TokenColumns, log_scale: bool = False) -> Component:
    """``ColoredTokens`` for one column, ``ColoredTokensMulti`` for several."""
    values = columns.values
    if log_scale:
        if columns.signed:
            raise ValueError("log_scale=True needs non-negative values; signed values use a linear diverging scale.")
        values = _log_scaled(values)
    tokens = [html.escape(token, quote=False) for token in columns.str_tokens]
    negative, positive = _bounds(values, columns.signed)
    colours = {"negativeColor": NEGATIVE_COLOR, "positiveColor": POSITIVE_COLOR}
    if values.shape[0] == 1:
        props = {"tokens": tokens, "values": values[0].tolist(), "minValue": negative[0], "maxValue": positive[0]}
        return Component("ColoredTokens", dict(props, **colours))
    labels = [f"{label} (log10)" if log_scale else label for label in columns.labels]
    return Component(
        "ColoredTokensMulti",
        {
            "tokens": tokens,
            "values": values.T.tolist(),
            "labels": labels,
            "positiveBounds": positive,
            "negativeBounds": negative,
        },
    )


def _scale_note(columns: TokenColumns, log_scale: bool) -> str:
    if columns.signed:
        scale = "diverging colour scale centred on 0 (red negative, blue positive)"
    elif log_scale:
        scale = f"log10 colour scale over {LOG_SCALE_DECADES} decades below each column's maximum"
    else:
        scale = "sequential colour scale from 0 to each column's maximum"
    return f"<p class='jscopes-note'>{text(scale)}; hover a token for its value.</p>"


def columns_page(columns: TokenColumns, title: str, log_scale: bool = False, words: Reduction | None = None) -> Page:
    """A page (or a section of one) showing ``columns`` with their predictions."""
    if words is not None:
        columns = columns.merged_into_words(words)
    heading = f"<h2>{text(title)}</h2>" + _prediction_table(columns) + _scale_note(columns, log_scale)
    if words is not None:
        heading += f"<p class='jscopes-note'>sub-word tokens merged into words ({text(words)}).</p>"
    return Page(title, [heading, columns_component(columns, log_scale)])


def token_view(
    result: ScopeResult,
    *,
    prompt: int | None = None,
    position: int | None = None,
    layer: int | None = None,
    values: ValueField = "scores",
    words: Reduction | None = None,
    log_scale: bool = False,
) -> Page:
    """The tokens of one prompt coloured by ``result``'s scores, with the prediction explained.

    A single-position result gives one ``ColoredTokens`` view; several positions (or
    ``position="all"``) or layers give one ``ColoredTokensMulti`` column each. See
    :func:`select_columns` for ``prompt``, ``position``, ``layer`` and ``values``; ``words``
    (``"sum"`` / ``"max"``) merges sub-word tokens; ``log_scale`` colours log10 of the scores.

    Example:
        >>> token_view(fisher_scope(model, "The cat sat on the"), log_scale=True).save_html("fisher.html")
    """
    columns = select_columns(result, prompt=prompt, position=position, layer=layer, values=values)
    title = f"{result.kind.capitalize()} Scope" + (" (gradient × input)" if values == "gradient_x_input" else "")
    return columns_page(columns, title, log_scale, words)


def compare_view(
    results: Sequence[ScopeResult],
    labels: Sequence[str] | None = None,
    *,
    prompt: int | None = None,
    position: int | None = None,
    words: Reduction | None = None,
    log_scale: bool = False,
) -> Page:
    """Several scopes of the same prompt and position side by side (``ColoredTokensMulti``).

    Each column has its own colour bounds, since the scopes' units differ.

    Example:
        >>> compare_view([semantic_scope(model, text), fisher_scope(model, text), temperature_scope(model, text)])
    """
    if len(results) == 0:
        raise ValueError("results is empty; pass the scope results to compare.")
    labels = [r.kind.capitalize() for r in results] if labels is None else list(labels)
    if len(labels) != len(results):
        raise ValueError(f"labels has {len(labels)} entries but results has {len(results)}; give one label per result.")
    selected = [select_columns(r, prompt=prompt, position=position) for r in results]
    for label, columns in zip(labels, selected):
        if columns.values.shape[0] != 1:
            raise ValueError(
                f"result {label!r} has {columns.values.shape[0]} positions or layers; choose one with "
                "position=... so that each result gives one column."
            )
        if columns.str_tokens != selected[0].str_tokens:
            raise ValueError(f"result {label!r} scores different tokens from {labels[0]!r}; compare results of one prompt.")
    first = selected[0]
    columns = TokenColumns(
        str_tokens=first.str_tokens,
        values=torch.cat([c.values for c in selected]),
        labels=labels,
        positions=[c.positions[0] for c in selected],
        predictions=[c.predictions[0] for c in selected],
        signed=any(c.signed for c in selected),
    )
    return columns_page(columns, "Scopes side by side", log_scale, words)


def save_html(result: ScopeResult, path: str | Path, **options: object) -> Path:
    """Write a self-contained HTML view of ``result`` (works offline); options as :func:`token_view`."""
    return token_view(result, **options).save_html(path)
