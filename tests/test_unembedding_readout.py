"""Readout directions come from the model's own unembedding: the adapter reproduces the model's
logits from the captured hidden state, and logit soft-capping (Gemma 2) changes the directions
exactly as the derivative of ``cap · tanh(z / cap)`` says."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import fisher_scope, semantic_scope
from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available

from conftest import PROMPT, brute_force_jacobians


def captured_final_hidden(model, tokens):
    adapter = ModelAdapter(model)
    store = {}

    def capture(activation, hook):
        store["final"] = activation

    with model.hooks(fwd_hooks=[(adapter.final_hidden_hook, capture)]):
        logits = model(tokens[None])
    return adapter.final_hidden(store["final"])[0].detach(), logits[0].detach()


def test_adapter_logits_reproduce_the_models_forward(model):
    adapter = ModelAdapter(model)
    y, logits = captured_final_hidden(model, adapter.tokenize(PROMPT))
    torch.testing.assert_close(adapter.logits(y), logits, rtol=1e-5, atol=1e-5)


def test_unembedding_jacobian_is_slope_times_W_U(model):
    adapter = ModelAdapter(model)
    y, _ = captured_final_hidden(model, adapter.tokenize(PROMPT))
    jacobian = torch.autograd.functional.jacobian(adapter.logits, y[-1])  # [d_vocab, d_model]
    cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0
    pre = y[-1] @ model.W_U.detach() + model.b_U.detach()
    slope = 1 - torch.tanh(pre / cap) ** 2 if cap > 0 else torch.ones_like(pre)
    torch.testing.assert_close(jacobian, slope[:, None] * model.W_U.detach().T, rtol=1e-4, atol=1e-6)


def _softcap_slope(model, y):
    cap = float(model.cfg.output_logits_soft_cap)
    pre = y.float() @ model.W_U.detach() + model.b_U.detach()
    return (1 - torch.tanh(pre / cap) ** 2).double()


def test_semantic_scope_honours_logit_softcap(softcapped_model):
    model = softcapped_model
    tokens = ModelAdapter(model).tokenize(PROMPT)
    J, y = brute_force_jacobians(model, tokens, len(tokens) - 1)
    slope = _softcap_slope(model, y)
    target = int(slope.argmin())  # the most saturated logit: where the cap matters most
    w = slope[target] * model.W_U.detach().double()[:, target]
    expected = torch.einsum("d,tde->te", w, J).norm(dim=-1)
    actual = semantic_scope(model, PROMPT, target=target).scores
    assert (actual - expected).abs().max() <= 1e-4 * expected.max()
    assert float(slope[target]) < 0.9  # the cap is active, so the test can tell the difference


def test_fisher_scope_honours_logit_softcap(softcapped_model):
    model = softcapped_model
    tokens = ModelAdapter(model).tokenize(PROMPT)
    J, y = brute_force_jacobians(model, tokens, len(tokens) - 1)
    slope = _softcap_slope(model, y)
    logit_jacobian = slope[:, None] * model.W_U.detach().double().T  # [d_vocab, d_model]
    p = torch.softmax(model(tokens[None])[0, -1].detach().double(), -1)
    F = logit_jacobian.T @ (torch.diag(p) - torch.outer(p, p)) @ logit_jacobian
    expected = torch.einsum("tdi,de,tei->t", J, F, J)
    actual = fisher_scope(model, PROMPT, rank=None, tail_tolerance=0.0).scores
    assert (actual - expected).abs().max() <= 1e-4 * expected.max()


@pytest.mark.skipif(not hooked_transformer_available(), reason="only HookedTransformer stores b_U as its own parameter")
def test_unembedding_bias_never_changes_a_fixed_target_score():
    from conftest import build

    model = build("hooked-gpt2")
    before = semantic_scope(model, PROMPT, target=(4, 9)).scores
    saved = model.b_U.detach().clone()
    try:
        with torch.no_grad():
            model.b_U.copy_(torch.randn_like(saved) * 5)
        after = semantic_scope(model, PROMPT, target=(4, 9)).scores
    finally:
        with torch.no_grad():
            model.b_U.copy_(saved)
    torch.testing.assert_close(after, before)


def test_unembed_statistics_match_W_U_and_follow_in_place_edits():
    """Column norms and the centring flag are cached per model; editing W_U in place (which bumps
    its version counter) must not leave stale statistics behind."""
    from jscopes_tl.toy import toy_model

    model = toy_model("gpt2", init_scale=0.3, seed=3, family="hooked" if hooked_transformer_available() else "bridge")
    adapter = ModelAdapter(model)
    W_U = model.W_U.detach()
    torch.testing.assert_close(adapter.unembed_statistics.column_sq_norms, W_U.pow(2).sum(0))
    assert not adapter.unembed_statistics.centred
    assert adapter.unembed_statistics is ModelAdapter(model).unembed_statistics  # cached, not recomputed
    with torch.no_grad():
        W_U.sub_(W_U.mean(dim=-1, keepdim=True))  # what center_unembed does
    assert ModelAdapter(model).unembed_statistics.centred
    assert ModelAdapter(model).numerics("").unembed_centred
    torch.testing.assert_close(ModelAdapter(model).unembed_statistics.column_sq_norms, W_U.pow(2).sum(0))
    with torch.no_grad():
        W_U[:, 0] += 1.0
    assert not ModelAdapter(model).numerics("").unembed_centred


def test_numerics_report_whether_W_U_is_centred(model):
    W_U = model.W_U.detach().double()
    independent = bool(W_U.mean(-1).abs().max() <= 1e-4 * W_U.abs().max())
    assert ModelAdapter(model).numerics("").unembed_centred == independent
    if ModelAdapter(model).family == "HookedTransformer" and ModelAdapter(model).final_norm_has_no_gain():
        assert independent  # process_weights_(center_unembed=True) was applied to this fixture


def test_has_logit_transform_follows_the_configured_soft_cap_and_probes_any_other_transform(model, monkeypatch):
    """A soft cap alone is read from the configuration the transform reads (no probe): switching
    the cap on or off is seen at once. A bridge architecture adapter with a transform of its own
    (Granite's division, Cohere's scale) is probed."""
    adapter = ModelAdapter(model)

    def probed() -> bool:
        probe = torch.linspace(-50.0, 50.0, 11)
        return not torch.equal(adapter.logit_transform(probe), probe)

    capped = (getattr(model.cfg, "output_logits_soft_cap", None) or 0) > 0
    assert adapter.has_logit_transform == probed() == capped
    architecture_adapter = getattr(model, "adapter", None)
    config = model.cfg if adapter.family == "HookedTransformer" else architecture_adapter.cfg
    for cap, expected in [(30.0, True), (0.0, False), (-1.0, False), (None, False), (5.0, True)]:
        monkeypatch.setattr(config, "output_logits_soft_cap", cap)
        assert adapter.has_logit_transform == probed() == expected, cap
    if adapter.family != "HookedTransformer":
        monkeypatch.setattr(config, "output_logits_soft_cap", -1.0)
        for transform, expected in [(lambda self, logits: logits / 2.0, True), (lambda self, logits: logits, False)]:
            monkeypatch.setattr(type(architecture_adapter), "apply_output_logits_transform", transform)
            assert adapter.has_logit_transform == expected


def test_a_replaced_unembedding_parameter_is_read_by_the_next_call(any_model):
    """An adapter reads W_U once; every scope call builds its own, so replacing the unembedding
    parameter (not only editing it in place) changes the next call's scores (Semantic is linear in
    W_U[:, target]: doubling it doubles them)."""
    model = any_model
    before = semantic_scope(model, PROMPT, target=7).scores
    owner = model.unembed if ModelAdapter(model).family == "HookedTransformer" else model.unembed.original_component
    name = "W_U" if ModelAdapter(model).family == "HookedTransformer" else "weight"
    original = getattr(owner, name)
    try:
        setattr(owner, name, torch.nn.Parameter(original.detach() * 2))
        after = semantic_scope(model, PROMPT, target=7).scores
    finally:
        setattr(owner, name, original)
    torch.testing.assert_close(after, 2 * before)
    torch.testing.assert_close(semantic_scope(model, PROMPT, target=7).scores, before)
