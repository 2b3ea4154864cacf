"""Half-precision models: scopes run in the model's dtype, compute readouts and eigen-solves in
float32, and return float32 CPU scores close to the float32 model's."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.adapter import hooked_transformer_available
from jscopes_tl.toy import toy_model

from conftest import PROMPT

FAMILY = "hooked" if hooked_transformer_available() else "bridge"


@pytest.fixture(scope="module")
def models():
    full = toy_model("gpt2", family=FAMILY, init_scale=0.3)
    half = toy_model("gpt2", family=FAMILY, init_scale=0.3, dtype=torch.bfloat16)
    return full, half


@pytest.mark.parametrize(
    "scope",
    [
        lambda m: semantic_scope(m, PROMPT, target=5),
        lambda m: temperature_scope(m, PROMPT),
        lambda m: fisher_scope(m, PROMPT, rank=2, tail_tolerance=0.0),
    ],
    ids=["semantic", "temperature", "fisher"],
)
def test_bfloat16_model_gives_float32_scores_close_to_float32_model(models, scope):
    full, half = models
    assert next(half.parameters()).dtype == torch.bfloat16
    reference, result = scope(full).scores, scope(half).scores
    assert result.dtype == torch.float32 and result.device.type == "cpu"
    assert torch.isfinite(result).all()
    relative = (result - reference).norm() / reference.norm()
    assert relative < 0.1, relative
