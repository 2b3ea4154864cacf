"""Scope vs attention heads: which heads carry the dependence a scope measures?

A scope with ``position="all"`` scores every source token for every prediction position: a
causal ``[pos, pos]`` matrix laid out like an attention pattern. On the bundled induction model
(default) the dependence is known: each word of the repeated copy is predicted from the word
after its earlier occurrence, which is exactly what an induction head attends to. Correlating
the scope matrix with every head's attention pattern (``jscopes_tl.attention``) should single out
the second layer's induction head(s); the first layer's previous-token heads correlate less.

    python demos/scope_vs_attention_heads.py
    python demos/scope_vs_attention_heads.py --model gpt2
"""

from __future__ import annotations

import sys

from _common import demo_parser, prepare

from jscopes_tl import models, semantic_scope
from jscopes_tl.attention import attention_correlation
from jscopes_tl.views import attention_comparison_view

PROMPT = "The cat sat on the mat because the cat was tired. The cat sat on the"


def main(argv: list[str] | None = None) -> int:
    args = demo_parser(__doc__.splitlines()[0], default_model="induction").parse_args(argv)
    model, bundled = prepare(args)
    text = models.get_task("induction").labelled_prompts(1, seed=2)[0].text if bundled else PROMPT
    result = semantic_scope(model, text, position="all")  # each position's own top-1 prediction
    correlation = attention_correlation(model, result)
    print(f"prompt: {text!r}")
    print("heads whose attention pattern best matches the all-position Semantic Scope (Spearman ρ):")
    for layer, head, rho in correlation.most_similar(4):
        print(f"  L{layer}H{head}: {rho:.3f}")
    best_layer = correlation.most_similar(1)[0][0]
    path = attention_comparison_view(model, result, layer=best_layer).save_html(args.out / "scope_vs_attention_heads.html")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
