"""Scopes read at any hook (readout_hook=): a probe direction, a callable of the activation, or an
SAE latent, each equal to a brute-force Jacobian of the sliced model (the activation at the
readout hook as a function of the perturbed one); the forward pass stops at the readout hook;
results carry no prediction but the value read, and export and views accept them."""

from __future__ import annotations

import math
import types

import pytest
import torch

from jscopes_tl import ScopeInputError, fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available
from jscopes_tl.components import component_scope
from jscopes_tl.hook_readouts import sae_latent
from jscopes_tl.result import ScopeResult
from jscopes_tl.toy import toy_model
from jscopes_tl.views.tokens import token_view

from conftest import PROMPT, hook_fingerprint
from hook_oracle import jacobian

HOOK = "blocks.0.hook_resid_post"  # an alias on a TransformerBridge too


def sliced(model, readout: str = HOOK):
    """(J [*readout_shape, pos, d_model] of the activation at ``readout`` w.r.t. the embedding-level
    residual stream, the readout activation at the last position)."""
    adapter = ModelAdapter(model)
    tokens = adapter.tokenize(PROMPT)
    J, value, _ = jacobian(model, tokens, adapter.resid_pre_hook(0), len(tokens) - 1, readout=readout)
    return J, value


def assert_close(actual, expected, rtol=1e-4):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert float((actual.double() - expected).abs().max()) <= rtol * float(expected.abs().max()), (actual, expected)


