"""Readouts at any hook point: probes, functions of an activation, and SAE latents.

A Jacobian Scope need not read the final hidden state. With ``readout_hook="blocks.L.hook_resid_post"``
(or any hook whose activation is ``[batch, pos, ...]``) the scope reads a scalar ``f(a_p)`` of the
activation ``a_p`` at that hook and the prediction position ``p``, and scores every source token
``t`` by ``‖∇_{a_p} f · ∂a_p/∂x_t‖₂`` — which tokens drive this *feature*, rather than which drive
the next-token logit. The forward pass stops at the readout hook, and no logits are computed.

============================  ==========================================================
readout (``target=``)         ``f(a)`` and its readout direction ``u = ∇_a f``
============================  ==========================================================
a tensor shaped like ``a_p``  a probe: ``f(a) = w · a``, ``u = w``
a callable                    any differentiable ``f(a [m, *shape]) -> [m]``; ``u`` by autograd
``sae_latent(sae, i)``        latent ``i`` of a sparse autoencoder: its activation
                              (default) or pre-activation
                              ``((a - b_dec) W_enc + b_enc)_i``, ``u = W_enc[:, i]``
                              (times the activation function's slope)
============================  ==========================================================

The Temperature Scope's readout generalises too: ``f(a) = ‖a_p‖``, ``u = a_p / ‖a_p‖``.

SAEs: any object with ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` and a hook name
(``hook_name``, ``cfg.hook_name`` or, in sae_lens 6, ``cfg.metadata.hook_name``). A sae_lens SAE
is evaluated by its own code (``process_sae_in`` for the input side — dtype, reshaping, activation
normalisation, ``apply_b_dec_to_input`` — and ``encode`` for the activation, so JumpReLU and
TopK SAEs are honoured); another object uses the formula above with a ReLU. sae_lens requires
TransformerLens < 4; on TransformerLens 4.x pass any object with those attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from jscopes_tl.errors import ScopeInputError
from jscopes_tl.readouts import Readout


@dataclass(frozen=True)
class SAELatent:
    """One latent of a sparse autoencoder as a scope's readout (build with :func:`sae_latent`)."""

    sae: Any
    index: int
    pre_activation: bool = False

    @property
    def hook_name(self) -> str | None:
        return sae_hook_name(self.sae)

    def value(self, activation: Float[torch.Tensor, "m *shape"]) -> Float[torch.Tensor, " m"]:
        """The latent's pre-activation or activation for each row of ``activation``."""
        sae = self.sae
        # To the SAE's device (autograd follows): on a model split across devices the hook's
        # layer need not be where the SAE was put.
        activation = activation.to(sae.W_enc.device)
        flat = activation.reshape(activation.shape[0], -1)
        if not self.pre_activation and callable(getattr(sae, "encode", None)):
            return sae.encode(activation if _takes_unflattened(sae) else flat)[..., self.index].float()
        process = getattr(sae, "process_sae_in", None)
        sae_in = process(activation if _takes_unflattened(sae) else flat) if callable(process) else flat - sae.b_dec
        pre = sae_in.reshape(sae_in.shape[0], -1) @ sae.W_enc[:, self.index] + sae.b_enc[self.index]
        return pre.float() if self.pre_activation else torch.relu(pre).float()

    def describe(self) -> str:
        what = "pre-activation" if self.pre_activation else "activation"
        return f"SAE latent {self.index} ({what}) of {type(self.sae).__name__}"


def _takes_unflattened(sae: Any) -> bool:
    """sae_lens SAEs on ``hook_z`` reshape ``[..., head, d_head]`` themselves."""
    config = getattr(sae, "cfg", None)
    return getattr(config, "reshape_activations", "none") != "none"


def sae_hook_name(sae: Any) -> str | None:
    """The hook an SAE was trained on: ``hook_name``, ``cfg.hook_name`` or ``cfg.metadata.hook_name``."""
    for owner in (sae, getattr(sae, "cfg", None), getattr(getattr(sae, "cfg", None), "metadata", None)):
        name = getattr(owner, "hook_name", None) if owner is not None else None
        if isinstance(name, str) and name:
            return name
    return None


