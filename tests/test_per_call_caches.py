"""What a scope keeps between calls to save per-call work (the model's hook dictionary, its final
norm's parameters, each token id's string) follows the model when the user changes it, and never
keeps a model alive."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from jscopes_tl import semantic_scope
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.toy import toy_model

from conftest import MODEL_SPECS, PROMPT

FAMILIES = sorted({spec["family"] for _, spec in MODEL_SPECS})


def _fresh(family: str, architecture: str = "gpt2"):
    """A model of its own: these tests change it."""
    return toy_model(architecture, family=family, init_scale=0.3, seed=0)


def _folded_flag(model) -> bool:
    return semantic_scope(model, PROMPT).metadata["numerics"]["final_norm_folded_into_unembed"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_final_norm_is_read_again_after_the_user_edits_or_replaces_it(family):
    model = _fresh(family)
    norm = model.ln_final
    assert _folded_flag(model) is False  # toy norms have random gains
    with torch.no_grad():  # in place (the version counter moves)
        for name, parameter in norm.named_parameters():
            parameter.fill_(0.0 if name.rsplit(".", 1)[-1] in ("b", "bias") else 1.0)
    assert _folded_flag(model) is True
    name, parameter = next((n, p) for n, p in norm.named_parameters() if n.rsplit(".", 1)[-1] not in ("b", "bias"))
    parameter.data.mul_(2.0)  # through .data: no version counter moves
    assert _folded_flag(model) is False
    owner = norm.get_submodule(name.rpartition(".")[0])
    setattr(owner, name.rsplit(".", 1)[-1], torch.nn.Parameter(torch.ones_like(parameter)))  # a new parameter
    assert _folded_flag(model) is True


@pytest.mark.parametrize("family", FAMILIES)
def test_token_strings_are_the_models_own_and_follow_a_new_tokenizer(family):
    model = _fresh(family)
    ids = torch.randint(0, len(model.tokenizer), (60,), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([ids, ids[:10]])  # repeats
    adapter = ModelAdapter(model)
    expected = list(model.to_str_tokens(ids))
    assert adapter.str_tokens(ids) == expected
    assert adapter.str_tokens(ids) == expected  # from what the first call kept
    assert semantic_scope(model, ids[:12]).str_tokens == expected[:12]

    model.tokenizer = _word_tokenizer(len(model.tokenizer))  # other strings for the same ids
    other = list(model.to_str_tokens(ids))
    assert other == [f"w{i}" for i in ids.tolist()] and other != expected
    assert ModelAdapter(model).str_tokens(ids) == other


def _word_tokenizer(size: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocabulary = {f"w{i}": i for i in range(size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="w0")))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hook_point_the_user_adds_is_known_to_the_next_call(family):
    from transformer_lens.hook_points import HookPoint

    model = _fresh(family)
    semantic_scope(model, PROMPT)  # the hook dictionary is now kept
    model.hook_user_extra = HookPoint()
    if family == "hooked":
        model.setup()  # a HookedTransformer lists hook points it was set up with
    assert "hook_user_extra" in model.hook_dict
    seen = []
    result = semantic_scope(model, PROMPT, fwd_hooks=[("hook_user_extra", lambda activation, hook: seen.append(hook))])
    assert result.metadata["fwd_hooks"] == ["hook_user_extra"]  # accepted, not refused as unknown


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_kept_between_calls_keeps_a_model_alive(family):
    model = _fresh(family)
    semantic_scope(model, PROMPT, position="all", layer="all")
    semantic_scope(model, [PROMPT, "The cat sat"], target=(3, 9))
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None


@pytest.mark.parametrize("family", FAMILIES)
def test_modes_are_given_back_exactly_including_hook_points_in_a_mode_of_their_own(family):
    """HookPoints pass activations through in either mode, so a call looks at theirs only when
    another module is in training mode; every mode is what the user left, before and after."""
    from transformer_lens.hook_points import HookPoint

    model = _fresh(family)
    hook_points = [module for module in model.modules() if isinstance(module, HookPoint)]
    others = [module for module in model.modules() if not isinstance(module, HookPoint)]
    for training_model in (False, True):
        model.train(training_model)
        hook_points[0].train(not training_model)  # one hook point in the other mode
        before = [module.training for module in model.modules()]
        seen_during: list[bool] = []

        def record(activation, hook):
            seen_during.append(any(module.training for module in others))

        semantic_scope(model, PROMPT, fwd_hooks=[(ModelAdapter(model).resid_pre_hook(1), record)])
        assert seen_during == [False]  # no dropout or other training behaviour during the call
        assert [module.training for module in model.modules()] == before


def test_every_mode_free_class_has_a_forward_pass_that_reads_no_mode():
    """families.MODE_FREE_MODULES lists classes whose modes a call leaves alone: each forward pass
    must be the same in training and eval mode (no dropout, no ``self.training``)."""
    import importlib
    import inspect

    from jscopes_tl.families import MODE_FREE_MODULES

    checked = []
    for name in sorted(MODE_FREE_MODULES):
        module_name, _, class_name = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # e.g. TransformerLens 2.x has no TransformerBridge components
            continue
        cls = getattr(module, class_name)  # a renamed class would leave a stale entry: fail
        forward = cls.forward
        if forward is not torch.nn.Module.forward:  # containers have none of their own
            source = inspect.getsource(forward)
            assert "training" not in source and "dropout" not in source.lower(), name
        checked.append(name)
    assert "torch.nn.modules.linear.Linear" in checked and "transformers.pytorch_utils.Conv1D" in checked


@pytest.mark.parametrize("family", FAMILIES)
def test_a_mode_free_module_in_a_mode_of_its_own_is_left_as_it_is_and_changes_nothing(family):
    from jscopes_tl.families import is_mode_free

    model = _fresh(family).eval()
    reference = semantic_scope(model, PROMPT).scores
    free = [module for module in model.modules() if is_mode_free(module)]
    assert free
    for module in free:
        module.training = True  # train() would switch its children too
    modes = [module.training for module in model.modules()]
    seen_during: list[bool] = []

    def record(activation, hook):
        seen_during.append(all(module.training for module in free))

    result = semantic_scope(model, PROMPT, fwd_hooks=[(ModelAdapter(model).resid_pre_hook(1), record)])
    assert seen_during == [True]  # not switched: its forward pass is the same in either mode
    assert torch.equal(result.scores, reference)
    assert [module.training for module in model.modules()] == modes
