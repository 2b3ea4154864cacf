"""Model families: what differs where a Jacobian Scope is fragile, in one table beside the adapter.

Families differ exactly where a scope can silently measure something else: where the residual
stream starts (an embedding scale, an embedding LayerNorm, a projection), what the final state is
(RMSNorm or LayerNorm, Gemma's ``1 + w`` gain, soft-capped logits, a final-norm bias), mixtures of
experts, and models with no attention at all. This module is the one place that knows those
facts: :data:`FAMILIES` says, per family, which ``transformers`` config builds it, what differs,
where the paper's ``x_t`` (the input embedding) sits relative to TransformerLens's
``blocks.0.hook_resid_pre``, and which TransformerLens generation loads it.
:func:`toy_hf_model` builds a tiny seeded random model of any family offline (no download), with
random norm gains and biases so that Temperature scores are not trivially zero.

The input embedding (``input_embedding`` in the table):

* ``"resid_pre"``: the residual stream starts as token embedding + additive position embedding
  (or none): ``∂y/∂e_t = ∂y/∂x_t`` and the scope perturbs ``blocks.0.hook_resid_pre``.
* ``"scaled"``: the model multiplies the token embedding by a constant ``c`` (Gemma: ``√d_model``)
  before the first block. ``∂y/∂e_t = c · ∂y/∂x_t``: scores differ by the constant factor ``c``,
  rankings and gradient × input not at all. The scope perturbs the residual stream and the
  factor is recorded in ``numerics.input_embedding_scale``.
* ``"embedding_norm"`` (BLOOM's ``word_embeddings_layernorm``) and ``"projection"`` (OPT-350m's
  ``project_in``): the residual stream starts after a non-constant map of the embedding, so the
  two Jacobians differ token by token; the paper's scopes perturb the token embedding itself
  (:meth:`ModelAdapter.input_embedding`) and say so in ``numerics.perturbation_hook``.

Example:
    >>> from jscopes_tl.families import FAMILIES, toy_hf_model
    >>> FAMILIES["gemma2"].input_embedding
    'scaled'
    >>> hf_model = toy_hf_model("gemma2")          # a 2-layer Gemma2ForCausalLM, random, seeded
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

InputEmbedding = Literal["resid_pre", "scaled", "embedding_norm", "projection"]

TOY_D_MODEL = 64
TOY_LAYERS = 2
TOY_HEADS = 4
TOY_CONTEXT = 256


@dataclass(frozen=True)
class Family:
    """One model family as the scopes see it.

    ``config`` maps a vocabulary size to the keyword arguments of ``transformers.<config_class>``
    for a tiny model (2 layers, d_model 64). ``hooked_transformer``: None when TransformerLens 2.x
    converts the family's weights to a HookedTransformer, else the reason it cannot.
    ``bridge_architecture``: the TransformerBridge architecture adapter (TransformerLens 4.x).
    ``folds``: TransformerLens's default weight processing (fold_ln, centring) applies.

    Example:
        >>> from jscopes_tl.families import FAMILIES
        >>> family = FAMILIES["gemma2"]
        >>> family.name, family.config_class, family.input_embedding
        ('gemma2', 'Gemma2Config', 'scaled')
    """

    name: str
    config_class: str
    config: Callable[[int], dict[str, Any]]
    differs: str
    input_embedding: InputEmbedding = "resid_pre"
    perturbation_note: str = "blocks.0.hook_resid_pre = token embedding (+ learned positions)"
    hooked_transformer: str | None = None
    bridge_architecture: str | None = None
    folds: bool = True
    attention: bool = True
    # A known failure of TransformerLens's own forward pass in bf16/fp16 (upstream, not ours): the
    # error's text, and where and why it happens. The architecture matrix tells it from a new one.
    half_precision_error: str | None = None
    half_precision_reason: str | None = None
    # TransformerLens 2.x: a full HookedTransformerConfig dictionary from an HF config (where TL
    # hard-codes configs per checkpoint name), or corrections to the one it derives from config.json.
    hooked_config: Callable[[Any], dict[str, Any]] | None = field(default=None, repr=False)
    hooked_overrides: Callable[[Any], dict[str, Any]] | None = field(default=None, repr=False)


def _common(vocab_size: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=None)


def _llama_like(vocab_size: int, **extra: Any) -> dict[str, Any]:
    return {
        **_common(vocab_size), "hidden_size": TOY_D_MODEL, "intermediate_size": 2 * TOY_D_MODEL,
        "num_hidden_layers": TOY_LAYERS, "num_attention_heads": TOY_HEADS, "num_key_value_heads": TOY_HEADS // 2,
        "max_position_embeddings": TOY_CONTEXT, "tie_word_embeddings": False, **extra,
    }


def _gemma_hooked_config(hf_config: Any, **extra: Any) -> dict[str, Any]:
    """TransformerLens 2.x hard-codes Gemma configs per checkpoint name; this is the same dictionary
    (as in ``loading_from_pretrained.convert_hf_model_config``) read off a config's sizes."""
    return dict(
        d_model=hf_config.hidden_size, d_head=hf_config.head_dim, n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size, n_layers=hf_config.num_hidden_layers, n_ctx=TOY_CONTEXT,
        eps=hf_config.rms_norm_eps, d_vocab=hf_config.vocab_size, initializer_range=0.02,
        normalization_type="RMS", positional_embedding_type="rotary", use_attn_scale=True,
        n_key_value_heads=hf_config.num_key_value_heads, gated_mlp=True, final_rms=True,
        original_architecture=(hf_config.architectures or [type(hf_config).__name__.replace("Config", "ForCausalLM")])[0], tokenizer_prepends_bos=True, **extra,
    )


