"""Token views of scope results (circuitsvis ``ColoredTokens``).

One prompt's tokens are coloured by their scores. A view shows one *column* of values, or several
behind tabs — several scopes of the same prompt (Semantic / Fisher / Temperature), several
prediction positions, or several layers — each tab its own ``ColoredTokens`` component with its
own colour bounds (circuitsvis's ``ColoredTokensMulti`` fixes its bound from the first column,
so a Fisher column of 1e-4 showed white under a Semantic bound of 5). A header says what was
computed: model, prompt, prediction position, target and each scope's settings; each tab says
which prediction it explains (top-k tokens and probabilities) and its colour range.

Colour scales: unsigned scores (norms, Fisher traces) use a sequential scale from 0 (white) to the
column's maximum; signed values (``values="gradient_x_input"``, or any negative score) use a
diverging scale centred on 0 with symmetric bounds ``±max|v|``. ``log_scale=True`` colours
``log10`` of unsigned scores over :data:`LOG_SCALE_DECADES` decades below the maximum, which suits
Fisher scores (squared quantities spanning orders of magnitude).

Tokens are shown with their whitespace visible (``·`` space, ``⏎`` newline, ``⇥`` tab, ``␍``
carriage return) and a visible border, so word-level tokens do not run together; hovering a
token shows its raw ``repr`` and exact value. circuitsvis writes token text into the page as
HTML, so tokens are HTML-escaped before they are handed over: ``<b>`` shows as ``<b>``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float

from jscopes_tl.result import ScopeResult
from jscopes_tl.views.html import Block, Component, Page, Tabs, check_list_of, check_type, text, token_text
from jscopes_tl.words import Reduction, aggregate_words

ValueField = Literal["scores", "gradient_x_input"]
LOG_SCALE_DECADES = 4
NEGATIVE_COLOR = "#d81b60"
POSITIVE_COLOR = "#1e63c8"
WHITESPACE_GLYPHS = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "␍"}


@dataclass(frozen=True)
class TokenColumns:
    """What a token view shows: one prompt's tokens (or words) and columns of values over them.

    ``word_starts``: the tokenizer's word boundaries (see :mod:`jscopes_tl.words`), None if unknown;
    ``spans``: the token range ``[start, stop)`` behind each shown unit (one token, or a word).

    Example:
        >>> from jscopes_tl.views import select_columns
        >>> select_columns(fisher_scope(model, prompt)).values.shape     # [n_columns, pos]
        torch.Size([1, 5])
    """

    str_tokens: list[str]
    values: Float[torch.Tensor, "n_columns pos"]
    labels: list[str]
    positions: list[int]  # the prediction position each column explains
    predictions: list[list[tuple[str, float]]]  # top-k (token, probability) per column
    signed: bool
    word_starts: list[bool] | None = None
    spans: list[tuple[int, int]] | None = None

    def merged_into_words(self, reduction: Reduction) -> TokenColumns:
        merged = aggregate_words(self.str_tokens, self.values, reduction, word_starts=self.word_starts)
        return replace(self, str_tokens=merged.words, values=merged.values, word_starts=None, spans=merged.spans)


def _pick(name: str, requested: int | None, available: list[int], what: str) -> list[int]:
    """Indices into ``available`` for ``requested`` (None: all)."""
    if requested is None:
        return list(range(len(available)))
    if requested not in available:
        raise ValueError(f"{name}={requested!r} is not one of the result's {what}: {available}.")
    return [available.index(requested)]


def _prompt_index(result: ScopeResult, prompt: int | None) -> int:
    count = len(result.str_tokens_per_prompt)
    if prompt is None:
        if count > 1:
            raise ValueError(f"result holds a batch of {count} prompts; choose one with prompt=i (0 <= i < {count}).")
        return 0
    if isinstance(prompt, bool) or not isinstance(prompt, int) or not 0 <= prompt < count:
        raise ValueError(f"prompt must be an int in [0, {count}); got {prompt!r}.")
    return prompt


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

    Example:
        >>> from jscopes_tl.views import select_columns
        >>> columns = select_columns(semantic_scope(model, prompt, position="all"))
        >>> columns.values.shape, columns.labels[:2], columns.positions     # [n_columns, pos]
        (torch.Size([5, 5]), ["pos 0 '<bos>'", "pos 1 'a=3'"], [0, 1, 2, 3, 4])
    """
    axes = result.axes
    prompt = _prompt_index(result, prompt)
    if values not in ("scores", "gradient_x_input"):
        raise ValueError(f"values must be 'scores' or 'gradient_x_input'; got {values!r}.")
    tensor = getattr(result, values)
    if tensor is None:
        raise ValueError(
            f"this {result.kind} result has no {values}: it is computed for single-direction scopes "
            "(Semantic, Temperature); use values='scores'."
        )
    str_tokens = result.str_tokens_per_prompt[prompt]
    length = len(str_tokens)
    full = axes.expand_score(tensor)[prompt, ..., :length]  # [n_positions, n_layers, pos]
    scored_positions = axes.expand_prediction(result.position)[prompt].tolist()
    if position is not None and position < 0:
        position += length
    position_indices = _pick("position", position, scored_positions, "prediction positions")
    layers = result.layers
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
        word_starts=result.word_starts_per_prompt[prompt],
    )


