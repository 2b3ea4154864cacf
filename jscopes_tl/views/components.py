"""Heatmaps of component scopes: layer × head, and the token axis of chosen heads.

A :class:`~jscopes_tl.components.ComponentScopeResult` holds a score per (layer, head, token)
and per (layer, MLP, token). Two views read it: a *layer × head* map of each head's total over
tokens (with the MLPs as a last column), and a *head × token* map of the chosen heads' scores at
every token (default: the heads with the largest totals). Beside head-level patching
(:func:`component_comparison_view`) the same maps are laid out for the activation-patching
effect, the attribution-patching estimate and the scope, with their rank correlations.

Plain HTML tables with inline colours (white to red for the non-negative scope; blue-white-red,
symmetric about 0, for signed patching effects), each cell carrying its exact value as a tooltip,
on a :class:`~jscopes_tl.views.html.Page`: it shows in Jupyter and saves as one offline file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float

from jscopes_tl.components import ComponentScopeResult
from jscopes_tl.patching import ComponentPatchingComparison
from jscopes_tl.views.html import Page, check_type, text, token_text

HeadIndex = tuple[int, int]

_STYLE = """<style>
.jscopes-components { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
.jscopes-heat { border-collapse: collapse; font: 12px system-ui, sans-serif; }
.jscopes-heat td { width: 30px; height: 22px; border: 1px solid #e4e4e4; text-align: center; font-size: 10px; color: #333; }
.jscopes-heat th { font-weight: normal; padding: 1px 4px; white-space: pre; }
.jscopes-heat th.jscopes-token { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; max-height: 90px; }
.jscopes-heat caption { caption-side: top; font-weight: 600; text-align: left; padding-bottom: 4px; max-width: 260px; }
.jscopes-heat td.jscopes-mark { outline: 2px solid #222; outline-offset: -2px; }
</style>"""


def _colour(value: float, scale: float, signed: bool) -> str:
    strength = 0.0 if scale <= 0 or not math.isfinite(value) else min(abs(value) / scale, 1.0)
    fade = round(255 * (1 - strength))
    return f"rgb({fade},{fade},255)" if signed and value < 0 else f"rgb(255,{fade},{fade})"


def _short(value: float) -> str:
    """A cell label of at most 4–5 characters (the exact value is in the tooltip)."""
    return f"{value:.2g}" if 0.01 <= abs(value) < 1000 else f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def heatmap(
    values: Float[torch.Tensor, "rows columns"],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    *,
    caption: str,
    signed: bool = False,
    token_columns: bool = False,
    marked: set[tuple[int, int]] | None = None,
) -> str:
    """One ``[rows, columns]`` map as an HTML table; ``marked`` cells are outlined."""
    if values.ndim != 2 or tuple(values.shape) != (len(row_labels), len(column_labels)):
        raise ValueError(
            f"values of shape {tuple(values.shape)} do not match {len(row_labels)} row labels × "
            f"{len(column_labels)} column labels."
        )
    finite = values[torch.isfinite(values)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    header_class = " class='jscopes-token'" if token_columns else ""
    header = "<tr><th></th>" + "".join(f"<th{header_class}>{text(label)}</th>" for label in column_labels) + "</tr>"
    rows = [header]
    for row, (label, line) in enumerate(zip(row_labels, values.tolist())):
        cells = []
        for column, value in enumerate(line):
            mark = " class='jscopes-mark'" if marked and (row, column) in marked else ""
            shown = _short(value) if scale > 0 and abs(value) >= 0.2 * scale else ""
            cells.append(f"<td{mark} style='background:{_colour(value, scale, signed)}' title='{value:.6g}'>{shown}</td>")
        rows.append(f"<tr><th>{text(label)}</th>{''.join(cells)}</tr>")
    return f"<table class='jscopes-heat'><caption>{text(caption)}</caption>{''.join(rows)}</table>"


def _single(result: ComponentScopeResult, prompt: int | None, position: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    """One prompt's and one position's ``heads [L, H, pos]``, ``mlps [L, pos]``, tokens and position."""
    heads, mlps, positions = result.heads, result.mlps, result.position
    str_tokens = result.str_tokens
    if result.tokens.ndim == 2:
        if prompt is None:
            if heads.shape[0] > 1:
                raise ValueError(f"result holds {heads.shape[0]} prompts; choose one with prompt=i.")
            prompt = 0
        heads, mlps, positions, str_tokens = heads[prompt], mlps[prompt], positions[prompt], str_tokens[prompt]
    if heads.ndim == 4:
        scored = positions.tolist()
        if position is None:
            if len(scored) > 1:
                raise ValueError(f"result scored positions {scored}; choose one with position=p.")
            position = scored[0]
        if position < 0:
            position += len(str_tokens)
        if position not in scored:
            raise ValueError(f"position={position!r} is not one of the result's positions {scored}.")
        index = scored.index(position)
        heads, mlps = heads[index], mlps[index]
    else:
        position = int(positions)
    length = len(str_tokens)
    return heads[..., :length], mlps[..., :length], list(str_tokens), int(position)


def _totals(scores: torch.Tensor, squared: bool) -> torch.Tensor:
    return scores.sum(-1) if squared else scores.pow(2).sum(-1).sqrt()


def _chosen_heads(totals: torch.Tensor, heads: Sequence[HeadIndex] | None, k: int) -> list[HeadIndex]:
    n_layers, n_heads = totals.shape
    if heads is None:
        order = totals.flatten().argsort(descending=True)[:k].tolist()
        return [divmod(int(index), n_heads) for index in order]
    chosen = [tuple(head) for head in heads]
    bad = [head for head in chosen if len(head) != 2 or not (0 <= head[0] < n_layers and 0 <= head[1] < n_heads)]
    if bad or not chosen:
        raise ValueError(f"heads must be (layer, head) pairs within [{n_layers}, {n_heads}]; got {heads!r}.")
    return chosen  # type: ignore[return-value]


def _layer_head_labels(n_layers: int, n_heads: int) -> tuple[list[str], list[str]]:
    return [f"L{layer}" for layer in range(n_layers)], [f"H{head}" for head in range(n_heads)] + ["MLP"]


def _token_labels(str_tokens: Sequence[str], position: int) -> list[str]:
    return [f"{index} {token!r}" + (" ★" if index == position else "") for index, token in enumerate(str_tokens)]


def component_heatmaps_html(
    result: ComponentScopeResult,
    *,
    heads: Sequence[HeadIndex] | None = None,
    k: int = 3,
    prompt: int | None = None,
    position: int | None = None,
) -> str:
    """The layer × head map (MLPs as the last column) and the head × token map of ``heads``
    (default: the ``k`` heads with the largest totals), as an HTML fragment.

    Example:
        >>> from jscopes_tl.views.components import component_heatmaps_html
        >>> html = component_heatmaps_html(component_scope(model, prompt), k=2)
        >>> import re
        >>> re.findall("<caption>([^<(]*)", html)                 # layer x head map, head x token map
        ['semantic scope per head and MLP ', 'per token ']
    """
    check_type(result, ComponentScopeResult, "result", "a ComponentScopeResult (from component_scope)")
    head_scores, mlp_scores, str_tokens, position = _single(result, prompt, position)
    totals = _totals(head_scores, result.squared)
    grid = torch.cat([totals, _totals(mlp_scores, result.squared)[:, None]], dim=1)
    rows, columns = _layer_head_labels(*totals.shape)
    chosen = _chosen_heads(totals, heads, k)
    by_token = torch.stack([head_scores[layer, head] for layer, head in chosen])
    unit = "squared units" if result.squared else "norm over all tokens"
    return (
        f"{_STYLE}<div class='jscopes-components'>"
        + heatmap(grid, rows, columns, caption=f"{result.kind} scope per head and MLP ({unit})",
                  marked={(layer, head) for layer, head in chosen})
        + heatmap(by_token, [f"L{layer}H{head}" for layer, head in chosen], _token_labels(str_tokens, position),
                  caption="per token (★ the prediction position)", token_columns=True)
        + "</div>"
    )


def _prediction_note(result: ComponentScopeResult, position: int) -> str:
    if result.prediction is None:
        value = result.metadata.get("readout_value")
        hook = result.metadata.get("numerics", {}).get("readout_hook")
        shown = "" if value is None else f" = {float(value.flatten()[0]):.4g}"
        return f"<p class='jscopes-note'>readout at {text(hook)}{text(shown)} at position {position}.</p>"
    ids = result.prediction.str_tokens
    probabilities = result.prediction.probabilities.flatten().tolist()
    tokens = ids if ids and isinstance(ids[0], str) else [str(token) for token in ids]
    top = ", ".join(f"{token_text(token)}&nbsp;({p:.3f})" for token, p in zip(tokens, probabilities))
    return f"<p class='jscopes-note'>prediction at position {position}: {top}</p>"


def component_view(
    result: ComponentScopeResult,
    *,
    heads: Sequence[HeadIndex] | None = None,
    k: int = 3,
    prompt: int | None = None,
    position: int | None = None,
    title: str | None = None,
) -> Page:
    """A page with :func:`component_heatmaps_html` for one prompt and position.

    Example:
        >>> from jscopes_tl.views.components import component_view
        >>> component_view(component_scope(model, prompt), k=2).title
        'Semantic component scope'
    """
    check_type(result, ComponentScopeResult, "result", "a ComponentScopeResult (from component_scope)")
    _, _, str_tokens, chosen_position = _single(result, prompt, position)
    title = title or f"{result.kind.capitalize()} component scope"
    note = _prediction_note(result, chosen_position) if result.tokens.ndim == 1 and result.position.ndim == 0 else ""
    heading = f"<h2>{text(title)}</h2><div class='jscopes-prompt'>{text(' '.join(str_tokens))}</div>{note}"
    return Page(title, [heading, component_heatmaps_html(result, heads=heads, k=k, prompt=prompt, position=position)])


def component_comparison_view(
    comparison: ComponentPatchingComparison,
    *,
    heads: Sequence[HeadIndex] | None = None,
    k: int = 3,
    title: str = "Heads: activation patching, attribution patching, component scope",
) -> Page:
    """Head-level activation patching, attribution patching and the component scope side by side.

    Top row: layer × head (patching every position of a head at once; the scope's head totals).
    Bottom row: the token axis of ``heads`` (default: the ``k`` heads with the largest
    ``|all-position patching effect|``), with each map's largest cell outlined; ★ marks the
    prediction position.

    Example:
        >>> from jscopes_tl.views.components import component_comparison_view
        >>> comparison = compare_components_with_patching(model, prompt, "a=3 b=5 c=1 b=", ("7", "5"))
        >>> component_comparison_view(comparison, k=2).title
        'Heads: activation patching, attribution patching, component scope'
    """
    check_type(
        comparison, ComponentPatchingComparison, "comparison",
        "a ComponentPatchingComparison (from compare_components_with_patching)",
    )
    patching, estimate, scope = comparison.activation_patching, comparison.attribution_patching, comparison.scope
    n_layers, n_heads, _ = patching.heads.shape
    rows, columns = _layer_head_labels(n_layers, n_heads)
    chosen = _chosen_heads(patching.heads_all_pos_effect.abs(), heads, k)
    grids = [
        (patching.heads_all_pos_effect, "activation patching effect (head at all positions)", True),
        (estimate.heads_all_pos, "attribution patching (first-order estimate)", True),
        (scope.head_totals, f"{scope.kind} component scope (total over tokens)", False),
    ]
    token_labels = _token_labels(comparison.clean_str_tokens, comparison.position)
    by_token = [
        (patching.heads_effect, "activation patching effect per token", True),
        (estimate.heads, "attribution patching per token", True),
        (scope.heads, f"{scope.kind} component scope per token", False),
    ]

    def outlined(values: torch.Tensor) -> set[tuple[int, int]]:
        layer, head, token = (int(i) for i in torch.unravel_index(values.abs().argmax(), values.shape))
        return {(chosen.index((layer, head)), token)} if (layer, head) in chosen else set()

    top = "".join(heatmap(values, rows, columns[:n_heads], caption=caption, signed=signed) for values, caption, signed in grids)
    bottom = "".join(
        heatmap(torch.stack([values[layer, head] for layer, head in chosen]), [f"L{layer}H{head}" for layer, head in chosen],
                token_labels, caption=caption, signed=signed, token_columns=True, marked=outlined(values))
        for values, caption, signed in by_token
    )
    correlations = "".join(
        f"<tr><td>{text(name)}</td><td>{value:.3f}</td></tr>" for name, value in comparison.rank_correlations.items()
    )
    corrupted = [f"{index} {token!r}" for index, (token, clean) in
                 enumerate(zip(comparison.corrupted_str_tokens, comparison.clean_str_tokens)) if token != clean]
    heading = (
        f"<h2>{text(title)}</h2><div class='jscopes-prompt'>{text(' '.join(comparison.clean_str_tokens))}</div>"
        f"<p class='jscopes-note'>metric: {text(comparison.metric_description)} at position {comparison.position}; "
        f"clean {patching.clean_metric:.4g}, corrupted {patching.corrupted_metric:.4g} (corrupted tokens: "
        f"{text(', '.join(corrupted) or 'none')}); patching backend: {text(patching.backend)}; "
        f"scope on the {text(comparison.scope_prompt)} prompt.</p>"
    )
    table = (
        "<table class='jscopes-table'><tr><th>Spearman ρ of magnitudes</th><th>ρ</th></tr>" + correlations + "</table>"
    )
    return Page(
        title,
        [heading, f"{_STYLE}<div class='jscopes-components'>{top}</div>",
         f"<div class='jscopes-components'>{bottom}</div>", table],
    )