def _attention_types(hf_config: Any) -> list[str]:
    """Per layer "local" (sliding window) or "global", as the HF config says. (TransformerLens 2.x
    hard-codes ``["global", "local"] * n`` for Gemma-2, while HF's layer 0 slides: equal only when
    the prompt is shorter than the window.)"""
    types = getattr(hf_config, "layer_types", None) or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(hf_config.num_hidden_layers)
    ]
    return ["local" if kind == "sliding_attention" else "global" for kind in types]


def _gemma1_hooked(hf_config: Any) -> dict[str, Any]:
    return _gemma_hooked_config(hf_config, act_fn="gelu_new", rotary_base=10000.0, rotary_dim=hf_config.head_dim)


def _gemma2_hooked(hf_config: Any) -> dict[str, Any]:
    return _gemma_hooked_config(
        hf_config, act_fn="gelu_pytorch_tanh", rotary_base=10000.0, window_size=hf_config.sliding_window,
        use_local_attn=True, attn_types=_attention_types(hf_config),
        attn_scores_soft_cap=hf_config.attn_logit_softcapping, output_logits_soft_cap=hf_config.final_logit_softcapping,
        use_normalization_before_and_after=True,
    )


def _llama3_rope_overrides(hf_config: Any) -> dict[str, Any]:
    """TransformerLens 2.x reads Llama's RoPE base and Llama-3 scaling from hard-coded checkpoint
    configs only: from a local config.json it silently uses base 10,000 and no scaling (logits off
    by 13 on the toy). These are the fields it would need, read off the config."""
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    theta = getattr(hf_config, "rope_theta", None) or scaling.get("rope_theta", 10000.0)
    overrides: dict[str, Any] = {"rotary_base": float(theta)}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        overrides.update(
            use_NTK_by_parts_rope=True,
            NTK_by_parts_low_freq_factor=float(scaling["low_freq_factor"]),
            NTK_by_parts_high_freq_factor=float(scaling["high_freq_factor"]),
            NTK_by_parts_factor=float(scaling["factor"]),
            NTK_original_ctx_len=int(scaling["original_max_position_embeddings"]),
        )
    return overrides


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        Family(
            "gpt2", "GPT2Config",
            lambda v: dict(_common(v), n_positions=TOY_CONTEXT, n_ctx=TOY_CONTEXT, n_embd=TOY_D_MODEL, n_layer=TOY_LAYERS,
                           n_head=TOY_HEADS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
            "LayerNorm, learned positions, tied unembedding", bridge_architecture="GPT2LMHeadModel",
        ),
        Family(
            "gpt_neo", "GPTNeoConfig",
            lambda v: dict(_common(v), max_position_embeddings=TOY_CONTEXT, hidden_size=TOY_D_MODEL, num_layers=TOY_LAYERS,
                           num_heads=TOY_HEADS, attention_types=[[["global", "local"], 1]], window_size=4,
                           intermediate_size=4 * TOY_D_MODEL, resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0),
            "local attention (window 4 here), unscaled attention scores", bridge_architecture="GPTNeoForCausalLM",
        ),
        Family(
            "gptj", "GPTJConfig",
            lambda v: dict(_common(v), n_positions=TOY_CONTEXT, n_embd=TOY_D_MODEL, n_layer=TOY_LAYERS, n_head=TOY_HEADS,
                           rotary_dim=8, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False),
            "parallel attention + MLP, partial rotary (8 of 16), untied unembedding with bias",
            bridge_architecture="GPTJForCausalLM",
        ),
        Family(
            "gpt_neox", "GPTNeoXConfig",
            lambda v: dict(_common(v), hidden_size=TOY_D_MODEL, num_hidden_layers=TOY_LAYERS, num_attention_heads=TOY_HEADS,
                           intermediate_size=4 * TOY_D_MODEL, rotary_pct=0.25, max_position_embeddings=TOY_CONTEXT,
                           use_parallel_residual=True, tie_word_embeddings=False),
            "Pythia: parallel residual, partial rotary (25 %)", bridge_architecture="GPTNeoXForCausalLM",
        ),
        Family(
            "opt", "OPTConfig",
            lambda v: dict(_common(v), hidden_size=TOY_D_MODEL, num_hidden_layers=TOY_LAYERS, ffn_dim=4 * TOY_D_MODEL,
                           num_attention_heads=TOY_HEADS, max_position_embeddings=TOY_CONTEXT, word_embed_proj_dim=TOY_D_MODEL,
                           dropout=0.0, attention_dropout=0.0, pad_token_id=1),
            "OPT-125m style: learned positions with offset 2, ReLU", bridge_architecture="OPTForCausalLM",
        ),
        Family(
            "opt_350m", "OPTConfig",
            lambda v: dict(_common(v), hidden_size=TOY_D_MODEL, num_hidden_layers=TOY_LAYERS, ffn_dim=4 * TOY_D_MODEL,
                           num_attention_heads=TOY_HEADS, max_position_embeddings=TOY_CONTEXT, word_embed_proj_dim=TOY_D_MODEL // 2,
                           do_layer_norm_before=False, dropout=0.0, attention_dropout=0.0, pad_token_id=1),
            "OPT-350m style: project_in/project_out (word_embed_proj_dim 32 ≠ 64), post-LN, no final norm",
            input_embedding="projection",
            perturbation_note="token embedding (32 wide) before project_in; position embedding added after it",
            hooked_transformer="TransformerLens 2.x's OPT conversion has no project_in/project_out (word_embed_proj_dim ≠ d_model)",
            bridge_architecture="OPTForCausalLM",
        ),
        Family(
            "bloom", "BloomConfig",
            lambda v: dict(_common(v), hidden_size=TOY_D_MODEL, n_layer=TOY_LAYERS, n_head=TOY_HEADS,
                           hidden_dropout=0.0, attention_dropout=0.0),
            "ALiBi, embedding LayerNorm before the first block",
            input_embedding="embedding_norm",
            perturbation_note="token embedding before word_embeddings_layernorm",
            bridge_architecture="BloomForCausalLM",
        ),
        Family(
            "llama", "LlamaConfig",
            lambda v: _llama_like(v, rope_theta=500000.0, rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}),
            "Llama-3 RoPE scaling (NTK by parts), RMSNorm, GQA", bridge_architecture="LlamaForCausalLM",
            hooked_overrides=_llama3_rope_overrides,
        ),
        Family(
            "mistral", "MistralConfig", lambda v: _llama_like(v, sliding_window=TOY_CONTEXT),
            "sliding-window attention (window ≥ prompt here), GQA", bridge_architecture="MistralForCausalLM",
        ),
        Family(
            "mixtral", "MixtralConfig", lambda v: _llama_like(v, num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0),
            "mixture of experts (4 experts, top-2 routing: discrete, locally constant)",
            bridge_architecture="MixtralForCausalLM",
        ),
        Family(
            "qwen2", "Qwen2Config", lambda v: _llama_like(v, use_sliding_window=False),
            "q/k/v biases, GQA", bridge_architecture="Qwen2ForCausalLM",
        ),
        Family(
            "qwen3", "Qwen3Config", lambda v: _llama_like(v, head_dim=16, use_sliding_window=False),
            "RMSNorm on queries and keys", bridge_architecture="Qwen3ForCausalLM",
        ),
        Family(
            "gemma", "GemmaConfig", lambda v: _llama_like(v, head_dim=16, tie_word_embeddings=True),
            "embedding × √d_model, RMSNorm gain 1 + w, tied unembedding",
            input_embedding="scaled", perturbation_note="residual stream = √d_model × token embedding",
            bridge_architecture="GemmaForCausalLM", hooked_config=_gemma1_hooked,
        ),
        Family(
            "gemma2", "Gemma2Config",
            lambda v: _llama_like(v, head_dim=16, tie_word_embeddings=True, final_logit_softcapping=10.0,
                                  attn_logit_softcapping=50.0, query_pre_attn_scalar=16, sliding_window=4),
            "embedding × √d_model, logit soft-capping (10 here), attention soft-capping, local/global layers, "
            "norms before and after each sublayer",
            input_embedding="scaled", perturbation_note="residual stream = √d_model × token embedding",
            bridge_architecture="Gemma2ForCausalLM", hooked_config=_gemma2_hooked,
        ),
        Family(
            "gemma3", "Gemma3TextConfig",
            lambda v: _llama_like(v, head_dim=16, tie_word_embeddings=True, query_pre_attn_scalar=16, sliding_window=4,
                                  layer_types=["sliding_attention", "full_attention"]),
            "Gemma-3 text: embedding × √d_model inside the embedding module, q/k RMSNorm, local/global RoPE bases",
            input_embedding="scaled", perturbation_note="residual stream = √d_model × token embedding",
            hooked_transformer="TransformerLens 2.18 builds Gemma-3 from hard-coded checkpoint configs only "
            "(per-layer local/global RoPE bases); a config of other sizes has no conversion",
            bridge_architecture="Gemma3ForCausalLM",
        ),
        Family(
            "phi", "PhiConfig",
            lambda v: dict(_common(v), hidden_size=TOY_D_MODEL, intermediate_size=4 * TOY_D_MODEL, num_hidden_layers=TOY_LAYERS,
                           num_attention_heads=TOY_HEADS, partial_rotary_factor=0.5, max_position_embeddings=TOY_CONTEXT,
                           resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0),
            "parallel attention + MLP, partial rotary (50 %), final LayerNorm with bias, unembedding bias",
            bridge_architecture="PhiForCausalLM",
        ),
        Family(
            "phi3", "Phi3Config", lambda v: _llama_like(v, num_key_value_heads=TOY_HEADS, resid_pdrop=0.0, embd_pdrop=0.0),
            "fused qkv and gate_up projections", bridge_architecture="Phi3ForCausalLM",
        ),
        Family(
            "olmo2", "Olmo2Config", lambda v: _llama_like(v),
            "norms after each sublayer (not before), q/k RMSNorm",
            hooked_transformer="TransformerLens 2.18 has no OLMo-2 conversion",
            bridge_architecture="Olmo2ForCausalLM",
            half_precision_error="RuntimeError: expected scalar type Float but found",
            half_precision_reason="TransformerLens 4.3's bridge attention (position_embeddings_attention.py, "
            "`attn_output = torch.matmul(attn_weights, value_states_expanded)`) gets float32 rotary queries and keys "
            "(hook_rot_q / hook_rot_k) and so a float32 pattern, but bf16/fp16 values: RuntimeError: expected scalar "
            "type Float but found BFloat16 (Half in fp16). Upstream; float32 works",
        ),
        Family(
            "stablelm", "StableLmConfig", lambda v: _llama_like(v, partial_rotary_factor=0.25),
            "LayerNorm with bias, partial rotary (25 %)",
            hooked_transformer="TransformerLens 2.18 has no StableLM conversion",
            bridge_architecture="StableLmForCausalLM",
        ),
        Family(
            "falcon", "FalconConfig",
            lambda v: dict(_common(v), hidden_size=TOY_D_MODEL, num_hidden_layers=TOY_LAYERS, num_attention_heads=TOY_HEADS,
                           multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False, alibi=False,
                           max_position_embeddings=TOY_CONTEXT, hidden_dropout=0.0, attention_dropout=0.0),
            "Falcon-7B style: multi-query attention, parallel attention + MLP",
            hooked_transformer="TransformerLens 2.18 has no Falcon conversion",
            bridge_architecture="FalconForCausalLM",
        ),
        Family(
            "mamba", "MambaConfig",
            lambda v: dict(_common(v), hidden_size=TOY_D_MODEL, state_size=8, num_hidden_layers=TOY_LAYERS, expand=2,
                           conv_kernel=4, use_cache=False),
            "no attention: selective state-space blocks (attention views do not apply)",
            hooked_transformer="Mamba is not a transformer; HookedTransformer has no state-space blocks",
            bridge_architecture="MambaForCausalLM", folds=False, attention=False,
        ),
    ]
}


