"""Bad input fails early with a message naming the argument, and no call, failed or not, leaves
hooks, requires_grad flags or train/eval modes changed on the user's model."""

from __future__ import annotations

import contextlib

import pytest
import torch

from jscopes_tl import (
    NonFiniteLogitsError,
    ScopeInputError,
    UnsupportedModelError,
    fisher_scope,
    semantic_scope,
    temperature_scope,
)
from jscopes_tl.adapter import ModelAdapter

from conftest import PROMPT, hook_fingerprint


@contextlib.contextmanager
def unusual_user_state(model):
    """Train mode and a mix of requires_grad flags, as a user mid-experiment might leave them."""
    parameters = list(model.parameters())
    flags = [p.requires_grad for p in parameters]
    was_training = model.training
    try:
        model.train()
        for index, parameter in enumerate(parameters):
            parameter.requires_grad_(index % 2 == 0)
        yield
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)
        model.train(was_training)


BAD_CALLS = {
    "empty prompt": (lambda m: semantic_scope(m, ""), ScopeInputError, "empty"),
    "empty prompt in batch": (lambda m: semantic_scope(m, ["a", ""]), ScopeInputError, r"inputs\[1\]"),
    "empty list": (lambda m: semantic_scope(m, []), ScopeInputError, "inputs must be"),
    "float tensor": (lambda m: semantic_scope(m, torch.zeros(3)), ScopeInputError, "integer token ids"),
    "3-d tensor": (lambda m: semantic_scope(m, torch.zeros(1, 2, 3, dtype=torch.long)), ScopeInputError, r"\[batch, pos\]"),
    "token id out of vocab": (lambda m: semantic_scope(m, torch.tensor([1, 10**6])), ScopeInputError, "outside"),
    "position too large": (lambda m: semantic_scope(m, PROMPT, position=99), ScopeInputError, "position 99 is out of range"),
    "position too negative": (lambda m: semantic_scope(m, PROMPT, position=-99), ScopeInputError, "out of range"),
    "position in list out of range": (lambda m: semantic_scope(m, ["a b c d e f", "a"], position=[0, 3]), ScopeInputError, "prompt 1"),
    "position word": (lambda m: semantic_scope(m, PROMPT, position="last"), ScopeInputError, "'all'"),
    "position float": (lambda m: semantic_scope(m, PROMPT, position=1.5), ScopeInputError, "position must be"),
    "multi-token target": (lambda m: semantic_scope(m, PROMPT, target=" liberal"), ScopeInputError, "tokenises into 4"),
    "unknown target id": (lambda m: semantic_scope(m, PROMPT, target=10**6), ScopeInputError, "not in the vocabulary"),
    "negative target id": (lambda m: semantic_scope(m, PROMPT, target=-1), ScopeInputError, "not in the vocabulary"),
    "contrast of one token": (lambda m: semantic_scope(m, PROMPT, target=(5, 5)), ScopeInputError, "itself"),
    "contrast triple": (lambda m: semantic_scope(m, PROMPT, target=(1, 2, 3)), ScopeInputError, "pair"),
    "direction of wrong size": (lambda m: semantic_scope(m, PROMPT, target=torch.ones(7)), ScopeInputError, r"\[d_model\]"),
    "callable of wrong shape": (lambda m: semantic_scope(m, PROMPT, target=lambda y: y), ScopeInputError, "one value per row"),
    "rank zero": (lambda m: fisher_scope(m, PROMPT, rank=0), ScopeInputError, "rank must be"),
    "rank above d_model": (lambda m: fisher_scope(m, PROMPT, rank=10**4), ScopeInputError, "rank must be"),
    "tail mass one": (lambda m: fisher_scope(m, PROMPT, tail_mass=1.0), ScopeInputError, "tail_mass"),
    "layer out of range": (lambda m: temperature_scope(m, PROMPT, layer=50), ScopeInputError, "layer must be"),
    "layer word": (lambda m: temperature_scope(m, PROMPT, layer="every"), ScopeInputError, "layer must be"),
    "layer repeated": (lambda m: temperature_scope(m, PROMPT, layer=[0, 0]), ScopeInputError, "twice"),
    "top_k zero": (lambda m: semantic_scope(m, PROMPT, top_k=0), ScopeInputError, "top_k"),
    "input scale zero": (lambda m: semantic_scope(m, PROMPT, input_scale=0.0), ScopeInputError, "input_scale"),
    "backward batch zero": (lambda m: semantic_scope(m, PROMPT, backward_batch=0), ScopeInputError, "backward_batch"),
    "backward batch float": (lambda m: fisher_scope(m, PROMPT, backward_batch=2.5), ScopeInputError, "backward_batch"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_a_clear_error_and_leaves_model_unchanged(model, case):
    call, error, message = BAD_CALLS[case]
    with unusual_user_state(model):
        before = hook_fingerprint(model)
        with pytest.raises(error, match=message):
            call(model)
        assert hook_fingerprint(model) == before


def test_successful_scopes_leave_model_unchanged(model):
    with unusual_user_state(model):
        before = hook_fingerprint(model)
        semantic_scope(model, [PROMPT, "The cat"], position="all")
        fisher_scope(model, PROMPT, rank=2)
        assert hook_fingerprint(model) == before
        assert all(p.grad is None for p in model.parameters())


def test_nan_logits_raise_and_leave_model_unchanged(model):
    W_U = model.W_U
    saved = W_U.detach().clone()
    before = hook_fingerprint(model)
    try:
        with torch.no_grad():
            W_U[:, 5] = float("nan")
        with pytest.raises(NonFiniteLogitsError, match="NaN or infinite for prompt 0"):
            semantic_scope(model, PROMPT)
    finally:
        with torch.no_grad():
            W_U.copy_(saved)
    assert hook_fingerprint(model) == before


def test_error_inside_a_user_callable_leaves_model_unchanged(model):
    def broken(y):
        raise KeyError("user bug")

    with unusual_user_state(model):
        before = hook_fingerprint(model)
        with pytest.raises(KeyError, match="user bug"):
            semantic_scope(model, PROMPT, target=broken)
        assert hook_fingerprint(model) == before


def test_inference_mode_is_refused(any_model):
    before = hook_fingerprint(any_model)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        semantic_scope(any_model, PROMPT)
    assert hook_fingerprint(any_model) == before


def test_no_grad_context_still_works(any_model):
    expected = semantic_scope(any_model, PROMPT).scores
    with torch.no_grad():
        assert torch.equal(semantic_scope(any_model, PROMPT).scores, expected)


def test_plain_torch_module_is_not_a_transformer_lens_model():
    with pytest.raises(UnsupportedModelError, match="HookedTransformer or TransformerBridge"):
        semantic_scope(torch.nn.Linear(3, 3), PROMPT)


def test_remote_bridge_is_refused_for_having_no_gradients():
    RemoteBridge = type("RemoteBridge", (), {"hook_dict": {}, "cfg": None})
    with pytest.raises(UnsupportedModelError, match="RemoteBridge.*gradients"):
        semantic_scope(RemoteBridge(), PROMPT)


def test_model_without_tokenizer_accepts_token_ids_but_not_text(any_model):
    tokenizer = any_model.tokenizer
    try:
        any_model.tokenizer = None
        assert semantic_scope(any_model, torch.tensor([1, 2, 3])).scores.shape == (3,)
        with pytest.raises(ScopeInputError, match="no tokenizer"):
            semantic_scope(any_model, PROMPT)
    finally:
        any_model.tokenizer = tokenizer
    assert ModelAdapter(any_model).tokenizer is tokenizer


def test_a_module_added_between_calls_is_frozen_and_in_eval_mode_during_the_next_call(model):
    """A call caches the model's module tree; registering a submodule or parameter invalidates it, so
    the next call still freezes and switches everything it runs, and restores it afterwards."""
    semantic_scope(model, PROMPT)  # caches the tree
    block = model.blocks[0]
    # A dropout (its mode matters) and a weight, registered after the first call, in train mode.
    late_module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    late_parameter = torch.nn.Parameter(torch.ones(3))
    block.add_module("late_module", late_module)
    block.register_parameter("late_parameter", late_parameter)
    seen = {}

    def look(activation, hook):
        seen["dropout training"] = late_module[1].training
        seen["module weight requires_grad"] = late_module[0].weight.requires_grad
        seen["parameter requires_grad"] = late_parameter.requires_grad

    try:
        late_module.train()
        semantic_scope(model, PROMPT, fwd_hooks=[(ModelAdapter(model).resid_pre_hook(1), look)])
        assert seen == {
            "dropout training": False, "module weight requires_grad": False, "parameter requires_grad": False,
        }
        assert late_module[1].training and late_module[0].weight.requires_grad and late_parameter.requires_grad
    finally:
        del block._modules["late_module"], block._parameters["late_parameter"]


def test_a_parameter_replaced_between_calls_is_frozen_during_the_next_call(any_model):
    semantic_scope(any_model, PROMPT)
    module, name, old = next(
        (module, name, parameter)
        for module in any_model.blocks[0].modules()
        for name, parameter in module.named_parameters(recurse=False)
    )
    replacement = torch.nn.Parameter(old.detach().clone())
    module.register_parameter(name, replacement)
    seen = []
    try:
        look = lambda activation, hook: seen.append(replacement.requires_grad)  # noqa: E731
        semantic_scope(any_model, PROMPT, fwd_hooks=[(ModelAdapter(any_model).resid_pre_hook(1), look)])
        assert seen == [False] and replacement.requires_grad
    finally:
        module.register_parameter(name, old)


def test_the_scope_hooks_leave_the_users_hooks_at_the_same_point_in_place(any_model):
    """jscopes_tl adds its own hooks straight to the hook points and removes only those: hooks the
    user attached at the same points (permanent, or in their own hooks() context) stay and run."""
    adapter = ModelAdapter(any_model)
    points = [adapter.hook_points[adapter.perturbation_hook(0)], adapter.hook_points[adapter.final_hidden_hook]]
    calls = []
    points[0].add_perma_hook(lambda activation, hook: calls.append("permanent"))
    try:
        with any_model.hooks(fwd_hooks=[(adapter.final_hidden_hook, lambda activation, hook: calls.append("context"))]):
            before = [(len(point.fwd_hooks), len(point._forward_hooks)) for point in points]
            semantic_scope(any_model, PROMPT)
            assert [(len(point.fwd_hooks), len(point._forward_hooks)) for point in points] == before
            assert calls[0] == "permanent" and "context" in calls  # (a bridge's one-row unembedding runs it again)
            with pytest.raises(KeyError, match="user bug"):
                semantic_scope(any_model, PROMPT, target=lambda y: (_ for _ in ()).throw(KeyError("user bug")))
            assert [(len(point.fwd_hooks), len(point._forward_hooks)) for point in points] == before
    finally:
        points[0].remove_hooks("fwd", including_permanent=True)


def test_a_scope_nested_in_a_prepared_model_runs_on_it_as_held_and_restores_once(any_model):
    """A scope inside another call that holds the model (faithfulness and patching hold it under
    no_grad) reuses that preparation: same scores, autograd back on for its own passes, and the
    user's flags and modes come back when the outer call ends."""
    expected = semantic_scope(any_model, PROMPT).scores
    adapter = ModelAdapter(any_model)
    with unusual_user_state(any_model):
        before = hook_fingerprint(any_model)
        with adapter.prepared_for_scopes(), torch.no_grad():
            inside = semantic_scope(any_model, PROMPT).scores
            assert not torch.is_grad_enabled()
            assert not any(parameter.requires_grad for parameter in any_model.parameters())
            assert not any_model.training
        assert hook_fingerprint(any_model) == before
    assert torch.equal(inside, expected)
