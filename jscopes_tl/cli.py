"""Command line: ``jscopes scope "TEXT" --model NAME --kind semantic --out view.html``.

Exit codes: 0 success, 2 bad arguments, 1 runtime failure. Errors go to stderr; results to
stdout or the files named.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from jscopes_tl.adapter import ModelLoadError, hooked_transformer_available, load_pretrained
from jscopes_tl.errors import ScopeInputError, UnsupportedModelError
from jscopes_tl.scopes import fisher_scope, semantic_scope, temperature_scope

TOY_MODELS = {"toy-gpt2": "gpt2", "toy-llama": "llama", "toy-gemma2": "gemma2"}
KINDS = ("semantic", "fisher", "temperature")


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


def load_model(name: str) -> Any:
    """A toy model name (``toy-gpt2``, ``toy-llama``, ``toy-gemma2``), a hub name or a local path."""
    if name in TOY_MODELS:
        from jscopes_tl.toy import toy_model

        family = "hooked" if hooked_transformer_available() else "bridge"
        return toy_model(TOY_MODELS[name], family=family, init_scale=0.3)
    return load_pretrained(name)


def _position(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--position must be an int or 'all'; got {text!r}") from None


def _token(text: str) -> int | str:
    """A target given as ``id:123`` is a token id; anything else is token text."""
    if text.startswith("id:"):
        try:
            return int(text[3:])
        except ValueError:
            raise argparse.ArgumentTypeError(f"a token id is written id:N; got {text!r}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jscopes", description="Jacobian Scopes for TransformerLens models.")
    commands = parser.add_subparsers(dest="command", required=True)
    scope = commands.add_parser("scope", help="score every token of a prompt for one prediction")
    scope.add_argument("text", help="the prompt")
    scope.add_argument("--model", default="toy-gpt2", help="toy-gpt2 | toy-llama | toy-gemma2 | hub name | local dir")
    scope.add_argument("--kind", choices=(*KINDS, "all"), default="semantic")
    scope.add_argument("--target", type=_token, help="target token text (e.g. ' Paris') or id:N; default: top-1")
    scope.add_argument("--contrast", type=_token, help="second token: score the logit difference target - contrast")
    scope.add_argument("--position", type=_position, default=-1, help="prediction position (int) or 'all'")
    scope.add_argument("--rank", type=int, default=1, help="Fisher rank (0 for exact)")
    scope.add_argument("--out", help="write an offline HTML view here")
    scope.add_argument("--json", dest="json_path", help="write scores as JSON here")
    return parser


def run_scope_command(args: argparse.Namespace) -> int:
    if args.contrast is not None and args.target is None:
        raise UsageError("--contrast needs --target (the token the difference is taken from)")
    if args.rank < 0:
        raise UsageError(f"--rank must be >= 1, or 0 for exact; got {args.rank}")
    model = load_model(args.model)
    target = (args.target, args.contrast) if args.contrast is not None else args.target
    kinds = KINDS if args.kind == "all" else (args.kind,)
    results = []
    for kind in kinds:
        if kind == "semantic":
            results.append(semantic_scope(model, args.text, target=target, position=args.position))
        elif kind == "fisher":
            results.append(fisher_scope(model, args.text, rank=args.rank or None, position=args.position))
        else:
            results.append(temperature_scope(model, args.text, position=args.position))
    for result in results:
        print(f"{result.kind}:")
        if result.scores.ndim == 1:
            for index, token, score in result.top_tokens(5):
                print(f"  {index:4d} {token!r:>16} {score:.4g}")
        else:
            print(f"  scores of shape {tuple(result.scores.shape)}")
    if args.out:
        from jscopes_tl.views import save_html

        print(f"wrote {save_html(results[0], args.out)}")
    if args.json_path:
        payload = [
            {"kind": r.kind, "tokens": r.str_tokens, "position": r.position.tolist(), "scores": r.scores.tolist()}
            for r in results
        ]
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        print(f"wrote {args.json_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return run_scope_command(args)
    except (UsageError, ScopeInputError) as error:
        print(f"jscopes: error: {error}", file=sys.stderr)
        return 2
    except (ModelLoadError, UnsupportedModelError, RuntimeError, OSError) as error:
        print(f"jscopes: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