def sae_latent(sae: Any, index: int, *, pre_activation: bool = False) -> SAELatent:
    """Latent ``index`` of ``sae`` as a scope target: its activation, or its pre-activation.

    Example:
        >>> semantic_scope(model, prompt, target=sae_latent(sae, 1234))   # reads at the SAE's hook
    """
    missing = [name for name in ("W_enc", "b_enc", "b_dec") if not isinstance(getattr(sae, name, None), torch.Tensor)]
    if missing:
        raise ScopeInputError(
            f"sae must have tensors W_enc [d_in, d_sae], b_enc [d_sae] and b_dec [d_in] (a sae_lens SAE or any "
            f"object with them); {type(sae).__name__} lacks {missing}."
        )
    d_sae = sae.W_enc.shape[-1]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < d_sae:
        raise ScopeInputError(f"the SAE latent index must be an int in [0, {d_sae}); got {index!r}.")
    return SAELatent(sae, index, pre_activation)


@dataclass(frozen=True)
class ParsedHookTarget:
    """A readout at an internal hook: the function ``f`` of the activation, and how to describe it."""

    kind: str  # "direction" | "callable" | "sae_latent"
    function: Callable[[torch.Tensor], torch.Tensor]
    description: str
    direction: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, **self.details}


def parse_hook_target(target: Any, readout_hook: str) -> ParsedHookTarget:
    """A Semantic Scope's ``target`` when it reads at ``readout_hook`` (not the unembedding)."""
    if isinstance(target, SAELatent):
        details = {"latent": target.index, "pre_activation": target.pre_activation}
        return ParsedHookTarget("sae_latent", target.value, target.describe(), details=details)
    if isinstance(target, torch.Tensor):
        if not target.is_floating_point() or target.ndim == 0:
            raise ScopeInputError(
                f"a probe target at readout_hook {readout_hook!r} must be a float tensor shaped like the activation "
                f"there without its batch and pos axes; got {target.dtype} {tuple(target.shape)}."
            )
        if not torch.isfinite(target).all() or not target.any():
            raise ScopeInputError("a probe direction must be finite and non-zero.")
        direction = target.detach()
        return ParsedHookTarget(
            "direction", lambda a: (a.float() * direction.to(a.device).float()).flatten(1).sum(-1),
            f"probe direction of shape {tuple(direction.shape)}", direction=direction,
        )
    if callable(target):
        return ParsedHookTarget("callable", target, getattr(target, "__name__", "callable"))
    raise ScopeInputError(
        f"with readout_hook={readout_hook!r} there are no logits, so target must be a probe direction (a tensor "
        "shaped like the activation there), a callable of the activation [m, ...] -> [m], or "
        f"sae_latent(sae, index); got {target!r}."
    )


def hook_semantic_readout(activation: Float[torch.Tensor, "m *shape"], target: ParsedHookTarget) -> Readout:
    """``u = ∇_a f`` at each scored activation, and ``f(a)`` recorded as ``readout_value``."""
    m = activation.shape[0]
    if target.direction is not None:
        if tuple(target.direction.shape) != tuple(activation.shape[1:]):
            raise ScopeInputError(
                f"the probe direction has shape {tuple(target.direction.shape)} but the activation at the readout "
                f"hook has shape {tuple(activation.shape[1:])} per token."
            )
        direction = target.direction.to(activation)
        value = (activation * direction).flatten(1).sum(-1)
        return Readout(
            direction.expand(m, 1, *direction.shape).clone(), torch.ones(m, 1), squared=False,
            per_prediction={"readout_value": value.float().cpu()}, metadata={"readout": target.metadata()},
        )
    leaf = activation.detach().requires_grad_(True)
    value = target.function(leaf)
    if not isinstance(value, torch.Tensor) or value.shape != (m,):
        raise ScopeInputError(
            f"the readout {target.description!r} must map the activation [{m}, ...] to one value per row, shape "
            f"[{m}]; got {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}."
        )
    (direction,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
    if direction is None:
        direction = torch.zeros_like(leaf)
    return Readout(
        direction[:, None], torch.ones(m, 1), squared=False,
        per_prediction={"readout_value": value.detach().float().cpu()}, metadata={"readout": target.metadata()},
    )


def hook_temperature_readout(activation: Float[torch.Tensor, "m *shape"]) -> Readout:
    """``u = a/‖a‖`` (a constant), so ``u^T ∂a/∂x_t = ∂‖a‖/∂x_t``; ``‖a‖`` recorded as ``readout_value``."""
    norm = activation.flatten(1).norm(dim=-1)
    shape = (-1,) + (1,) * (activation.ndim - 1)
    unit = activation / norm.clamp_min(torch.finfo(activation.dtype).tiny).reshape(shape)
    return Readout(
        unit[:, None], torch.ones(activation.shape[0], 1), squared=False,
        per_prediction={"readout_value": norm.float().cpu()},
        metadata={"readout": {"kind": "norm", "description": "norm of the activation"}},
    )