# TransformerBridge components that sit between the token embedding and the first block and are not
# a constant: a scope perturbs the token embedding before them (the paper's x_t).
EMBEDDING_MAPS: dict[str, InputEmbedding] = {"embed_ln": "embedding_norm", "project_in": "projection"}


# Module attributes that configure a module and never hold a forward pass's tensor (TransformerBridge
# components and Hugging Face models keep them, often as None). A call records the value of every
# other None or tensor attribute, to give back any that is left holding its autograd graph.
CONFIGURATION_ATTRIBUTES = frozenset({
    "config", "conversion_rule", "kernel_config", "loss_type", "processor", "padding_idx", "max_norm",
    "_tokenizer", "_original_block_forward", "_reference_model", "_uses_rms_norm_override",
    "_uses_weight_offset_override",
})


# Module classes (exactly these, not subclasses; "module.qualname") whose forward pass is the same in
# training and eval mode: no dropout, no `self.training` read (tests/test_per_call_caches.py reads
# each one's forward to check). A call puts the model in eval mode by looking at the other modules;
# these are looked at, and switched and given back, only when one of those is in training mode.
# Most of a TransformerBridge's modules are of these classes (GPT-2 size: 234 of 349).
MODE_FREE_MODULES = frozenset({
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.modules.normalization.RMSNorm",
    "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
    "transformers.pytorch_utils.Conv1D",
    "transformers.activations.NewGELUActivation",
    "transformers.activations.GELUActivation",
    "transformers.activations.SiLUActivation",
    "transformers.models.llama.modeling_llama.LlamaRMSNorm",
    "transformer_lens.model_bridge.generalized_components.linear.LinearBridge",
    "transformer_lens.model_bridge.generalized_components.normalization.NormalizationBridge",
    "transformer_lens.model_bridge.generalized_components.rms_normalization.RMSNormalizationBridge",
})


