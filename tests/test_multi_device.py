"""Models too large for one device: TransformerLens models that Accelerate dispatched with a
``device_map``: a TransformerBridge around a dispatched Hugging Face model (TransformerLens 4.x) and a
HookedTransformer split by ``accelerate.dispatch_model`` (TransformerLens 2.x).

This machine has one device (a CPU), so the split measured here is the one a CPU can hold: blocks,
the final norm, the token embedding and the unembedding offloaded to ``"disk"``. Their parameters
are then ``meta`` placeholders outside each module's own forward pass, and Accelerate's
``AlignDevicesHook`` loads them onto the execution device for every call — the same mechanism as
``"cpu"`` offload on a GPU machine, and a model whose weights are not where its parameters say.
Every scope must equal the undispatched model's exactly (and a float64 brute force on the Hugging
Face model), and leave the dispatch as it found it. GPU placements (``cuda:0``/``cuda:1`` splits,
``n_devices > 1``) cannot run here; the device routing they rely on is tested on the offloaded
model, whose execution device differs from its parameters' (``meta``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from jscopes_tl import (
    activation_patching,
    attribution_patching,
    component_scope,
    fisher_scope,
    semantic_scope,
    temperature_scope,
)
from jscopes_tl.adapter import (
    ModelAdapter,
    bridge_from_hf_model,
    hooked_transformer_available,
    hooked_transformer_from_hf_model,
)
from jscopes_tl.errors import UnsupportedModelError
from jscopes_tl.families import randomise_norms
from jscopes_tl.toy import _hf_config, toy_tokenizer

accelerate = pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
try:
    from transformer_lens.model_bridge import TransformerBridge
except ImportError:
    TransformerBridge = None

PROMPT = "Tom loves Korean food. He grew up in the South"


def _patching_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted token ids of one length: BOS + the prompt's first 9 tokens (patching
    costs a forward pass per layer and position), one token changed."""
    clean = torch.tensor([0, *toy_tokenizer()(PROMPT).input_ids[:9]])
    corrupted = clean.clone()
    corrupted[3] = (int(clean[3]) + 1) % len(toy_tokenizer())
    return clean, corrupted


# Hugging Face module names. Llama (untied embedding and unembedding): everything but layer 0 and
# the rotary table on disk. GPT-2 ties lm_head to wte, which Accelerate places once: both stay on
# the CPU, the later blocks and the final norm go to disk.
BRIDGE_MAPS = {
    "llama": {
        "model.embed_tokens": "disk",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "disk",
        "lm_head": "disk",
    },
    "gpt2": {
        "transformer.wte": "cpu",
        "transformer.wpe": "cpu",
        "transformer.h.0": "cpu",
        "transformer.h.1": "disk",
        "transformer.h.2": "disk",
        "transformer.ln_f": "disk",
        "lm_head": "cpu",
    },
}


def _hooked_map(model: torch.nn.Module) -> dict[str, str]:
    """HookedTransformer module names: the embedding, blocks 1-2, the final norm and the unembedding on disk."""
    on_disk = {"embed", "ln_final", "unembed"}
    device_map = {name: "disk" if name in on_disk else "cpu" for name, _ in model.named_children() if name != "blocks"}
    device_map.update({f"blocks.{i}": "cpu" if i == 0 else "disk" for i in range(len(model.blocks))})
    return device_map


