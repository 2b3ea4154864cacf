"""Scopes under interventions: fwd_hooks=[(hook_name, fn), ...] run during the scope's forward pass,
so the scope of a head-ablated model equals the scope of a copy whose W_O rows for that head are
zero; the user's hooks are gone afterwards, and hooks attached beforehand still fire and stay."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import ScopeInputError, fisher_scope, semantic_scope
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.components import component_scope

from conftest import MODEL_SPECS, PROMPT, build, hook_fingerprint
from hook_oracle import fresh_model, jacobian, zero_head_output_weights
from model_state import ModelState

LAYER, HEAD = 0, 1
CONTRAST = (11, 42)


def ablate_head(activation: torch.Tensor, hook) -> torch.Tensor:
    activation = activation.clone()
    activation[:, :, HEAD] = 0
    return activation


@pytest.mark.parametrize("name", [name for name, _ in MODEL_SPECS])
def test_head_ablation_hook_equals_zeroed_output_weights_on_a_copy(name):
    model, edited = build(name), fresh_model(name)
    zero_head_output_weights(edited, LAYER, HEAD)
    hooks = [(f"blocks.{LAYER}.attn.hook_z", ablate_head)]
    with torch.no_grad():
        tokens = ModelAdapter(model).tokenize(PROMPT)[None]
        torch.testing.assert_close(model.run_with_hooks(tokens, fwd_hooks=hooks), edited(tokens), rtol=1e-5, atol=1e-5)
    pairs = [
        (semantic_scope(model, PROMPT, target=CONTRAST, fwd_hooks=hooks), semantic_scope(edited, PROMPT, target=CONTRAST)),
        (fisher_scope(model, PROMPT, rank=2, fwd_hooks=hooks), fisher_scope(edited, PROMPT, rank=2)),
    ]
    for under_hook, of_edited in pairs:
        torch.testing.assert_close(under_hook.scores, of_edited.scores, rtol=1e-4, atol=1e-6)
    components = component_scope(model, PROMPT, target=CONTRAST, fwd_hooks=hooks)
    expected = component_scope(edited, PROMPT, target=CONTRAST)
    torch.testing.assert_close(components.heads, expected.heads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(components.mlps, expected.mlps, rtol=1e-4, atol=1e-6)
    # The ablation acts on the perturbed head output, as the zeroed weights do: that head's row is 0.
    assert torch.all(components.heads[LAYER, HEAD] == 0)
    assert components.metadata["fwd_hooks"] == [f"blocks.{LAYER}.attn.hook_z"]


def test_activation_patched_in_equals_brute_force_through_the_patched_model(any_model):
    adapter = ModelAdapter(any_model)
    tokens = adapter.tokenize(PROMPT)
    other = adapter.tokenize("The cat sat on the mat and the dog")
    _, cache = any_model.run_with_cache(other[None])
    patched = adapter.resid_pre_hook(1)

    def patch_position_3(activation: torch.Tensor, hook) -> torch.Tensor:
        activation = activation.clone()
        activation[:, 3] = cache[patched][:, 3]
        return activation

    hooks = [(patched, patch_position_3)]
    J, y, _ = jacobian(any_model, tokens, adapter.resid_pre_hook(0), len(tokens) - 1, fwd_hooks=hooks)
    direction = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(0))
    expected = torch.einsum("d,dte->te", direction.double(), J).norm(dim=-1)
    result = semantic_scope(any_model, PROMPT, target=direction, fwd_hooks=hooks)
    torch.testing.assert_close(result.scores.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    plain = semantic_scope(any_model, PROMPT, target=direction)
    assert not torch.allclose(result.scores, plain.scores)


def test_user_hooks_are_removed_and_hooks_attached_before_still_fire_and_stay(model):
    adapter = ModelAdapter(model)
    fired: list[str] = []
    attached = adapter.resid_pre_hook(1)
    model.add_hook(attached, lambda activation, hook: fired.append("attached"))
    try:
        with_attached = hook_fingerprint(model)

        def passing(activation, hook):
            fired.append("passed")

        semantic_scope(model, PROMPT, fwd_hooks=[(attached, passing)])
        assert fired == ["attached", "passed"]  # the user's own hook first, as attached
        assert hook_fingerprint(model) == with_attached

        def failing(activation, hook):
            raise ArithmeticError("user hook failed")

        with pytest.raises(ArithmeticError, match="user hook failed"):
            component_scope(model, PROMPT, fwd_hooks=[(attached, failing)])
        assert hook_fingerprint(model) == with_attached
        fired.clear()
        with torch.no_grad():
            model(adapter.tokenize(PROMPT)[None])
        assert fired == ["attached"]
    finally:
        model.reset_hooks()
    assert len(model.hook_dict[attached].fwd_hooks) == 0


def test_a_reading_hook_given_by_name_filter_changes_nothing(any_model):
    seen: list[tuple[int, ...]] = []
    name = ModelAdapter(any_model).resid_pre_hook(1)

    def is_layer_1_input(hook_name: str) -> bool:
        return hook_name == name

    hooks = [(is_layer_1_input, lambda activation, hook: seen.append(tuple(activation.shape)))]
    result = semantic_scope(any_model, PROMPT, fwd_hooks=hooks)
    torch.testing.assert_close(result.scores, semantic_scope(any_model, PROMPT).scores)
    assert len(seen) == 1 and result.metadata["fwd_hooks"] == ["is_layer_1_input"]


@pytest.mark.parametrize(
    "fwd_hooks, message",
    [
        ("blocks.0.hook_resid_pre", "list of"),
        ([("blocks.0.nope", ablate_head)], "not a hook point"),
        ([("blocks.0.attn.hook_z",)], r"fwd_hooks\[0\]"),
        ([("blocks.0.attn.hook_z", "not callable")], r"fwd_hooks\[0\]"),
        ([(3, ablate_head)], "hook name or a name filter"),
    ],
)
def test_bad_fwd_hooks_raise_naming_the_entry(any_model, fwd_hooks, message):
    before = hook_fingerprint(any_model)
    with pytest.raises(ScopeInputError, match=message):
        semantic_scope(any_model, PROMPT, fwd_hooks=fwd_hooks)
    assert hook_fingerprint(any_model) == before


BAD_HOOK_FUNCTIONS = {
    "detaching the perturbed activation": (lambda a, hook: a.detach(), r"fwd_hooks\[0\] \('blocks.1.hook_resid_pre'\) returned a tensor detached from its input: the perturbation no longer reaches the readout"),
    "returning fewer positions": (lambda a, hook: a[:, :-1], r"returned a tensor of shape \(1, 16, 32\) where the activation is \(1, 17, 32\)"),
    "returning a wider tensor": (lambda a, hook: torch.cat([a, a], -1), r"returned a tensor of shape \(1, 17, 64\) where the activation is \(1, 17, 32\)"),
    "returning a number": (lambda a, hook: 3, r"returned int; a hook returns the activation"),
}


@pytest.mark.parametrize("case", list(BAD_HOOK_FUNCTIONS))
def test_a_hook_function_that_breaks_the_activation_is_named_and_the_model_left_as_found(model, case):
    function, message = BAD_HOOK_FUNCTIONS[case]
    before = ModelState.capture(model)
    for scope in (semantic_scope, component_scope):
        with pytest.raises(ScopeInputError, match=message):
            scope(model, PROMPT, fwd_hooks=[("blocks.1.hook_resid_pre", function)])
        before.assert_unchanged(model, f"{scope.__name__} with a hook {case}")


def test_a_hook_given_by_name_filter_is_named_by_the_hook_it_ran_at(any_model):
    residual = ModelAdapter(any_model).resid_pre_hook(1)  # every path from the embeddings goes through it
    ran_at: list[str] = []

    def detach(activation: torch.Tensor, hook) -> torch.Tensor:
        ran_at.append(hook.name)  # a bridge's HookPoint is named canonically, whatever alias matched
        return activation.detach()

    with pytest.raises(ScopeInputError, match=r"fwd_hooks\[0\] at '(.+)' returned a tensor detached") as raised:
        semantic_scope(any_model, PROMPT, fwd_hooks=[(lambda name: name == residual, detach)])
    assert raised.match(rf"at '{ran_at[0]}'")


@pytest.mark.parametrize("name", [name for name, _ in MODEL_SPECS])
def test_a_hook_returning_a_constant_where_the_perturbation_still_reaches_the_readout_is_an_ablation(name):
    # Zero-ablating every head of a layer by returning a new tensor (detached from the activation) is
    # a legitimate intervention: the residual stream still carries the perturbation past it.
    model, edited = build(name), fresh_model(name)
    for head in range(model.cfg.n_heads):
        zero_head_output_weights(edited, LAYER, head)
    hooks = [(f"blocks.{LAYER}.attn.hook_z", lambda z, hook: torch.zeros_like(z))]
    under_hook = semantic_scope(model, PROMPT, target=CONTRAST, fwd_hooks=hooks)
    torch.testing.assert_close(under_hook.scores, semantic_scope(edited, PROMPT, target=CONTRAST).scores, rtol=1e-4, atol=1e-6)


def test_a_layer_whose_perturbation_a_detaching_hook_cuts_off_is_named(any_model):
    adapter = ModelAdapter(any_model)
    hooks = [(adapter.resid_pre_hook(1), lambda a, hook: a.detach().clone())]
    with pytest.raises(ScopeInputError, match=r"fwd_hooks\[0\] .* returned a tensor detached from its input: the perturbation no longer reaches the readout"):
        semantic_scope(any_model, PROMPT, layer=[0, 2], fwd_hooks=hooks)
