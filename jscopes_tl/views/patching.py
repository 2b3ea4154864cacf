"""Side-by-side heatmaps of patching and layer-resolved scopes, and the faithfulness table.

Plain HTML tables with inline colours: no JavaScript, so the output opens offline anywhere and
pastes into any notebook cell or report. Signed maps (patching effects) use a blue-white-red
scale symmetric about 0; scopes (non-negative) use white to red. Every cell carries its exact
value as a tooltip.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float

from jscopes_tl.faithfulness import FaithfulnessReport
from jscopes_tl.patching import PatchingComparison
from jscopes_tl.views.html import check_type

_STYLE = (
    "<style>.jscopes-heatmaps{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}"
    ".jscopes-heatmap{border-collapse:collapse;font:12px system-ui,sans-serif}"
    ".jscopes-heatmap td,.jscopes-heatmap th{border:1px solid #ddd;padding:2px 4px;text-align:center}"
    ".jscopes-heatmap th{font-weight:normal;white-space:pre}"
    ".jscopes-table{border-collapse:collapse;font:13px system-ui,sans-serif}"
    ".jscopes-table td,.jscopes-table th{border:1px solid #ddd;padding:2px 8px;text-align:right}</style>"
)


def _cell_colour(value: float, scale: float, signed: bool) -> str:
    strength = 0.0 if scale == 0 or not math.isfinite(value) else min(abs(value) / scale, 1.0)
    fade = round(255 * (1 - strength))
    if signed and value < 0:
        return f"rgb({fade},{fade},255)"
    return f"rgb(255,{fade},{fade})"


def heatmap_table(
    values: Float[torch.Tensor, "rows columns"],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    *,
    title: str,
    signed: bool,
    second_column_labels: Sequence[str] | None = None,
) -> str:
    """One ``[rows, columns]`` map as an HTML table (rows: layers; columns: tokens)."""
    if values.ndim != 2 or values.shape != (len(row_labels), len(column_labels)):
        raise ValueError(
            f"values of shape {tuple(values.shape)} do not match {len(row_labels)} row labels × "
            f"{len(column_labels)} column labels."
        )
    finite = values[torch.isfinite(values)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0

    def header(labels: Sequence[str]) -> str:
        return "<tr><th></th>" + "".join(f"<th>{html.escape(repr(label))}</th>" for label in labels) + "</tr>"

    rows = [header(column_labels)]
    if second_column_labels is not None:
        rows.append(header(second_column_labels))
    for label, row in zip(row_labels, values.tolist()):
        cells = "".join(
            f"<td style='background:{_cell_colour(value, scale, signed)}' title='{value:.6g}'>{value:.2g}</td>" for value in row
        )
        rows.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    return f"<div><h4>{html.escape(title)}</h4><table class='jscopes-heatmap'>{''.join(rows)}</table></div>"


def patching_comparison_html(comparison: PatchingComparison) -> str:
    """Activation patching effect, attribution patching and the layer-resolved scope side by side,
    with their rank correlations (an HTML fragment).

    Example:
        >>> from jscopes_tl.views import patching_comparison_html
        >>> comparison = compare_with_patching(model, prompt, "a=3 b=5 c=1 b=", ("7", "5"))
        >>> import re
        >>> re.findall("<h4>([^<(]*)", patching_comparison_html(comparison))
        ['activation patching effect ', 'attribution patching ', 'semantic scope on the clean prompt']
    """
    check_type(comparison, PatchingComparison, "comparison", "a PatchingComparison (from compare_with_patching)")
    patching = comparison.activation_patching
    differs = [a != b for a, b in zip(comparison.clean_str_tokens, comparison.corrupted_str_tokens)]
    corrupted_labels = [token if changed else "" for token, changed in zip(comparison.corrupted_str_tokens, differs)]
    common = dict(row_labels=comparison.layer_labels, column_labels=comparison.clean_str_tokens, second_column_labels=corrupted_labels)
    maps = [
        heatmap_table(patching.effect, title=f"activation patching effect ({patching.backend})", signed=True, **common),
        heatmap_table(comparison.attribution_patching, title="attribution patching (first-order estimate)", signed=True, **common),
        heatmap_table(comparison.scope, title=f"{comparison.scope_kind} scope on the {comparison.scope_prompt} prompt", signed=False, **common),
    ]
    correlations = "".join(
        f"<tr><td style='text-align:left'>{html.escape(name)}</td><td>{value:.3f}</td></tr>"
        for name, value in comparison.rank_correlations.items()
    )
    summary = (
        f"<p>metric: {html.escape(comparison.metric_description)} at position {comparison.position}; "
        f"clean {patching.clean_metric:.4g}, corrupted {patching.corrupted_metric:.4g}. "
        "Second header row: the corrupted prompt's tokens where it differs.</p>"
        "<table class='jscopes-table'><tr><th>Spearman ρ (all layer × position cells)</th><th>ρ</th></tr>"
        f"{correlations}</table>"
    )
    return f"{_STYLE}<div>{summary}<div class='jscopes-heatmaps'>{''.join(maps)}</div></div>"


def faithfulness_table_html(report: FaithfulnessReport, *, per_prompt: bool = False) -> str:
    """The faithfulness summary (mean over prompts per scorer), or every row, as an HTML table.

    Example:
        >>> from jscopes_tl.views import faithfulness_table_html
        >>> table = evaluate_faithfulness(model, [prompt], scorers=["semantic", "random"])
        >>> import re
        >>> re.findall("<th>([^<]*)", faithfulness_table_html(table))[:5]
        ['scorer', 'n_prompts', 'aopc', 'delta_5', 'delta_10']
    """
    check_type(report, FaithfulnessReport, "report", "a FaithfulnessReport (from evaluate_faithfulness)")
    rows: list[dict[str, Any]] = report.rows if per_prompt else report.summary()
    if not rows:
        return "<p>no rows</p>"
    columns = list(rows[0])

    def cell(value: Any) -> str:
        if value is None:  # a column this row's scorer does not report (a diagnostic of another scorer)
            return "<td>–</td>"
        return f"<td>{value:.4g}</td>" if isinstance(value, float) else f"<td>{html.escape(str(value))}</td>"

    head = "<tr>" + "".join(f"<th>{html.escape(column)}</th>" for column in columns) + "</tr>"
    body = "".join("<tr>" + "".join(cell(row[column]) for column in columns) + "</tr>" for row in rows)
    caption = (
        f"<p>ablation: {html.escape(report.ablation)}; fractions {list(report.fractions)}; "
        "AOPC: more negative = more faithful.</p>"
    )
    return f"{_STYLE}{caption}<table class='jscopes-table'>{head}{body}</table>"


def standalone_html(title: str, *fragments: str) -> str:
    """A complete HTML document of the given fragments (no external resources).

    Example:
        >>> from jscopes_tl.views import standalone_html
        >>> page = standalone_html("Two scopes", "<p>semantic</p>", "<p>fisher</p>")
        >>> page.startswith("<!DOCTYPE html>"), "<title>Two scopes</title>" in page
        (True, True)
    """
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h2>{html.escape(title)}</h2>\n"
        + "\n".join(fragments)
        + "\n</body></html>\n"
    )
