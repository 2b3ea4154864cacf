"""The user's model is never damaged: threads take turns on one model, models whose weights autograd
cannot use are refused before anything changes, every flag is restored even when one restore
fails, and nothing of a call (its autograd graph) stays alive on the model after it returns."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch

from jscopes_tl import UnsupportedModelError, fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available
from jscopes_tl.toy import toy_model

from conftest import MODEL_SPECS, PROMPT, build
from model_state import ModelState

FAMILY = "hooked" if hooked_transformer_available() else "bridge"

CALLS = [
    lambda m: semantic_scope(m, PROMPT).scores,
    lambda m: fisher_scope(m, [PROMPT, "The cat sat"], rank=2).scores,
    lambda m: temperature_scope(m, "The cat sat on the", position="all").scores,
    lambda m: semantic_scope(m, PROMPT, layer="all", target=(3, 9)).scores,
]


@pytest.mark.parametrize("name", [name for name, _ in MODEL_SPECS if name.endswith(("-gpt2", "-llama"))])
def test_threads_scoring_one_model_take_turns_and_leave_it_clean(name):
    model = build(name)
    serial = [call(model) for call in CALLS]
    before = ModelState.capture(model)
    results: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(thread: int) -> None:
        start.wait()
        for repeat in range(3):
            index = (thread + repeat) % len(CALLS)
            try:
                results[thread, repeat] = CALLS[index](model)
            except BaseException as error:  # noqa: BLE001 - collected and reported below
                errors.append(error)

    threads = [threading.Thread(target=work, args=(thread,)) for thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[:3]
    assert len(results) == 12
    for (thread, repeat), scores in results.items():
        torch.testing.assert_close(scores, serial[(thread + repeat) % len(CALLS)], rtol=1e-6, atol=0)
    before.assert_unchanged(model, "threads")


@pytest.fixture(scope="module")
def inference_mode_model():
    with torch.inference_mode():
        return toy_model("gpt2", family=FAMILY, init_scale=0.3)


def test_model_created_under_inference_mode_is_refused_before_anything_changes(inference_mode_model):
    model = inference_mode_model
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(UnsupportedModelError, match="inference_mode.*inference tensors"):
        semantic_scope(model, PROMPT)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(flags)


def test_meta_device_model_is_refused():
    model = toy_model("gpt2", family=FAMILY, init_scale=0.3).to("meta")
    with pytest.raises(UnsupportedModelError, match="meta device"):
        semantic_scope(model, PROMPT)


def test_every_flag_is_restored_even_when_one_restore_fails(any_model):
    """One parameter whose requires_grad cannot be set back must not leave the others frozen."""
    parameters = list(any_model.parameters())
    broken = parameters[1]
    before = [p.requires_grad for p in parameters]
    training = [m.training for m in any_model.modules()]
    real_requires_grad = broken.requires_grad_

    def fail_to_restore(flag: bool = True) -> torch.Tensor:
        if flag:
            raise RuntimeError("cannot restore this one")
        return real_requires_grad(flag)

    broken.requires_grad_ = fail_to_restore
    try:
        with pytest.raises(RuntimeError, match="cannot restore this one"):
            semantic_scope(any_model, PROMPT)
    finally:
        del broken.requires_grad_
        real_requires_grad(True)
    assert [p.requires_grad for p in parameters if p is not broken] == [f for p, f in zip(parameters, before) if p is not broken]
    assert [m.training for m in any_model.modules()] == training


def _cached_patterns(model: torch.nn.Module) -> dict[str, object]:
    return {name: vars(module).get("_pattern") for name, module in model.named_modules()}


def _graph_holders(model: torch.nn.Module) -> list[str]:
    return [
        f"{name}.{attribute}"
        for name, module in model.named_modules()
        for attribute, value in vars(module).items()
        if isinstance(value, torch.Tensor) and value.grad_fn is not None
    ]


def test_nothing_of_the_call_stays_alive_after_it_returns(model):
    """A bridge's attention bridges cache the last pattern, which holds the scope's whole autograd
    graph (about 1 GB at 1,024 tokens on GPT-2 size); after the call it must be gone."""
    adapter = ModelAdapter(model)
    with torch.no_grad():
        model(model.to_tokens("warm up"))  # a cached pattern from the user's own forward pass, if any
    cached_before = _cached_patterns(model)
    pattern_hook = adapter._resolve_hook(["blocks.0.attn.hook_pattern"])
    seen: list[weakref.ref] = []

    def keep_a_weak_reference(activation: torch.Tensor, hook) -> None:
        seen.append(weakref.ref(activation))

    with model.hooks(fwd_hooks=[(pattern_hook, keep_a_weak_reference)]):
        fisher_scope(model, PROMPT * 4, rank=2)
    gc.collect()
    assert seen and all(reference() is None for reference in seen), "the call's attention pattern is still alive"
    assert _graph_holders(model) == []
    cached_after = _cached_patterns(model)
    assert all(cached_after[name] is value for name, value in cached_before.items())  # the user's own cache is back


@pytest.mark.skipif(FAMILY != "bridge", reason="a TransformerBridge wraps a Hugging Face model")
def test_the_wrapped_hugging_face_model_gets_its_train_mode_back():
    """bridge.eval() also switches the wrapped model's root and its unregistered modules (GPT-2's
    embedding dropout), which the bridge's own module tree does not list."""
    model = toy_model("gpt2", family="bridge", init_scale=0.3)
    model.train()
    wrapped = vars(model)["original_model"]
    before = [module.training for module in wrapped.modules()]
    assert all(before)
    semantic_scope(model, PROMPT)
    assert [module.training for module in wrapped.modules()] == before


def test_each_forward_passs_graph_is_freed_before_the_next_one_starts(model):
    """position="all" runs several forward passes (groups of positions); each one's graph (on a bridge
    also held by the attention bridges' cached patterns) is freed as soon as its last backward pass
    is done, so a call never holds two graphs."""
    first_hook = ModelAdapter(model).resid_pre_hook(0)
    users_own = _graph_holding_values(model)  # e.g. a pattern cached by the user's own forward pass
    calls_graphs: list[list[str]] = []

    def check(activation: torch.Tensor, hook) -> None:  # runs at the start of every forward pass
        held = _graph_holding_values(model)
        calls_graphs.append([name for name, value in held.items() if users_own.get(name) is not value])

    result = semantic_scope(model, "The cat sat on the mat. The cat sat on the", position="all", fwd_hooks=[(first_hook, check)])
    assert len(calls_graphs) > 1, "one forward pass: the test needs several"
    assert calls_graphs == [[]] * len(calls_graphs)
    assert result.scores.shape[0] == len(result.tokens)


def _graph_holding_values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{attribute}": value
        for name, module in model.named_modules()
        for attribute, value in vars(module).items()
        if isinstance(value, torch.Tensor) and value.grad_fn is not None
    }


def test_a_call_that_fails_after_its_forward_pass_leaves_no_graph_behind(model):
    """The graph is normally freed after the last backward pass; a readout that raises comes
    before it, and the end of the call must still give the model's cache slots back."""
    from jscopes_tl import ScopeInputError

    users_own = _graph_holding_values(model)
    with pytest.raises(ScopeInputError, match="NaN or infinite"):
        semantic_scope(model, PROMPT, target=lambda y: y.sum(-1) * float("nan"))
    held = _graph_holding_values(model)
    assert [name for name, value in held.items() if users_own.get(name) is not value] == []
