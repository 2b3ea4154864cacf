"""Implicit bias with a contrastive Semantic Scope (the paper's first case study).

With a language model (``--model gpt2`` or a local copy of Llama-3.2-1B), score
"Tom loves Korean food. He grew up in the South and goes to Columbia. He is a" for the targets
" liberal" and " conservative" and for their logit difference: the paper finds "Columbia" most
influential for " liberal" and "South" for " conservative".

Offline (default ``--model recall``) the same question is asked of the bundled key–value recall
model, where the answer is known: which context token pushes the prediction towards the true
value rather than a distractor value? The contrast should point at the queried pair.

    python demos/political_contrast.py                 # offline, bundled model
    python demos/political_contrast.py --model gpt2    # the paper's prompt
"""

from __future__ import annotations

import sys

from _common import demo_parser, prepare, show

from jscopes_tl import models, semantic_scope
from jscopes_tl.views import save_html

PROMPT = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
TARGETS = (" liberal", " conservative")


def main(argv: list[str] | None = None) -> int:
    args = demo_parser(__doc__.splitlines()[0], default_model="recall").parse_args(argv)
    model, bundled = prepare(args)
    if bundled:
        prompt = models.get_task("recall").labelled_prompts(1, seed=11)[0]
        context_values = [prompt.tokens[i].split("=")[1] for i in prompt.candidate_indices]
        distractor = next(value for value in context_values if value != prompt.answer)
        text, targets = prompt.text, (prompt.answer, distractor)
        print(f"prompt: {text!r}; answer {prompt.answer!r} from {prompt.tokens[prompt.source_indices[0]]!r} "
              f"(index {prompt.source_indices[0]}), distractor {distractor!r}")
    else:
        text, targets = PROMPT, TARGETS
        print(f"prompt: {text!r}")
    for target in targets:
        result = semantic_scope(model, text, target=target)
        print(f"semantic scope, target {target!r}: {show(result)}")
        save_html(result, args.out / f"political_contrast_{target.strip()}.html")
    contrast = semantic_scope(model, text, target=targets)
    print(f"semantic scope, contrast {targets[0]!r} - {targets[1]!r}: {show(contrast)}")
    print(f"wrote {save_html(contrast, args.out / 'political_contrast.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
