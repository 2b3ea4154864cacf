"""What the two TransformerLens generations do differently, behind one small interface.

jscopes_tl works on two kinds of model that share the TransformerLens hook API but differ in the
details:

* ``HookedTransformer`` (TransformerLens 2.x and 3.x): hook names such as
  ``blocks.0.hook_resid_pre``; the unembedding input is ``ln_final(resid_final)``, which has no
  hook of its own (``ln_final.hook_normalized`` sits *before* the RMSNorm weight), so we capture
  the last block's ``hook_resid_post`` and apply the model's own ``ln_final`` to it; logit
  soft-capping is applied in ``forward`` from ``cfg.output_logits_soft_cap``.
* ``TransformerBridge`` (TransformerLens 3.x and 4.x), with or without compatibility mode:
  canonical hook names such as ``blocks.0.hook_in`` and ``unembed.hook_in`` (the legacy names are
  aliases only in compatibility mode); the post-unembedding transform (soft-cap, logit scaling)
  is the architecture adapter's ``apply_output_logits_transform``.

What this module guarantees:

* Models are recognised by duck typing the instance, never by importing classes
  (TransformerLens 4.x raises ``ImportError`` on ``from transformer_lens import HookedTransformer``):
  :func:`generation_facts` returns the :class:`GenerationFacts` of a HookedTransformer or a
  TransformerBridge and refuses anything else (a ``RemoteBridge``, which has no local autograd,
  or an object that is not a TransformerLens model) with an
  :class:`~jscopes_tl.errors.UnsupportedModelError` before reading anything from it.
* Every difference between the generations that the adapter knows is a method of
  :class:`GenerationFacts`, implemented once per generation (:class:`HookedTransformerFacts`,
  :class:`BridgeFacts`). A :class:`~jscopes_tl.adapter.ModelAdapter` chooses its facts once, when
  it is built; nothing else in jscopes_tl branches on the generation.
* The facts read the model when asked, never ahead: an architecture adapter's transform patched
  after the facts were chosen is the one applied.
"""

from __future__ import annotations

import abc
import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from jaxtyping import Float, Int

from jscopes_tl.errors import UnsupportedModelError

if TYPE_CHECKING:
    from jscopes_tl.adapter.model_adapter import ModelAdapter

HOOKED_TRANSFORMER = "HookedTransformer"
TRANSFORMER_BRIDGE = "TransformerBridge"


def active_soft_cap(cfg: Any) -> float | None:
    """The configuration's logit soft cap when it is on (positive), else None."""
    cap = getattr(cfg, "output_logits_soft_cap", None)
    return cap if cap is not None and cap > 0 else None


