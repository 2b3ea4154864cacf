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

The shapes are checked when the latent is made (a ``b_dec`` of another size would broadcast and
change every latent's value; a transposed ``W_enc`` is named as such), and ``d_in`` against the
activation's width when the forward pass reaches the readout hook, before any backward pass.
An SAE of another dtype than the model reads the activation cast to the SAE's dtype — what
sae_lens's own ``process_sae_in`` does — so a float64 SAE on a float32 model computes its latent
in float64 and the gradient flows back through the cast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from jscopes_tl.errors import ScopeInputError
from jscopes_tl.readouts import Readout, differentiate_readout


@dataclass(frozen=True)
class SAELatent:
    """One latent of a sparse autoencoder as a scope's readout (build with :func:`sae_latent`).

    Example:
        >>> from types import SimpleNamespace
        >>> generator = torch.Generator().manual_seed(0)           # a toy SAE on blocks.1.hook_resid_pre
        >>> sae = SimpleNamespace(W_enc=torch.randn(64, 16, generator=generator), b_enc=torch.zeros(16),
        ...                       b_dec=torch.zeros(64), hook_name="blocks.1.hook_resid_pre")
        >>> latent = sae_latent(sae, 3, pre_activation=True)
        >>> latent.hook_name, latent.describe()
        ('blocks.1.hook_resid_pre', 'SAE latent 3 (pre-activation) of SimpleNamespace')
    """

    sae: Any
    index: int
    pre_activation: bool = False

    @property
    def hook_name(self) -> str | None:
        return sae_hook_name(self.sae)

    def value(self, activation: Float[torch.Tensor, "m *shape"]) -> Float[torch.Tensor, " m"]:
        """The latent's pre-activation or activation for each row of ``activation``.

        Example:
            >>> from types import SimpleNamespace
            >>> generator = torch.Generator().manual_seed(0)           # a toy SAE on blocks.1.hook_resid_pre
            >>> sae = SimpleNamespace(W_enc=torch.randn(64, 16, generator=generator), b_enc=torch.zeros(16),
            ...                       b_dec=torch.zeros(64), hook_name="blocks.1.hook_resid_pre")
            >>> sae_latent(sae, 3).value(torch.ones(2, 64)).shape          # [m, d_in] -> [m]
            torch.Size([2])
        """
        sae = self.sae
        # To the SAE's device (autograd follows): on a model split across devices the hook's
        # layer need not be where the SAE was put. And to its dtype, as sae_lens's process_sae_in does.
        activation = activation.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        flat = activation.reshape(activation.shape[0], -1)
        if not self.pre_activation and callable(getattr(sae, "encode", None)):
            return sae.encode(activation if _takes_unflattened(sae) else flat)[..., self.index].float()
        process = getattr(sae, "process_sae_in", None)
        if callable(process):
            sae_in = process(activation if _takes_unflattened(sae) else flat)
        else:
            sae_in = flat - sae.b_dec if _applies_b_dec(sae) else flat
        pre = sae_in.reshape(sae_in.shape[0], -1) @ sae.W_enc[:, self.index] + sae.b_enc[self.index]
        return pre.float() if self.pre_activation else torch.relu(pre).float()

    def check_width(self, activation: Float[torch.Tensor, "m *shape"], hook: str) -> None:
        """The SAE reads ``d_in`` values per token: the activation at ``hook`` must have as many.

        Example:
            >>> from types import SimpleNamespace
            >>> generator = torch.Generator().manual_seed(0)           # a toy SAE on blocks.1.hook_resid_pre
            >>> sae = SimpleNamespace(W_enc=torch.randn(64, 16, generator=generator), b_enc=torch.zeros(16),
            ...                       b_dec=torch.zeros(64), hook_name="blocks.1.hook_resid_pre")
            >>> sae_latent(sae, 3).check_width(torch.ones(2, 32), "blocks.0.hook_z")
            Traceback (most recent call last):
                ...
            ScopeInputError: the SAE reads d_in=64 values per token (W_enc is [d_in, ...
        """
        d_in, d_sae = self.sae.W_enc.shape
        width = activation[0].numel()
        if width != d_in:
            raise ScopeInputError(
                f"the SAE reads d_in={d_in} values per token (W_enc is [d_in, d_sae] = [{d_in}, {d_sae}]), but the "
                f"activation at {hook!r} has {width} (shape {tuple(activation.shape[1:])} per token): the SAE was "
                "trained on another hook or another model. Pass the SAE of this hook (or readout_hook= the hook it "
                "was trained on)."
            )

    def describe(self) -> str:
        what = "pre-activation" if self.pre_activation else "activation"
        return f"SAE latent {self.index} ({what}) of {type(self.sae).__name__}"


def _applies_b_dec(sae: Any) -> bool:
    """Whether the SAE subtracts ``b_dec`` from its input (sae_lens's ``apply_b_dec_to_input``;
    transcoders do not, and their ``b_dec`` is the output's)."""
    return bool(getattr(getattr(sae, "cfg", None), "apply_b_dec_to_input", True))


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
        >>> from types import SimpleNamespace
        >>> generator = torch.Generator().manual_seed(0)           # a toy SAE on blocks.1.hook_resid_pre
        >>> sae = SimpleNamespace(W_enc=torch.randn(64, 16, generator=generator), b_enc=torch.zeros(16),
        ...                       b_dec=torch.zeros(64), hook_name="blocks.1.hook_resid_pre")
        >>> semantic_scope(model, prompt, target=sae_latent(sae, 3)).top_tokens(1)   # reads at the SAE's hook
        [(2, 'b=7', 110.27...)]
    """
    missing = [name for name in ("W_enc", "b_enc", "b_dec") if not isinstance(getattr(sae, name, None), torch.Tensor)]
    if missing:
        raise ScopeInputError(
            f"sae must have tensors W_enc [d_in, d_sae], b_enc [d_sae] and b_dec [d_in] (a sae_lens SAE or any "
            f"object with them); {type(sae).__name__} lacks {missing}."
        )
    _check_sae_tensors(sae)
    d_sae = sae.W_enc.shape[-1]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < d_sae:
        raise ScopeInputError(f"the SAE latent index must be an int in [0, {d_sae}); got {index!r}.")
    return SAELatent(sae, index, pre_activation)


def _check_sae_tensors(sae: Any) -> None:
    """``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` (when subtracted from the input),
    floating point and of one dtype: a mismatch would fail deep inside the scope, or broadcast."""
    W_enc, b_enc, b_dec = sae.W_enc, sae.b_enc, sae.b_dec
    if W_enc.ndim != 2:
        raise ScopeInputError(f"the SAE's W_enc must be a matrix [d_in, d_sae]; got shape {tuple(W_enc.shape)}.")
    d_in, d_sae = W_enc.shape
    layout = f"W_enc is [d_in, d_sae] = [{d_in}, {d_sae}]"
    b_dec_is_input = _applies_b_dec(sae)
    if d_in != d_sae and tuple(b_enc.shape) == (d_in,) and (not b_dec_is_input or tuple(b_dec.shape) == (d_sae,)):
        raise ScopeInputError(
            f"the SAE's W_enc has shape ({d_in}, {d_sae}) but b_enc has {d_in} entries: W_enc looks transposed. It "
            f"must be [d_in, d_sae] = [{d_sae}, {d_in}] (sae_lens's layout; W_dec is [d_sae, d_in]): give the SAE W_enc.T."
        )
    if tuple(b_enc.shape) != (d_sae,):
        raise ScopeInputError(f"the SAE's b_enc must have shape [d_sae] = [{d_sae}] ({layout}); got {tuple(b_enc.shape)}.")
    if b_dec_is_input and tuple(b_dec.shape) != (d_in,):
        raise ScopeInputError(
            f"the SAE's b_dec must have shape [d_in] = [{d_in}] ({layout}); got {tuple(b_dec.shape)}, which would "
            "broadcast against the activation and change every latent's value."
        )
    dtypes = [W_enc.dtype, b_enc.dtype, b_dec.dtype]
    if len(set(dtypes)) > 1 or not W_enc.is_floating_point():
        raise ScopeInputError(
            f"the SAE's W_enc, b_enc and b_dec must be floating-point tensors of one dtype; got "
            f"{', '.join(str(dtype).removeprefix('torch.') for dtype in dtypes)}."
        )


@dataclass(frozen=True)
class ParsedHookTarget:
    """A readout at an internal hook: the function ``f`` of the activation, and how to describe it.
    ``check`` looks at the activation (``[m, *shape]``) before ``f`` reads it."""

    kind: str  # "direction" | "callable" | "sae_latent"
    function: Callable[[torch.Tensor], torch.Tensor]
    description: str
    hook: str
    direction: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    check: Callable[[torch.Tensor], None] | None = None

    def metadata(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, **self.details}


def parse_hook_target(target: Any, readout_hook: str) -> ParsedHookTarget:
    """A Semantic Scope's ``target`` when it reads at ``readout_hook`` (not the unembedding)."""
    if isinstance(target, SAELatent):
        details = {"latent": target.index, "pre_activation": target.pre_activation}
        return ParsedHookTarget(
            "sae_latent", target.value, target.describe(), readout_hook, details=details,
            check=lambda activation: target.check_width(activation, readout_hook),
        )
    if isinstance(target, torch.Tensor):
        if not target.is_floating_point() or target.ndim == 0:
            raise ScopeInputError(
                f"a probe target at readout_hook {readout_hook!r} must be a float tensor shaped like the activation "
                f"there without its batch and pos axes; got {target.dtype} {tuple(target.shape)}."
            )
        if not torch.isfinite(target).all() or not target.any():
            raise ScopeInputError("a probe direction must be finite and non-zero.")
        direction = target.detach()

        def check_probe(activation: torch.Tensor) -> None:
            if tuple(direction.shape) != tuple(activation.shape[1:]):
                raise ScopeInputError(
                    f"the probe direction has shape {tuple(direction.shape)} but the activation at the readout hook "
                    f"{readout_hook!r} has shape {tuple(activation.shape[1:])} per token."
                )

        return ParsedHookTarget(
            "direction", lambda a: (a.float() * direction.to(a.device).float()).flatten(1).sum(-1),
            f"probe direction of shape {tuple(direction.shape)}", readout_hook, direction=direction, check=check_probe,
        )
    if callable(target):
        return ParsedHookTarget("callable", target, getattr(target, "__name__", "callable"), readout_hook)
    raise ScopeInputError(
        f"with readout_hook={readout_hook!r} there are no logits, so target must be a probe direction (a tensor "
        "shaped like the activation there), a callable of the activation [m, ...] -> [m], or "
        f"sae_latent(sae, index); got {target!r}."
    )


def hook_semantic_readout(activation: Float[torch.Tensor, "m *shape"], target: ParsedHookTarget) -> Readout:
    """``u = ∇_a f`` at each scored activation, and ``f(a)`` recorded as ``readout_value``."""
    m = activation.shape[0]
    if target.check is not None:
        target.check(activation)
    if target.direction is not None:
        direction = target.direction.to(activation)
        value = (activation * direction).flatten(1).sum(-1)
        return Readout(
            direction.expand(m, 1, *direction.shape).clone(), torch.ones(m, 1), squared=False,
            per_prediction={"readout_value": value.float().cpu()}, metadata={"readout": target.metadata()},
        )
    what = f"the readout {target.description!r} at readout_hook {target.hook!r}"
    value, direction = differentiate_readout(target.function, activation, what)
    return Readout(
        direction[:, None], torch.ones(m, 1), squared=False,
        per_prediction={"readout_value": value.float().cpu()}, metadata={"readout": target.metadata()},
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
