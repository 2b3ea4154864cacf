"""The engine perturbs any hook whose activation is [batch, pos, ...]: widths other than d_model,
per-component rows (one per attention head), several points in one pass — each equal to a
brute-force Jacobian of the unembedding input with respect to that activation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.engine import PerturbationPoint, run_scope
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.inputs import prepare_tokens, resolve_positions
from jscopes_tl.readouts import Readout

from conftest import PROMPT

HEAD_OUTPUT = "blocks.0.attn.hook_z"  # [batch, pos, head, d_head]
MLP_OUTPUT = "blocks.1.hook_mlp_out"  # [batch, pos, d_model]


def brute_force_jacobian(model: Any, tokens: torch.Tensor, hook: str, position: int) -> torch.Tensor:
    """∂y_position/∂a for the activation ``a`` at ``hook`` (replaced by a free input), [d_model, *a.shape[1:]]."""
    adapter = ModelAdapter(model)
    _, cache = model.run_with_cache(tokens[None])
    a0 = cache[hook][0].detach()

    def final_hidden(a: torch.Tensor) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}

        def replace(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            return a[None].to(activation.dtype)

        def capture(activation: torch.Tensor, hook: Any) -> None:
            store["final"] = activation

        with model.hooks(fwd_hooks=[(hook, replace), (adapter.final_hidden_hook, capture)]):
            model(tokens[None])
        return adapter.final_hidden(store["final"])[0, position]

    with torch.enable_grad():
        return torch.autograd.functional.jacobian(final_hidden, a0).double()


def fixed_direction_readout(direction: torch.Tensor):
    def build(y: torch.Tensor, logits: torch.Tensor) -> Readout:
        return Readout(direction.to(y).expand(y.shape[0], 1, -1).clone(), torch.ones(y.shape[0], 1), squared=False)

    return build


def run(model: Any, points: list[PerturbationPoint], direction: torch.Tensor, **options: Any):
    adapter = ModelAdapter(model)
    batch = prepare_tokens(adapter, PROMPT)
    positions = resolve_positions(-1, batch)
    return run_scope(adapter, batch, positions, fixed_direction_readout(direction), points=points, **options)


def test_per_head_rows_equal_brute_force_norms_over_d_head(model):
    adapter = ModelAdapter(model)
    tokens = adapter.tokenize(PROMPT)
    direction = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(0))
    output = run(model, [PerturbationPoint(HEAD_OUTPUT, component_axes=1)], direction)
    jacobian = brute_force_jacobian(model, tokens, HEAD_OUTPUT, len(tokens) - 1)  # [d, pos, head, d_head]
    expected = torch.einsum("d,dthe->hte", direction.double(), jacobian).norm(dim=-1)  # [head, pos]
    assert output.component_shapes == [(adapter.cfg.n_heads,)]
    scores = output.scores[0, 0]
    assert scores.shape == expected.shape
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_several_points_of_different_shapes_in_one_pass(model):
    adapter = ModelAdapter(model)
    tokens = adapter.tokenize(PROMPT)
    direction = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(1))
    points = [PerturbationPoint(HEAD_OUTPUT, component_axes=1), PerturbationPoint(MLP_OUTPUT)]
    output = run(model, points, direction)
    n_heads = adapter.cfg.n_heads
    assert output.scores.shape == (1, 1, n_heads + 1, len(tokens))
    head_rows = run(model, points[:1], direction).scores[0, 0]
    torch.testing.assert_close(output.scores[0, 0, :n_heads], head_rows, rtol=1e-5, atol=1e-7)
    jacobian = brute_force_jacobian(model, tokens, MLP_OUTPUT, len(tokens) - 1)  # [d, pos, d]
    expected = torch.einsum("d,dte->te", direction.double(), jacobian).norm(dim=-1)
    torch.testing.assert_close(output.scores[0, 0, n_heads].double(), expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


def test_signed_rows_are_gradient_times_activation_summed_within_each_head(any_model):
    adapter = ModelAdapter(any_model)
    tokens = adapter.tokenize(PROMPT)
    direction = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(2))
    output = run(any_model, [PerturbationPoint(HEAD_OUTPUT, component_axes=1)], direction)
    _, cache = any_model.run_with_cache(tokens[None])
    activation = cache[HEAD_OUTPUT][0].double()  # [pos, head, d_head]
    jacobian = brute_force_jacobian(any_model, tokens, HEAD_OUTPUT, len(tokens) - 1)
    gradient = torch.einsum("d,dthe->the", direction.double(), jacobian)
    expected = (gradient * activation).sum(-1).T  # [head, pos]
    torch.testing.assert_close(
        output.gradient_x_input[0, 0].double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max())
    )


def test_return_gradients_keeps_each_heads_gradient(any_model):
    adapter = ModelAdapter(any_model)
    tokens = adapter.tokenize(PROMPT)
    direction = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(3))
    output = run(any_model, [PerturbationPoint(HEAD_OUTPUT, component_axes=1)], direction, return_gradients=True)
    jacobian = brute_force_jacobian(any_model, tokens, HEAD_OUTPUT, len(tokens) - 1)
    expected = torch.einsum("d,dthe->hte", direction.double(), jacobian)  # [head, pos, d_head]
    torch.testing.assert_close(
        output.gradients[0, 0].double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max())
    )


def test_return_gradients_refuses_components_of_different_widths(any_model):
    direction = torch.ones(ModelAdapter(any_model).d_model)
    points = [PerturbationPoint(HEAD_OUTPUT, component_axes=1), PerturbationPoint(MLP_OUTPUT)]
    with pytest.raises(ScopeInputError, match="return_gradients"):
        run(any_model, points, direction, return_gradients=True)