def is_mode_free(module: Any) -> bool:
    """Whether ``module``'s class (exactly) is one of :data:`MODE_FREE_MODULES`."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}" in MODE_FREE_MODULES


# Hugging Face norm classes whose ``weight`` w is applied as the gain ``1 + w`` (w = 0: no gain).
OFFSET_GAIN_NORMS = frozenset({"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm", "Gemma3nRMSNorm"})


def family_of_architecture(architecture: str | None) -> Family | None:
    """The table's family of a Hugging Face architecture name (``"Gemma2ForCausalLM"``), or None."""
    for family in FAMILIES.values():
        if family.bridge_architecture == architecture:
            return family
    return None


def family_of(hf_model: torch.nn.Module) -> Family | None:
    """The table's family of a Hugging Face model, from its config class (None: not in the table)."""
    config_class = type(getattr(hf_model, "config", None)).__name__
    matches = [family for family in FAMILIES.values() if family.config_class == config_class]
    if len(matches) > 1:  # OPT: two rows, told apart by the projection
        projection = getattr(hf_model.config, "word_embed_proj_dim", None) != getattr(hf_model.config, "hidden_size", None)
        matches = [family for family in matches if (family.input_embedding == "projection") == projection]
    return matches[0] if matches else None


def randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Give every normalisation layer random gains and biases (fresh ones are 1 and 0, which fixes
    ``‖y‖`` and makes every Temperature score 0). Gemma-style gains ``1 + w`` get ``w`` near 0.
    Hugging Face models (``weight``, ``bias``) and HookedTransformers (``w``, ``b``) alike."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            kind = type(module).__name__.lower()
            if "norm" not in kind and not name.endswith(("norm", "ln_f", "layernorm")):
                continue
            for parameter_name, parameter in module.named_parameters(recurse=False):
                noise = torch.randn(parameter.shape, generator=generator).to(parameter)
                if parameter_name in ("weight", "w"):
                    offset = 0.0 if bool(torch.all(parameter == 0)) else 1.0  # Gemma stores w of 1 + w
                    parameter.copy_(offset + 0.3 * noise)
                elif parameter_name in ("bias", "b"):
                    parameter.copy_(0.1 * noise)


def toy_hf_model(
    family: str, *, vocab_size: int = 320, seed: int = 0, init_scale: float = 0.3, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """A tiny random ``<Family>ForCausalLM`` built offline from its config class, in eval mode.

    ``init_scale`` (the config's ``initializer_range``) is larger than the usual 0.02 so that
    predictive distributions are peaked and Jacobians far from the identity.

    Example:
        >>> from jscopes_tl.families import toy_hf_model
        >>> hf_model = toy_hf_model("llama", vocab_size=64)
        >>> type(hf_model).__name__, hf_model.config.vocab_size, hf_model.training
        ('LlamaForCausalLM', 64, False)
    """
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}; got {family!r}.")
    entry = FAMILIES[family]
    config = getattr(transformers, entry.config_class)(**entry.config(vocab_size), initializer_range=init_scale)
    torch.manual_seed(seed)
    # Eager attention: SDPA kernels skip Gemma-2's attention soft-capping, which TransformerLens applies.
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    randomise_norms(model, seed)
    return model.to(dtype).eval()
