"""Translation with the Fisher Scope: each output word draws on its aligned source word.

With a language model (``--model gpt2``, or a local Llama-3.2-1B as in the paper), the prompt is
"German: Dies ist ein Aufsatz über kausale Zuschreibung. English: This is a paper on causal
attribution"; for every English token the Fisher Scope of its prediction (how strongly each
input token moves the whole next-token distribution) is computed in one call, and the most
influential German token is printed. The paper finds influence concentrated on the aligned words.

Offline (default ``--model induction``) the bundled induction model "translates" a word sequence
into an exact copy, where the alignment is known: the prediction of each word of the copy should
draw on the same word in the first copy. The demo prints how often it does.

    python demos/translation_fisher.py
    python demos/translation_fisher.py --model gpt2
"""

from __future__ import annotations

import sys

from _common import demo_parser, prepare

from jscopes_tl import fisher_scope, models
from jscopes_tl.views import save_html

PROMPT = "German: Dies ist ein Aufsatz über kausale Zuschreibung. English: This is a paper on causal attribution"


def main(argv: list[str] | None = None) -> int:
    args = demo_parser(__doc__.splitlines()[0], default_model="induction").parse_args(argv)
    model, bundled = prepare(args)
    if bundled:
        prompt = models.get_task("induction").labelled_prompts(1, seed=5)[0]
        first_copy = list(prompt.candidate_indices)
        # Complete the second copy but for its last word, then score every prediction inside it.
        words = prompt.tokens + [prompt.tokens[i] for i in range(prompt.source_indices[0], first_copy[-1])]
        text = " ".join(words[1:])
        positions = list(range(first_copy[-1] + 1, len(words) - 1))
        source_region = first_copy
    else:
        text = PROMPT
        str_tokens = model.to_str_tokens(text)
        english = max(i for i, token in enumerate(str_tokens) if "English" in token)
        positions = list(range(english + 1, len(str_tokens) - 1))
        source_region = list(range(1, english))
    result = fisher_scope(model, text, rank=1, position=positions)  # scores [n_positions, pos]
    tokens = result.str_tokens
    aligned = 0
    print(f"prompt: {text!r}")
    for row, position in enumerate(positions):
        next_token = tokens[position + 1] if position + 1 < len(tokens) else "(next)"
        source = max(source_region, key=lambda index: float(result.scores[row, index]))
        aligned += tokens[source] == next_token
        print(f"  predicting {next_token!r:>14} at {position:3d}: most influential source token {tokens[source]!r}")
    if bundled:
        print(f"the aligned word of the first copy is the top source for {aligned}/{len(positions)} predictions")
    print(f"wrote {save_html(result, args.out / 'translation_fisher.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
