"""Bundled models: load by name offline, match the Hugging Face model, answer their tasks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from jscopes_tl import models
from jscopes_tl.adapter import ModelLoadError, load_pretrained
from jscopes_tl.models.files import MODELS_DIRECTORY, word_tokenizer
from jscopes_tl.models.ground_truth import prompt_token_ids

# The held-out accuracies stated in docs/guide/models.md; the tests check them on a
# different fixed seed from the one the training script reports.
STATED_ACCURACY = {"recall": 0.99, "induction": 0.97, "periodic": 0.97}
_LOADED: dict[str, object] = {}


def bundled(name: str):
    if name not in _LOADED:
        _LOADED[name] = models.load(name)
    return _LOADED[name]


def test_load_by_name_gives_the_installed_transformer_lens_family():
    model = bundled("recall")
    expected = "HookedTransformer" if models.default_family() == "hooked" else "TransformerBridge"
    assert type(model).__name__ == expected


def test_unknown_name_is_refused_with_the_list_of_bundled_models():
    with pytest.raises(KeyError, match="recall"):
        models.load("gpt5")


@pytest.mark.parametrize("name", models.BUNDLED_MODELS)
def test_transformer_lens_logits_equal_hugging_face_logits(name):
    hf_model, _ = models.load_hf(name)
    model = bundled(name)
    prompt = models.get_task(name).labelled_prompts(1, seed=3)[0]
    tokens = model.to_tokens(prompt.text)
    with torch.no_grad():
        difference = (model(tokens) - hf_model(tokens).logits).abs().max()
    assert difference < 1e-4


@pytest.mark.parametrize("name", models.BUNDLED_MODELS)
def test_held_out_accuracy_is_at_least_the_stated_figure(name):
    model = bundled(name)
    prompts = models.get_task(name).labelled_prompts(100, seed=7)
    rows = [prompt_token_ids(model, prompt) for prompt in prompts]
    lengths = torch.tensor([len(row) for row in rows])
    tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # right padding: causal, harmless
    with torch.no_grad():
        predicted = model(tokens)[torch.arange(len(rows)), lengths - 1].argmax(dim=-1)
    answers = torch.tensor(model.tokenizer.convert_tokens_to_ids([prompt.answer for prompt in prompts]))
    assert (predicted == answers).float().mean() >= STATED_ACCURACY[name]


@pytest.mark.parametrize("name", models.BUNDLED_MODELS)
def test_labelled_prompts_tokenise_to_their_words_and_sources_hold_the_answer(name):
    model = bundled(name)
    for prompt in models.get_task(name).labelled_prompts(20, seed=1):
        assert model.to_str_tokens(prompt.text) == prompt.tokens
        # A recall source is the pair "b=7" holding the answer "7"; elsewhere it is the answer itself.
        assert all(prompt.tokens[index].split("=")[-1] == prompt.answer for index in prompt.source_indices)
        assert set(prompt.source_indices) & set(prompt.candidate_indices)


def test_labelled_prompts_are_reproducible_from_their_seed():
    task = models.get_task("periodic")
    assert task.labelled_prompts(5, seed=2) == task.labelled_prompts(5, seed=2)
    assert task.labelled_prompts(5, seed=2) != task.labelled_prompts(5, seed=3)


def test_word_tokenizer_splits_text_typed_without_spaces():
    tokenizer = word_tokenizer(models.get_task("recall"))
    assert tokenizer.tokenize("a=3 b=7 b=") == ["a=3", "b=7", "b="]


def test_bundled_weights_stay_small():
    size = sum(path.stat().st_size for path in MODELS_DIRECTORY.rglob("*") if path.is_file())
    assert size < 20 * 2**20


def test_training_record_states_the_held_out_accuracy():
    for name in models.BUNDLED_MODELS:
        assert models.training_record(name)["held_out_accuracy"] >= STATED_ACCURACY[name]


def test_load_pretrained_reads_a_local_directory():
    model = load_pretrained(str(models.files.model_directory("induction")))
    hf_model, _ = models.load_hf("induction")
    tokens = model.to_tokens("cat sun map cat sun")
    with torch.no_grad():
        ours = torch.log_softmax(model(tokens), dim=-1)  # processing may centre the logits
        theirs = torch.log_softmax(hf_model(tokens).logits, dim=-1)
    assert (ours - theirs).abs().max() < 1e-3


def test_load_pretrained_refuses_a_directory_without_a_model(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_pretrained(str(tmp_path))


def test_hub_name_offline_fails_at_once_with_a_local_copy_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="local"):
        load_pretrained("jscopes-tl-tests/not-a-model")
    assert time.perf_counter() - started < 3


def test_unreachable_hub_fails_at_once_without_the_offline_flag(monkeypatch):
    from jscopes_tl.adapter import loading  # where load_pretrained looks hub_reachable up

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not reachable"):
        load_pretrained("jscopes-tl-tests/not-a-model")
    assert time.perf_counter() - started < 3
