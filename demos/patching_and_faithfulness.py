"""Layer-resolved Jacobian Scopes next to activation patching, and the paper's faithfulness table.

Runs offline on a tiny random toy model by default (its numbers show the machinery, not
linguistics); pass ``--model gpt2`` (a hub name or a local directory) for a real model.

    python demos/patching_and_faithfulness.py --out demo_out
    python demos/patching_and_faithfulness.py --model gpt2 --out demo_out

Writes ``patching.html`` (activation patching, attribution patching and the layer-resolved scope
side by side) and ``faithfulness.html`` (AOPC and leave-one-out agreement per scorer) to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jscopes_tl.adapter import hooked_transformer_available, load_pretrained
from jscopes_tl.faithfulness import DEFAULT_SCORERS, evaluate_faithfulness
from jscopes_tl.patching import compare_with_patching
from jscopes_tl.toy import toy_model
from jscopes_tl.views.patching import faithfulness_table_html, patching_comparison_html, standalone_html

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
ANSWERS = (" Mary", " John")

# The final token of each prompt is the one predicted (the paper's LAMBADA-style protocol).
FAITHFULNESS_PROMPTS = [
    "When Mary and John went to the store, John gave a drink to Mary",
    "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a liberal",
    "The quick brown fox jumps over the lazy dog",
    "The cat sat on the mat",
    "English: This is a paper on causal attribution",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="hub name or local directory (default: an offline toy model)")
    parser.add_argument("--family", choices=["bridge", "hooked"], help="toy model family (default: what the installed TransformerLens has)")
    parser.add_argument("--kind", choices=["semantic", "fisher", "temperature"], default="semantic")
    parser.add_argument("--clean", default=CLEAN)
    parser.add_argument("--corrupted", default=CORRUPTED)
    parser.add_argument("--answers", nargs=2, default=list(ANSWERS), metavar=("CORRECT", "WRONG"))
    parser.add_argument("--ablation", choices=["zero", "pad"], default="zero")
    parser.add_argument("--out", default="patching_and_faithfulness_out", help="directory for the HTML views")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    arguments = parser.parse_args()

    if arguments.model:
        model = load_pretrained(arguments.model)
    else:
        family = arguments.family or ("hooked" if hooked_transformer_available() else "bridge")
        model = toy_model("gpt2", family=family, init_scale=0.3)
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)

    comparison = compare_with_patching(model, arguments.clean, arguments.corrupted, tuple(arguments.answers), kind=arguments.kind)
    patching = comparison.activation_patching
    print(f"metric {comparison.metric_description}: clean {patching.clean_metric:.3f}, corrupted {patching.corrupted_metric:.3f}")
    print(f"activation patching through {patching.backend}; Spearman rank correlations over layer x position cells:")
    for name, value in comparison.rank_correlations.items():
        print(f"  {name:46s} {value:+.3f}")
    (out / "patching.html").write_text(
        standalone_html("Activation patching vs attribution patching vs layer-resolved scope", patching_comparison_html(comparison)),
        encoding="utf-8",
    )

    report = evaluate_faithfulness(
        model, FAITHFULNESS_PROMPTS, DEFAULT_SCORERS, ablation=arguments.ablation, progress=not arguments.no_progress
    )
    print()
    print(report.to_dataframe(summary=True).to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    (out / "faithfulness.html").write_text(
        standalone_html("Faithfulness (AOPC, leave-one-out)", faithfulness_table_html(report), faithfulness_table_html(report, per_prompt=True)),
        encoding="utf-8",
    )
    print(f"\nwrote {out / 'patching.html'} and {out / 'faithfulness.html'}")


if __name__ == "__main__":
    main()
