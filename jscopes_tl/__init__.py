"""jscopes_tl: Jacobian Scopes (arXiv 2601.16407) for TransformerLens models.

Token-level, gradient-based causal attributions of a language model's prediction, computed
through hooks on a HookedTransformer or TransformerBridge:

>>> from jscopes_tl import semantic_scope, fisher_scope, temperature_scope
>>> result = semantic_scope(model, "The Eiffel Tower is in the city of", target=" Paris")
>>> result.scores          # one score per prompt token
"""

from jscopes_tl.components import ComponentScopeResult, component_scope
from jscopes_tl.errors import NonFiniteLogitsError, NonFiniteScoresError, ScopeInputError, UnsupportedModelError
from jscopes_tl.faithfulness import FaithfulnessReport, evaluate_faithfulness
from jscopes_tl.path_integrals import IntegratedGradientsResult, integrated_gradients
from jscopes_tl.patching import (
    ActivationPatching,
    LayerResolvedScope,
    PatchingComparison,
    activation_patching,
    attribution_patching,
    compare_components_with_patching,
    compare_with_patching,
    layer_resolved_scope,
)
from jscopes_tl.hook_readouts import sae_latent
from jscopes_tl.result import Prediction, ScopeResult
from jscopes_tl.runs import RunSummary, run_dataset, run_faithfulness
from jscopes_tl.scopes import fisher_scope, jacobian_scope, semantic_scope, temperature_scope
from jscopes_tl.views.report import report

__all__ = [
    "ActivationPatching",
    "ComponentScopeResult",
    "FaithfulnessReport",
    "IntegratedGradientsResult",
    "LayerResolvedScope",
    "NonFiniteLogitsError",
    "NonFiniteScoresError",
    "PatchingComparison",
    "Prediction",
    "ScopeInputError",
    "RunSummary",
    "ScopeResult",
    "UnsupportedModelError",
    "activation_patching",
    "attribution_patching",
    "compare_components_with_patching",
    "compare_with_patching",
    "component_scope",
    "evaluate_faithfulness",
    "fisher_scope",
    "integrated_gradients",
    "jacobian_scope",
    "layer_resolved_scope",
    "report",
    "run_dataset",
    "run_faithfulness",
    "sae_latent",
    "semantic_scope",
    "temperature_scope",
]