# ------------------------------------------------------------------------------------ tokens as shown
def display_token(token: str) -> str:
    """A token as circuitsvis shows it (HTML): escaped, whitespace as faint glyphs.

    A newline keeps a real ``\\n`` after its glyph, for which circuitsvis starts a new line.
    """
    parts = []
    for character in token:
        if character.isspace():
            glyph = WHITESPACE_GLYPHS.get(character, "·")
            parts.append(f"<i>{glyph}</i>" + ("\n" if character == "\n" else ""))
        else:
            parts.append(html.escape(character, quote=False))
    return "".join(parts)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _hover(columns: TokenColumns, column: int) -> dict[str, list[str]]:
    """Per token: the hover title (raw token, its index, the exact value) and the raw token."""
    spans = columns.spans or [(index, index + 1) for index in range(len(columns.str_tokens))]
    raw = [repr(token) for token in columns.str_tokens]
    titles = []
    for token, (start, stop), value in zip(raw, spans, columns.values[column].tolist()):
        where = f"token {start}" if stop - start == 1 else f"tokens {start}–{stop - 1}"
        titles.append(f"{token} ({where})\n{columns.labels[column]}: {_number(value)}")
    return {"titles": titles, "raw": raw}


# ------------------------------------------------------------------------------------ colour scales
def _log_scaled(values: Float[torch.Tensor, "n_columns pos"]) -> Float[torch.Tensor, "n_columns pos"]:
    peak = values.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    decades = torch.log10(values.clamp_min(0) / peak).nan_to_num(neginf=-LOG_SCALE_DECADES)
    return (decades + LOG_SCALE_DECADES).clamp_min(0)


def _bounds(values: Float[torch.Tensor, "n_columns pos"], signed: bool) -> tuple[list[float], list[float]]:
    """Per-column (negative, positive) colour bounds: symmetric when signed, [0, max] otherwise."""
    magnitude = (values.abs() if signed else values.clamp_min(0)).amax(dim=-1)
    magnitude = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude)).tolist()
    # circuitsvis divides by the negative bound; a tiny one keeps unsigned scales from 0 to max
    negative = [-m for m in magnitude] if signed else [-1e-7] * len(magnitude)
    return negative, magnitude


def _scale_description(columns: TokenColumns, column: int, log_scale: bool) -> str:
    peak = float(columns.values[column].abs().max() if columns.signed else columns.values[column].max())
    if columns.signed:
        return f"diverging colour scale: red −{_number(peak)} … white 0 … blue +{_number(peak)}"
    if log_scale:
        floor = peak * 10.0**-LOG_SCALE_DECADES
        return (
            f"log10 colour scale over {LOG_SCALE_DECADES} decades: "
            f"white {_number(floor)} or less … blue {_number(peak)} (the maximum)"
        )
    return f"colour scale: white 0 … blue {_number(peak)} (this column's maximum)"


