"""Tiny models with random weights that need no download.

They exist so that every scope can be tried, tested and demonstrated offline: a byte-level BPE
tokenizer trained in milliseconds on a few sentences (including the paper's case-study prompts),
and GPT-2- or Llama-shaped models built from configs, either as a HookedTransformer (where the
installed TransformerLens has it) or as a TransformerBridge around a Hugging Face model.
Their attributions mean nothing linguistically; their Jacobians are as real as any.

Example:
    >>> from jscopes_tl import semantic_scope
    >>> from jscopes_tl.toy import toy_model
    >>> model = toy_model("gpt2", family="bridge")
    >>> semantic_scope(model, "Tom loves Korean food.").scores.shape
    torch.Size([7])
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from typing import Any, Literal

import torch

from jscopes_tl import adapter
from jscopes_tl.families import randomise_norms

TOY_CORPUS = (
    "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a liberal. "
    "He is a conservative. German: Dies ist ein Aufsatz über kausale Zuschreibung. "
    "English: This is a paper on causal attribution. The cat sat on the mat. "
    "When Mary and John went to the store, John gave a drink to Mary. "
    "51,53,55,57,58,57,53,47,40,33,27,22,19,18,20,24,30,37,44,50 "
    "The quick brown fox jumps over the lazy dog. A model predicts the next token."
)

BOS_TOKEN = "<|endoftext|>"

Architecture = Literal["gpt2", "llama", "gemma2"]
ARCHITECTURES = ("gpt2", "llama", "gemma2")  # gemma2: logit soft-capping at 10
Family = Literal["bridge", "hooked"]


@lru_cache(maxsize=4)
def toy_tokenizer(vocab_size: int = 320) -> Any:
    """A GPT-2-like byte-level BPE tokenizer trained on :data:`TOY_CORPUS` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TOY_CORPUS] * 4, trainer=trainer)
    trained = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        unk_token=BOS_TOKEN,
    )
    # TransformerLens re-loads tokenizers by name_or_path to switch BOS handling, so the
    # tokenizer must come from a directory, like any saved Hugging Face tokenizer.
    directory = tempfile.mkdtemp(prefix="jscopes_tl_toy_tokenizer_")
    trained.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def _hf_config(architecture: Architecture, vocab_size: int, d_model: int, n_layers: int, n_heads: int, init_scale: float) -> Any:
    import transformers

    if architecture == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=1024, n_embd=d_model, n_layer=n_layers,
            n_head=n_heads, initializer_range=init_scale, bos_token_id=0, eos_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    if architecture == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads // 2,
            max_position_embeddings=1024, initializer_range=init_scale, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=0, pad_token_id=None,  # a padding_idx would zero the BOS embedding
        )
    if architecture == "gemma2":
        return transformers.Gemma2Config(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads // 2,
            head_dim=d_model // n_heads, max_position_embeddings=1024, initializer_range=init_scale,
            final_logit_softcapping=10.0, bos_token_id=0, eos_token_id=0, pad_token_id=None,
        )
    raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}.")


def _hooked_config(architecture: Architecture, vocab_size: int, d_model: int, n_layers: int, n_heads: int, init_scale: float) -> dict[str, Any]:
    common = dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
        d_vocab=vocab_size, n_ctx=1024, initializer_range=init_scale, default_prepend_bos=True,
    )
    if architecture == "gpt2":
        return dict(common, d_mlp=4 * d_model, act_fn="gelu_new", normalization_type="LN")
    if architecture == "llama":
        return dict(
            common, d_mlp=2 * d_model, act_fn="silu", normalization_type="RMS",
            positional_embedding_type="rotary", gated_mlp=True, n_key_value_heads=n_heads // 2,
        )
    if architecture == "gemma2":
        # Not a full Gemma 2 block; the Llama-style block with Gemma 2's logit soft-capping,
        # which is what a scope's readout has to honour.
        llama = _hooked_config("llama", vocab_size, d_model, n_layers, n_heads, init_scale)
        return dict(llama, output_logits_soft_cap=10.0)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}.")


def toy_model(
    architecture: Architecture = "gpt2",
    *,
    family: Family = "bridge",
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    seed: int = 0,
    init_scale: float = 0.1,
    compatibility_mode: bool = False,
    with_tokenizer: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A tiny random TransformerLens model (HookedTransformer or TransformerBridge), built offline.

    ``init_scale`` is larger than GPT-2's 0.02 so that predictive distributions are peaked
    rather than uniform, which gives the Fisher matrix a spectrum worth testing against; norm
    layers get random gains and biases for the same reason.
    """
    tokenizer = toy_tokenizer() if with_tokenizer else None
    vocab_size = len(toy_tokenizer())
    if family == "hooked":
        config = _hooked_config(architecture, vocab_size, d_model, n_layers, n_heads, init_scale)
        model = adapter.hooked_transformer_from_config(config, tokenizer=tokenizer, seed=seed)
        randomise_norms(model, seed)
        if dtype != torch.float32:
            model.cfg.dtype = dtype  # HookedTransformer's norms cast their output to cfg.dtype
            model = model.to(dtype)
        return model
    if family == "bridge":
        import transformers

        torch.manual_seed(seed)
        config = _hf_config(architecture, vocab_size, d_model, n_layers, n_heads, init_scale)
        hf_model = transformers.AutoModelForCausalLM.from_config(config)
        randomise_norms(hf_model, seed)
        hf_model = hf_model.to(dtype)
        return adapter.bridge_from_hf_model(hf_model, tokenizer=tokenizer, compatibility_mode=compatibility_mode)
    raise ValueError(f"family must be 'bridge' or 'hooked'; got {family!r}.")
