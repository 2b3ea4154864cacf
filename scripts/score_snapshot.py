"""Every scope's numbers on the three bundled models, saved, so that a refactor can show it changed none.

    python scripts/score_snapshot.py save before.pt      # on the code before the change
    python scripts/score_snapshot.py save after.pt       # on the code after it
    python scripts/score_snapshot.py compare before.pt after.pt

``save`` runs Semantic (the default target and a contrast), Temperature and Fisher rank 2 at the
default position, at ``position="all"`` and at ``layer="all"``, a component scope and a
layer-resolved scope on one labelled prompt of each bundled model (``recall``, ``induction``,
``periodic``), on the TransformerLens generation of the interpreter that runs it, and stores every
tensor of each result (scores, gradient × input, targets, predictions) by name. ``compare``
checks that two snapshots hold the same names and bit-identical tensors (``torch.equal``: same
dtype, shape and every value), prints the count and exits 1 on the first difference.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch


def _tensors(prefix: str, result: Any) -> dict[str, torch.Tensor]:
    """Every tensor field of a result (a ScopeResult, ComponentScopeResult or LayerResolvedScope)."""
    found: dict[str, torch.Tensor] = {}
    fields = vars(result) if not hasattr(result, "__dataclass_fields__") else {
        name: getattr(result, name) for name in result.__dataclass_fields__
    }
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            found[f"{prefix}.{name}"] = value.detach().cpu().clone()
        elif hasattr(value, "__dataclass_fields__"):
            found.update(_tensors(f"{prefix}.{name}", value))
    return found


def snapshot() -> dict[str, torch.Tensor]:
    from jscopes_tl import component_scope, fisher_scope, layer_resolved_scope, models, semantic_scope, temperature_scope

    tensors: dict[str, torch.Tensor] = {}
    for name in models.BUNDLED_MODELS:
        model = models.load(name)
        prompt = models.get_task(name).labelled_prompts(1, seed=0)[0].text
        first, second = semantic_scope(model, prompt).prediction.token_ids[:2].tolist()  # the top two tokens
        runs = {
            "semantic": lambda **kw: semantic_scope(model, prompt, **kw),
            "contrast": lambda **kw: semantic_scope(model, prompt, target=(first, second), **kw),
            "temperature": lambda **kw: temperature_scope(model, prompt, **kw),
            "fisher2": lambda **kw: fisher_scope(model, prompt, rank=2, **kw),
        }
        for kind, run in runs.items():
            for setting, options in {"default": {}, "all_positions": {"position": "all"}, "all_layers": {"layer": "all"}}.items():
                tensors.update(_tensors(f"{name}.{kind}.{setting}", run(**options)))
        tensors.update(_tensors(f"{name}.component", component_scope(model, prompt)))
        tensors.update(_tensors(f"{name}.layer_resolved", layer_resolved_scope(model, prompt)))
    return tensors


def compare(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> int:
    if before.keys() != after.keys():
        print(f"different tensors: only before {sorted(before.keys() - after.keys())}, "
              f"only after {sorted(after.keys() - before.keys())}")
        return 1
    for key in sorted(before):
        a, b = before[key], after[key]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            print(f"{key}: differs ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")
            return 1
    print(f"{len(before)} tensors, all bit-identical")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("save").add_argument("path")
    comparison = commands.add_parser("compare")
    comparison.add_argument("before")
    comparison.add_argument("after")
    arguments = parser.parse_args(argv)
    if arguments.command == "save":
        tensors = snapshot()
        torch.save(tensors, arguments.path)
        print(f"{len(tensors)} tensors saved to {arguments.path}")
        return 0
    return compare(torch.load(arguments.before), torch.load(arguments.after))


if __name__ == "__main__":
    sys.exit(main())