def _prediction_text(columns: TokenColumns, column: int) -> str:
    position = columns.positions[column]
    top = ", ".join(f"{token_text(token)}&nbsp;({p:.3f})" for token, p in columns.predictions[column])
    after = f" (after {token_text(columns.str_tokens[position])})" if columns.spans is None else ""
    return f"prediction at position {position}{after}: {top}"


def column_blocks(columns: TokenColumns, column: int, log_scale: bool) -> list[Block]:
    """One column: its caption (prediction, colour range) and its own ``ColoredTokens``."""
    values = columns.values[column : column + 1]
    if log_scale:
        if columns.signed:
            raise ValueError("log_scale=True needs non-negative values; signed values use a linear diverging scale.")
        values = _log_scaled(values)
    negative, positive = _bounds(values, columns.signed)
    props = {
        "tokens": [display_token(token) for token in columns.str_tokens],
        "values": values[0].tolist(),
        "minValue": negative[0],
        "maxValue": positive[0],
        "negativeColor": NEGATIVE_COLOR,
        "positiveColor": POSITIVE_COLOR,
    }
    caption = (
        f"<p class='jscopes-note jscopes-caption'>{_prediction_text(columns, column)}<br>"
        f"{text(_scale_description(columns, column, log_scale))}; hover a token for its raw text and value.</p>"
    )
    return [caption, Component("ColoredTokens", props, hover=_hover(columns, column))]


def token_blocks(columns: TokenColumns, log_scale: bool = False, words: Reduction | None = None) -> list[Block]:
    """The blocks showing ``columns``: one column directly, several behind tabs (each its own scale)."""
    note: list[Block] = []
    if words is not None:
        boundary = "the tokenizer's word boundaries" if columns.word_starts is not None else "spaces and punctuation"
        columns = columns.merged_into_words(words)
        note = [f"<p class='jscopes-note'>tokens merged into words ({text(words)}), at {boundary}.</p>"]
    if columns.values.shape[0] == 1:
        return note + column_blocks(columns, 0, log_scale)
    labels = [f"{label} (log10)" if log_scale else label for label in columns.labels]
    panels = [column_blocks(columns, column, log_scale) for column in range(columns.values.shape[0])]
    return note + [Tabs(labels, panels)]


# ------------------------------------------------------------------------------------ header
def _target_text(result: ScopeResult, prompt: int) -> str:
    if result.kind != "semantic":
        return ""
    if result.target is None:
        return "a direction or function of y (given by the caller)"
    ids = result.axes.expand_prediction(result.target)[prompt]  # [n_positions, k]: k = 1, or 2 (contrast)
    ids = ids.reshape(ids.shape[0], -1)
    names = result.metadata.get("target_str_tokens")  # [batch][n_positions][k], full form
    rows = names[prompt] if names is not None else ids.tolist()
    rows = [row if isinstance(row, list) else [row] for row in rows]
    if ids.shape[-1] == 2:
        return "; ".join(sorted({f"logit difference {a!r} − {b!r}" for a, b in rows}))
    top = result.axes.expand_prediction(result.prediction.token_ids)[prompt][:, 0]
    suffix = " (the model's top-1 prediction)" if torch.equal(ids[:, 0], top) else ""
    return ", ".join(sorted({repr(row[0]) for row in rows})) + suffix