def _saved_model(architecture: str, directory: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    tokenizer = toy_tokenizer()
    config = _hf_config(architecture, len(tokenizer), 32, 3, 4, 0.3)
    config.n_ctx = config.max_position_embeddings  # TransformerLens 2.x's GPT-2 conversion reads n_ctx
    hf_model = transformers.AutoModelForCausalLM.from_config(config)
    randomise_norms(hf_model, 0)
    hf_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return hf_model.eval()


FAMILIES = {"bridge": TransformerBridge is not None, "hooked": hooked_transformer_available()}


@pytest.fixture(
    scope="module",
    params=[(family, architecture) for family, available in FAMILIES.items() if available for architecture in ("llama", "gpt2")],
    ids=lambda param: "-".join(param),
)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same weights undispatched and dispatched with offloading."""
    family, architecture = request.param
    directory = tmp_path_factory.mktemp(f"{architecture}_model")
    hf_model = _saved_model(architecture, directory)
    if family == "bridge":
        plain = bridge_from_hf_model(copy.deepcopy(hf_model), tokenizer=toy_tokenizer())

        def dispatch() -> Any:
            dispatched_hf = transformers.AutoModelForCausalLM.from_pretrained(
                directory, device_map=BRIDGE_MAPS[architecture], offload_folder=str(tmp_path_factory.mktemp("offload"))
            )
            return bridge_from_hf_model(dispatched_hf, tokenizer=toy_tokenizer())
    else:
        # Unprocessed weights, so that the Hugging Face model is the reference.
        plain = hooked_transformer_from_hf_model(
            hf_model, toy_tokenizer(), fold_ln=False, center_writing_weights=False, center_unembed=False,
            fold_value_biases=False,
        )

        def dispatch() -> Any:
            return accelerate.dispatch_model(
                copy.deepcopy(plain), device_map=_hooked_map(plain), offload_dir=str(tmp_path_factory.mktemp("offload"))
            )
    return {
        "family": family, "architecture": architecture, "hf_model": hf_model, "plain": plain,
        "dispatched": dispatch(), "dispatch": dispatch,
    }


def _offloaded_names(model: torch.nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if parameter.is_meta]


def test_the_dispatched_model_really_offloads_its_weights(pair: dict[str, Any]) -> None:
    dispatched = pair["dispatched"]
    offloaded = _offloaded_names(dispatched)
    assert any(part in name for name in offloaded for part in (".layers.1.", ".h.1.", "blocks.1."))
    if pair["architecture"] == "llama" or pair["family"] == "hooked":
        assert dispatched.W_U.is_meta and dispatched.W_E.is_meta


SCOPES = {
    "semantic top-1": lambda m: semantic_scope(m, PROMPT).scores,
    "semantic contrast": lambda m: semantic_scope(m, PROMPT, target=(5, 9)).scores,
    "semantic gradient x input": lambda m: semantic_scope(m, PROMPT).gradient_x_input,
    "fisher rank 1": lambda m: fisher_scope(m, PROMPT).scores,
    "fisher rank 3 krylov": lambda m: fisher_scope(m, PROMPT, rank=3, eigen_solver="krylov").scores,
    "fisher exact": lambda m: fisher_scope(m, PROMPT, rank=None, tail_tolerance=0).scores,
    "temperature": lambda m: temperature_scope(m, PROMPT).scores,
    "semantic all positions": lambda m: semantic_scope(m, PROMPT, position="all").scores,
    "fisher all layers": lambda m: fisher_scope(m, PROMPT, layer="all", rank=2).scores,
    "semantic batch": lambda m: semantic_scope(m, [PROMPT, "The cat sat on the mat."]).scores,
    "component heads": lambda m: component_scope(m, PROMPT).heads,
    "component mlps (fisher)": lambda m: component_scope(m, PROMPT, kind="fisher", rank=2).mlps,
    "probe at an offloaded block's input": lambda m: semantic_scope(
        m, PROMPT, readout_hook=ModelAdapter(m).resid_pre_hook(2), target=torch.linspace(-1, 1, 32)
    ).scores,
    "temperature at an offloaded block's input": lambda m: temperature_scope(
        m, PROMPT, readout_hook=ModelAdapter(m).resid_pre_hook(2)
    ).scores,
    # Patching runs its own forward passes with hooks at every layer.
    "activation patching (hooks)": lambda m: activation_patching(m, *_patching_pair(), (5, 9), backend="hooks").patched_metric,
    "activation patching (TransformerLens)": lambda m: activation_patching(m, *_patching_pair(), (5, 9)).patched_metric,
    "attribution patching": lambda m: attribution_patching(m, *_patching_pair(), (5, 9)),
}


@pytest.mark.parametrize("scope", list(SCOPES))
def test_every_scope_on_the_dispatched_model_equals_the_undispatched_one(pair: dict[str, Any], scope: str) -> None:
    expected = SCOPES[scope](pair["plain"])
    got = SCOPES[scope](pair["dispatched"])
    assert got.device.type == "cpu"
    # The same weights and the same operations on the same device: equal bit for bit.
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _brute_force_scores(hf_model: torch.nn.Module, tokens: torch.Tensor, kind: str, target: int) -> torch.Tensor:
    """Per-token scores from the Hugging Face model itself in float64: the full Jacobian of the
    final hidden state at the last position with respect to the input embeddings."""
    model = copy.deepcopy(hf_model).double()
    embeddings = model.get_input_embeddings()(tokens[None])[0].detach()
    backbone = model.base_model

    def final_hidden(x: torch.Tensor) -> torch.Tensor:
        return backbone(inputs_embeds=x[None]).last_hidden_state[0, -1]

    y = final_hidden(embeddings).detach()
    jacobian = torch.autograd.functional.jacobian(final_hidden, embeddings).permute(1, 0, 2)  # [pos, d_out, d_in]
    W_U = model.get_output_embeddings().weight.detach().T  # [d_model, d_vocab]
    if kind == "semantic":
        return torch.linalg.vector_norm(torch.einsum("d,tde->te", W_U[:, target], jacobian), dim=-1)
    if kind == "temperature":
        return torch.linalg.vector_norm(torch.einsum("d,tde->te", y / y.norm(), jacobian), dim=-1)
    p = torch.softmax(y @ W_U, dim=-1)
    fisher = W_U @ (torch.diag(p) - torch.outer(p, p)) @ W_U.T
    return torch.einsum("tdi,de,tej->tij", jacobian, fisher, jacobian).diagonal(dim1=-2, dim2=-1).sum(-1)


@pytest.mark.parametrize("kind", ["semantic", "fisher", "temperature"])
def test_dispatched_scores_match_a_float64_brute_force_on_the_hugging_face_model(pair: dict[str, Any], kind: str) -> None:
    dispatched = pair["dispatched"]
    if kind == "semantic":
        result = semantic_scope(dispatched, PROMPT)
    elif kind == "fisher":
        result = fisher_scope(dispatched, PROMPT, rank=None, tail_tolerance=0)
    else:
        result = temperature_scope(dispatched, PROMPT)
    target = int(result.target) if result.target is not None else -1
    expected = _brute_force_scores(pair["hf_model"], result.tokens, kind, target)
    torch.testing.assert_close(result.scores.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def _accelerate_state(model: torch.nn.Module) -> dict[str, tuple[int, int, bool]]:
    """Per module with an Accelerate hook: the hook, the forward wrapping it, and whether each
    offloaded parameter is still a placeholder."""
    modules = dict(model.named_modules())
    wrapped = vars(model).get("original_model")
    if isinstance(wrapped, torch.nn.Module):
        modules.update({f"original_model.{name}": module for name, module in wrapped.named_modules()})
    return {
        name: (id(module._hf_hook), id(vars(module).get("forward")), all(p.is_meta for p in module.parameters(recurse=False)))
        for name, module in modules.items()
        if hasattr(module, "_hf_hook")
    }


def test_a_scope_leaves_the_dispatched_model_as_it_found_it(pair: dict[str, Any]) -> None:
    """A fresh dispatched model: Accelerate replaces an offloaded parameter by a new object on each
    forward pass, so a flag restored on the old object would leave the model frozen."""
    from model_state import ModelState

    model = pair["dispatch"]()
    model(torch.tensor([[0, 1]]))  # a bridge wires some hooks on its first forward pass
    user_frozen = next(p for p in model.parameters() if p.is_meta)
    user_frozen.requires_grad_(False)  # the user's own choice, kept
    accelerate_before = _accelerate_state(model)
    offloaded_before = _offloaded_names(model)
    state = ModelState.capture(model)
    assert any(p.is_meta and p.requires_grad for p in model.parameters())  # flags a call must give back
    semantic_scope(model, PROMPT)
    fisher_scope(model, PROMPT, layer="all", rank=2)
    component_scope(model, PROMPT)
    state.assert_unchanged(model, "scopes on a dispatched model")
    assert _accelerate_state(model) == accelerate_before
    assert _offloaded_names(model) == offloaded_before  # the loaded weights went back to disk


def test_the_adapter_places_tokens_and_readouts_on_execution_devices_not_on_placeholders(pair: dict[str, Any]) -> None:
    adapter = ModelAdapter(pair["dispatched"])
    # Offloaded weights are meta placeholders; the modules compute on the CPU.
    assert adapter.input_device == torch.device("cpu")
    assert adapter.device == torch.device("cpu")
    assert not adapter.W_U.is_meta
    torch.testing.assert_close(adapter.W_U, pair["plain"].W_U, rtol=0, atol=0)
    assert adapter.final_norm_has_no_gain() is False


def test_transformer_lens_own_device_map_loading_gives_the_same_scores(
    pair: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """TransformerLens 4.x's own loading: ``TransformerBridge.boot_transformers(path, device_map=..., offload_folder=...)`` (it records
    ``cfg.n_devices = 2`` and, with the embedding offloaded, ``cfg.device = "meta"``)."""
    if pair["family"] != "bridge":
        pytest.skip("HookedTransformer has no device_map loading (its n_devices needs CUDA devices)")
    directory = tmp_path_factory.mktemp("boot_model")
    _saved_model(pair["architecture"], directory)
    booted = TransformerBridge.boot_transformers(
        str(directory),
        device_map=BRIDGE_MAPS[pair["architecture"]],
        offload_folder=str(tmp_path_factory.mktemp("boot_offload")),
        tokenizer=toy_tokenizer(),
    )
    assert booted.cfg.n_devices == 2
    for scope in ("semantic top-1", "fisher exact", "temperature", "fisher all layers", "activation patching (hooks)"):
        torch.testing.assert_close(SCOPES[scope](booted), SCOPES[scope](pair["plain"]), rtol=0, atol=0)
    # With cfg.device = "meta", transformer_lens.patching would make its results there: our hooks run instead.
    patching = activation_patching(booted, *_patching_pair(), (5, 9))
    assert patching.backend == ("hooks" if booted.cfg.device == "meta" else "transformer_lens")
    torch.testing.assert_close(patching.patched_metric, SCOPES["activation patching (hooks)"](pair["plain"]))


def test_meta_weights_that_accelerate_did_not_offload_are_still_refused(pair: dict[str, Any]) -> None:
    """Only placeholders an Accelerate hook loads are accepted: a block moved to ``meta`` by hand
    has no values anywhere."""
    model = copy.deepcopy(pair["plain"])
    model.blocks[1].to("meta")
    with pytest.raises(UnsupportedModelError, match="meta device.*never loaded"):
        semantic_scope(model, PROMPT)


def _loaded_copies_of_offloaded_weights(model: torch.nn.Module) -> int:
    """How many live non-meta 2-D tensors have the shape of one of the model's offloaded weights
    (the loaded copies Accelerate makes for a forward pass; the plain model's weights have other
    shapes only by chance, so the count is compared before and after)."""
    import gc

    shapes = {tuple(p.shape) for p in model.parameters() if p.is_meta and p.dim() == 2}
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and not o.is_meta and o.dim() == 2 and tuple(o.shape) in shapes)


def test_weights_loaded_for_a_scope_are_released_when_it_returns(pair: dict[str, Any]) -> None:
    """Autograd holds every loaded weight between the perturbation and the readout until the
    backward pass ends; none may outlive the call."""
    dispatched = pair["dispatched"]
    before = _loaded_copies_of_offloaded_weights(dispatched)
    result = fisher_scope(dispatched, PROMPT, layer="all", rank=2)
    assert _loaded_copies_of_offloaded_weights(dispatched) == before
    del result


# A split between two devices: the two CUDA devices where a machine has them (not this one), and
# the same code on two CPU placements everywhere, so the test itself is exercised here.
DEVICE_PAIRS = [("cpu", "cpu")] + ([(0, 1)] if torch.cuda.device_count() >= 2 else [])


@pytest.mark.parametrize("devices", DEVICE_PAIRS, ids=lambda pair: f"{pair[0]}-{pair[1]}")
def test_a_split_across_two_devices_gives_the_undispatched_scores(
    pair: dict[str, Any], devices: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    first, second = devices
    if pair["family"] == "bridge":
        directory = tmp_path_factory.mktemp("split_model")
        _saved_model(pair["architecture"], directory)
        device_map = {name: first if target == "cpu" else second for name, target in BRIDGE_MAPS[pair["architecture"]].items()}
        if pair["architecture"] == "gpt2":  # tied wte / lm_head: one device for both
            device_map["lm_head"] = device_map["transformer.wte"]
        split = bridge_from_hf_model(
            transformers.AutoModelForCausalLM.from_pretrained(directory, device_map=device_map), tokenizer=toy_tokenizer()
        )
    else:
        device_map = {name: first if target == "cpu" else second for name, target in _hooked_map(pair["plain"]).items()}
        split = accelerate.dispatch_model(copy.deepcopy(pair["plain"]), device_map=device_map)
    for scope in ("semantic top-1", "fisher exact", "temperature", "fisher all layers", "component heads", "activation patching (hooks)"):
        expected = SCOPES[scope](pair["plain"])
        torch.testing.assert_close(SCOPES[scope](split), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_dataset_runs_and_faithfulness_on_the_dispatched_model_equal_the_undispatched_ones(
    pair: dict[str, Any], tmp_path: Any
) -> None:
    """A run hashes an offloaded model's weights from where Accelerate keeps them (the same hash as
    undispatched), scores it as the plain model, and faithfulness ablates on the embedding's device."""
    from jscopes_tl import evaluate_faithfulness
    from jscopes_tl.runs import run_dataset
    from jscopes_tl.runs.manifest import weight_hash

    dispatched, plain = pair["dispatched"], pair["plain"]
    assert _offloaded_names(dispatched)
    assert weight_hash(dispatched) == weight_hash(plain)
    prompts = [PROMPT, "He grew up in the South and goes to"]
    runs = {
        name: run_dataset(model, prompts, tmp_path / name, kinds=["semantic", "temperature"], progress=False)
        for name, model in (("plain", plain), ("dispatched", dispatched))
    }
    frames = {name: run.records_frame().sort_values(["prompt_id", "kind"]).reset_index(drop=True) for name, run in runs.items()}
    assert [list(scores) for scores in frames["dispatched"]["scores"]] == [list(scores) for scores in frames["plain"]["scores"]]
    reports = [
        evaluate_faithfulness(model, prompts, ["semantic"], progress=False).to_dataframe() for model in (plain, dispatched)
    ]
    assert reports[0].equals(reports[1])
    assert _offloaded_names(dispatched)  # the placeholders are back
