"""The model adapter: the one place that knows TransformerLens versions.

jscopes_tl works on two kinds of model that share the TransformerLens hook API but differ in the
details: ``HookedTransformer`` (TransformerLens 2.x and 3.x) and ``TransformerBridge``
(TransformerLens 3.x and 4.x, with or without compatibility mode). Everything downstream
(scopes, views, evaluation) talks to :class:`ModelAdapter` only, and every name below is
importable from ``jscopes_tl.adapter``. The package's files are the adapter's jobs:

* :mod:`~jscopes_tl.adapter.generations`: what the two generations do differently (the final
  hidden state, the logit transform, the forward call, what the hook dictionary follows), behind
  one small interface, :class:`GenerationFacts`, with one implementation per generation;
  models are recognised by duck typing the instance, never by importing classes.
* :mod:`~jscopes_tl.adapter.model_adapter`: :class:`ModelAdapter`, composed of the parts below,
  with the facts chosen once per adapter; :class:`Numerics`, :class:`InputEmbeddingPoint`.
* :mod:`~jscopes_tl.adapter.hooks`: hook names resolved against ``model.hook_dict`` at run time,
  hooks added and always removed.
* :mod:`~jscopes_tl.adapter.unembedding`: ``W_U``, the logits, the final norm's gain.
* :mod:`~jscopes_tl.adapter.tokens`: tokenisation and token strings.
* :mod:`~jscopes_tl.adapter.holding`: holding the model for a call (per-model lock, frozen
  parameters, eval mode, graph release, everything restored on every exit).
* :mod:`~jscopes_tl.adapter.model_tree`: the model's module tree, walked once and cached.
* :mod:`~jscopes_tl.adapter.offload`: models Accelerate dispatched with offloading.
* :mod:`~jscopes_tl.adapter.loading`: loading checkpoints and building models offline.
* :mod:`~jscopes_tl.adapter.transformer_lens_patching`: TransformerLens's own patching, bound to
  the model where it runs.

Per-family facts (embedding scales and norms, offset-gain norms, mode-free modules) live beside
the adapter in :mod:`jscopes_tl.families`.

Example:
    >>> from jscopes_tl.adapter import ModelAdapter
    >>> adapter = ModelAdapter(model)
    >>> adapter.family, adapter.final_hidden_hook
    ('TransformerBridge', 'unembed.hook_in')
"""

from jscopes_tl.adapter.generations import (
    HOOKED_TRANSFORMER,
    TRANSFORMER_BRIDGE,
    BridgeFacts,
    GenerationFacts,
    HookedTransformerFacts,
    generation_facts,
)
from jscopes_tl.adapter.hooks import HookFunction
from jscopes_tl.adapter.loading import (
    ModelLoadError,
    bridge_from_hf_model,
    hooked_transformer_available,
    hooked_transformer_from_config,
    hooked_transformer_from_hf_directory,
    hooked_transformer_from_hf_model,
    hub_offline_requested,
    hub_reachable,
    load_pretrained,
    transformer_lens_version,
)
from jscopes_tl.adapter.model_adapter import InputEmbeddingPoint, ModelAdapter, Numerics
from jscopes_tl.adapter.offload import offloaded_weight_loaders
from jscopes_tl.adapter.unembedding import UnembedStatistics

__all__ = [
    "HOOKED_TRANSFORMER",
    "TRANSFORMER_BRIDGE",
    "BridgeFacts",
    "GenerationFacts",
    "HookFunction",
    "HookedTransformerFacts",
    "InputEmbeddingPoint",
    "ModelAdapter",
    "ModelLoadError",
    "Numerics",
    "UnembedStatistics",
    "bridge_from_hf_model",
    "generation_facts",
    "hooked_transformer_available",
    "hooked_transformer_from_config",
    "hooked_transformer_from_hf_directory",
    "hooked_transformer_from_hf_model",
    "hub_offline_requested",
    "hub_reachable",
    "load_pretrained",
    "offloaded_weight_loaders",
    "transformer_lens_version",
]
