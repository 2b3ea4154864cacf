"""The fast part of the architecture matrix (the full one: ``scripts/architecture_matrix.py``): every
family of :data:`jscopes_tl.families.FAMILIES`, loaded unprocessed by the installed TransformerLens,
gives the Hugging Face logits and the float64 oracle's Semantic scores, perturbing the input
embedding the paper defines, and leaves the model as it was; families it cannot load are refused
with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import architecture_matrix as matrix
from family_oracle import float64_copy, oracle
from jscopes_tl import semantic_scope, temperature_scope
from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available, hooked_transformer_from_hf_model
from jscopes_tl.errors import UnsupportedModelError
from jscopes_tl.families import FAMILIES, toy_hf_model

HOOKED = hooked_transformer_available()
UNPROCESSED, PROCESSED = matrix.load_modes()
REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_the_hugging_face_model_and_the_float64_oracle(family):
    row = matrix.check(family, UNPROCESSED, fast=True, half=False)
    reason = FAMILIES[family].hooked_transformer if HOOKED else None
    if reason is not None:
        assert row.status.startswith("unsupported") and reason in row.status, row.status
        return
    assert row.status == "ok", (row.status, row.errors)
    assert set(row.errors) == {"logits", "semantic", "contrast"}


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "bloom"])
def test_processed_weights_keep_the_scopes_that_folding_cannot_change(family):
    row = matrix.check(family, PROCESSED, fast=True, half=False)
    if HOOKED and family == "gemma2":  # TL 2.x centres W_U before the soft-cap: another model, and jscopes_tl warns
        assert row.status.startswith("warned") and "soft-capping" in row.status, row.status
        return
    assert row.status == "ok", (row.status, row.errors)
    assert "contrast" in row.errors


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # LayerNorm (W_U also centred over d_model), RMSNorm
def test_folded_fisher_rank_one_matches_the_oracle_in_the_folded_basis(family):
    row = matrix.check(family, PROCESSED, half=False)
    assert row.status == "ok", (row.status, row.errors)
    assert "fisher-1" not in row.errors and row.errors["fisher-1 (folded)"] <= 1e-4, row.errors
    cell = next(line for line in matrix.format_matrix([row]).splitlines() if line.startswith(f"| {family} "))
    assert "(folded)" in cell


def test_the_folded_basis_oracle_is_another_rank_one_direction_with_the_same_exact_fisher():
    hf64 = float64_copy(toy_hf_model("gpt2", vocab_size=len(matrix.toy_tokenizer())))
    ids = matrix.prompt_ids()
    last = len(ids) - 1
    reference = oracle(hf64, ids, [last])
    torch.testing.assert_close(reference.fisher(last, None, folded=True), reference.fisher(last, None), rtol=1e-10, atol=0)
    assert matrix.relative_error(reference.fisher(last, 1, folded=True), reference.fisher(last, 1)) > 1e-2
    torch.testing.assert_close(reference.gain(), hf64.transformer.ln_f.weight)  # probed, not assumed
    assert reference.final_norm_centres


def test_bloom_is_perturbed_at_the_input_embedding_the_model_exposes():
    model, _ = matrix.build("bloom", UNPROCESSED)
    numerics = semantic_scope(model, matrix.prompt_ids()).metadata["numerics"]
    if HOOKED:  # HookedTransformer applies the embedding LayerNorm inside `embed`, with no hook before it
        assert (numerics["perturbation_hook"], numerics["input_embedding"]) == ("blocks.0.hook_resid_pre", "after_embedding_norm")
    else:
        assert (numerics["perturbation_hook"], numerics["input_embedding"]) == ("embed.hook_out", "embedding_norm")


def test_gemma_records_its_embedding_scale():
    model, _ = matrix.build("gemma", UNPROCESSED)
    numerics = semantic_scope(model, matrix.prompt_ids()).metadata["numerics"]
    assert numerics["input_embedding"] == "scaled"
    assert numerics["input_embedding_scale"] == pytest.approx(8.0)  # √64


def test_layer_all_row_zero_is_the_input_embedding_and_the_rest_the_residual_stream():
    model, _ = matrix.build("gpt2", UNPROCESSED)
    result = semantic_scope(model, matrix.prompt_ids(), layer="all")
    adapter = ModelAdapter(model)
    hooks = result.metadata["numerics"]["perturbation_hook"]
    assert hooks == [adapter.input_embedding().hook] + [adapter.resid_pre_hook(layer) for layer in range(1, adapter.n_layers + 1)]


def test_half_precision_scores_are_finite_and_near_float32():
    model, _ = matrix.build("llama", UNPROCESSED)
    errors = matrix._half_errors("llama", UNPROCESSED, model, matrix.prompt_ids())
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert errors[name] <= matrix.HALF_TOLERANCE[dtype], errors


@pytest.mark.skipif(HOOKED, reason="OLMo-2 loads as a TransformerBridge only")
def test_olmo2_half_precision_failure_is_the_recorded_upstream_one():
    model, _ = matrix.build("olmo2", UNPROCESSED)
    errors = matrix._half_errors("olmo2", UNPROCESSED, model, matrix.prompt_ids())
    for name in ("bf16", "fp16"):  # if TransformerLens fixes it, the record in families.py is stale
        assert matrix.known_upstream_failure("olmo2", errors[name]), errors[name]
        assert "position_embeddings_attention.py" in errors[name], errors[name]
    assert not matrix.known_upstream_failure("llama", errors["bf16"])  # recorded per family
    row = matrix.Row("olmo2", UNPROCESSED, half=errors)
    assert "TL error (known)" in matrix.format_matrix([row])


@pytest.mark.skipif(HOOKED, reason="Mamba loads as a TransformerBridge only")
def test_attention_views_on_mamba_are_refused_naming_the_reason():
    model, _ = matrix.build("mamba", UNPROCESSED)
    assert semantic_scope(model, matrix.prompt_ids()).scores.shape == (len(matrix.prompt_ids()),)
    with pytest.raises(UnsupportedModelError, match="no attention layers"):
        ModelAdapter(model).attention_patterns(matrix.prompt_ids())


@pytest.mark.skipif(not HOOKED, reason="TransformerLens 2.x conversions")
def test_a_family_transformer_lens_2_cannot_convert_is_refused_naming_why():
    with pytest.raises(UnsupportedModelError, match="no project_in/project_out"):
        hooked_transformer_from_hf_model(toy_hf_model("opt_350m"))


@pytest.mark.skipif(HOOKED, reason="compatibility mode is the bridge's")
def test_gemma_final_norm_folded_by_compatibility_mode_is_recognised():
    model, _ = matrix.build("gemma2", "bridge-compat")  # folded Gemma norm: weight 0 of the gain 1 + w
    assert ModelAdapter(model).final_norm_has_no_gain()
    with pytest.warns(UserWarning, match="final norm has no gain"):
        temperature_scope(model, matrix.prompt_ids())


@pytest.mark.skipif(HOOKED, reason="OPT-350m loads as a TransformerBridge only")
def test_no_final_norm_means_nothing_fixes_the_hidden_state_norm():
    model, _ = matrix.build("opt_350m", "bridge-compat")
    assert not ModelAdapter(model).final_norm_has_no_gain()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert temperature_scope(model, matrix.prompt_ids()).scores.max() > 0


def test_the_script_prints_the_matrix_for_a_subset():
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "scripts" / "architecture_matrix.py"), "--families", "gpt2,opt_350m", "--no-half"],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("| gpt2") or line.startswith("| opt_350m")]
    assert len(lines) == 4  # two families × two load modes
    assert all("| ok |" in line or "| unsupported" in line for line in lines), lines


def test_the_architecture_page_summary_is_the_measured_matrix():
    """The docs' compact matrix (docs/guide/architectures.md) is derived from docs/architecture_matrix.md,
    not typed by hand."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("matrix_script", root / "scripts" / "architecture_matrix.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.summary((root / "docs" / "architecture_matrix.md").read_text(encoding="utf-8"))
    assert table.count("\n") == 22  # header, rule and the 21 families
    assert table in (root / "docs" / "guide" / "architectures.md").read_text(encoding="utf-8")
