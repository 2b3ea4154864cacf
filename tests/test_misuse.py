"""Misuse suite: every public function, through a table of bad inputs, on the installed
TransformerLens generation. Each call must either raise the listed error, naming the argument, or
succeed (with the listed warning, if any); and after it, success or error, the models are exactly
as they were (:class:`model_state.ModelState`: hooks anywhere, requires_grad, train/eval, parameter
and buffer bytes, grad mode).

A new public function joins the table when it is added: ``test_every_public_function_is_in_the_table``
fails until it has a row. The models are put in an unusual user state for the whole module (train
mode, every other parameter frozen), which every call must leave alone.
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import jscopes_tl
from jscopes_tl import (
    NonFiniteScoresError,
    ScopeInputError,
    ScopeResult,
    activation_patching,
    attribution_patching,
    compare_components_with_patching,
    compare_with_patching,
    component_scope,
    evaluate_faithfulness,
    fisher_scope,
    integrated_gradients,
    jacobian_scope,
    layer_resolved_scope,
    models,
    report,
    run_dataset,
    run_faithfulness,
    sae_latent,
    semantic_scope,
    temperature_scope,
)
from jscopes_tl import cli
from jscopes_tl.attention import attention_correlation
from jscopes_tl.errors import ResultFormatError
from jscopes_tl.views import (
    attention_comparison_view,
    compare_view,
    faithfulness_table_html,
    patching_comparison_html,
    scopes_page,
    token_view,
)
from jscopes_tl.views.components import component_comparison_view, component_view

from conftest import MODEL_SPECS, PROMPT, build
from model_state import ModelState

RECALL = "a=3 b=7 c=1 b="
CLEAN = torch.tensor([0, 17, 33, 45, 8, 21])
CORRUPTED = torch.tensor([0, 17, 90, 45, 8, 21])


@dataclass
class Context:
    model: Any  # a toy model of the installed TransformerLens
    recall: Any  # the bundled recall model (word-level tokenizer with an <unk> token, n_ctx 128)
    result: ScopeResult  # a single-position Semantic Scope of the toy model
    matrix: ScopeResult  # a position="all" Fisher Scope of the toy model
    components: Any  # a single-position component scope of the toy model
    tmp_path: Path


@dataclass(frozen=True)
class Misuse:
    function: str
    call: Callable[[Context], Any]
    raises: type[BaseException] | None = None  # None: the call succeeds
    match: str = ""  # regex the error message (or the warning, with raises=None) must match
    warns: bool = False


def _left_padded(m: Any) -> torch.Tensor:
    return m.to_tokens([PROMPT, "The cat"], padding_side="left")


def _scorer(output: Callable[[torch.Tensor], Any]) -> dict[str, Callable[..., Any]]:
    return {"bad": lambda model, context, gold: output(context)}


MISUSES: dict[str, Misuse] = {
    # ------------------------------------------------------------------ scopes: inputs
    "prompt longer than n_ctx": Misuse("semantic_scope", lambda c: semantic_scope(c.recall, "a=3 " * 200), ScopeInputError, r"inputs has 201 tokens.*n_ctx=128"),
    "token tensor longer than n_ctx": Misuse("semantic_scope", lambda c: semantic_scope(c.model, torch.ones(1025, dtype=torch.long)), ScopeInputError, "n_ctx=1024"),
    "list of token ids": Misuse("semantic_scope", lambda c: semantic_scope(c.model, [1, 2, 3]), ScopeInputError, r"inputs\[0\] is int, not str"),
    "empty list": Misuse("semantic_scope", lambda c: semantic_scope(c.model, []), ScopeInputError, "got an empty list"),
    "whitespace prompt": Misuse("semantic_scope", lambda c: semantic_scope(c.recall, "  \n "), match="whitespace only", warns=True),
    "all-unknown prompt": Misuse("temperature_scope", lambda c: temperature_scope(c.recall, "zzz qqq"), match="knows none of its words", warns=True),
    "left padding without a mask": Misuse("semantic_scope", lambda c: semantic_scope(c.model, _left_padded(c.model)), match="left-padded", warns=True),
    "mask with text": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, attention_mask=torch.ones(3)), ScopeInputError, "attention_mask applies to token-id tensors"),
    "mask of another shape": Misuse("fisher_scope", lambda c: fisher_scope(c.model, _left_padded(c.model), attention_mask=torch.ones(2, 3)), ScopeInputError, r"attention_mask has shape \(2, 3\)"),
    "mask of 2s": Misuse("semantic_scope", lambda c: semantic_scope(c.model, torch.tensor([1, 2]), attention_mask=torch.tensor([2, 1])), ScopeInputError, "only 0 and 1"),
    "mask with an empty row": Misuse("semantic_scope", lambda c: semantic_scope(c.model, torch.tensor([[1, 2], [3, 4]]), attention_mask=torch.tensor([[1, 1], [0, 0]])), ScopeInputError, "no real token in row 1"),
    "mask as a list": Misuse("semantic_scope", lambda c: semantic_scope(c.model, torch.tensor([1, 2]), attention_mask=[1, 1]), ScopeInputError, "attention_mask must be a tensor"),
    # ------------------------------------------------------------------ scopes: options
    **{
        f"memory_budget_mb={value!r}": Misuse("semantic_scope", lambda c, value=value: semantic_scope(c.model, PROMPT, memory_budget_mb=value), ScopeInputError, "memory_budget_mb")
        for value in (math.nan, math.inf, "512", None, 0, -1)
    },
    "top_k=True": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, top_k=True), ScopeInputError, "top_k"),
    "return_gradients='yes'": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, return_gradients="yes"), ScopeInputError, "return_gradients"),
    "input_scale nan": Misuse("temperature_scope", lambda c: temperature_scope(c.model, PROMPT, input_scale=math.nan), ScopeInputError, "input_scale"),
    "rank=True": Misuse("fisher_scope", lambda c: fisher_scope(c.model, PROMPT, rank=True), ScopeInputError, "rank must be"),
    "tail_mass nan": Misuse("fisher_scope", lambda c: fisher_scope(c.model, PROMPT, tail_mass=math.nan), ScopeInputError, "tail_mass"),
    "tail_tolerance nan": Misuse("fisher_scope", lambda c: fisher_scope(c.model, PROMPT, tail_tolerance=math.nan), ScopeInputError, "tail_tolerance"),
    "tail_tolerance coarse": Misuse("fisher_scope", lambda c: fisher_scope(c.recall, RECALL, tail_tolerance=0.5), match="tail_tolerance=0.5 dropped", warns=True),
    "layer=[]": Misuse("temperature_scope", lambda c: temperature_scope(c.model, PROMPT, layer=[]), ScopeInputError, "layer must be"),
    "unknown option": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, topk=3), TypeError, "topk"),
    "temperature with a target": Misuse("temperature_scope", lambda c: temperature_scope(c.model, PROMPT, target=" liberal"), ScopeInputError, r"temperature_scope has no target: it reads the model's confidence .* semantic_scope\(model, inputs, target=...\)"),
    "fisher with a target": Misuse("fisher_scope", lambda c: fisher_scope(c.model, PROMPT, target=3), ScopeInputError, "fisher_scope has no target: it reads the whole predictive distribution"),
    "temperature with a rank": Misuse("temperature_scope", lambda c: temperature_scope(c.model, PROMPT, rank=4), ScopeInputError, r"temperature_scope has no rank.*fisher_scope's"),
    "semantic with a rank": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, rank=4), ScopeInputError, r"semantic_scope has no rank.*fisher_scope\(model, inputs, rank=...\)"),
    "semantic with an eigen_solver": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, eigen_solver="dense"), ScopeInputError, "semantic_scope has no eigen_solver"),
    "layer-resolved temperature with a target": Misuse("layer_resolved_scope", lambda c: layer_resolved_scope(c.model, PROMPT, "temperature", target=3), ScopeInputError, "temperature_scope has no target"),
    # ------------------------------------------------------------------ scopes: positions
    "position=2**70": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, position=2**70), ScopeInputError, "out of range"),
    "position=[]": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, position=[]), ScopeInputError, "position is an empty list"),
    "position=[0, 'x']": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, position=[0, "x"]), ScopeInputError, "the element 'x'"),
    "position=np.int64": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, position=np.int64(3))),
    "20,000 repeated positions": Misuse("fisher_scope", lambda c: fisher_scope(c.model, PROMPT, position=[1] * 20_000)),
    # ------------------------------------------------------------------ scopes: targets
    "target mapping to <unk>": Misuse("semantic_scope", lambda c: semantic_scope(c.recall, RECALL, target="zzz"), ScopeInputError, "not in the tokenizer's vocabulary"),
    "contrast with <unk>": Misuse("semantic_scope", lambda c: semantic_scope(c.recall, RECALL, target=("7", " liberal")), ScopeInputError, r"target\[1\] ' liberal' is not in"),
    "callable returning ints": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, target=lambda y: (y[:, 0] > 0).long()), ScopeInputError, "float tensor"),
    "callable returning a detached tensor": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, target=lambda y: y.sum(-1).detach()), ScopeInputError, "differentiable"),
    "callable returning a float": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, target=lambda y: 1.0), ScopeInputError, "got float"),
    "callable returning a leaf of its own": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, target=lambda y: torch.zeros(len(y), requires_grad=True)), ScopeInputError, "no gradient path"),
    "callable returning NaN": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, target=lambda y: y.sum(-1) * math.nan), ScopeInputError, "NaN"),
    "callable with a NaN gradient": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, target=lambda y: (y[:, 0] - y[:, 0]).sqrt()), NonFiniteScoresError, "NaN or infinite"),
    "custom readout, bad memory budget": Misuse("jacobian_scope", lambda c: jacobian_scope(c.model, PROMPT, lambda y, logits: None, kind="mine", memory_budget_mb=-5), ScopeInputError, "memory_budget_mb"),
    # ------------------------------------------------------------------ integrated gradients
    "IG method unknown": Misuse("integrated_gradients", lambda c: integrated_gradients(c.model, PROMPT, method="simpson"), ScopeInputError, "method must be one of captum's"),
    "IG n_steps=1 for a Riemann rule": Misuse("integrated_gradients", lambda c: integrated_gradients(c.model, PROMPT, n_steps=1, method="riemann_right"), ScopeInputError, "n_steps must be an int ≥ 2"),
    "IG baseline of another shape": Misuse("integrated_gradients", lambda c: integrated_gradients(c.recall, RECALL, baseline=torch.zeros(2, 64)), ScopeInputError, r"baseline must be a float tensor .* \[5, 64\]"),
    "IG tolerance 0": Misuse("integrated_gradients", lambda c: integrated_gradients(c.model, PROMPT, tolerance=0), ScopeInputError, "tolerance"),
    "IG on two prompts": Misuse("integrated_gradients", lambda c: integrated_gradients(c.model, [PROMPT, PROMPT]), ScopeInputError, "one prompt"),
    "IG coarse fixed rule": Misuse("integrated_gradients", lambda c: integrated_gradients(c.recall, RECALL, n_steps=5, method="riemann_right"), match="has not converged", warns=True),
    # ------------------------------------------------------------------ readout hooks, interventions, components
    "readout_hook not a hook": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, readout_hook="blocks.9.nothing", target=lambda a: a.sum(-1)), ScopeInputError, "readout_hook must be the name"),
    "fisher at a readout_hook": Misuse("fisher_scope", lambda c: fisher_scope(c.model, PROMPT, readout_hook="blocks.0.hook_resid_post"), ScopeInputError, "readout_hook"),
    "fwd_hooks not pairs": Misuse("temperature_scope", lambda c: temperature_scope(c.model, PROMPT, fwd_hooks=[print]), ScopeInputError, r"fwd_hooks\[0\] must be a pair"),
    "fwd_hooks unknown hook": Misuse("semantic_scope", lambda c: semantic_scope(c.model, PROMPT, fwd_hooks=[("blocks.0.nothing", print)]), ScopeInputError, "not a hook point"),
    "sae without encoder": Misuse("sae_latent", lambda c: sae_latent(object(), 0), ScopeInputError, "W_enc"),
    "component kind": Misuse("component_scope", lambda c: component_scope(c.model, PROMPT, kind="entropy"), ScopeInputError, "kind must be"),
    "component position": Misuse("component_scope", lambda c: component_scope(c.model, PROMPT, position=2**70), ScopeInputError, "out of range"),
    "component memory budget": Misuse("component_scope", lambda c: component_scope(c.model, PROMPT, memory_budget_mb=math.nan), ScopeInputError, "memory_budget_mb"),
    "component repeated positions": Misuse("component_scope", lambda c: component_scope(c.model, PROMPT, position=[1, 1, 2])),
    "component target with fisher": Misuse("component_scope", lambda c: component_scope(c.model, PROMPT, kind="fisher", target=3), ScopeInputError, "target"),
    "top_cells(-1)": Misuse("ComponentScopeResult.top_cells", lambda c: c.components.top_cells(-1), ScopeInputError, r"top_cells\(k\): k must be a positive int.*got -1"),
    "top_heads(2.5)": Misuse("ComponentScopeResult.top_heads", lambda c: c.components.top_heads(2.5), ScopeInputError, r"top_heads\(k\): k must be a positive int.*got 2.5"),
    "component comparison lengths": Misuse("compare_components_with_patching", lambda c: compare_components_with_patching(c.model, CLEAN, CORRUPTED[:-1], (5, 6)), ScopeInputError, "same length"),
    # ------------------------------------------------------------------ layer-resolved, patching
    "layer-resolved kind": Misuse("layer_resolved_scope", lambda c: layer_resolved_scope(c.model, PROMPT, "entropy"), ScopeInputError, "kind must be"),
    "layer-resolved batch": Misuse("layer_resolved_scope", lambda c: layer_resolved_scope(c.model, torch.ones(2, 3, dtype=torch.long)), ScopeInputError, "prompt must be one prompt"),
    "layer-resolved too long": Misuse("layer_resolved_scope", lambda c: layer_resolved_scope(c.recall, "a=3 " * 200), ScopeInputError, r"prompt has 201 tokens"),
    "patching lengths differ": Misuse("activation_patching", lambda c: activation_patching(c.model, CLEAN, CORRUPTED[:-1], (5, 6)), ScopeInputError, "same length"),
    "patching batch_size=0": Misuse("activation_patching", lambda c: activation_patching(c.model, CLEAN, CORRUPTED, (5, 6), batch_size=0), ScopeInputError, "batch_size"),
    "patching metric of wrong shape": Misuse("activation_patching", lambda c: activation_patching(c.model, CLEAN, CORRUPTED, lambda logits: logits, backend="hooks"), ScopeInputError, "one value per row"),
    "attribution metric detached": Misuse("attribution_patching", lambda c: attribution_patching(c.model, CLEAN, CORRUPTED, lambda logits: logits[:, 5].detach()), ScopeInputError, "differentiable"),
    "attribution metric to <unk>": Misuse("attribution_patching", lambda c: attribution_patching(c.recall, RECALL, "a=3 b=7 c=1 c=", ("7", "zzz")), ScopeInputError, "not in the tokenizer's vocabulary"),
    "comparison scope_prompt": Misuse("compare_with_patching", lambda c: compare_with_patching(c.model, CLEAN, CORRUPTED, (5, 6), scope_prompt="both"), ScopeInputError, "scope_prompt"),
    "comparison target": Misuse("compare_with_patching", lambda c: compare_with_patching(c.model, CLEAN, CORRUPTED, (5, 6), target=3), ScopeInputError, "not target="),
    # ------------------------------------------------------------------ faithfulness
    "scorer of wrong shape": Misuse("evaluate_faithfulness", lambda c: evaluate_faithfulness(c.model, [CLEAN], _scorer(lambda ctx: torch.ones(2)), progress=False), ScopeInputError, r"scorer 'bad' returned shape \(2,\)"),
    "scorer returning a list": Misuse("evaluate_faithfulness", lambda c: evaluate_faithfulness(c.model, [CLEAN], _scorer(lambda ctx: [1.0] * len(ctx)), progress=False), ScopeInputError, "returned list"),
    "scorer returning NaN": Misuse("evaluate_faithfulness", lambda c: evaluate_faithfulness(c.model, [CLEAN], _scorer(lambda ctx: torch.full((len(ctx),), math.nan)), progress=False), ScopeInputError, "NaN"),
    "faithfulness prompt too long": Misuse("evaluate_faithfulness", lambda c: evaluate_faithfulness(c.recall, ["a=3 b=7 b=7", "a=3 " * 200], ["random"], progress=False), ScopeInputError, r"prompts\[1\] has 201 tokens"),
    "one fraction": Misuse("evaluate_faithfulness", lambda c: evaluate_faithfulness(c.model, [CLEAN], ["random"], fractions=[0.5], progress=False), ScopeInputError, "fractions"),
    # ------------------------------------------------------------------ dataset runs
    "run kinds": Misuse("run_dataset", lambda c: run_dataset(c.recall, [RECALL], c.tmp_path / "r1", kinds="entropy", progress=False), ScopeInputError, "kinds must be"),
    "run batch_size=0": Misuse("run_dataset", lambda c: run_dataset(c.recall, [RECALL], c.tmp_path / "r2", batch_size=0, progress=False), ScopeInputError, "batch_size"),
    "run target with fisher": Misuse("run_dataset", lambda c: run_dataset(c.recall, [RECALL], c.tmp_path / "r3", kinds="fisher", target="7", progress=False), ScopeInputError, "target applies"),
    "run target callable": Misuse("run_dataset", lambda c: run_dataset(c.recall, [RECALL], c.tmp_path / "r4", target=print, progress=False), ScopeInputError, "target must be"),
    "run out_dir missing parent": Misuse("run_dataset", lambda c: run_dataset(c.recall, [RECALL], c.tmp_path / "no" / "r", progress=False), ScopeInputError, "does not exist"),
    "run out_dir under a file": Misuse("run_dataset", lambda c: run_dataset(c.recall, [RECALL], Path(__file__) / "r", progress=False), ScopeInputError, "test_misuse.py' is a file, not a directory"),
    "run dataset of ints": Misuse("run_dataset", lambda c: run_dataset(c.recall, 3, c.tmp_path / "r5", progress=False), ScopeInputError, "dataset must be"),
    "run empty list": Misuse("run_dataset", lambda c: run_dataset(c.recall, [], c.tmp_path / "r6", progress=False), ScopeInputError, "empty list"),
    "eval run scorer callables": Misuse("run_faithfulness", lambda c: run_faithfulness(c.recall, [RECALL], c.tmp_path / "f1", {"mine": print}, progress=False), ScopeInputError, "callables are not accepted"),
    "eval run unknown scorer": Misuse("run_faithfulness", lambda c: run_faithfulness(c.recall, [RECALL], c.tmp_path / "f2", ["psychic"], progress=False), ScopeInputError, "scorers must be distinct names"),
    "eval run shard_size=0": Misuse("run_faithfulness", lambda c: run_faithfulness(c.recall, [RECALL], c.tmp_path / "f3", shard_size=0, progress=False), ScopeInputError, "shard_size"),
    "eval run negative seed": Misuse("run_faithfulness", lambda c: run_faithfulness(c.recall, [RECALL], c.tmp_path / "f4", seed=-1, progress=False), ScopeInputError, "seed must be"),
    "eval run out_dir is a file": Misuse("run_faithfulness", lambda c: run_faithfulness(c.recall, [RECALL], Path(__file__), progress=False), ScopeInputError, "is a file"),
    # ------------------------------------------------------------------ views, report, attention
    "token view prompt": Misuse("token_view", lambda c: token_view(c.result, prompt=3), ValueError, "prompt"),
    "token view values": Misuse("token_view", lambda c: token_view(c.result, values="gradients"), ValueError, "values must be"),
    "compare nothing": Misuse("compare_view", lambda c: compare_view([]), ValueError, "results is empty"),
    "compare one result": Misuse("compare_view", lambda c: compare_view(c.result), TypeError, r"results must be a list .* pass \[result\]"),
    "compare a non-result": Misuse("compare_view", lambda c: compare_view([c.result, 3]), TypeError, r"results\[1\] must be a ScopeResult"),
    "token view of a list": Misuse("token_view", lambda c: token_view([c.result]), TypeError, "result must be a ScopeResult"),
    "scopes page of one result": Misuse("scopes_page", lambda c: scopes_page(c.result), TypeError, "results must be a list"),
    "patching html of nothing": Misuse("patching_comparison_html", lambda c: patching_comparison_html(None), TypeError, "comparison must be a PatchingComparison"),
    "faithfulness html of a result": Misuse("faithfulness_table_html", lambda c: faithfulness_table_html(c.result), TypeError, "report must be a FaithfulnessReport"),
    "component view of a token scope": Misuse("component_view", lambda c: component_view(c.result), TypeError, "result must be a ComponentScopeResult"),
    "component comparison of nothing": Misuse("component_comparison_view", lambda c: component_comparison_view(None), TypeError, "comparison must be a ComponentPatchingComparison"),
    "report into a directory": Misuse("report", lambda c: report(c.model, PROMPT, path=c.tmp_path), ScopeInputError, "path .* is a directory"),
    "report into a missing directory": Misuse("report", lambda c: report(c.model, PROMPT, path=c.tmp_path / "no" / "r.html"), ScopeInputError, "does not exist"),
    "report matrix scope": Misuse("report", lambda c: report(c.model, PROMPT, matrix_scope="entropy"), ValueError, "matrix_scope"),
    "attention layer": Misuse("attention_comparison_view", lambda c: attention_comparison_view(c.model, c.matrix, layer=9), ValueError, "layer must be"),
    "attention layers": Misuse("attention_correlation", lambda c: attention_correlation(c.model, c.matrix, layers=[9]), ValueError, "layers must be"),
    # ------------------------------------------------------------------ export round trip
    "top_tokens(-1)": Misuse("ScopeResult.top_tokens", lambda c: c.result.top_tokens(-1), ScopeInputError, r"top_tokens\(k\): k must be a positive int.*got -1"),
    "top_tokens(True)": Misuse("ScopeResult.top_tokens", lambda c: c.result.top_tokens(True), ScopeInputError, "got True"),
    "round trip": Misuse("ScopeResult.from_dict", lambda c: ScopeResult.from_dict(c.result.to_dict())),
    "from_dict without scores": Misuse("ScopeResult.from_dict", lambda c: ScopeResult.from_dict({**c.result.to_dict(), "scores": None}), ResultFormatError, "scores"),
    "from_json of garbage": Misuse("ScopeResult.from_json", lambda c: ScopeResult.from_json("{]"), ResultFormatError, "not valid JSON"),
}


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    model = build(MODEL_SPECS[0][0])
    recall = models.load("recall")
    recall(recall.to_tokens(RECALL))  # a TransformerBridge wires some hooks lazily on its first forward pass
    saved = {m: ([p.requires_grad for p in m.parameters()], m.training) for m in (model, recall)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = semantic_scope(model, PROMPT)
        matrix = fisher_scope(model, "The cat sat on", position="all")
        components = component_scope(model, PROMPT)
    for m in (model, recall):  # a user mid-experiment: train mode, every other parameter frozen
        m.train()
        for index, parameter in enumerate(m.parameters()):
            parameter.requires_grad_(index % 2 == 0)
    yield Context(model, recall, result, matrix, components, tmp_path_factory.mktemp("misuse"))
    for m, (flags, training) in saved.items():
        for parameter, flag in zip(m.parameters(), flags):
            parameter.requires_grad_(flag)
        m.train(training)


@pytest.mark.parametrize("case", list(MISUSES))
def test_misuse_gives_a_clear_error_and_leaves_every_model_as_it_was(context, case):
    misuse = MISUSES[case]
    before = {name: ModelState.capture(m) for name, m in (("toy", context.model), ("recall", context.recall))}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if misuse.raises is None:
            misuse.call(context)
        else:
            with pytest.raises(misuse.raises, match=misuse.match):
                misuse.call(context)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if misuse.warns:
        assert any(re.search(misuse.match, m) for m in messages), messages
    for name, model in (("toy", context.model), ("recall", context.recall)):
        before[name].assert_unchanged(model, f"{case!r} on the {name} model")


def test_report_checks_its_path_before_computing(context, monkeypatch):
    report_module = importlib.import_module("jscopes_tl.views.report")  # the package exports a function of that name
    monkeypatch.setattr(report_module, "semantic_scope", lambda *a, **k: pytest.fail("report computed before checking path"))
    with pytest.raises(ScopeInputError, match="is a directory"):
        report(context.model, PROMPT, path=context.tmp_path)


def test_every_public_function_is_in_the_table():
    public = {
        name
        for name in jscopes_tl.__all__
        if callable(getattr(jscopes_tl, name)) and not isinstance(getattr(jscopes_tl, name), type)
    }
    public |= {"ScopeResult.from_dict", "ScopeResult.from_json", "token_view", "compare_view", "attention_comparison_view", "attention_correlation"}
    covered = {misuse.function for misuse in MISUSES.values()}
    assert public <= covered, f"public functions with no row in MISUSES: {sorted(public - covered)}"


# ------------------------------------------------------------------ the command line
CLI_MISUSES = {
    "scope without --model": (["scope", RECALL], "--model is required"),
    "misspelled bundled model": (["scope", RECALL, "--model", "recal"], "did you mean 'recall'"),
    "prompt longer than n_ctx": (["scope", "a=3 " * 200, "--model", "recall"], "n_ctx=128"),
    "target mapping to <unk>": (["scope", RECALL, "--model", "recall", "--target", "zzz"], "not in the tokenizer's vocabulary"),
    "--out is a directory": (["scope", RECALL, "--model", "recall", "--out", "TMP"], "is a directory"),
    "--json in a missing directory": (["scope", RECALL, "--model", "recall", "--json", "TMP/no/x.json"], "does not exist"),
    "eval without --model": (["eval", "PROMPTS"], "--model is required"),
    "eval of a binary file": (["eval", "BINARY", "--model", "recall"], "not a UTF-8 text file"),
    "eval --json is a directory": (["eval", "PROMPTS", "--model", "recall", "--json", "TMP"], "is a directory"),
    "ground-truth --json is a directory": (["ground-truth", "--json", "TMP"], "is a directory"),
    "unknown scorer": (["eval", "PROMPTS", "--model", "recall", "--scorers", "psychic"], "unknown scorer"),
}


@pytest.mark.parametrize("case", list(CLI_MISUSES))
def test_command_line_misuse_exits_2_with_one_line_and_no_side_effects(capsys, tmp_path, case):
    argv, message = CLI_MISUSES[case]
    (tmp_path / "prompts.txt").write_text("a=3 b=7 b=7\n")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    files = {"TMP": str(tmp_path), "PROMPTS": str(tmp_path / "prompts.txt"), "BINARY": str(tmp_path / "binary.txt")}
    argv = [files.get(a, a.replace("TMP", str(tmp_path))) for a in argv]
    before = ModelState.capture(torch.nn.Module())  # global torch hooks and grad mode only
    listing = sorted(tmp_path.rglob("*"))
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert sorted(tmp_path.rglob("*")) == listing
    before.assert_unchanged(torch.nn.Module(), case)


# ------------------------------------------------------------------ the checker itself
def _with_hook_point_hook(model: Any) -> Any:
    name = next(iter(model.hook_dict))
    return model.hook_dict[name].add_hook(lambda activation, hook: None)


CHANGES = {
    "module forward hook": lambda m: m.blocks[0].register_forward_hook(lambda *a: None),
    "module backward hook": lambda m: m.blocks[0].register_full_backward_hook(lambda *a: None),
    "hook point hook": _with_hook_point_hook,
    "global forward hook": lambda m: torch.nn.modules.module.register_module_forward_hook(lambda *a: None),
    "requires_grad": lambda m: next(m.parameters()).requires_grad_(not next(m.parameters()).requires_grad),
    "train/eval": lambda m: m.blocks[0].train(not m.blocks[0].training),
    "a weight's bytes": lambda m: next(m.parameters()).data.view(-1)[0].add_(0.0).neg_(),
    "grad mode": lambda m: torch.set_grad_enabled(not torch.is_grad_enabled()),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_checker_notices_each_kind_of_change(change):
    from jscopes_tl.toy import toy_model

    model = toy_model("gpt2", family="hooked" if jscopes_tl.adapter.hooked_transformer_available() else "bridge")
    model(torch.tensor([[0, 1]]))
    grad_mode = torch.is_grad_enabled()
    before = ModelState.capture(model)
    handle = CHANGES[change](model)
    try:
        with pytest.raises(AssertionError, match="changed"):
            before.assert_unchanged(model, change)
    finally:
        torch.set_grad_enabled(grad_mode)
        if hasattr(handle, "remove"):
            handle.remove()
