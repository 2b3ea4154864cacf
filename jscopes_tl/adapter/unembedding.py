"""The unembedding and the final hidden state: ``W_U``, the logits, and the final norm's gain.

A scope reads the model's prediction from the state ``y`` fed to the unembedding: the logits are
``logit_transform(y @ W_U + b_U)``, with the model's own transform (soft-capping, logit scaling;
a generation's own, :meth:`~jscopes_tl.adapter.generations.GenerationFacts.logit_transform`).

What this module guarantees (``UnembeddingAccess``, a part of
:class:`~jscopes_tl.adapter.ModelAdapter`):

* The logits are exactly the model's: its own unembedding module and its own transform.
* ``W_U`` is read once per adapter (a TransformerBridge rebuilds it on every read); its values
  are the model's own, so in-place edits are seen. An offloaded ``W_U`` is loaded for each use.
* Facts that cost a pass over ``W_U`` (:class:`UnembedStatistics`) are computed once per model
  and weight version: an in-place edit or new weights are seen on the next read.
* The final norm's weights are compared with their neutral values in one ``torch.equal`` each,
  found again only after a registration on the model (or when one is gone).
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from jscopes_tl.adapter.generations import active_soft_cap
from jscopes_tl.adapter.model_tree import model_tree, registration_count
from jscopes_tl.adapter.offload import execution_device, offloaded_weights_loaded

if TYPE_CHECKING:
    from jscopes_tl.adapter.generations import GenerationFacts


@dataclass(frozen=True)
class UnembedStatistics:
    """Facts about ``W_U`` that cost a pass over it (d_vocab · d_model) to compute.

    Example:
        >>> from jscopes_tl.adapter import ModelAdapter
        >>> statistics = ModelAdapter(model).unembed_statistics
        >>> statistics.column_sq_norms.shape, statistics.centred     # [d_vocab]
        (torch.Size([298]), False)
    """

    column_sq_norms: Float[torch.Tensor, " d_vocab"]  # ‖W_U[:, v]‖², float32
    centred: bool  # every row of W_U has mean 0 over the vocabulary (HookedTransformer's centring)


# Per model, keyed by the identity and autograd version counter of W_U's storage: an in-place edit
# of the weights (or new weights) bumps the version and the statistics are recomputed.
_unembed_statistics: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[Any, ...], UnembedStatistics]] = (
    weakref.WeakKeyDictionary()
)


# Per model, its final norm's parameters (held weakly, like the module tree) with their neutral
# values, and the registration count then.
_final_norms: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, list[tuple[weakref.ref, float]]]] = (
    weakref.WeakKeyDictionary()
)


def _neutral_weights(final_norm: torch.nn.Module) -> list[tuple[torch.Tensor, float]]:
    """Each parameter of a final norm with the value that makes it do nothing (a gain 1, a bias 0)."""
    from jscopes_tl.families import OFFSET_GAIN_NORMS

    weights = []
    for name, parameter in final_norm.named_parameters():
        owner = final_norm.get_submodule(name.rpartition(".")[0])
        is_bias = name.rsplit(".", 1)[-1] in ("b", "bias")
        # A wrapped Gemma RMSNorm stores w of the gain 1 + w: w = 0 is no gain.
        weights.append((parameter, 0.0 if is_bias or type(owner).__name__ in OFFSET_GAIN_NORMS else 1.0))
    return weights


def _final_norm_weights(model: torch.nn.Module, final_norm: torch.nn.Module) -> list[tuple[torch.Tensor, float]]:
    """:func:`_neutral_weights` of the model's final norm, found again only after a registration
    (or when one of them is gone: Accelerate swaps offloaded placeholders without registering)."""
    cached = _final_norms.get(model)
    if cached is not None and cached[0] == registration_count[0]:
        weights = [(reference(), neutral) for reference, neutral in cached[1]]
        if all(parameter is not None for parameter, _ in weights):
            return weights  # type: ignore[return-value]
    model_tree(model)  # the norm's registrations count from now on
    weights = _neutral_weights(final_norm)
    _final_norms[model] = (registration_count[0], [(weakref.ref(parameter), neutral) for parameter, neutral in weights])
    return weights


# Constant tensors by (value, shape, dtype, device), compared against with one torch.equal.
_constants: dict[tuple[float, tuple[int, ...], torch.dtype, torch.device], torch.Tensor] = {}


def _is_everywhere(weight_and_value: tuple[torch.Tensor, float]) -> bool:
    """Whether every entry of the weight equals the value (one comparison op, not three)."""
    weight, value = weight_and_value
    key = (value, tuple(weight.shape), weight.dtype, weight.device)
    constant = _constants.get(key)
    if constant is None:
        constant = _constants[key] = torch.full(key[1], value, dtype=weight.dtype, device=weight.device)
    return torch.equal(weight, constant)


class UnembeddingAccess:
    """The part of :class:`~jscopes_tl.adapter.ModelAdapter` that reads the unembedding."""

    model: Any
    generation_facts: GenerationFacts

    @property
    def d_vocab(self) -> int:
        return int(self._unembedding.shape[-1])

    @functools.cached_property
    def _unembedding(self) -> torch.Tensor:
        """``model.W_U`` as this adapter first reads it. A TransformerBridge builds it on every read
        (a chain of properties and a transpose, tens of µs with the caches cold after a backward
        pass) and a call reads it a dozen times; its values are the model's own (a view of the
        parameter), only replacing the parameter object needs a new adapter."""
        return self.model.W_U

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        """The unembedding matrix; an offloaded one (a ``device_map`` with ``"cpu"``/``"disk"``
        entries) is loaded onto its execution device for each access, as its forward pass would."""
        W_U = self._unembedding
        if not W_U.is_meta:
            return W_U
        with offloaded_weights_loaded(self.model.unembed):
            return self.model.W_U

    @property
    def unembed_statistics(self) -> UnembedStatistics:
        """Column norms and centring of ``W_U``, computed once per model and weight version (one
        pass over ``W_U``, which a scope would otherwise repeat on every call)."""
        W_U = self.W_U.detach()
        key = (W_U.data_ptr(), W_U._version, tuple(W_U.shape), W_U.stride(), W_U.dtype, W_U.device)
        cached = _unembed_statistics.get(self.model)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            W = W_U.float()
            column_sq_norms = torch.linalg.vector_norm(W, dim=0).pow(2)
            row_means = W @ torch.full((W.shape[1],), 1.0 / W.shape[1], dtype=W.dtype, device=W.device)
            rms = float(column_sq_norms.sum() / W.numel()) ** 0.5
            # Centring in a low-precision dtype leaves row means at the level of its rounding.
            tolerance = max(1e-5, 8 * torch.finfo(W_U.dtype).eps / math.sqrt(W.shape[1]))
            centred = bool(row_means.abs().max() <= tolerance * (rms + 1e-12))
        statistics = UnembedStatistics(column_sq_norms=column_sq_norms, centred=centred)
        _unembed_statistics[self.model] = (key, statistics)
        return statistics

    @functools.cached_property
    def device(self) -> torch.device:
        """Where the unembedding computes: the logits, ``W_U`` products and readout directions live
        there. On a model split across devices (a ``device_map``, ``n_devices > 1``) it is the last
        one, not where the tokens go (:attr:`input_device`). Read once per adapter."""
        return execution_device(self.model.unembed, self._unembedding)

    @property
    def dtype(self) -> torch.dtype:
        return self._unembedding.dtype

    def unembed_before_transform(
        self, y: Float[torch.Tensor, "... d_model"]
    ) -> Float[torch.Tensor, "... d_vocab"]:
        """The model's own unembedding module applied to ``y`` (weights and bias included)."""
        return self.model.unembed(y)

    def logit_transform(self, logits: Float[torch.Tensor, "... d_vocab"]) -> Float[torch.Tensor, "... d_vocab"]:
        """The model's elementwise post-unembedding transform (soft-capping, scaling), if any."""
        return self.generation_facts.logit_transform(logits)

    @property
    def has_logit_transform(self) -> bool:
        """Whether :meth:`logit_transform` changes any logit. Read from the configuration when the
        transform is a soft cap alone (HookedTransformer's, or a bridge architecture adapter that
        keeps TransformerLens's base transform): on when the cap is positive. Any other transform
        is probed on logits from -50 to 50."""
        cfg = self.generation_facts.soft_cap_configuration()
        if cfg is not None:
            return active_soft_cap(cfg) is not None
        probe = torch.linspace(-50.0, 50.0, 11, device=self.device)
        return not torch.equal(self.logit_transform(probe), probe)

    def logits(self, y: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
        """Logits exactly as the model computes them from the unembedding input ``y``."""
        return self.logit_transform(self.unembed_before_transform(y))

    def final_norm_has_no_gain(self) -> bool:
        """True when the final norm applies no gain or bias of its own: its weights were folded
        into ``W_U`` (HookedTransformer's default, the bridge's compatibility mode). Then ``‖y‖`` is
        fixed by the normalisation. False when there is no final norm at all (OPT-350m's
        ``project_out`` feeds the unembedding directly): nothing fixes ``‖y‖`` there."""
        final_norm = getattr(self.model, "ln_final", None)
        if final_norm is None:
            return False
        weights = _final_norm_weights(self.model, final_norm)
        if any(parameter.is_meta for parameter, _ in weights):
            with torch.no_grad(), offloaded_weights_loaded(final_norm):
                # Loading replaces the placeholders: read the parameters again inside.
                return all(map(_is_everywhere, _neutral_weights(final_norm)))
        return all(map(_is_everywhere, weights))
