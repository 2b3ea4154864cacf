"""Component scopes: which attention head, at which token — beside head-level activation patching.

On the bundled induction model (default) the demo identifies heads by TransformerLens's standard
attention-pattern scores (previous-token, induction), then compares where the component scope
puts the sensitivity of ``log p(answer)`` (one forward and one backward pass) with where
head-level activation patching finds the effect (``n_layers · n_heads · pos`` patched runs), for
two corruptions of each prompt (see :mod:`jscopes_tl.models.circuits`), and writes the side-by-side
view of the first prompt. With a language model (``--model gpt2``) it does the same on the
indirect-object prompt pair with the ``" Mary"`` − ``" John"`` logit difference.

    python demos/components.py
    python demos/components.py --prompts 20
    python demos/components.py --model gpt2
"""

from __future__ import annotations

import sys

from _common import demo_parser, prepare

from jscopes_tl.models.circuits import induction_circuit_check
from jscopes_tl.patching import compare_components_with_patching
from jscopes_tl.views.components import component_comparison_view

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def head_name(head: tuple[int, ...]) -> str:
    return f"L{head[0]}H{head[1]}"


def induction_demo(model, args) -> int:
    check = induction_circuit_check(model, n_prompts=args.prompts, backend=args.backend)
    scores = check.pattern_scores
    print(f"attention-pattern scores on {scores.n_sequences} repeated random sequences of {scores.seq_len} tokens:")
    for label, table, best in (
        ("previous-token", scores.previous_token, scores.previous_token_head),
        ("induction", scores.induction, scores.induction_head),
    ):
        rows = "; ".join(f"L{layer}: " + " ".join(f"{value:.2f}" for value in row) for layer, row in enumerate(table.tolist()))
        print(f"  {label:15s} best {head_name(best)} ({float(table[best]):.2f})   [{rows}]")
    print(f"component scope vs head-level activation patching of log p(answer), {args.prompts} prompts:")
    for corruption, summary in check.summary().items():
        print(
            f"  corruption {corruption!r}: top (head, token) cell agrees on {summary['top_cell_agreement']:.0%} "
            f"(head {summary['top_cell_head_agreement']:.0%}, token {summary['top_cell_token_agreement']:.0%}); "
            f"top head over all tokens {summary['top_head_agreement']:.0%}; mean Spearman ρ over head × token cells "
            f"{summary['mean rho heads: activation_vs_scope']:.2f} (attribution patching vs patching "
            f"{summary['mean rho heads: activation_vs_attribution']:.2f})"
        )
        for method in ("scope", "patching"):
            counts = ", ".join(f"{head_name(head)} ×{n}" for head, n in check.top_cell_counts(corruption, method).items())
            print(f"      {method:8s} top cell's head: {counts}")
        rows = [row for row in check.checks if row.corruption == corruption]
        print(
            f"      patching's top cell is the scope's #{summary['median scope rank of the patching top cell']:.0f} "
            f"cell (median); the scope's top head attends from its top token to the answer's source with "
            f"≥ {summary['min attention, scope cell to source']:.2f}, and the next layer's heads at the prediction "
            f"position to that token with ≥ {summary['min attention, prediction to scope cell']:.2f} (mean over heads); "
            f"patching's top cell to the current token's "
            f"earlier occurrence with median {sorted(r.patching_cell_attention_to_previous_occurrence for r in rows)[len(rows) // 2]:.2f}"
        )
    first = next(row for row in check.checks if row.corruption == "answer")
    path = component_comparison_view(
        first.comparison, title=f"Induction prompt, corruption 'answer' (answer {first.prompt.answer!r})"
    ).save_html(args.out / "components_induction.html")
    print(f"wrote {path}")
    return 0


def language_model_demo(model, args) -> int:
    comparison = compare_components_with_patching(model, CLEAN, CORRUPTED, (" Mary", " John"), backend=args.backend)
    print(f"metric: {comparison.metric_description}")
    print("component scope's top heads:", ", ".join(f"{head_name(h)} ({v:.3g})" for *h, v in comparison.scope.top_heads(5)))
    for name, value in comparison.rank_correlations.items():
        print(f"  Spearman ρ {name}: {value:.3f}")
    path = component_comparison_view(comparison).save_html(args.out / "components_ioi.html")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = demo_parser(__doc__.splitlines()[0], default_model="induction")
    parser.add_argument("--prompts", type=int, default=10, help="held-out induction prompts (bundled model)")
    parser.add_argument(
        "--backend", default="hooks", choices=["auto", "transformer_lens", "hooks"],
        help="activation patching through TransformerLens's functions or the same patches batched through hooks",
    )
    args = parser.parse_args(argv)
    model, bundled = prepare(args)
    if bundled and args.model != "induction":
        parser.error("of the bundled models this demo runs on 'induction'; or pass a language model (--model gpt2).")
    return induction_demo(model, args) if bundled else language_model_demo(model, args)


if __name__ == "__main__":
    sys.exit(main())
