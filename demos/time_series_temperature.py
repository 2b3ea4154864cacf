"""In-context time series with the Temperature Scope (the paper's third case study).

The x-coordinate of the Lorenz system (σ = 10, ρ = 28, β = 8/3), rescaled to 2-digit integers and
written as "51,53,55,...", is given to a language model (``--model gpt2``, or Llama-3.2-1B as in
the paper); the Temperature Scope of the next-value prediction (how strongly each input moves the
model's confidence ``‖y‖``) is read on the numbers only, not the commas. The paper sees influence
spike on the latest values and on earlier points at the same phase of the oscillation
("nearest-neighbour pattern matching").

Offline (default ``--model periodic``) the bundled periodic-series model forecasts an exactly
periodic series, whose next value is known to come from the same phase one period back; the demo
prints where the Temperature Scope puts its weight, and (``--series lorenz``) also runs the Lorenz
series through it.

    python demos/time_series_temperature.py
    python demos/time_series_temperature.py --model gpt2 --series lorenz
"""

from __future__ import annotations

import sys

from _common import demo_parser, prepare

from jscopes_tl import models, temperature_scope
from jscopes_tl.views import save_html


def lorenz_x(n_values: int, *, step: float = 0.01, every: int = 10, sigma: float = 10.0,
             rho: float = 28.0, beta: float = 8 / 3) -> list[int]:
    """The Lorenz x-coordinate (RK4 from (1, 1, 1), transient dropped), rescaled to 2-digit integers."""
    def derivative(state: tuple[float, float, float]) -> tuple[float, float, float]:
        x, y, z = state
        return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

    state, xs = (1.0, 1.0, 1.0), []
    for index in range(500 + n_values * every):
        k1 = derivative(state)
        k2 = derivative(tuple(s + step / 2 * k for s, k in zip(state, k1)))
        k3 = derivative(tuple(s + step / 2 * k for s, k in zip(state, k2)))
        k4 = derivative(tuple(s + step * k for s, k in zip(state, k3)))
        state = tuple(s + step / 6 * (a + 2 * b + 2 * c + d) for s, a, b, c, d in zip(state, k1, k2, k3, k4))
        if index >= 500 and (index - 500) % every == 0:
            xs.append(state[0])
    low, high = min(xs), max(xs)
    return [round(10 + 80 * (x - low) / (high - low)) for x in xs]  # rescaled to [10, 90]


def scope_numbers(model, values: list[str], separator: str) -> list[tuple[int, str, float]]:
    """Temperature Scope of the next value, restricted to the number tokens (commas excluded)."""
    text = separator.join(values) + separator
    result = temperature_scope(model, text)
    numbers = [i for i, token in enumerate(result.str_tokens) if token.strip().isdigit()]
    ranked = sorted(numbers, key=lambda i: -float(result.scores[i]))
    return result, [(i, result.str_tokens[i], float(result.scores[i])) for i in ranked]


def main(argv: list[str] | None = None) -> int:
    parser = demo_parser(__doc__.splitlines()[0], default_model="periodic")
    parser.add_argument("--series", choices=("periodic", "lorenz"), default=None,
                        help="default: periodic for the bundled model, lorenz for a language model")
    args = parser.parse_args(argv)
    model, bundled = prepare(args)
    series = args.series or ("periodic" if bundled else "lorenz")
    separator = " , " if bundled else ","
    same_phase: tuple[int, ...] = ()
    if series == "periodic":
        prompt = models.get_task("periodic").labelled_prompts(1, seed=4)[0]
        same_phase = prompt.source_indices if bundled else ()
        values = [token for token in prompt.tokens if token.isdigit()]
        period = prompt.source_indices[0] - prompt.source_indices[1] if len(prompt.source_indices) > 1 else None
        print(f"periodic series {','.join(values)} (next: {prompt.answer}; same phase one period back at "
              f"token {prompt.source_indices[0]}, period {period and period // 2} values)")
    else:
        values = [f"{v:02d}" for v in lorenz_x(40)]
        print(f"Lorenz x series: {','.join(values)}")
    result, ranked = scope_numbers(model, values, separator)
    print("numbers ranked by Temperature Scope (index, value, score):")
    for index, value, score in ranked[:6]:
        print(f"  {index:4d} {value!r:>5} {score:.4g}{'  (same phase as the next value)' if index in same_phase else ''}")
    print(f"wrote {save_html(result, args.out / f'time_series_{series}.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