def _settings_text(result: ScopeResult, prompt: int) -> str:
    metadata = result.metadata
    parts = []
    if result.kind == "semantic":
        parts.append(f"target {_target_text(result, prompt)}")
    if result.kind == "fisher" and "rank" in metadata:
        rank = "exact (all directions)" if metadata.get("exact") else f"rank {metadata['rank']}"
        parts.append(rank)
        captured = metadata.get("captured_trace_fraction")
        if isinstance(captured, torch.Tensor) and captured.numel() == 1:
            parts.append(f"captures {float(captured):.1%} of tr F")
        if "tail_tolerance" in metadata:
            parts.append(f"tail_tolerance {metadata['tail_tolerance']:g}")
        dropped = metadata.get("dropped_trace_fraction")
        if isinstance(dropped, torch.Tensor) and dropped.numel() == 1:
            parts.append(f"truncation bound {float(dropped):.1e} of tr F")
        solver = metadata.get("eigen_solver")
        if solver:
            parts.append(f"eigen-solver {', '.join(sorted(set(solver))) if isinstance(solver, list) else solver}")
    if result.kind == "temperature":
        parts.append("reads ‖y‖ at the unembedding input")
    layers = result.layers
    parts.append(f"perturbed at layer {layers[0]}" if len(layers) == 1 else f"perturbed at layers {layers}")
    return "; ".join(parts)


def _numerics_text(metadata: dict[str, Any]) -> str:
    numerics = metadata.get("numerics") or {}
    if not numerics:
        return ""
    yes_no = {True: "yes", False: "no"}
    folded = yes_no.get(numerics.get("final_norm_folded_into_unembed"), "?")
    centred = yes_no.get(numerics.get("unembed_centred"), "?")
    perturbation = numerics.get("perturbation_hook")
    perturbation = ", ".join(perturbation) if isinstance(perturbation, list) else perturbation
    return (
        f"{numerics.get('model_family', '?')}; final norm folded into W_U: {folded}; W_U centred: {centred}; "
        f"δ added at {perturbation}; y read at {numerics.get('readout_hook', '?')}"
    )


