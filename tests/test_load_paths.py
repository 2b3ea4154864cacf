"""The documented load paths, run for real up to the download boundary.

Each path in the "Which load path, for which scope" table of docs/getting-started.md is the user's own call, unpatched,
on a tiny random GPT-2 served by an offline Hugging Face hub cache (``tests/fake_hub.py``) in a
fresh process (``tests/load_paths_worker.py``): config, weights and tokenizer come from the cache
and everything TransformerLens does with them runs. Then what the table promises is checked against
the float64 oracle on the Hugging Face model (``tests/family_oracle.py``): unprocessed paths give
HF's logits and every scope; folded paths (``from_pretrained``, compatibility mode) keep contrast and
exact Fisher, read Fisher rank 1 in the folded basis, score a single logit against the centred
``W_U`` and warn that Temperature is 0. Every path leaves the model as it found it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import fake_hub
from architecture_matrix import fisher_rank_one_tolerance, relative_error
from family_oracle import float64_copy, oracle
from load_paths_worker import CONTRAST, PROMPT, loaders

TOLERANCE = 1e-4  # float32 TransformerLens against the float64 oracle, relative to the largest score
PATHS = list(loaders(""))
FOLDED = {"HookedTransformer.from_pretrained", "TransformerBridge.boot_transformers + enable_compatibility_mode"}
GETTING_STARTED = (fake_hub.REPOSITORY / "docs" / "getting-started.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> fake_hub.FakeHub:
    return fake_hub.build(tmp_path_factory.mktemp("fake_hub"))


@pytest.fixture(scope="module")
def records(hub: fake_hub.FakeHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("load_paths") / "records.pt"
    worker = Path(__file__).with_name("load_paths_worker.py")
    completed = fake_hub.run_python(hub, [str(worker), str(out), str(hub.saved)], cwd=out.parent)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def reference(hub: fake_hub.FakeHub, records: dict[str, Any]) -> Any:
    """The float64 oracle on the cached Hugging Face model, at the last position of the prompt's ids."""
    ids = records[PATHS[0]]["tokens"]
    return oracle(float64_copy(hub.hf_model), ids, [len(ids) - 1])


def last(records: dict[str, Any]) -> int:
    return len(records[PATHS[0]]["tokens"]) - 1


DOCUMENTED_CALLS = {  # the first column of the table -> the path run here
    "TransformerBridge.boot_transformers(name)": "TransformerBridge.boot_transformers",
    "model.enable_compatibility_mode()": "TransformerBridge.boot_transformers + enable_compatibility_mode",
    "HookedTransformer.from_pretrained_no_processing(name)": "HookedTransformer.from_pretrained_no_processing",
    "HookedTransformer.from_pretrained(name)": "HookedTransformer.from_pretrained",
    'jscopes_tl.adapter.load_pretrained("./my-model")': "load_pretrained(directory)",
}


def test_every_load_path_in_the_documented_table_is_one_run_here() -> None:
    table = GETTING_STARTED[GETTING_STARTED.index("## Which load path, for which scope") :].split("\n\n")[1]
    spans = {re.search(r"`([^`]*\([^`]*)`", line.split("|")[1]).group(1) for line in table.splitlines()[2:]}  # each row's call
    assert spans == set(DOCUMENTED_CALLS), spans
    other_generation = "TransformerBridge" if "HookedTransformer.from_pretrained" in PATHS else "HookedTransformer"
    installed = {path for path in DOCUMENTED_CALLS.values() if not path.startswith(other_generation)}
    assert installed == set(PATHS) - {"load_pretrained(hub name)"}  # every row this TransformerLens has, and no other


@pytest.mark.parametrize("path", PATHS)
def test_the_model_is_the_cached_checkpoint_with_its_tokenizer(path: str, hub: fake_hub.FakeHub, records: dict[str, Any]) -> None:
    record = records[path]
    expected_ids = [hub.tokenizer.bos_token_id, *hub.tokenizer(PROMPT).input_ids]
    assert record["to_tokens"].tolist() == expected_ids  # the cached tokenizer, BOS prepended
    assert record["tokens"].tolist() == expected_ids
    with torch.no_grad():
        hf_logits = hub.hf_model(record["to_tokens"][None]).logits[0]
    logits = record["logits"]
    if path in FOLDED:  # W_U centred over the vocabulary: every logit of a position shifts alike
        logits, hf_logits = logits - logits.mean(-1, keepdim=True), hf_logits - hf_logits.mean(-1, keepdim=True)
    assert relative_error(logits, hf_logits) < 1e-5


@pytest.mark.parametrize("path", PATHS)
def test_the_config_is_the_cached_one_not_a_hard_coded_gpt2(path: str, hub: fake_hub.FakeHub, records: dict[str, Any]) -> None:
    config = hub.hf_model.config  # 2 layers of 64, not GPT-2 small's 12 of 768
    assert records[path]["sizes"] == {"n_layers": config.n_layer, "d_model": config.n_embd, "d_vocab": config.vocab_size}


