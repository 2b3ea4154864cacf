"""ModelAdapter: uniform access to a HookedTransformer or TransformerBridge, for one call.

Everything downstream of the model (scopes, views, evaluation) talks to :class:`ModelAdapter`
only. It is composed of the adapter's jobs, each in its own module of this package: the
unembedding (:mod:`~jscopes_tl.adapter.unembedding`), hook points
(:mod:`~jscopes_tl.adapter.hooks`), tokens (:mod:`~jscopes_tl.adapter.tokens`), holding the model
for a call (:mod:`~jscopes_tl.adapter.holding`) and TransformerLens's own patching
(:mod:`~jscopes_tl.adapter.transformer_lens_patching`). What the two TransformerLens generations
do differently comes from one :class:`~jscopes_tl.adapter.generations.GenerationFacts`, chosen
once when the adapter is built.

What this module guarantees:

* ``ModelAdapter(model)`` refuses, before tokenising or changing anything, a model that is not a
  TransformerLens model autograd can differentiate (a ``RemoteBridge``, a non-TransformerLens
  object, an unembedding on the ``meta`` device or created under ``torch.inference_mode()``), and
  a HookedTransformer whose weight processing changed its function.
* An adapter reads the unembedding matrix, its devices and its input-embedding point once; the
  model's hook dictionary, module tree and ``W_U`` statistics are kept per model (weakly) and
  read again when they may have changed.
* :class:`Numerics` records which numerics a score was computed in (generation, compatibility
  mode, folded final norm, centred ``W_U``, hooks, input-embedding point).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from jscopes_tl.adapter.generations import generation_facts
from jscopes_tl.adapter.holding import ModelHolding, check_differentiable
from jscopes_tl.adapter.hooks import HookAccess
from jscopes_tl.adapter.offload import execution_device, offloaded_modules
from jscopes_tl.adapter.tokens import TokenizerAccess
from jscopes_tl.adapter.transformer_lens_patching import TransformerLensPatching
from jscopes_tl.adapter.unembedding import UnembeddingAccess


@dataclass(frozen=True)
class Numerics:
    """Which numerics a score was computed in (they change single-logit and temperature scores).

    Example:
        >>> from jscopes_tl.adapter import ModelAdapter
        >>> numerics = ModelAdapter(model).numerics("blocks.0.hook_resid_pre")   # results keep it as a dict
        >>> numerics.model_family, numerics.readout_hook, numerics.final_norm_folded_into_unembed
        ('TransformerBridge', 'unembed.hook_in', False)
    """

    model_family: str
    compatibility_mode: bool | None
    final_norm_folded_into_unembed: bool
    unembed_centred: bool
    perturbation_hook: str | list[str]
    readout_hook: str
    # What layer 0 perturbs relative to the paper's x_t (see ModelAdapter.input_embedding).
    input_embedding: str = "resid_pre"
    input_embedding_scale: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class InputEmbeddingPoint:
    """Where a scope perturbs the input embedding ``x_t``.

    ``kind``: ``"resid_pre"`` (token + additive position embedding = ``blocks.0.hook_resid_pre``),
    ``"scaled"`` (the residual stream is ``scale`` × the token embedding: scores with respect to the
    unscaled embedding row are ``scale`` times larger, rankings identical), ``"embedding_norm"`` /
    ``"projection"`` (the token embedding before that map, at ``hook``), ``"after_embedding_norm"``
    (the model exposes no point before its embedding norm: ``hook`` is after it).

    Example:
        >>> from jscopes_tl.adapter import ModelAdapter
        >>> point = ModelAdapter(model).input_embedding()
        >>> point.hook, point.kind, point.scale                  # a GPT-2 model: the residual stream's input
        ('blocks.0.hook_resid_pre', 'resid_pre', None)
    """

    hook: str
    kind: str
    scale: float | None = None


class ModelAdapter(UnembeddingAccess, HookAccess, TokenizerAccess, ModelHolding, TransformerLensPatching):
    """Uniform access to a HookedTransformer or TransformerBridge.

    An adapter serves one call (each scope builds its own): it reads the unembedding matrix and the
    devices once. Build a new one after moving the model or replacing its unembedding.

    Attributes:
        model, cfg: the model and its configuration.
        generation_facts: what this model's TransformerLens generation does its own way
            (:class:`~jscopes_tl.adapter.generations.GenerationFacts`), chosen once here.
        family: ``"HookedTransformer"`` or ``"TransformerBridge"`` (``generation_facts.family``).

    Example:
        >>> from jscopes_tl.adapter import ModelAdapter
        >>> adapter = ModelAdapter(model)
        >>> adapter.tokenize(prompt), adapter.resid_pre_hook(0)          # tokens [pos], BOS first
        (tensor([ 0, 30, 44, 48,  2]), 'blocks.0.hook_resid_pre')
    """

    def __init__(self, model: Any) -> None:
        self.generation_facts = generation_facts(model)
        self.family = self.generation_facts.family
        self.model = model
        self.cfg = model.cfg
        # The unembedding alone here (a call builds several adapters; a full pass over the weights
        # costs milliseconds on a large bridge): it tells a meta or inference-mode model before
        # tokenising. prepared_for_scopes checks every weight before it changes anything. (An
        # offloaded W_U is a view of a meta placeholder, loaded for each use.)
        W_U = self._unembedding
        if not (W_U.is_meta and offloaded_modules(model.unembed)):
            check_differentiable([W_U], lambda _: "W_U")
        self.generation_facts.check_weight_processing(self)

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def n_ctx(self) -> int:
        """The longest sequence the model accepts (its positional tables stop there)."""
        return int(self.cfg.n_ctx)

    @property
    def model_name(self) -> str | None:
        """The name the model was loaded under (``cfg.model_name``), for display."""
        return getattr(self.cfg, "model_name", None)

    @property
    def architecture(self) -> str | None:
        """The Hugging Face architecture the model was converted from (e.g. ``"BloomForCausalLM"``)."""
        return getattr(self.cfg, "architecture", None) or getattr(self.cfg, "original_architecture", None)

    @functools.cached_property
    def input_device(self) -> torch.device:
        """Where the token embedding computes, so where the tokens go (the first block's side of
        a split model). Read once per adapter (a bridge's ``W_E`` lookup costs tens of µs)."""
        W_E = getattr(self.model, "W_E", None)
        return self.device if W_E is None else execution_device(self.model.embed, W_E)

    def input_embedding(self) -> InputEmbeddingPoint:
        """Where layer 0 perturbs (:attr:`_input_embedding`, found once per adapter).

        Example:
            >>> from jscopes_tl.adapter import ModelAdapter
            >>> ModelAdapter(model).input_embedding()
            InputEmbeddingPoint(hook='blocks.0.hook_resid_pre', kind='resid_pre', scale=None)
        """
        return self._input_embedding

    @functools.cached_property
    def _input_embedding(self) -> InputEmbeddingPoint:
        """Where layer 0 perturbs: the paper's ``x_t``, the input embedding, wherever this model exposes it.

        Most families start the residual stream with the token embedding plus additive position
        embeddings, so ``x_t`` is ``blocks.0.hook_resid_pre`` (same Jacobian). Families that multiply
        the embedding by a constant (Gemma: ``√d_model``) are perturbed there too, the factor recorded.
        Where a non-constant map sits between the token embedding and the first block (BLOOM's
        embedding LayerNorm, OPT-350m's ``project_in``; table: :data:`jscopes_tl.families.EMBEDDING_MAPS`),
        a TransformerBridge is perturbed at the token embedding itself (``embed.hook_out``, before
        the map). A HookedTransformer applies BLOOM's embedding norm inside ``embed`` with no hook
        before it: there ``x_t`` is the normed embedding, and ``kind`` says so.
        """
        from jscopes_tl import families

        hook_names = self.hook_names
        for component, kind in families.EMBEDDING_MAPS.items():
            if f"{component}.hook_in" in hook_names and "embed.hook_out" in hook_names:
                return InputEmbeddingPoint("embed.hook_out", kind)
        if getattr(self.cfg, "post_embedding_ln", False):
            return InputEmbeddingPoint(self.resid_pre_hook(0), "after_embedding_norm")
        family = families.family_of_architecture(self.architecture)
        if family is not None and family.input_embedding == "scaled":
            return InputEmbeddingPoint(self.resid_pre_hook(0), "scaled", math.sqrt(self.d_model))
        return InputEmbeddingPoint(self.resid_pre_hook(0), "resid_pre")

    def perturbation_hook(self, layer: int) -> str:
        """Where a scope at ``layer`` perturbs: the input embedding at 0 (:meth:`input_embedding`),
        the residual stream entering block ``layer`` otherwise (``n_layers``: the final one)."""
        hook = self.resid_pre_hook(layer)
        return self.input_embedding().hook if layer == 0 else hook

    @property
    def final_hidden_hook(self) -> str:
        """Hook whose activation, passed through :meth:`final_hidden`, is the unembedding input."""
        return self._resolve_hook(self.generation_facts.final_hidden_hooks(self.n_layers))

    def final_hidden(
        self, activation: Float[torch.Tensor, "... d_model"]
    ) -> Float[torch.Tensor, "... d_model"]:
        """The state fed to the unembedding, from the activation at :attr:`final_hidden_hook`."""
        return self.generation_facts.final_hidden(activation)

    def numerics(self, perturbation_hook: str | list[str]) -> Numerics:
        input_embedding = self.input_embedding()
        return Numerics(
            model_family=self.family,
            compatibility_mode=self.generation_facts.compatibility_mode(),
            final_norm_folded_into_unembed=self.final_norm_has_no_gain(),
            unembed_centred=self.unembed_statistics.centred,
            perturbation_hook=perturbation_hook,
            readout_hook=self.final_hidden_hook,
            input_embedding=input_embedding.kind,
            input_embedding_scale=input_embedding.scale,
        )