def header_block(
    results: Sequence[ScopeResult], prompt: int | None = None, labels: Sequence[str] | None = None
) -> str:
    """A table saying what the view shows: model, prompt, positions, and each scope's settings."""
    first = results[0]
    prompt = _prompt_index(first, prompt)
    texts = first.metadata.get("text")
    prompt_text = (texts if not first.axes.prompts else texts[prompt]) if texts is not None else None
    tokens = first.str_tokens_per_prompt[prompt]
    if prompt_text is None:
        prompt_text = "".join(tokens)
    positions = sorted(
        {p for r in results for p in r.axes.expand_prediction(r.position)[prompt].flatten().tolist()}
    )
    position_text = ", ".join(f"{p} (after {token_text(tokens[p])})" for p in positions[:8])
    if len(positions) > 8:
        position_text += f", … ({len(positions)} positions)"
    rows = [
        ("model", text(first.metadata.get("model_name") or "(unnamed model)")),
        ("prompt", f"<span class='jscopes-prompt-text'>{text(prompt_text)}</span> ({len(tokens)} tokens)"),
        ("prediction position", position_text),
    ]
    labels = [r.kind.capitalize() for r in results] if labels is None else list(labels)
    for label, result in zip(labels, results):
        rows.append((f"{label} Scope" if label.lower() == result.kind else label, text(_settings_text(result, prompt))))
    numerics = _numerics_text(first.metadata)
    if numerics:
        rows.append(("numerics", text(numerics)))
    body = "".join(f"<tr><th>{text(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table class='jscopes-table jscopes-header'>{body}</table>"


# ------------------------------------------------------------------------------------ views
def _title(result: ScopeResult, values: ValueField) -> str:
    return f"{result.kind.capitalize()} Scope" + (" (gradient × input)" if values == "gradient_x_input" else "")


def token_view(
    result: ScopeResult,
    *,
    prompt: int | None = None,
    position: int | None = None,
    layer: int | None = None,
    values: ValueField = "scores",
    words: Reduction | None = None,
    log_scale: bool = False,
    header: bool = True,
) -> Page:
    """The tokens of one prompt coloured by ``result``'s scores, with the prediction explained.

    A single-position result gives one ``ColoredTokens`` view; several positions (or
    ``position="all"``) or layers give one tab each, each with its own colour scale. See
    :func:`select_columns` for ``prompt``, ``position``, ``layer`` and ``values``; ``words``
    (``"sum"`` / ``"max"``) merges tokens into words; ``log_scale`` colours log10 of the scores;
    ``header`` adds the table of model, prompt, position, target and settings.

    Example:
        >>> from jscopes_tl.views import token_view
        >>> page = token_view(fisher_scope(model, prompt), log_scale=True)
        >>> page.title, "ColoredTokens" in page.to_html()
        ('Fisher Scope', True)
    """
    check_type(result, ScopeResult, "result", "a ScopeResult (from semantic_scope, fisher_scope, temperature_scope or jacobian_scope)")
    columns = select_columns(result, prompt=prompt, position=position, layer=layer, values=values)
    title = _title(result, values)
    blocks: list[Block] = [f"<h2>{text(title)}</h2>"]
    if header:
        blocks.append(header_block([result], prompt))
    return Page(title, blocks + token_blocks(columns, log_scale, words))


def compare_view(
    results: Sequence[ScopeResult],
    labels: Sequence[str] | None = None,
    *,
    prompt: int | None = None,
    position: int | None = None,
    words: Reduction | None = None,
    log_scale: bool = False,
    header: bool = True,
) -> Page:
    """Several scopes of the same prompt and position, one tab each (each with its own colour scale).

    Example:
        >>> from jscopes_tl.views import compare_view
        >>> results = [semantic_scope(model, prompt), fisher_scope(model, prompt)]
        >>> page = compare_view(results, ["semantic", "fisher"])
        >>> page.title
        'Scopes side by side'
    """
    results = check_list_of(results, ScopeResult, "results", "ScopeResult")
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
    columns = replace(
        first,
        values=torch.cat([c.values for c in selected]),
        labels=labels,
        positions=[c.positions[0] for c in selected],
        predictions=[c.predictions[0] for c in selected],
        signed=any(c.signed for c in selected),
    )
    title = "Scopes side by side"
    blocks: list[Block] = [f"<h2>{text(title)}</h2>"]
    if header:
        blocks.append(header_block(results, prompt, labels))
    return Page(title, blocks + token_blocks(columns, log_scale, words))


def scopes_page(
    results: Sequence[ScopeResult],
    *,
    title: str = "Jacobian Scopes",
    prompt: int | None = None,
    words: Reduction | None = None,
    log_scale: bool = False,
) -> Page:
    """Every result in one page: a shared header, then every scope at every position and layer.

    Results of one position (and layer) each are shown side by side, a tab each
    (:func:`compare_view`); otherwise each result gets its own section (:func:`token_view`, a
    tab per position or layer). ``prompt`` picks one prompt of batch results.

    Example:
        >>> from jscopes_tl.views import scopes_page
        >>> results = [semantic_scope(model, prompt, position=[-2, -1]), fisher_scope(model, prompt)]
        >>> page = scopes_page(results, title="Two scopes")
        >>> page.title, len(page.blocks)
        ('Two scopes', 7)
    """
    results = check_list_of(results, ScopeResult, "results", "ScopeResult")
    if len(results) == 0:
        raise ValueError("results is empty; pass the scope results to show.")
    options: dict[str, Any] = dict(prompt=prompt, words=words, log_scale=log_scale)
    if len(results) == 1:
        return token_view(results[0], **options)
    if all(select_columns(result, prompt=prompt).values.shape[0] == 1 for result in results):
        return compare_view(results, **options)
    blocks: list[Block] = [f"<h1>{text(title)}</h1>", header_block(results, prompt)]
    for result in results:
        blocks += token_view(result, header=False, **options).blocks
    return Page(title, blocks)


def save_html(result: ScopeResult, path: str | Path, **options: Any) -> Path:
    """Write a self-contained HTML view of ``result`` (works offline); options as :func:`token_view`.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from jscopes_tl.views import save_html
        >>> out = Path(tempfile.mkdtemp()) / "semantic.html"
        >>> save_html(semantic_scope(model, prompt), out, words="sum") == out
        True
    """
    return token_view(result, **options).save_html(path)