class GenerationFacts(abc.ABC):
    """How one TransformerLens generation does what the two do differently, for one model.

    Example:
        >>> from jscopes_tl.adapter import generation_facts
        >>> facts = generation_facts(model)
        >>> facts.family, facts.compatibility_mode()
        ('TransformerBridge', False)
    """

    family: ClassVar[str]  # HOOKED_TRANSFORMER or TRANSFORMER_BRIDGE: Numerics.model_family

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cfg = model.cfg

    @abc.abstractmethod
    def final_hidden_hooks(self, n_layers: int) -> list[str]:
        """Candidates for the hook whose activation, passed through :meth:`final_hidden`, is the
        unembedding input (resolved against the model's hook dictionary by the adapter).

        Example:
            >>> from jscopes_tl.adapter import generation_facts
            >>> generation_facts(model).final_hidden_hooks(model.cfg.n_layers)
            ['unembed.hook_in']
        """

    @abc.abstractmethod
    def final_hidden(self, activation: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
        """The state fed to the unembedding, from the activation at the final hidden hook.

        Example:
            >>> from jscopes_tl.adapter import generation_facts
            >>> generation_facts(model).final_hidden(torch.ones(2, model.cfg.d_model)).shape      # [..., d_model]
            torch.Size([2, 64])
        """

    @abc.abstractmethod
    def logit_transform(self, logits: Float[torch.Tensor, "... d_vocab"]) -> Float[torch.Tensor, "... d_vocab"]:
        """The model's elementwise post-unembedding transform (soft-capping, scaling), if any.

        Example:
            >>> from jscopes_tl.adapter import generation_facts
            >>> logits = torch.tensor([1.0, -2.0])
            >>> torch.equal(generation_facts(model).logit_transform(logits), logits)       # GPT-2: no soft cap
            True
        """

    @abc.abstractmethod
    def soft_cap_configuration(self) -> Any:
        """The configuration whose ``output_logits_soft_cap`` is the whole logit transform, or None
        when the transform is another one (an architecture adapter's own).

        Example:
            >>> from jscopes_tl.adapter import generation_facts
            >>> generation_facts(model).soft_cap_configuration().output_logits_soft_cap    # GPT-2: none (-1)
            -1.0
        """

    @abc.abstractmethod
    def run(self, tokens: Int[torch.Tensor, "batch pos"]) -> Any:
        """The model's forward pass on a batch whose every token is real (right padding only ever
        follows them), tokens given positionally (the generations name the argument differently).

        Example:
            >>> from jscopes_tl.adapter import generation_facts
            >>> generation_facts(model).run(model.to_tokens(prompt)).shape        # [batch, pos, d_vocab]
            torch.Size([1, 5, 298])
        """

    @abc.abstractmethod
    def compatibility_mode(self) -> bool | None:
        """Whether a bridge runs in compatibility mode (None: a HookedTransformer has no such mode).

        Example:
            >>> from jscopes_tl.adapter import generation_facts
            >>> generation_facts(model).compatibility_mode()                      # a bridge without it
            False
        """

    @abc.abstractmethod
    def hook_dict_state(self) -> Any:
        """What the model's hook dictionary follows besides its module tree's registrations: a
        HookedTransformer's ``hook_dict`` object (``setup()`` builds a new one); on a
        TransformerBridge, its aliases, which compatibility mode and TransformerLens's alias rebinds
        (4.x's alias generation) change without registering a module.

        Example:
            >>> from jscopes_tl.adapter import generation_facts
            >>> facts = generation_facts(model)
            >>> facts.hook_dict_state() == facts.hook_dict_state()                # unchanged: the cache holds
            True
        """

    @abc.abstractmethod
    def check_weight_processing(self, adapter: ModelAdapter) -> None:
        """Refuse (or flag) weights whose processing at load time changed the model's function
        (called once, when the adapter is built).

        Example:
            >>> from jscopes_tl.adapter import ModelAdapter, generation_facts
            >>> generation_facts(model).check_weight_processing(ModelAdapter(model))     # unprocessed: accepted
        """

    def _soft_capped(self, logits: Float[torch.Tensor, "... d_vocab"]) -> Float[torch.Tensor, "... d_vocab"]:
        cap = active_soft_cap(self.cfg)
        return logits if cap is None else cap * torch.tanh(logits / cap)


class HookedTransformerFacts(GenerationFacts):
    """A ``HookedTransformer`` (TransformerLens 2.x, 3.x).

    Example:
        >>> from jscopes_tl.adapter import hooked_transformer_available
        >>> hooked_transformer_available()                     # the docs build on TransformerLens 4.x
        False
        >>> from jscopes_tl.adapter import HookedTransformerFacts, generation_facts
        >>> isinstance(generation_facts(model), HookedTransformerFacts)
        False
    """

    family = HOOKED_TRANSFORMER

    def final_hidden_hooks(self, n_layers: int) -> list[str]:
        # ln_final.hook_normalized sits before the norm's weight: the last residual stream instead.
        return [f"blocks.{n_layers - 1}.hook_resid_post"]

    def final_hidden(self, activation: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
        if getattr(self.cfg, "normalization_type", None) is None:
            return activation
        return self.model.ln_final(activation)

    def logit_transform(self, logits: Float[torch.Tensor, "... d_vocab"]) -> Float[torch.Tensor, "... d_vocab"]:
        return self._soft_capped(logits)

    def soft_cap_configuration(self) -> Any:
        return self.cfg

    def run(self, tokens: Int[torch.Tensor, "batch pos"]) -> Any:
        """A HookedTransformer whose tokenizer pads on the left would build an attention mask from
        the tokens themselves and hide leading pad-id tokens (a BOS that doubles as the pad token),
        so it is told the batch is right-padded."""
        return self.model(tokens, padding_side="right")

    def compatibility_mode(self) -> bool | None:
        return None

    def hook_dict_state(self) -> Any:
        return vars(self.model).get("hook_dict")

    def check_weight_processing(self, adapter: ModelAdapter) -> None:
        """Refuse (or flag) HookedTransformers whose default weight processing changed the function.

        TransformerLens 2.x's ``from_pretrained`` on a mixture of experts makes every norm an
        ``RMSPre`` (no weights) and then skips folding the weights, which it cannot fold into the
        experts: the norm gains are lost and the logits are another model's (relative error 1 on a
        random Mixtral). With logit soft-capping, ``center_unembed`` shifts the logits *before* the
        cap, which changes every probability (1e-2 on a random Gemma-2 capped at 10).
        """
        n_experts = getattr(self.cfg, "num_experts", None) or 0
        if n_experts > 1 and getattr(self.cfg, "normalization_type", None) in ("LNPre", "RMSPre"):
            raise UnsupportedModelError(
                f"this mixture-of-experts HookedTransformer ({n_experts} experts) was loaded with fold_ln=True "
                "(HookedTransformer.from_pretrained's default): its norms lost their weights, which TransformerLens "
                "cannot fold into experts, so its logits are not the original model's. Load it with "
                "HookedTransformer.from_pretrained_no_processing(...) instead."
            )
        if active_soft_cap(self.cfg) is not None and adapter.unembed_statistics.centred:
            warnings.warn(
                "this HookedTransformer has logit soft-capping and a centred W_U (center_unembed=True, "
                "HookedTransformer.from_pretrained's default): centring shifts the logits before the cap, so its "
                "probabilities and scores differ from the original model's. Load it with "
                "HookedTransformer.from_pretrained_no_processing(...) to score the original model.",
                stacklevel=3,
            )


class BridgeFacts(GenerationFacts):
    """A ``TransformerBridge`` (TransformerLens 3.x, 4.x), with or without compatibility mode.

    Example:
        >>> from jscopes_tl.adapter import BridgeFacts, generation_facts
        >>> isinstance(generation_facts(model), BridgeFacts)
        True
    """

    family = TRANSFORMER_BRIDGE

    def final_hidden_hooks(self, n_layers: int) -> list[str]:
        return ["unembed.hook_in"]

    def final_hidden(self, activation: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
        return activation

    def logit_transform(self, logits: Float[torch.Tensor, "... d_vocab"]) -> Float[torch.Tensor, "... d_vocab"]:
        architecture_adapter = getattr(self.model, "adapter", None)
        transform = getattr(architecture_adapter, "apply_output_logits_transform", None)
        if transform is not None:
            return transform(logits)
        return self._soft_capped(logits)

    def soft_cap_configuration(self) -> Any:
        architecture_adapter = getattr(self.model, "adapter", None)
        transform = getattr(type(architecture_adapter), "apply_output_logits_transform", None)
        if transform is None:
            return self.cfg  # logit_transform applies the model configuration's soft cap
        try:
            from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
        except ImportError:
            return None
        if transform is not getattr(ArchitectureAdapter, "apply_output_logits_transform", None):
            return None
        return getattr(architecture_adapter, "cfg", None)

    def run(self, tokens: Int[torch.Tensor, "batch pos"]) -> Any:
        """A bridge never masks a token tensor by itself."""
        return self.model(tokens)

    def compatibility_mode(self) -> bool | None:
        return bool(getattr(self.model, "compatibility_mode", False))

    def check_weight_processing(self, adapter: ModelAdapter) -> None:
        """Nothing to check: the checks are of ``HookedTransformer.from_pretrained``'s processing."""

    def hook_dict_state(self) -> Any:
        return (getattr(self.model, "compatibility_mode", None), _alias_generation()())


@functools.cache
def _alias_generation() -> Callable[[], Any]:
    """TransformerLens's count of alias rebinds (4.x bridges), or a constant where there is none."""
    try:
        from transformer_lens.model_bridge.generalized_components.base import alias_generation
    except ImportError:  # TransformerLens 2.x, or a version without alias rebinds
        return lambda: None
    return alias_generation


def _is_remote_bridge(model: Any) -> bool:
    return any(cls.__name__ == "RemoteBridge" for cls in type(model).__mro__)


def generation_facts(model: Any) -> GenerationFacts:
    """The facts of the kind of TransformerLens model ``model`` is, or raise if it is not one we
    can differentiate.

    Example:
        >>> from jscopes_tl.adapter import generation_facts
        >>> generation_facts(model).family
        'TransformerBridge'
    """
    if _is_remote_bridge(model):
        raise UnsupportedModelError(
            "model is a RemoteBridge (vLLM / Inspect backend), which runs without local autograd; "
            "Jacobian Scopes need gradients. Load the model with "
            "TransformerBridge.boot_transformers(...) instead."
        )
    looks_like_transformer_lens = (
        isinstance(model, torch.nn.Module)
        # hook_dict is a TransformerBridge property that builds a dict: look for it without calling it.
        and ("hook_dict" in vars(model) or hasattr(type(model), "hook_dict"))
        and hasattr(model, "cfg")
        and hasattr(model, "blocks")
        and hasattr(model, "unembed")
    )
    if not looks_like_transformer_lens:
        raise UnsupportedModelError(
            "model must be a TransformerLens HookedTransformer or TransformerBridge "
            f"(an nn.Module with hook_dict, cfg, blocks and unembed); got {type(model).__name__}."
        )
    if hasattr(model, "enable_compatibility_mode"):
        return BridgeFacts(model)
    return HookedTransformerFacts(model)