def random_direction(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_probe_at_an_internal_hook_equals_brute_force_on_the_sliced_model(model):
    J, a = sliced(model)
    direction = random_direction(a.shape)
    result = semantic_scope(model, PROMPT, readout_hook=HOOK, target=direction)
    assert_close(result.scores, torch.einsum("d,dte->te", direction.double(), J).norm(dim=-1))
    assert result.prediction is None and result.target is None
    assert float(result.metadata["readout_value"]) == pytest.approx(float(direction.double() @ a), rel=1e-4)
    assert result.metadata["numerics"]["readout_hook"] == HOOK
    assert result.metadata["readout"]["kind"] == "direction"


def test_callable_of_a_per_head_activation_equals_brute_force(any_model):
    hook = "blocks.1.attn.hook_z"  # [batch, pos, head, d_head]
    J, a = sliced(any_model, hook)  # J [head, d_head, pos, d_model]
    weights = random_direction(a.shape[-1], seed=1)

    def second_head_feature(activation: torch.Tensor) -> torch.Tensor:
        return (activation[:, 2] @ weights.to(activation)) ** 2

    leaf = a.clone().requires_grad_(True)
    (u,) = torch.autograd.grad(second_head_feature(leaf[None]).sum(), leaf)
    result = semantic_scope(any_model, PROMPT, readout_hook=hook, target=second_head_feature)
    assert_close(result.scores, torch.einsum("he,hetd->td", u, J).norm(dim=-1))
    assert float(result.metadata["readout_value"]) == pytest.approx(float(second_head_feature(a[None].float())), rel=1e-4)


def test_temperature_at_an_internal_hook_reads_the_activation_norm(any_model):
    J, a = sliced(any_model)
    result = temperature_scope(any_model, PROMPT, readout_hook=HOOK)
    assert_close(result.scores, torch.einsum("d,dte->te", a / a.norm(), J).norm(dim=-1))
    assert float(result.metadata["readout_value"]) == pytest.approx(float(a.norm()), rel=1e-4)


def test_the_forward_pass_stops_at_the_readout_hook(any_model):
    calls: list[str] = []

    def recorder(label: str):
        return lambda activation, hook: calls.append(label)

    later = ModelAdapter(any_model).resid_pre_hook(1)  # runs after blocks.0.hook_resid_post
    fwd_hooks = [(HOOK, recorder("readout")), (later, recorder("later"))]
    semantic_scope(any_model, PROMPT, readout_hook=HOOK, target=random_direction(32), fwd_hooks=fwd_hooks)
    assert calls == ["readout"]


# ------------------------------------------------------------------------------------ SAEs
def sae_lens_available() -> bool:
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        return False
    return True


def make_sae(kind: str, hook: str, d_in: int = 32, d_sae: int = 16, seed: int = 0):
    """A randomly initialised sae_lens StandardSAE built from its config (TransformerLens 2.x), or any
    object with W_enc, b_enc, b_dec and a hook name (what TransformerLens 4.x users pass)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "sae_lens":
        from sae_lens import StandardSAE, StandardSAEConfig
        from sae_lens.saes.sae import SAEMetadata

        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
        with torch.no_grad():
            sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=generator))
            sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=generator))
        return sae
    return types.SimpleNamespace(
        W_enc=torch.randn(d_in, d_sae, generator=generator) / d_in**0.5,
        b_enc=0.1 * torch.randn(d_sae, generator=generator),
        b_dec=0.1 * torch.randn(d_in, generator=generator),
        hook_name=hook,
    )


def sae_latents(sae, activation: torch.Tensor, pre_activation: bool) -> torch.Tensor:
    """The SAE's latents computed the SAE's own way (sae_lens: its encode), independently of jscopes_tl."""
    if hasattr(sae, "encode") and not pre_activation:
        return sae.encode(activation)
    pre = (activation - sae.b_dec) @ sae.W_enc + sae.b_enc
    return pre if pre_activation else torch.relu(pre)


SAE_KINDS = ["object"] + (["sae_lens"] if sae_lens_available() else [])


@pytest.mark.parametrize("kind", SAE_KINDS)
def test_sae_latent_whose_encoder_column_is_a_direction_gives_that_directions_scope(any_model, kind):
    sae = make_sae(kind, HOOK)
    direction = random_direction(32, seed=2)
    with torch.no_grad():
        sae.W_enc[:, 3] = direction
    probe = semantic_scope(any_model, PROMPT, readout_hook=HOOK, target=direction)
    pre = semantic_scope(any_model, PROMPT, target=sae_latent(sae, 3, pre_activation=True))  # the SAE's hook
    assert pre.metadata["numerics"]["readout_hook"] == HOOK
    torch.testing.assert_close(pre.scores, probe.scores, rtol=1e-5, atol=1e-6)
    offset = float((sae.b_enc[3] - sae.b_dec @ direction).detach())
    assert float(pre.metadata["readout_value"]) == pytest.approx(float(probe.metadata["readout_value"]) + offset, rel=1e-4, abs=1e-4)
    for bias, active in ((1e3, True), (-1e3, False)):  # a ReLU latent far on / off
        with torch.no_grad():
            sae.b_enc[3] = bias
        activation = semantic_scope(any_model, PROMPT, target=sae_latent(sae, 3))
        expected = probe.scores if active else torch.zeros_like(probe.scores)
        torch.testing.assert_close(activation.scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SAE_KINDS)
def test_sae_latent_activation_equals_brute_force_through_the_sae(any_model, kind):
    sae = make_sae(kind, HOOK, seed=3)
    J, a = sliced(any_model)
    latents = sae_latents(sae, a[None].float(), pre_activation=False)[0].detach()
    index = int(latents.argmax())  # an active latent
    leaf = a.float().clone().requires_grad_(True)
    (u,) = torch.autograd.grad(sae_latents(sae, leaf[None], pre_activation=False)[0, index], leaf)
    result = semantic_scope(any_model, PROMPT, target=sae_latent(sae, index))
    assert_close(result.scores, torch.einsum("d,dte->te", u.double(), J).norm(dim=-1))
    assert float(result.metadata["readout_value"]) == pytest.approx(float(latents[index]), rel=1e-4)
    assert result.metadata["readout"]["kind"] == "sae_latent" and result.metadata["readout"]["latent"] == index


def test_bridge_sae_at_the_unembedding_input_is_the_semantic_scope_of_its_direction(model):
    if "unembed.hook_in" not in model.hook_dict:
        assert type(model).__name__ == "HookedTransformer"  # no hook holds ln_final's output there
        return
    sae = make_sae("object", "unembed.hook_in")
    direction = random_direction(32, seed=4)
    sae.W_enc[:, 0] = direction
    at_sae = semantic_scope(model, PROMPT, target=sae_latent(sae, 0, pre_activation=True))
    at_unembedding = semantic_scope(model, PROMPT, target=direction)
    torch.testing.assert_close(at_sae.scores, at_unembedding.scores, rtol=1e-5, atol=1e-6)


class MultiplyFirstSAE(torch.nn.Module):
    """An SAE whose own encode multiplies before adding the biases (``b_dec`` folded into ``b_enc``):
    it mixes dtypes only if the caller hands it an activation of another dtype than its weights."""

    def __init__(self, sae) -> None:
        super().__init__()
        self.W_enc, self.b_enc, self.b_dec, self.hook_name = sae.W_enc, sae.b_enc, sae.b_dec, sae.hook_name

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc))


@pytest.mark.parametrize(
    "model_dtype, sae_dtype, encoder",
    [(torch.float32, torch.float64, "own encode"), (torch.float64, torch.float32, "formula")],
)
def test_an_sae_of_another_dtype_than_the_model_reads_the_activation_in_its_own_dtype(model_dtype, sae_dtype, encoder):
    family = "hooked" if hooked_transformer_available() else "bridge"
    model = toy_model("gpt2", family=family, init_scale=0.3, dtype=model_dtype)
    plain = make_sae("object", HOOK, seed=3)
    for name in ("W_enc", "b_enc", "b_dec"):
        setattr(plain, name, getattr(plain, name).to(sae_dtype))
    sae = MultiplyFirstSAE(plain) if encoder == "own encode" else plain
    J, a = sliced(model)
    latents = torch.relu((a.to(sae_dtype) - plain.b_dec) @ plain.W_enc + plain.b_enc)  # in the SAE's dtype
    index = int(latents.argmax())
    result = semantic_scope(model, PROMPT, target=sae_latent(sae, index))
    assert float(result.metadata["readout_value"]) == pytest.approx(float(latents[index]), rel=1e-5)
    assert_close(result.scores, torch.einsum("d,dte->te", plain.W_enc[:, index].double(), J.double()).norm(dim=-1))


def test_an_sae_of_another_width_than_its_hook_is_refused_before_any_backward_pass(any_model, monkeypatch):
    import jscopes_tl.engine

    monkeypatch.setattr(jscopes_tl.engine, "_vector_jacobian_products", lambda *a, **k: pytest.fail("a backward pass ran"))
    before = hook_fingerprint(any_model)
    with pytest.raises(ScopeInputError, match=r"the SAE reads d_in=16 values per token .* 'blocks.0.hook_resid_post' has 32"):
        semantic_scope(any_model, PROMPT, target=sae_latent(make_sae("object", HOOK, d_in=16), 0))
    assert hook_fingerprint(any_model) == before


def with_tensor(sae, **tensors):
    for name, value in tensors.items():
        setattr(sae, name, value)
    return sae


def returning(value):
    """A readout callable of the activation that returns ``value(activation)``."""
    return lambda m: semantic_scope(m, PROMPT, readout_hook=HOOK, target=value)


# ------------------------------------------------------------------------------------ errors, export, views
BAD_READOUTS = {
    "fisher at a hook": (lambda m: fisher_scope(m, PROMPT, readout_hook=HOOK), "predictive distribution"),
    "token target at a hook": (lambda m: semantic_scope(m, PROMPT, readout_hook=HOOK, target=5), "no logits"),
    "unknown hook": (lambda m: semantic_scope(m, PROMPT, readout_hook="blocks.9.nope", target=lambda a: a.sum(-1)), "hook points"),
    "pattern hook": (lambda m: semantic_scope(m, PROMPT, readout_hook="blocks.0.attn.hook_pattern", target=lambda a: a.sum((1, 2, 3))), r"\[batch, head"),
    "probe of wrong shape": (lambda m: semantic_scope(m, PROMPT, readout_hook=HOOK, target=torch.ones(7)), "probe direction has shape"),
    "callable of wrong shape": (lambda m: semantic_scope(m, PROMPT, readout_hook=HOOK, target=lambda a: a), "one value per row"),
    "perturbed after the readout": (lambda m: semantic_scope(m, PROMPT, readout_hook=HOOK, target=torch.ones(32), layer=2), "did not run before"),
    "hook behind an option": (lambda m: semantic_scope(m, PROMPT, readout_hook="blocks.0.attn.hook_result", target=lambda a: a.sum((1, 2))), "use_attn_result"),
    "sae on another hook": (lambda m: semantic_scope(m, PROMPT, readout_hook=HOOK, target=sae_latent(make_sae("object", "blocks.1.hook_resid_post"), 0)), "trained on"),
    "sae latent out of range": (lambda m: sae_latent(make_sae("object", HOOK), 16), "latent index"),
    "not an sae": (lambda m: sae_latent(torch.nn.Linear(2, 2), 0), "W_enc"),
    "sae with W_enc transposed": (lambda m: sae_latent(with_tensor(make_sae("object", HOOK), W_enc=torch.ones(16, 32)), 0), r"W_enc looks transposed.*\[d_in, d_sae\] = \[32, 16\]"),
    "sae with a 3-D W_enc": (lambda m: sae_latent(with_tensor(make_sae("object", HOOK), W_enc=torch.ones(1, 32, 16)), 0), r"W_enc must be a matrix \[d_in, d_sae\]; got shape \(1, 32, 16\)"),
    "sae with b_enc longer than d_sae": (lambda m: sae_latent(with_tensor(make_sae("object", HOOK), b_enc=torch.ones(200)), 0), r"b_enc must have shape \[d_sae\] = \[16\].*got \(200,\)"),
    "sae with b_enc shorter than the index": (lambda m: sae_latent(with_tensor(make_sae("object", HOOK), b_enc=torch.ones(3)), 5), r"b_enc must have shape \[d_sae\] = \[16\].*got \(3,\)"),
    "sae with a b_dec of size 1": (lambda m: sae_latent(with_tensor(make_sae("object", HOOK), b_dec=torch.ones(1)), 0), r"b_dec must have shape \[d_in\] = \[32\].*got \(1,\), which would broadcast"),
    "sae with a b_dec of another size": (lambda m: sae_latent(with_tensor(make_sae("object", HOOK), b_dec=torch.ones(7)), 0), r"b_dec must have shape \[d_in\] = \[32\].*got \(7,\)"),
    "sae of mixed dtypes": (lambda m: sae_latent(with_tensor(make_sae("object", HOOK), b_enc=torch.ones(16, dtype=torch.float64)), 0), "one dtype; got float32, float64, float32"),
    "callable at a hook returning ints": (returning(lambda a: (a[:, 0] > 0).long()), r"the readout '<lambda>' at readout_hook 'blocks.0.hook_resid_post' must return a float tensor.*got a torch.int64 tensor"),
    "callable at a hook returning a constant": (returning(lambda a: torch.ones(a.shape[0])), r"at readout_hook 'blocks.0.hook_resid_post' must return a value differentiable in its input"),
    "callable at a hook returning a detached value": (returning(lambda a: a.sum(-1).detach()), "differentiable in its input"),
    "callable at a hook returning a leaf of its own": (returning(lambda a: torch.zeros(a.shape[0], requires_grad=True)), "no gradient path"),
    "callable at a hook returning NaN": (returning(lambda a: a.sum(-1) * math.nan), "NaN or infinite values at rows"),
}


@pytest.mark.parametrize("case", list(BAD_READOUTS))
def test_bad_readouts_raise_a_clear_error_and_leave_the_model_unchanged(any_model, case):
    call, message = BAD_READOUTS[case]
    before = hook_fingerprint(any_model)
    with pytest.raises(ScopeInputError, match=message):
        call(any_model)
    assert hook_fingerprint(any_model) == before


def test_internal_readout_results_round_trip_and_render(any_model):
    result = semantic_scope(any_model, [PROMPT, "The cat"], readout_hook=HOOK, target=random_direction(32), position=[-1, -2])
    again = ScopeResult.from_json(result.to_json())
    assert again.prediction is None and torch.equal(again.scores, result.scores)
    torch.testing.assert_close(again.metadata["readout_value"], result.metadata["readout_value"])
    assert len(result.to_pandas()) > 0 and "readout_hook" in repr(result)
    page = token_view(result, prompt=0).to_html()
    assert "<title>Semantic Scope</title>" in page and result.str_tokens[0][3] in page


def test_component_scope_of_an_internal_readout_zeroes_the_components_after_it(any_model):
    adapter = ModelAdapter(any_model)
    tokens = adapter.tokenize(PROMPT)
    direction = random_direction(32, seed=5)
    result = component_scope(any_model, PROMPT, readout_hook=HOOK, target=direction)
    assert result.metadata["downstream_of_readout"] == ["blocks.1.attn.hook_z", "blocks.1.hook_mlp_out"]
    assert torch.all(result.heads[1] == 0) and torch.all(result.mlps[1] == 0)
    J, _, _ = jacobian(any_model, tokens, "blocks.0.attn.hook_z", len(tokens) - 1, readout=HOOK)  # [d, pos, head, d_head]
    assert_close(result.heads[0], torch.einsum("d,dthe->hte", direction.double(), J).norm(dim=-1))
    assert result.prediction is None
