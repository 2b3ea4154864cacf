"""Tiny offline models for every TransformerLens family the installed version has, and a
brute-force Jacobian reference that shares no code with the scope engine."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available
from jscopes_tl.toy import toy_model

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


# Tests of the run machinery's processes (signals, resumption, torchrun ranks, the directory lock)
# and of the benchmark script: what they check (files, manifests, locks, process exits) does not
# depend on the TransformerLens generation, and each takes 10-40 s, so they run in the TL 4.x suite
# only. The TL 2.18 suite still runs a killed run's resumption (every signal) and every in-process
# run test, which do go through the generation's adapter.
once_per_suite = pytest.mark.skipif(
    hooked_transformer_available(),
    reason="generation-independent process test: run in the TransformerLens 4.x suite (tests/conftest.py)",
)


def _bridge_available() -> bool:
    try:
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module  # noqa: F401
    except ImportError:
        return False
    return True


MODEL_SPECS: list[tuple[str, dict[str, Any]]] = []
if hooked_transformer_available():
    MODEL_SPECS += [
        ("hooked-gpt2", dict(architecture="gpt2", family="hooked")),
        ("hooked-llama", dict(architecture="llama", family="hooked")),
        ("hooked-gpt2-folded", dict(architecture="gpt2", family="hooked", folded=True)),
        ("hooked-softcap", dict(architecture="gemma2", family="hooked")),
    ]
if _bridge_available():
    MODEL_SPECS += [
        ("bridge-gpt2", dict(architecture="gpt2", family="bridge")),
        ("bridge-llama", dict(architecture="llama", family="bridge")),
        ("bridge-gpt2-compat", dict(architecture="gpt2", family="bridge", compatibility_mode=True)),
        ("bridge-gemma2-softcap", dict(architecture="gemma2", family="bridge")),
    ]

_CACHE: dict[str, Any] = {}


def build(name: str) -> Any:
    if name not in _CACHE:
        spec = dict(dict(MODEL_SPECS)[name])
        folded = spec.pop("folded", False)
        model = toy_model(spec.pop("architecture"), init_scale=0.3, seed=0, **spec)
        if folded:  # what HookedTransformer.from_pretrained does by default
            model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
        # TransformerBridge wires some internal capture hooks lazily on its first forward pass;
        # run one so that hook fingerprints compare the scopes' effect, not the bridge's warm-up.
        model(torch.tensor([[0, 1]]))
        _CACHE[name] = model
    return _CACHE[name]


def _is_folded(name: str) -> bool:
    return "folded" in name or "compat" in name


def _is_softcapped(name: str) -> bool:
    return "softcap" in name


@pytest.fixture(params=[name for name, _ in MODEL_SPECS])
def model(request: pytest.FixtureRequest) -> Any:
    return build(request.param)


@pytest.fixture(params=[name for name, _ in MODEL_SPECS if _is_softcapped(name)])
def softcapped_model(request: pytest.FixtureRequest) -> Any:
    return build(request.param)


@pytest.fixture(params=[name for name, _ in MODEL_SPECS if not _is_folded(name)])
def model_with_final_norm_gain(request: pytest.FixtureRequest) -> Any:
    return build(request.param)


@pytest.fixture(params=[name for name, _ in MODEL_SPECS if _is_folded(name)])
def folded_model(request: pytest.FixtureRequest) -> Any:
    return build(request.param)


@pytest.fixture
def any_model() -> Any:
    """One model of the installed TransformerLens, for tests that are not about families."""
    return build(MODEL_SPECS[0][0])


PROMPT = "Tom loves Korean food. He is a"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a command gets as far as loading a model."""
    from jscopes_tl import cli

    def refuse(name):
        raise AssertionError(f"the command loaded {name!r} before checking its arguments")

    monkeypatch.setattr(cli, "load_pretrained", refuse)
    monkeypatch.setattr(cli.models, "load", refuse)


def final_hidden_of_input(model: Any, tokens: torch.Tensor, layer: int = 0):
    """A function x [pos, d_model] -> y [pos, d_model] that *replaces* the residual stream
    entering ``layer`` with x and returns the unembedding input (brute-force reference)."""
    adapter = ModelAdapter(model)

    def function(x: torch.Tensor) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}

        def replace(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            return x[None].to(activation.dtype)

        def capture(activation: torch.Tensor, hook: Any) -> None:
            store["final"] = activation

        with model.hooks(fwd_hooks=[(adapter.resid_pre_hook(layer), replace), (adapter.final_hidden_hook, capture)]):
            model(tokens[None])
        return adapter.final_hidden(store["final"])[0]

    return function


def residual_input(model: Any, tokens: torch.Tensor, layer: int = 0) -> torch.Tensor:
    adapter = ModelAdapter(model)
    _, cache = model.run_with_cache(tokens[None])
    return cache[adapter.resid_pre_hook(layer)][0].detach()


def brute_force_jacobians(model: Any, tokens: torch.Tensor, position: int, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [pos, d_model(out), d_model(in)] = ∂y_position/∂x_t for every t, y_position) in float64."""
    x0 = residual_input(model, tokens, layer)
    function = final_hidden_of_input(model, tokens, layer)
    with torch.enable_grad():
        jacobian = torch.autograd.functional.jacobian(lambda x: function(x)[position], x0)  # [d, pos, d]
    y = function(x0)[position].detach()
    return jacobian.permute(1, 0, 2).double(), y.double()


def hook_fingerprint(model: Any) -> tuple:
    """Everything a scope must leave untouched: hooks, requires_grad flags, train/eval modes."""
    hooks = tuple(
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    )
    hook_point_hooks = tuple(
        (name, len(getattr(hp, "fwd_hooks", [])), len(getattr(hp, "bwd_hooks", [])))
        for name, hp in model.hook_dict.items()
    )
    flags = tuple(p.requires_grad for p in model.parameters())
    modes = tuple(m.training for m in model.modules())
    return hooks, hook_point_hooks, flags, modes


TUTORIAL = Path(__file__).resolve().parents[1] / "demos" / "tutorial.ipynb"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def executed_tutorial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """demos/tutorial.ipynb run top to bottom in a fresh kernel of this interpreter, saved to disk
    and read back: once per session, for tests/test_notebook.py and the docs build (tests/test_docs.py)."""
    nbformat = pytest.importorskip("nbformat")  # the notebook extra; scripts/setup.sh installs it
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    directory = tmp_path_factory.mktemp("notebook")
    # A kernel spec of this very interpreter: a "python3" spec elsewhere on the machine (a user's
    # ~/.local/share/jupyter) could otherwise run the notebook in another environment.
    spec = directory / "kernels" / "jscopes-tests"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "tests", "language": "python"})
    )
    kernel = KernelManager(kernel_name="jscopes-tests", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(directory / "kernels")]))
    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(TUTORIAL.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    path = directory / "tutorial.ipynb"
    nbformat.write(notebook, path)
    return nbformat.read(path, as_version=4), path
