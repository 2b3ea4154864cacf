"""Load the fake hub's "gpt2" every way the installed TransformerLens offers and run every scope.

Run by ``tests/test_load_paths.py`` in a fresh process whose environment points the hub clients at
the fake cache (``tests/fake_hub.py``)::

    python tests/load_paths_worker.py OUT.pt SAVED_DIRECTORY

Each load path is the user's own call, unpatched. Per path, ``OUT.pt`` holds the logits, the scored
token ids, every scope's scores, the warnings each scope gave, its numerics, and whether the model
was left exactly as it was found (:class:`model_state.ModelState`). The float64 oracle is computed
by the test process, on the Hugging Face model, not here.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_state import ModelState  # noqa: E402

from jscopes_tl import fisher_scope, semantic_scope, temperature_scope  # noqa: E402
from jscopes_tl.adapter import hooked_transformer_available, load_pretrained  # noqa: E402

PROMPT = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
CONTRAST = (" liberal", " conservative")


def loaders(saved: str) -> dict[str, Callable[[], Any]]:
    """The documented load paths (docs/getting-started.md) for the installed TransformerLens generation."""
    paths: dict[str, Callable[[], Any]] = {}
    if hooked_transformer_available():
        from transformer_lens import HookedTransformer

        paths["HookedTransformer.from_pretrained_no_processing"] = lambda: HookedTransformer.from_pretrained_no_processing("gpt2")
        paths["HookedTransformer.from_pretrained"] = lambda: HookedTransformer.from_pretrained("gpt2")
    else:
        from transformer_lens.model_bridge import TransformerBridge

        def compatible() -> Any:
            bridge = TransformerBridge.boot_transformers("gpt2")
            bridge.enable_compatibility_mode()
            return bridge

        paths["TransformerBridge.boot_transformers"] = lambda: TransformerBridge.boot_transformers("gpt2")
        paths["TransformerBridge.boot_transformers + enable_compatibility_mode"] = compatible
    paths["load_pretrained(directory)"] = lambda: load_pretrained(saved)
    paths["load_pretrained(hub name)"] = lambda: load_pretrained("gpt2")
    return paths


def scopes(model: Any) -> dict[str, Any]:
    scores: dict[str, Any] = {}
    caught_by_scope: dict[str, list[str]] = {}
    calls = {
        "semantic": lambda: semantic_scope(model, PROMPT),
        "contrast": lambda: semantic_scope(model, PROMPT, target=CONTRAST),
        "fisher-1": lambda: fisher_scope(model, PROMPT, rank=1, tail_tolerance=0.0),
        "fisher-exact": lambda: fisher_scope(model, PROMPT, rank=None, tail_tolerance=0.0),
        "temperature": lambda: temperature_scope(model, PROMPT),
    }
    results = {}
    for name, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[name] = call()
        scores[name] = results[name].scores
        caught_by_scope[name] = [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]
    return dict(
        scores=scores, warnings=caught_by_scope, tokens=results["semantic"].tokens,
        semantic_target=int(results["semantic"].target), contrast_target=results["contrast"].target.tolist(),
        numerics=results["semantic"].metadata["numerics"],
    )


def main(out: str, saved: str) -> None:
    records: dict[str, Any] = {}
    for path, load in loaders(saved).items():
        start = time.perf_counter()
        model = load()
        seconds = time.perf_counter() - start
        tokens = model.to_tokens(PROMPT)
        with torch.no_grad():
            logits = model(tokens)[0]  # also a bridge's first forward pass, which wires some hooks
        state = ModelState.capture(model)
        sizes = {name: int(getattr(model.cfg, name)) for name in ("n_layers", "d_model", "d_vocab")}
        record = dict(cls=type(model).__name__, load_seconds=seconds, sizes=sizes, to_tokens=tokens[0], logits=logits, **scopes(model))
        try:
            state.assert_unchanged(model, "the scopes")
            record["left_clean"] = ""
        except AssertionError as error:
            record["left_clean"] = str(error)
        records[path] = record
    torch.save(records, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