@pytest.mark.parametrize("path", PATHS)
def test_the_numerics_say_whether_the_path_folded_the_final_norm(path: str, records: dict[str, Any]) -> None:
    numerics = records[path]["numerics"]
    folded = path in FOLDED
    assert numerics["final_norm_folded_into_unembed"] is folded
    assert numerics["unembed_centred"] is folded
    assert numerics["perturbation_hook"] == "blocks.0.hook_resid_pre"
    if records[path]["cls"] == "TransformerBridge":
        assert numerics["compatibility_mode"] is folded


@pytest.mark.parametrize("path", [path for path in PATHS if path not in FOLDED])
def test_unprocessed_paths_give_every_scope_of_the_hugging_face_model(path: str, records: dict[str, Any], reference: Any) -> None:
    record, p = records[path], last(records)
    assert record["semantic_target"] == int(reference.logits[p].argmax())
    expected = {
        "semantic": reference.semantic(p),
        "contrast": reference.semantic(p, tuple(record["contrast_target"])),
        "fisher-1": reference.fisher(p, 1),
        "fisher-exact": reference.fisher(p, None),
        "temperature": reference.temperature(p),
    }
    tolerance = {"fisher-1": fisher_rank_one_tolerance(reference, p)}
    errors = {name: relative_error(record["scores"][name], value) for name, value in expected.items()}
    assert all(errors[name] <= tolerance.get(name, TOLERANCE) for name in errors), errors
    assert not any("final norm" in message for messages in record["warnings"].values() for message in messages)


@pytest.mark.parametrize("path", sorted(FOLDED & set(PATHS)))
def test_folded_paths_keep_contrast_and_exact_fisher_and_read_rank_one_in_the_folded_basis(
    path: str, records: dict[str, Any], reference: Any
) -> None:
    record, p = records[path], last(records)
    assert relative_error(record["scores"]["contrast"], reference.semantic(p, tuple(record["contrast_target"]))) <= TOLERANCE
    assert relative_error(record["scores"]["fisher-exact"], reference.fisher(p, None)) <= TOLERANCE
    folded_rank_one = reference.fisher(p, 1, folded=True)
    assert relative_error(record["scores"]["fisher-1"], folded_rank_one) <= fisher_rank_one_tolerance(reference, p, folded=True)
    assert relative_error(record["scores"]["fisher-1"], reference.fisher(p, 1)) > 1e-2  # another direction than HF's rank 1


@pytest.mark.parametrize("path", sorted(FOLDED & set(PATHS)))
def test_folded_paths_score_a_single_logit_against_the_centred_unembedding(path: str, records: dict[str, Any], reference: Any) -> None:
    """Centring ``W_U`` over the vocabulary makes a single logit's direction ``w_target − mean_v w_v``."""
    record, p = records[path], last(records)
    W, target = reference.W[p], record["semantic_target"]
    assert target == int(reference.logits[p].argmax())
    centred = torch.einsum("d,tde->te", W[:, target] - W.mean(1), reference.jacobian[p]).norm(dim=-1)
    assert relative_error(record["scores"]["semantic"], centred) <= TOLERANCE
    assert relative_error(record["scores"]["semantic"], reference.semantic(p)) > 1e-2  # "single-logit Semantic shifts"


@pytest.mark.parametrize("path", sorted(FOLDED & set(PATHS)))
def test_folded_paths_warn_that_temperature_is_zero(path: str, records: dict[str, Any]) -> None:
    record = records[path]
    assert any("final norm has no gain" in message for message in record["warnings"]["temperature"]), record["warnings"]
    assert record["scores"]["temperature"].max() <= 1e-4 * record["scores"]["contrast"].max()
    assert not any("final norm" in message for name in ("contrast", "fisher-exact") for message in record["warnings"][name])


@pytest.mark.parametrize("path", PATHS)
def test_every_path_leaves_the_model_as_it_found_it(path: str, records: dict[str, Any]) -> None:
    assert records[path]["left_clean"] == ""


def test_load_pretrained_gives_the_generations_unprocessed_model_class(records: dict[str, Any]) -> None:
    classes = {records[path]["cls"] for path in PATHS if path.startswith("load_pretrained")}
    assert classes == {"HookedTransformer" if "HookedTransformer.from_pretrained" in PATHS else "TransformerBridge"}


def test_the_contrast_is_the_readmes_pair(hub: fake_hub.FakeHub, records: dict[str, Any]) -> None:
    pair = [hub.tokenizer(text).input_ids for text in CONTRAST]
    assert all(len(ids) == 1 for ids in pair)  # single tokens, as in GPT-2's vocabulary
    assert records[PATHS[0]]["contrast_target"] == [ids[0] for ids in pair]
