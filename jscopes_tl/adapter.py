"""The model adapter: the one place that knows TransformerLens versions.

jscopes_tl works on two kinds of model that share the TransformerLens hook API but differ in the
details:

* ``HookedTransformer`` (TransformerLens 2.x and 3.x): hook names such as
  ``blocks.0.hook_resid_pre``; the unembedding input is ``ln_final(resid_final)``, which has no
  hook of its own (``ln_final.hook_normalized`` sits *before* the RMSNorm weight), so we capture
  the last block's ``hook_resid_post`` and apply the model's own ``ln_final`` to it; logit
  soft-capping is applied in ``forward`` from ``cfg.output_logits_soft_cap``.
* ``TransformerBridge`` (TransformerLens 3.x and 4.x), with or without compatibility mode:
  canonical hook names such as ``blocks.0.hook_in`` and ``unembed.hook_in`` (the legacy names are
  aliases only in compatibility mode); the post-unembedding transform (soft-cap, logit scaling)
  is the architecture adapter's ``apply_output_logits_transform``.

Models are recognised by duck typing the instance, never by importing classes:
TransformerLens 4.x raises ``ImportError`` on ``from transformer_lens import HookedTransformer``.
Hook names are resolved against ``model.hook_dict`` at run time from a short list of candidates,
because which aliases exist depends on version and compatibility mode.

Everything downstream (scopes, views, evaluation) talks to :class:`ModelAdapter` only.

Model hygiene lives here too (:meth:`ModelAdapter.prepared_for_scopes`): a call holds a per-model
lock (two threads scoring one model take turns), refuses weights it cannot differentiate
(created under ``torch.inference_mode()``, or on the ``meta`` device) before it changes anything,
restores every flag it changed even when one restore fails, and hands back the tensors a
TransformerBridge's attention bridges cache during a forward pass (they hold the call's autograd
graph: 1.3 GB measured at 1,024 tokens on a GPT-2-size model) as they were before the call.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import operator
import os
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from jscopes_tl.errors import ScopeInputError, UnsupportedModelError

HOOKED_TRANSFORMER = "HookedTransformer"
TRANSFORMER_BRIDGE = "TransformerBridge"

HookFunction = Callable[[torch.Tensor, Any], torch.Tensor | None]


@dataclass(frozen=True)
class UnembedStatistics:
    """Facts about ``W_U`` that cost a pass over it (d_vocab · d_model) to compute."""

    column_sq_norms: Float[torch.Tensor, " d_vocab"]  # ‖W_U[:, v]‖², float32
    centred: bool  # every row of W_U has mean 0 over the vocabulary (HookedTransformer's centring)


# Per model, keyed by the identity and autograd version counter of W_U's storage: an in-place edit
# of the weights (or new weights) bumps the version and the statistics are recomputed.
_unembed_statistics: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[Any, ...], UnembedStatistics]] = (
    weakref.WeakKeyDictionary()
)


# One re-entrant lock per model: a scope call holds it throughout, so two threads scoring one model
# take turns instead of interleaving hooks, frozen flags and eval mode. Re-entrant because a call
# nests (a scope inside faithfulness, prepared_for_scopes inside a scope).
_model_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()
# Context levels for ModelAdapter.own_hooks, far above the small ones TransformerLens's own hook
# contexts count up from.
_own_hook_levels = itertools.count(1 << 40)
# How many prepared_for_scopes blocks are open on a model (only ever by the thread holding its lock).
_prepared_depth: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
# Per model, its hook dictionary and the state it was read in (ModelAdapter.hook_points).
_hook_dicts: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[Any, ...], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _hook_dict_state(model: torch.nn.Module) -> tuple[Any, ...]:
    """What a model's hook dictionary follows: its module tree (registrations); a HookedTransformer's
    ``hook_dict`` object (``setup()`` builds a new one); on a TransformerBridge, its aliases, which
    compatibility mode and TransformerLens's alias rebinds (4.x's alias generation) change without
    registering a module."""
    return (
        _registrations[0],
        vars(model).get("hook_dict"),
        getattr(model, "compatibility_mode", None),
        _alias_generation()(),
    )


@functools.cache
def _alias_generation() -> Callable[[], Any]:
    """TransformerLens's count of alias rebinds (4.x bridges), or a constant where there is none."""
    try:
        from transformer_lens.model_bridge.generalized_components.base import alias_generation
    except ImportError:  # TransformerLens 2.x, or a version without alias rebinds
        return lambda: None
    return alias_generation


# Per model, its final norm's parameters (held weakly, like the module tree) with their neutral
# values, and the registration count then.
_final_norms: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, list[tuple[weakref.ref, float]]]] = (
    weakref.WeakKeyDictionary()
)


def _neutral_weights(final_norm: torch.nn.Module) -> list[tuple[torch.Tensor, float]]:
    """Each parameter of a final norm with the value that makes it do nothing (a gain 1, a bias 0)."""
    from jscopes_tl.families import OFFSET_GAIN_NORMS

    weights = []
    for name, parameter in final_norm.named_parameters():
        owner = final_norm.get_submodule(name.rpartition(".")[0])
        is_bias = name.rsplit(".", 1)[-1] in ("b", "bias")
        # A wrapped Gemma RMSNorm stores w of the gain 1 + w: w = 0 is no gain.
        weights.append((parameter, 0.0 if is_bias or type(owner).__name__ in OFFSET_GAIN_NORMS else 1.0))
    return weights


def _final_norm_weights(model: torch.nn.Module, final_norm: torch.nn.Module) -> list[tuple[torch.Tensor, float]]:
    """:func:`_neutral_weights` of the model's final norm, found again only after a registration
    (or when one of them is gone: Accelerate swaps offloaded placeholders without registering)."""
    cached = _final_norms.get(model)
    if cached is not None and cached[0] == _registrations[0]:
        weights = [(reference(), neutral) for reference, neutral in cached[1]]
        if all(parameter is not None for parameter, _ in weights):
            return weights  # type: ignore[return-value]
    _model_tree(model)  # the norm's registrations count from now on
    weights = _neutral_weights(final_norm)
    _final_norms[model] = (_registrations[0], [(weakref.ref(parameter), neutral) for parameter, neutral in weights])
    return weights


# Constant tensors by (value, shape, dtype, device), compared against with one torch.equal.
_constants: dict[tuple[float, tuple[int, ...], torch.dtype, torch.device], torch.Tensor] = {}


def _is_everywhere(weight_and_value: tuple[torch.Tensor, float]) -> bool:
    """Whether every entry of the weight equals the value (one comparison op, not three)."""
    weight, value = weight_and_value
    key = (value, tuple(weight.shape), weight.dtype, weight.device)
    constant = _constants.get(key)
    if constant is None:
        constant = _constants[key] = torch.full(key[1], value, dtype=weight.dtype, device=weight.device)
    return torch.equal(weight, constant)


def _active_soft_cap(cfg: Any) -> float | None:
    """The configuration's logit soft cap when it is on (positive), else None."""
    cap = getattr(cfg, "output_logits_soft_cap", None)
    return cap if cap is not None and cap > 0 else None


# Per tokenizer (held weakly), the string of every token id decoded so far (ModelAdapter.str_tokens).
_token_strings: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()
# The model's cache slots as the outermost open prepared_for_scopes block found them, and whether
# they were released after the block's last forward pass (see ModelAdapter.release_call_graph).
_call_snapshots: weakref.WeakKeyDictionary[torch.nn.Module, _CallSnapshot] = weakref.WeakKeyDictionary()


@dataclass
class _CallSnapshot:
    before: list[_SlotValues]
    released: bool = True


def _model_lock(model: torch.nn.Module) -> threading.RLock:
    with _model_locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.RLock()
        return lock


def _restore_all(restores: list[Callable[[], None]]) -> None:
    """Run every restore even when some fail; then raise the first failure."""
    _restore_each(restores, lambda restore: restore())


def _restore_each(items: Iterable[Any], restore: Callable[[Any], None]) -> None:
    """``restore(item)`` for every item, even when some fail; then raise the first failure."""
    first_error: BaseException | None = None
    for item in items:
        try:
            restore(item)
        except BaseException as error:  # noqa: BLE001 - re-raised below, after the other restores
            first_error = first_error or error
    if first_error is not None:
        raise first_error


_requires_grad = operator.attrgetter("requires_grad")
_dereference = weakref.ref.__call__  # a weakref's object, or None
_is_not_none = functools.partial(operator.is_not, None)
_in_training = operator.attrgetter("training")
_is_meta = operator.attrgetter("is_meta")


def _unfreeze(weight: torch.Tensor) -> None:
    weight.requires_grad_(True)


def _set_training(module: torch.nn.Module) -> None:
    module.training = True


def _all_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module a call can touch: the registered tree, and a TransformerBridge's wrapped Hugging
    Face model, whose root (and e.g. its ``transformer.drop`` dropout) is not registered with the
    bridge (``original_model`` lives in ``__dict__``) yet ``bridge.eval()`` switches it too.

    A walk over the ``_modules`` dictionaries: ``Module.modules()`` builds every module's dotted
    name, which costs about a millisecond per call on a GPT-2-size bridge (800 modules).
    """
    seen: set[int] = set()
    modules: list[torch.nn.Module] = []
    wrapped = vars(model).get("original_model")
    stack = [wrapped, model] if isinstance(wrapped, torch.nn.Module) else [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        modules.append(module)
        stack.extend(child for child in reversed(module._modules.values()) if child is not None)
    return modules


# The module tree of a model changes only when some module registers a submodule, parameter or
# buffer (attribute assignment or register_*), and torch calls these global hooks each time: while
# the count is unchanged, a model's cached tree (below) is still its tree. (Only torch's own
# registration paths are seen; code that writes into a module's private dictionaries bypasses them.)
_registrations = [0]


def _count_registration(module: torch.nn.Module, name: str, value: Any) -> None:
    # Only registrations on a module of a cached tree count: Hugging Face's Llama slices its
    # ModuleList of layers on every forward pass, and the slice (a new ModuleList) registers them.
    if module in _tree_modules:
        _registrations[0] += 1


# Every module of a cached tree (held weakly).
_tree_modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


torch.nn.modules.module.register_module_module_registration_hook(_count_registration)
torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)
torch.nn.modules.module.register_module_buffer_registration_hook(_count_registration)

# Attributes torch.nn.Module keeps for itself (hook bookkeeping), never a forward pass's cache.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))


@dataclass
class _ModelTree:
    """What a call touches on a model, from one walk (:func:`_model_tree`), held weakly so the cache
    never keeps a model alive: every module (those whose mode matters apart), every parameter and
    buffer (each once), and per module the plain attributes that can hold a forward pass's cached
    tensor (a tensor or None at the walk)."""

    registrations: int
    modules: list[weakref.ref]  # the modules whose mode can change their forward pass
    weights: list[weakref.ref]
    cache_slots: list[tuple[weakref.ref, tuple[str, ...]]]
    mode_free: list[weakref.ref]  # HookPoints and modules of families.MODE_FREE_MODULES

    def live_mode_free(self) -> list[torch.nn.Module]:
        return [module for module in map(_dereference, self.mode_free) if module is not None]

    def live(self) -> tuple[list[torch.nn.Module], list[torch.Tensor]] | None:
        modules = list(map(_dereference, self.modules))
        weights = list(map(_dereference, self.weights))
        if not all(map(_is_not_none, modules)) or not all(map(_is_not_none, weights)):
            return None
        return modules, weights


_model_trees: weakref.WeakKeyDictionary[torch.nn.Module, _ModelTree] = weakref.WeakKeyDictionary()


def _model_tree(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.Tensor], _ModelTree]:
    """The model's modules whose mode matters and its weights, walked again only when some module
    registered something since the last walk (a walk costs about a millisecond on a GPT-2-size bridge)."""
    tree = _model_trees.get(model)
    if tree is not None and tree.registrations == _registrations[0]:
        live = tree.live()
        if live is not None:
            return (*live, tree)
    registrations = _registrations[0]
    modules = _all_modules(model)
    seen: set[int] = set()
    weights: list[torch.Tensor] = []
    for module in modules:
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                weights.append(tensor)
    from transformer_lens.hook_points import HookPoint

    from jscopes_tl.families import CONFIGURATION_ATTRIBUTES, is_mode_free

    # HookPoints pass activations through (most of a bridge's modules): no cache slots, and their
    # mode changes nothing. Neither does the mode of a MODE_FREE_MODULES class: both are listed
    # apart (see ModelAdapter.eval_mode).
    others = [module for module in modules if not isinstance(module, HookPoint)]
    mode_free: list[torch.nn.Module] = []
    mode_dependent: list[torch.nn.Module] = []
    for module in modules:
        (mode_free if isinstance(module, HookPoint) or is_mode_free(module) else mode_dependent).append(module)
    cache_slots = []
    for module in others:
        names = tuple(
            name
            for name, value in vars(module).items()
            if name not in _MODULE_INTERNALS
            and name not in CONFIGURATION_ATTRIBUTES
            and ((isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter)) or value is None)
        )
        if names:
            cache_slots.append((weakref.ref(module), names))
    tree = _ModelTree(
        registrations, [weakref.ref(m) for m in mode_dependent], [weakref.ref(w) for w in weights], cache_slots,
        [weakref.ref(m) for m in mode_free],
    )
    _model_trees[model] = tree
    _tree_modules.update(modules)
    return mode_dependent, weights, tree


# A module's cache slots as a call found them: (module, names, values).
_SlotValues = tuple[torch.nn.Module, tuple[str, ...], tuple[Any, ...]]


def _cached_tensors(tree: _ModelTree) -> list[_SlotValues]:
    """The current value of every cache slot, per module."""
    values = []
    for reference, names in tree.cache_slots:
        module = reference()
        if module is not None:
            values.append((module, names, tuple(map(vars(module).get, names))))
    return values


def _release_call_graph(before: list[_SlotValues]) -> None:
    """Give back the earlier value of every module tensor attribute that now holds an autograd
    graph it did not hold before (a cache written during this call's forward passes)."""
    for module, names, earlier_values in before:
        attributes = vars(module)
        if all(map(operator.is_, map(attributes.get, names), earlier_values)):
            continue  # nothing written since
        for name, earlier in zip(names, earlier_values):
            value = attributes.get(name)
            if value is not earlier and isinstance(value, torch.Tensor) and value.grad_fn is not None:
                setattr(module, name, earlier)


def _offloaded_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose weights Accelerate offloaded (a ``device_map`` with ``"cpu"`` or ``"disk"``
    entries): outside the module's own forward pass their parameters are ``meta`` placeholders, and
    the module's ``AlignDevicesHook`` loads them onto its execution device for each call."""
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:  # without Accelerate nothing can be offloaded
        return []
    return [module for module in _all_modules(model) if has_offloaded_params(module)]


def _offloaded_tensor_ids(model: torch.nn.Module) -> set[int]:
    return {
        id(tensor)
        for module in _offloaded_modules(model)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    }


def offloaded_weight_loaders(model: torch.nn.Module) -> dict[int, Callable[[], torch.Tensor]]:
    """For every weight Accelerate offloaded (a ``meta`` placeholder, by ``id``), a function that
    returns its value on the CPU, loading one module's weights at a time (reading every weight of
    an offloaded model, e.g. to hash it, never holds more than one module's in memory)."""

    def load(module: torch.nn.Module, name: str) -> torch.Tensor:
        from accelerate.utils import align_module_device

        with align_module_device(module):
            value = module._parameters.get(name)
            value = module._buffers.get(name) if value is None else value
            return value.detach().cpu().clone()

    return {
        id(tensor): functools.partial(load, module, name)
        for module in _offloaded_modules(model)
        for name, tensor in (*module._parameters.items(), *module._buffers.items())
        if tensor is not None and tensor.is_meta
    }


@contextlib.contextmanager
def _offloaded_weights_loaded(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, the offloaded weights of ``module``'s subtree hold their values (Accelerate's
    own pre-forward hook loads them; its post-forward hook puts the placeholders back on exit).
    A no-op for a model that was not dispatched with offloading."""
    with contextlib.ExitStack() as stack:
        offloaded = _offloaded_modules(module)
        if offloaded:
            from accelerate.utils import align_module_device

            for submodule in offloaded:
                stack.enter_context(align_module_device(submodule))
        yield


def _execution_device(module: torch.nn.Module, weight: torch.Tensor) -> torch.device:
    """Where ``module`` computes: its weight's device, or for an offloaded weight (a ``meta``
    placeholder) the device its Accelerate hook loads it to."""
    if not weight.is_meta:
        return weight.device
    for submodule in _offloaded_modules(module):
        device = getattr(submodule._hf_hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return weight.device  # never loaded: _check_differentiable refuses it


def _check_differentiable(
    tensors: Iterable[torch.Tensor], name_of: Callable[[torch.Tensor], str], model: torch.nn.Module | None = None
) -> bool:
    """Refuse weights autograd cannot use (``name_of`` names the first one, in the message); return
    whether some are offloaded.

    Tensors created under ``torch.inference_mode()`` are *inference tensors*: autograd cannot record
    through them, and their ``requires_grad`` cannot be set outside that mode. ``meta`` tensors have
    no values at all (a model built on the ``meta`` device and never loaded), unless Accelerate
    offloaded them from ``model`` (see :func:`_offloaded_modules`): those are loaded for each forward
    pass, and autograd records through the loaded values.
    """
    tensors = list(tensors)
    if not any(map(_is_meta, tensors)) and not any(map(torch.Tensor.is_inference, tensors)):
        return False  # the usual case, checked in C loops
    offloaded: set[int] | None = None
    for tensor in tensors:
        if tensor.is_meta:
            if offloaded is None:
                offloaded = set() if model is None else _offloaded_tensor_ids(model)
            if id(tensor) in offloaded:
                continue
            raise UnsupportedModelError(
                f"model has weights on the meta device (e.g. {name_of(tensor)!r}): they were never loaded. Load "
                "real weights (e.g. model.to_empty(device='cpu') and load a state dict) first."
            )
        if tensor.is_inference():
            raise UnsupportedModelError(
                f"model was created under torch.inference_mode(): its weights (e.g. {name_of(tensor)!r}) are "
                "inference tensors, which autograd cannot differentiate through. Create or load the model "
                "outside the inference_mode() block (no_grad() is fine)."
            )
    return offloaded is not None


def _offloaded_parameter_slots(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(module, name) of every offloaded parameter that requires grad. Accelerate replaces an
    offloaded parameter by a new object on each forward pass (the loaded copy, then a new
    placeholder), each taking ``requires_grad`` from the one before: freezing the placeholder freezes
    the call's copies, and the flag is given back to whatever placeholder holds the name at the end."""
    return [
        (module, name)
        for module in _offloaded_modules(model)
        for name, parameter in module._parameters.items()
        if parameter is not None and parameter.requires_grad
    ]


def _weight_name(model: torch.nn.Module, tensor: torch.Tensor) -> str:
    """The dotted name of one of the model's parameters or buffers (for messages only: slow)."""
    wrapped = vars(model).get("original_model")
    for root in [model, *([wrapped] if isinstance(wrapped, torch.nn.Module) else [])]:
        for name, candidate in (*root.named_parameters(remove_duplicate=False), *root.named_buffers(remove_duplicate=False)):
            if candidate is tensor:
                return name
    return "an unnamed weight"


def _is_remote_bridge(model: Any) -> bool:
    return any(cls.__name__ == "RemoteBridge" for cls in type(model).__mro__)


def _model_family(model: Any) -> str:
    """Name the kind of TransformerLens model, or raise if it is not one we can differentiate."""
    if _is_remote_bridge(model):
        raise UnsupportedModelError(
            "model is a RemoteBridge (vLLM / Inspect backend), which runs without local autograd; "
            "Jacobian Scopes need gradients. Load the model with "
            "TransformerBridge.boot_transformers(...) instead."
        )
    looks_like_transformer_lens = (
        isinstance(model, torch.nn.Module)
        # hook_dict is a TransformerBridge property that builds a dict: look for it without calling it.
        and ("hook_dict" in vars(model) or hasattr(type(model), "hook_dict"))
        and hasattr(model, "cfg")
        and hasattr(model, "blocks")
        and hasattr(model, "unembed")
    )
    if not looks_like_transformer_lens:
        raise UnsupportedModelError(
            "model must be a TransformerLens HookedTransformer or TransformerBridge "
            f"(an nn.Module with hook_dict, cfg, blocks and unembed); got {type(model).__name__}."
        )
    if hasattr(model, "enable_compatibility_mode"):
        return TRANSFORMER_BRIDGE
    return HOOKED_TRANSFORMER


@dataclass(frozen=True)
class Numerics:
    """Which numerics a score was computed in (they change single-logit and temperature scores)."""

    model_family: str
    compatibility_mode: bool | None
    final_norm_folded_into_unembed: bool
    unembed_centred: bool
    perturbation_hook: str | list[str]
    readout_hook: str
    # What layer 0 perturbs relative to the paper's x_t (see ModelAdapter.input_embedding).
    input_embedding: str = "resid_pre"
    input_embedding_scale: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class InputEmbeddingPoint:
    """Where a scope perturbs the input embedding ``x_t``.

    ``kind``: ``"resid_pre"`` (token + additive position embedding = ``blocks.0.hook_resid_pre``),
    ``"scaled"`` (the residual stream is ``scale`` × the token embedding: scores with respect to the
    unscaled embedding row are ``scale`` times larger, rankings identical), ``"embedding_norm"`` /
    ``"projection"`` (the token embedding before that map, at ``hook``), ``"after_embedding_norm"``
    (the model exposes no point before its embedding norm: ``hook`` is after it).
    """

    hook: str
    kind: str
    scale: float | None = None


class ModelAdapter:
    """Uniform access to a HookedTransformer or TransformerBridge.

    An adapter serves one call (each scope builds its own): it reads the unembedding matrix and the
    devices once. Build a new one after moving the model or replacing its unembedding.

    Example:
        >>> adapter = ModelAdapter(model)
        >>> tokens = adapter.tokenize("The cat sat")       # [pos], BOS per the model's convention
        >>> adapter.resid_pre_hook(0)                      # 'blocks.0.hook_resid_pre' or 'blocks.0.hook_in'
    """

    def __init__(self, model: Any) -> None:
        self.family = _model_family(model)
        self.model = model
        self.cfg = model.cfg
        # The unembedding alone here (a call builds several adapters; a full pass over the weights
        # costs milliseconds on a large bridge): it tells a meta or inference-mode model before
        # tokenising. prepared_for_scopes checks every weight before it changes anything. (An
        # offloaded W_U is a view of a meta placeholder, loaded for each use.)
        W_U = self._unembedding
        if not (W_U.is_meta and _offloaded_modules(model.unembed)):
            _check_differentiable([W_U], lambda _: "W_U")
        if self.family == HOOKED_TRANSFORMER:
            self._check_weight_processing()

    def _check_weight_processing(self) -> None:
        """Refuse (or flag) HookedTransformers whose default weight processing changed the function.

        TransformerLens 2.x's ``from_pretrained`` on a mixture of experts makes every norm an
        ``RMSPre`` (no weights) and then skips folding the weights, which it cannot fold into the
        experts: the norm gains are lost and the logits are another model's (relative error 1 on a
        random Mixtral). With logit soft-capping, ``center_unembed`` shifts the logits *before* the
        cap, which changes every probability (1e-2 on a random Gemma-2 capped at 10).
        """
        n_experts = getattr(self.cfg, "num_experts", None) or 0
        if n_experts > 1 and getattr(self.cfg, "normalization_type", None) in ("LNPre", "RMSPre"):
            raise UnsupportedModelError(
                f"this mixture-of-experts HookedTransformer ({n_experts} experts) was loaded with fold_ln=True "
                "(HookedTransformer.from_pretrained's default): its norms lost their weights, which TransformerLens "
                "cannot fold into experts, so its logits are not the original model's. Load it with "
                "HookedTransformer.from_pretrained_no_processing(...) instead."
            )
        if _active_soft_cap(self.cfg) is not None and self.unembed_statistics.centred:
            warnings.warn(
                "this HookedTransformer has logit soft-capping and a centred W_U (center_unembed=True, "
                "HookedTransformer.from_pretrained's default): centring shifts the logits before the cap, so its "
                "probabilities and scores differ from the original model's. Load it with "
                "HookedTransformer.from_pretrained_no_processing(...) to score the original model.",
                stacklevel=3,
            )

    # ----------------------------------------------------------------------------- sizes
    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self._unembedding.shape[-1])

    @functools.cached_property
    def _unembedding(self) -> torch.Tensor:
        """``model.W_U`` as this adapter first reads it. A TransformerBridge builds it on every read
        (a chain of properties and a transpose, tens of µs with the caches cold after a backward
        pass) and a call reads it a dozen times; its values are the model's own (a view of the
        parameter), only replacing the parameter object needs a new adapter."""
        return self.model.W_U

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        """The unembedding matrix; an offloaded one (a ``device_map`` with ``"cpu"``/``"disk"``
        entries) is loaded onto its execution device for each access, as its forward pass would."""
        W_U = self._unembedding
        if not W_U.is_meta:
            return W_U
        with _offloaded_weights_loaded(self.model.unembed):
            return self.model.W_U

    @property
    def unembed_statistics(self) -> UnembedStatistics:
        """Column norms and centring of ``W_U``, computed once per model and weight version (one
        pass over ``W_U``, which a scope would otherwise repeat on every call)."""
        W_U = self.W_U.detach()
        key = (W_U.data_ptr(), W_U._version, tuple(W_U.shape), W_U.stride(), W_U.dtype, W_U.device)
        cached = _unembed_statistics.get(self.model)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            W = W_U.float()
            column_sq_norms = torch.linalg.vector_norm(W, dim=0).pow(2)
            row_means = W @ torch.full((W.shape[1],), 1.0 / W.shape[1], dtype=W.dtype, device=W.device)
            rms = float(column_sq_norms.sum() / W.numel()) ** 0.5
            # Centring in a low-precision dtype leaves row means at the level of its rounding.
            tolerance = max(1e-5, 8 * torch.finfo(W_U.dtype).eps / math.sqrt(W.shape[1]))
            centred = bool(row_means.abs().max() <= tolerance * (rms + 1e-12))
        statistics = UnembedStatistics(column_sq_norms=column_sq_norms, centred=centred)
        _unembed_statistics[self.model] = (key, statistics)
        return statistics

    @functools.cached_property
    def device(self) -> torch.device:
        """Where the unembedding computes: the logits, ``W_U`` products and readout directions live
        there. On a model split across devices (a ``device_map``, ``n_devices > 1``) it is the last
        one, not where the tokens go (:attr:`input_device`). Read once per adapter."""
        return _execution_device(self.model.unembed, self._unembedding)

    @functools.cached_property
    def input_device(self) -> torch.device:
        """Where the token embedding computes, so where the tokens go (the first block's side of
        a split model). Read once per adapter (a bridge's ``W_E`` lookup costs tens of µs)."""
        W_E = getattr(self.model, "W_E", None)
        return self.device if W_E is None else _execution_device(self.model.embed, W_E)

    @property
    def dtype(self) -> torch.dtype:
        return self._unembedding.dtype

    # ----------------------------------------------------------------------------- hook names
    @functools.cached_property
    def hook_points(self) -> dict[str, Any]:
        """The model's ``hook_dict`` (name → HookPoint, aliases included). A TransformerBridge builds
        that dictionary on every access (0.1–0.3 ms at GPT-2 size), so it is kept per model and read
        again only when the model's module tree or its aliases may have changed
        (:func:`_hook_dict_state`). A stale entry could only name a HookPoint the model no longer
        calls, and a scope whose hooks did not run raises."""
        cached = _hook_dicts.get(self.model)
        if cached is not None and cached[0] == _hook_dict_state(self.model):
            return cached[1]
        _model_tree(self.model)  # its modules' registrations count from now on
        state = _hook_dict_state(self.model)
        points = dict(self.model.hook_dict)
        _hook_dicts[self.model] = (state, points)
        return points

    @property
    def hook_names(self) -> Any:
        return self.hook_points.keys()

    def _resolve_hook(self, candidates: Sequence[str]) -> str:
        hook_names = self.hook_names
        for name in candidates:
            if name in hook_names:
                return name
        raise UnsupportedModelError(
            f"none of the hook points {list(candidates)} exist on this {self.family}; "
            "jscopes_tl needs the residual-stream hooks of a decoder-only transformer."
        )

    def resid_pre_hook(self, layer: int) -> str:
        """Hook on the residual stream entering block ``layer``: the token + positional embedding
        at 0, and the final residual stream (the last block's output) at ``n_layers``."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= self.n_layers:
            raise ScopeInputError(
                f"layer must be an int in [0, {self.n_layers}] ({self.n_layers} is the final residual "
                f"stream); got {layer!r}."
            )
        if layer == self.n_layers:
            last = self.n_layers - 1
            return self._resolve_hook([f"blocks.{last}.hook_resid_post", f"blocks.{last}.hook_out"])
        return self._resolve_hook([f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_in"])

    @property
    def architecture(self) -> str | None:
        """The Hugging Face architecture the model was converted from (e.g. ``"BloomForCausalLM"``)."""
        return getattr(self.cfg, "architecture", None) or getattr(self.cfg, "original_architecture", None)

    def input_embedding(self) -> InputEmbeddingPoint:
        """Where layer 0 perturbs (:attr:`_input_embedding`, found once per adapter)."""
        return self._input_embedding

    @functools.cached_property
    def _input_embedding(self) -> InputEmbeddingPoint:
        """Where layer 0 perturbs: the paper's ``x_t``, the input embedding, wherever this model exposes it.

        Most families start the residual stream with the token embedding plus additive position
        embeddings, so ``x_t`` is ``blocks.0.hook_resid_pre`` (same Jacobian). Families that multiply
        the embedding by a constant (Gemma: ``√d_model``) are perturbed there too, the factor recorded.
        Where a non-constant map sits between the token embedding and the first block (BLOOM's
        embedding LayerNorm, OPT-350m's ``project_in``; table: :data:`jscopes_tl.families.EMBEDDING_MAPS`),
        a TransformerBridge is perturbed at the token embedding itself (``embed.hook_out``, before
        the map). A HookedTransformer applies BLOOM's embedding norm inside ``embed`` with no hook
        before it: there ``x_t`` is the normed embedding, and ``kind`` says so.
        """
        from jscopes_tl import families

        hook_names = self.hook_names
        for component, kind in families.EMBEDDING_MAPS.items():
            if f"{component}.hook_in" in hook_names and "embed.hook_out" in hook_names:
                return InputEmbeddingPoint("embed.hook_out", kind)
        if getattr(self.cfg, "post_embedding_ln", False):
            return InputEmbeddingPoint(self.resid_pre_hook(0), "after_embedding_norm")
        family = families.family_of_architecture(self.architecture)
        if family is not None and family.input_embedding == "scaled":
            return InputEmbeddingPoint(self.resid_pre_hook(0), "scaled", math.sqrt(self.d_model))
        return InputEmbeddingPoint(self.resid_pre_hook(0), "resid_pre")

    def perturbation_hook(self, layer: int) -> str:
        """Where a scope at ``layer`` perturbs: the input embedding at 0 (:meth:`input_embedding`),
        the residual stream entering block ``layer`` otherwise (``n_layers``: the final one)."""
        hook = self.resid_pre_hook(layer)
        return self.input_embedding().hook if layer == 0 else hook

    @property
    def final_hidden_hook(self) -> str:
        """Hook whose activation, passed through :meth:`final_hidden`, is the unembedding input."""
        if self.family == TRANSFORMER_BRIDGE:
            return self._resolve_hook(["unembed.hook_in"])
        last = self.n_layers - 1
        return self._resolve_hook([f"blocks.{last}.hook_resid_post"])

    def final_hidden(
        self, activation: Float[torch.Tensor, "... d_model"]
    ) -> Float[torch.Tensor, "... d_model"]:
        """The state fed to the unembedding, from the activation at :attr:`final_hidden_hook`."""
        if self.family == TRANSFORMER_BRIDGE:
            return activation
        if getattr(self.cfg, "normalization_type", None) is None:
            return activation
        return self.model.ln_final(activation)

    # ----------------------------------------------------------------------------- unembedding
    def unembed_before_transform(
        self, y: Float[torch.Tensor, "... d_model"]
    ) -> Float[torch.Tensor, "... d_vocab"]:
        """The model's own unembedding module applied to ``y`` (weights and bias included)."""
        return self.model.unembed(y)

    def logit_transform(self, logits: Float[torch.Tensor, "... d_vocab"]) -> Float[torch.Tensor, "... d_vocab"]:
        """The model's elementwise post-unembedding transform (soft-capping, scaling), if any."""
        if self.family == TRANSFORMER_BRIDGE:
            architecture_adapter = getattr(self.model, "adapter", None)
            transform = getattr(architecture_adapter, "apply_output_logits_transform", None)
            if transform is not None:
                return transform(logits)
        cap = _active_soft_cap(self.cfg)
        return logits if cap is None else cap * torch.tanh(logits / cap)

    @property
    def has_logit_transform(self) -> bool:
        """Whether :meth:`logit_transform` changes any logit. Read from the configuration when the
        transform is a soft cap alone (HookedTransformer's, or a bridge architecture adapter that
        keeps TransformerLens's base transform): on when the cap is positive. Any other transform
        is probed on logits from -50 to 50."""
        cfg = self._soft_cap_configuration()
        if cfg is not None:
            return _active_soft_cap(cfg) is not None
        probe = torch.linspace(-50.0, 50.0, 11, device=self.device)
        return not torch.equal(self.logit_transform(probe), probe)

    def _soft_cap_configuration(self) -> Any:
        """The configuration whose ``output_logits_soft_cap`` is the whole logit transform, or None
        when the transform is another one (an architecture adapter's own)."""
        if self.family != TRANSFORMER_BRIDGE:
            return self.cfg
        architecture_adapter = getattr(self.model, "adapter", None)
        transform = getattr(type(architecture_adapter), "apply_output_logits_transform", None)
        if transform is None:
            return self.cfg  # logit_transform applies the model configuration's soft cap
        try:
            from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
        except ImportError:
            return None
        if transform is not getattr(ArchitectureAdapter, "apply_output_logits_transform", None):
            return None
        return getattr(architecture_adapter, "cfg", None)

    def logits(self, y: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
        """Logits exactly as the model computes them from the unembedding input ``y``."""
        return self.logit_transform(self.unembed_before_transform(y))

    # ----------------------------------------------------------------------------- tokens
    @property
    def tokenizer(self) -> Any:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            raise ScopeInputError(
                "this model has no tokenizer, so text cannot be tokenised: pass inputs as an "
                "integer tensor of token ids and targets as token ids."
            )
        return tokenizer

    def tokenize(self, text: str) -> Int[torch.Tensor, " pos"]:
        """Tokenise a prompt with the model's own tokenizer and BOS convention, never truncated
        (TransformerLens cuts at ``n_ctx`` by default; the caller checks the length), on the CPU:
        :meth:`forward` places them (``cfg.device`` is ``meta`` on a bridge whose embedding is offloaded)."""
        self.tokenizer  # noqa: B018 - raises the clear error when there is no tokenizer
        return self.model.to_tokens(text, truncate=False, move_to_device=False)[0]

    def tokenize_fragment(self, text: str) -> Int[torch.Tensor, " pos"]:
        """Tokenise a piece of text with no BOS (for targets such as ``" liberal"``)."""
        self.tokenizer  # noqa: B018
        return self.model.to_tokens(text, prepend_bos=False, truncate=False, move_to_device=False)[0]

    def str_tokens(self, tokens: Int[torch.Tensor, " pos"]) -> list[str]:
        """Each token's string, as ``model.to_str_tokens`` gives it. That decodes one id at a time
        (TransformerLens 2.x and the bridge alike), so each id's string is kept per tokenizer and
        only ids not seen before are decoded."""
        return self.id_strings(tokens.reshape(-1).tolist())

    def id_strings(self, ids: list[int]) -> list[str]:
        """:meth:`str_tokens` of token ids given as a list."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return [f"<{i}>" for i in ids]
        try:
            strings = _token_strings.setdefault(tokenizer, {})
        except TypeError:  # a tokenizer that cannot be held weakly or hashed: decode every time
            return list(self.model.to_str_tokens(torch.tensor(ids, dtype=torch.long)))
        missing = [i for i in dict.fromkeys(ids) if i not in strings]
        if missing:
            strings.update(zip(missing, self.model.to_str_tokens(torch.tensor(missing))))
        return [strings[i] for i in ids]

    def text(self, tokens: Int[torch.Tensor, " pos"]) -> str | None:
        """The tokens as the tokenizer writes them out, special tokens left out (None: no tokenizer)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return None
        return tokenizer.decode(tokens.detach().cpu().tolist(), skip_special_tokens=True)

    def word_starts(self, tokens: Int[torch.Tensor, " pos"], str_tokens: list[str]) -> list[bool] | None:
        """Per token, whether the tokenizer starts a word there (None: no tokenizer); see
        :func:`jscopes_tl.words.tokenizer_word_starts`."""
        from jscopes_tl.words import tokenizer_word_starts

        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return None
        return tokenizer_word_starts(tokenizer, tokens.detach().cpu().tolist(), str_tokens)

    @property
    def model_name(self) -> str | None:
        """The name the model was loaded under (``cfg.model_name``), for display."""
        return getattr(self.cfg, "model_name", None)

    @property
    def n_ctx(self) -> int:
        """The longest sequence the model accepts (its positional tables stop there)."""
        return int(self.cfg.n_ctx)

    @property
    def unk_token_id(self) -> int | None:
        """The tokenizer's unknown token, when it is a token of its own (None when the tokenizer has
        none, or reuses BOS/EOS/pad for it, as GPT-2-style byte-level tokenizers that never need it do)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        unknown = getattr(tokenizer, "unk_token_id", None)
        shared = {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return None if unknown is None or unknown in shared else int(unknown)

    @property
    def special_token_ids(self) -> set[int]:
        """BOS, EOS, pad and the tokenizer's other special tokens (not content)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        ids = set(getattr(tokenizer, "all_special_ids", None) or [])
        ids |= {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return {int(i) for i in ids if i is not None}

    @property
    def pad_token_id(self) -> int:
        tokenizer = getattr(self.model, "tokenizer", None)
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                return int(value)
        return 0

    # ----------------------------------------------------------------------------- running
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, HookFunction]]) -> Iterator[None]:
        """The model's own scoped hook context: hooks are removed on exit, errors included."""
        with self.model.hooks(fwd_hooks=fwd_hooks):
            yield

    @contextlib.contextmanager
    def own_hooks(self, fwd_hooks: list[tuple[str, HookFunction]]) -> Iterator[None]:
        """jscopes_tl's own forward hooks (by exact hook name), added to their HookPoints directly
        and removed on exit, errors included.

        The same effect as :meth:`hooks` for hooks that do not read ``hook.name``, without the model's
        context manager, which resolves aliases over the whole hook dictionary on entry (a
        TransformerBridge) or visits every hook point on exit (a HookedTransformer): about a
        millisecond per call at GPT-2 size. Each block uses a context level of its own, so removing
        its hooks never touches the user's (or another block's) at the same point.
        """
        level = next(_own_hook_levels)
        points = [self.hook_points[name] for name, _ in fwd_hooks]
        try:
            for point, (_, hook) in zip(points, fwd_hooks):
                point.add_hook(hook, dir="fwd", level=level)
            yield
        finally:
            _restore_all([lambda point=point: point.remove_hooks("fwd", level=level) for point in dict.fromkeys(points)])

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> Any:
        """The model on a batch whose every token is real (right padding only ever follows them).

        Tokens go positionally, to the token embedding's device (:attr:`input_device`; a
        HookedTransformer moves them only when their device *type* differs from ``cfg.device``'s):
        HookedTransformer and the bridge name the argument differently. A
        HookedTransformer whose tokenizer pads on the left would build an attention mask from the
        tokens themselves and hide leading pad-id tokens (a BOS that doubles as the pad token), so
        it is told the batch is right-padded; a bridge never masks a token tensor by itself.
        """
        tokens = tokens.to(self.input_device)
        snapshot = _call_snapshots.get(self.model)
        if snapshot is not None:
            snapshot.released = False  # this pass may leave a graph in a cache slot
        if self.family == HOOKED_TRANSFORMER:
            return self.model(tokens, padding_side="right")
        return self.model(tokens)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this model's lock: other threads' jscopes_tl calls on the model wait."""
        with _model_lock(self.model):
            yield

    @contextlib.contextmanager
    def prepared_for_scopes(self) -> Iterator[None]:
        """The model, held for one call: locked, eval mode, parameters frozen, autograd on.

        Only the perturbation needs a gradient: freezing parameters stops autograd from saving
        activations for weight gradients, which a scope never reads. On exit every parameter's
        ``requires_grad`` and every module's mode are restored (each one, even when another fails),
        and tensor attributes the forward passes left on submodules holding the call's autograd
        graph (a TransformerBridge attention bridge's cached pattern) get their earlier values back.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "Jacobian Scopes need autograd, which torch.inference_mode() disables; "
                "call the scope outside the inference_mode() block."
            )
        with self.lock():
            if _prepared_depth.get(self.model, 0):
                # Nested in a call that already prepared the model (a scope inside faithfulness or
                # patching): it is frozen, in eval mode, and is restored when that call ends.
                with self._nested(), torch.enable_grad():
                    yield
                return
            modules, weights, tree = _model_tree(self.model)
            offloaded = _check_differentiable(weights, lambda tensor: _weight_name(self.model, tensor), self.model)
            before = _cached_tensors(tree)
            frozen = list(filter(_requires_grad, weights))
            offloaded_slots = _offloaded_parameter_slots(self.model) if offloaded else []
            snapshot = _call_snapshots[self.model] = _CallSnapshot(before)
            try:
                for weight in frozen:
                    weight.requires_grad_(False)
                with self.eval_mode(modules), self._nested(), torch.enable_grad():
                    yield
            finally:
                _call_snapshots.pop(self.model, None)
                # Forward passes all go through forward(), which marks the snapshot; none since the
                # last release (the end of a scope's last group) leaves nothing to give back.
                release = (lambda: None) if snapshot.released else (lambda: _release_call_graph(before))
                _restore_all([
                    lambda: _restore_each(frozen, _unfreeze),
                    lambda: _restore_each(offloaded_slots, lambda slot: _unfreeze(slot[0]._parameters[slot[1]])),
                    release,
                ])

    def release_call_graph(self) -> None:
        """Inside :meth:`prepared_for_scopes`: give submodule tensor attributes that now hold an
        autograd graph their values from the start of the call (it does this on exit too; a scope
        calls it as soon as a graph's last backward pass is done, so the graph is freed then)."""
        snapshot = _call_snapshots.get(self.model)
        if snapshot is not None:
            _release_call_graph(snapshot.before)
            snapshot.released = True

    @contextlib.contextmanager
    def _nested(self) -> Iterator[None]:
        _prepared_depth[self.model] = _prepared_depth.get(self.model, 0) + 1
        try:
            yield
        finally:
            _prepared_depth[self.model] -= 1

    @contextlib.contextmanager
    def eval_mode(self, modules: list[torch.nn.Module] | None = None) -> Iterator[None]:
        """Eval mode (no dropout) for the duration, under the model's lock; every module's own mode
        restored on exit. ``modules``: the model's modules whose mode matters (:func:`_model_tree`),
        when the caller has them. A HookPoint passes its input through in either mode, and so does a
        module of a ``families.MODE_FREE_MODULES`` class: their modes are looked at only when another
        module is in training mode (then the model's ``eval()`` switches them too, and they are given
        back); otherwise they are left as they are."""
        with self.lock():
            training = list(filter(_in_training, _model_tree(self.model)[0] if modules is None else modules))
            try:
                if training:
                    training += filter(_in_training, _model_tree(self.model)[2].live_mode_free())
                    self.model.eval()
                yield
            finally:
                _restore_each(training, _set_training)

    # ----------------------------------------------------------------------------- provenance
    def final_norm_has_no_gain(self) -> bool:
        """True when the final norm applies no gain or bias of its own: its weights were folded
        into ``W_U`` (HookedTransformer's default, the bridge's compatibility mode). Then ``‖y‖`` is
        fixed by the normalisation. False when there is no final norm at all (OPT-350m's
        ``project_out`` feeds the unembedding directly): nothing fixes ``‖y‖`` there."""
        final_norm = getattr(self.model, "ln_final", None)
        if final_norm is None:
            return False
        weights = _final_norm_weights(self.model, final_norm)
        if any(parameter.is_meta for parameter, _ in weights):
            with torch.no_grad(), _offloaded_weights_loaded(final_norm):
                # Loading replaces the placeholders: read the parameters again inside.
                return all(map(_is_everywhere, _neutral_weights(final_norm)))
        return all(map(_is_everywhere, weights))

    def numerics(self, perturbation_hook: str | list[str]) -> Numerics:
        input_embedding = self.input_embedding()
        return Numerics(
            model_family=self.family,
            compatibility_mode=(
                bool(getattr(self.model, "compatibility_mode", False))
                if self.family == TRANSFORMER_BRIDGE
                else None
            ),
            final_norm_folded_into_unembed=self.final_norm_has_no_gain(),
            unembed_centred=self.unembed_statistics.centred,
            perturbation_hook=perturbation_hook,
            readout_hook=self.final_hidden_hook,
            input_embedding=input_embedding.kind,
            input_embedding_scale=input_embedding.scale,
        )

    # ----------------------------------------------------------------------------- attention
    def attention_patterns(self, tokens: Int[torch.Tensor, " pos"]) -> Float[torch.Tensor, "n_layers n_heads pos pos"]:
        """Every layer's attention pattern (query × key probabilities) on one prompt, in eval mode.

        Read at ``blocks.{L}.attn.hook_pattern`` (HookedTransformer, and TransformerBridge with
        or without compatibility mode); returned as float32 on the CPU.
        """
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(self.n_layers)]
        if not any(name in self.hook_names for name in names):
            raise UnsupportedModelError(
                f"this {self.architecture or self.family} has no attention layers (no blocks.L.attn.hook_pattern; "
                "e.g. Mamba, a state-space model), so there are no attention patterns to view or correlate with. "
                "Jacobian Scopes themselves work on it."
            )
        names = [self._resolve_hook([name]) for name in names]
        patterns = self.capture(tokens.reshape(1, -1), names)
        return torch.stack([patterns[name][0] for name in names]).float().cpu()

    # ----------------------------------------------------------------------------- patching, ablation
    @property
    def token_embedding_hook(self) -> str:
        """Hook on the token embedding alone, before any positional embedding is added (zeroing it
        ablates a token's identity and keeps its position)."""
        return self._resolve_hook(["hook_embed", "embed.hook_out"])

    def capture(
        self, tokens: Int[torch.Tensor, "batch pos"], hook_names: Sequence[str]
    ) -> dict[str, Float[torch.Tensor, "batch pos ..."]]:
        """Activations at ``hook_names`` from one forward pass without gradients, in eval mode."""
        captured: dict[str, torch.Tensor] = {}

        def capture_hook(name: str) -> HookFunction:
            def hook(activation: torch.Tensor, hook: Any) -> None:
                captured[name] = activation.detach()

            return hook

        with self.eval_mode(), torch.no_grad(), self.hooks([(name, capture_hook(name)) for name in hook_names]):
            self.forward(tokens)
        return captured

    def transformer_lens_resid_pre_patching(
        self,
    ) -> Callable[[Int[torch.Tensor, "1 pos"], Int[torch.Tensor, "1 pos"], Callable[[torch.Tensor], torch.Tensor]], torch.Tensor] | None:
        """TransformerLens's own ``patching.get_act_patch_resid_pre`` bound to this model, or None.

        Available where the installed TransformerLens has ``transformer_lens.patching`` (2.x; 4.x,
        where it also runs on a TransformerBridge) and the model has the hook names it patches,
        ``blocks.L.hook_resid_pre`` (the bridge has them as aliases with or without compatibility
        mode in 4.x), and ``cfg.device`` is a real device (see :meth:`_records_meta_device`). The
        returned function maps ``(clean_tokens, corrupted_tokens, metric)`` to the ``[n_layers, pos]``
        patched metric; it shows TransformerLens's own progress bar.
        """
        try:
            from transformer_lens import patching
        except ImportError:
            return None
        if not all(f"blocks.{layer}.hook_resid_pre" in self.hook_names for layer in range(self.n_layers)):
            return None
        if self._records_meta_device():
            return None

        def patch(clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            _, clean_cache = self.model.run_with_cache(clean_tokens.to(self.input_device))
            return patching.get_act_patch_resid_pre(self.model, corrupted_tokens.to(self.input_device), clean_cache, metric)

        return patch

    def _records_meta_device(self) -> bool:
        """``cfg.device`` is ``meta``: TransformerLens 4.x's ``boot_transformers`` records the input
        embedding's parameter device, a placeholder when Accelerate offloaded the embedding, and
        ``transformer_lens.patching`` creates its result tensors there (no values)."""
        return str(getattr(self.cfg, "device", None)) == "meta"

    # ----------------------------------------------------------------------------- components
    # Hook names of per-component activations. A TransformerBridge has the HookedTransformer names
    # as aliases (with or without compatibility mode in 4.x); the canonical bridge names come second.
    def head_output_hook(self, layer: int) -> str:
        """Per-head attention output before the output projection, ``[batch, pos, head, d_head]``
        (``blocks.L.attn.hook_z``; ``blocks.L.attn.o.hook_in`` on a bridge): the activation that
        TransformerLens's head-level patching (``get_act_patch_attn_head_out_*``) swaps."""
        self._check_block(layer)
        return self._resolve_hook([f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.attn.o.hook_in"])

    def mlp_output_hook(self, layer: int) -> str:
        """The MLP's output as written to the residual stream, ``[batch, pos, d_model]``."""
        self._check_block(layer)
        return self._resolve_hook([f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.mlp.hook_out"])

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    def _check_block(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ScopeInputError(f"layer must be an int in [0, {self.n_layers}); got {layer!r}.")

    def check_readable_hook(self, hook_name: str, argument: str) -> None:
        """Refuse hooks a scope cannot read: those whose activation is ``[batch, head, query_pos,
        key_pos]`` (attention scores and patterns; a scope needs ``[batch, pos, ...]``, and a head
        count could pass for a length), and those that only run with a model option on (the
        HookedTransformer never runs them; the bridge refuses to hook them). Model options are the
        user's: a scope never switches them."""
        last = hook_name.rsplit(".", 1)[-1]
        if last in _HEAD_FIRST_HOOKS:
            raise ScopeInputError(
                f"{argument}={hook_name!r} is [batch, head, query_pos, key_pos], not [batch, pos, ...]; read or "
                "perturb the per-position activations instead (e.g. attn.hook_z, hook_resid_post)."
            )
        option = _HOOKS_BEHIND_OPTIONS.get(last)
        if option is not None and not getattr(self.cfg, option, False):
            raise ScopeInputError(
                f"{argument}={hook_name!r} only runs when the model option cfg.{option} is on "
                f"(model.set_{option}(True)); jscopes_tl does not change model options."
            )

    def hooks_run_before(self, tokens: Int[torch.Tensor, "batch pos"], hook_names: Sequence[str], stop_hook: str) -> set[str]:
        """Which of ``hook_names`` run before ``stop_hook`` (or at it) in a forward pass on ``tokens``:
        the activations a readout at ``stop_hook`` can depend on."""
        seen: list[str] = []

        class _Stop(Exception):
            pass

        def record(name: str) -> HookFunction:
            def hook(activation: torch.Tensor, hook: Any) -> None:
                seen.append(name)

            return hook

        def stop(activation: torch.Tensor, hook: Any) -> None:
            raise _Stop

        hooks = [(name, record(name)) for name in hook_names] + [(stop_hook, stop)]
        with self.eval_mode(), torch.no_grad(), self.hooks(hooks):
            try:
                self.forward(tokens)
            except _Stop:
                pass
        return set(seen)

    def transformer_lens_head_patching(self) -> dict[str, Callable[..., torch.Tensor]] | None:
        """TransformerLens's own head- and MLP-level patching bound to this model, or None.

        ``{"heads_by_pos": get_act_patch_attn_head_out_by_pos, "heads_all_pos":
        get_act_patch_attn_head_out_all_pos, "mlps": get_act_patch_mlp_out}``, each mapping
        ``(corrupted_tokens, clean_cache, metric)`` to TransformerLens's layout (``[n_layers, pos,
        n_heads]``, ``[n_layers, n_heads]``, ``[n_layers, pos]``). Available where
        ``transformer_lens.patching`` exists (2.x; 4.x, where it also runs on a bridge), the model
        has ``blocks.L.attn.hook_z`` and ``blocks.L.hook_mlp_out``, and ``cfg.device`` is a real device.
        """
        try:
            from transformer_lens import patching
        except ImportError:
            return None
        names = [f"blocks.{layer}.{hook}" for layer in range(self.n_layers) for hook in ("attn.hook_z", "hook_mlp_out")]
        if not all(name in self.hook_names for name in names):
            return None
        if self._records_meta_device():
            return None
        return {
            "heads_by_pos": patching.get_act_patch_attn_head_out_by_pos,
            "heads_all_pos": patching.get_act_patch_attn_head_out_all_pos,
            "mlps": patching.get_act_patch_mlp_out,
        }


# Hook points (last name part) whose activation is [batch, head, query_pos, key_pos].
_HEAD_FIRST_HOOKS = frozenset({"hook_attn_scores", "hook_pattern"})
# Hook points (last name part) that run only with a config option on, on both generations.
_HOOKS_BEHIND_OPTIONS = {
    "hook_result": "use_attn_result",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_attn_in": "use_attn_in",
    "hook_mlp_in": "use_hook_mlp_in",
}


# --------------------------------------------------------------------------------- construction
def transformer_lens_version() -> str:
    from importlib.metadata import version

    return version("transformer_lens")


def hooked_transformer_available() -> bool:
    """True where this TransformerLens still ships HookedTransformer (2.x, 3.x; removed in 4.0)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


def hooked_transformer_from_config(config: dict[str, Any], tokenizer: Any = None, seed: int = 0) -> Any:
    """A HookedTransformer with random weights from ``HookedTransformerConfig(**config)``."""
    if not hooked_transformer_available():
        raise UnsupportedModelError(
            f"TransformerLens {transformer_lens_version()} has no HookedTransformer (removed in 4.0); "
            "use a TransformerBridge instead."
        )
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    model = HookedTransformer(HookedTransformerConfig(**config), tokenizer=tokenizer)
    return model.eval()


def bridge_from_hf_model(
    hf_model: torch.nn.Module, tokenizer: Any = None, compatibility_mode: bool = False, model_name: str = "external"
) -> Any:
    """A TransformerBridge around an already-built Hugging Face causal LM (no download);
    ``model_name`` is recorded as ``cfg.model_name``."""
    try:
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    except ImportError as error:
        raise UnsupportedModelError(
            f"TransformerLens {transformer_lens_version()} has no TransformerBridge builder; "
            "TransformerBridge needs TransformerLens 4.x."
        ) from error
    # cfg.device is where TransformerLens puts the tensors it creates (tokens, patching results). For
    # a model Accelerate dispatched it is the input embedding's execution device, which for an
    # offloaded embedding is not its parameter's (meta), the builder's default.
    placement: dict[str, Any] = {}
    embedding = hf_model.get_input_embeddings() if getattr(hf_model, "hf_device_map", None) else None
    if embedding is not None:
        placement["device"] = _execution_device(embedding, embedding.weight)
    bridge = build_bridge_from_module(
        hf_model.eval(), type(hf_model).__name__, hf_config=hf_model.config, tokenizer=tokenizer, model_name=model_name,
        **placement,
    )
    if compatibility_mode:
        bridge.enable_compatibility_mode()
    return bridge


class ModelLoadError(RuntimeError):
    """A pretrained model could not be loaded (most often: offline with no local copy)."""


def load_pretrained(name_or_path: str, *, device: str | None = None) -> Any:
    """A Hugging Face hub name or a local directory of a saved model, as a TransformerLens model.

    The weights are loaded *unprocessed* on every TransformerLens generation, so the logits and
    every scope match the Hugging Face model (and Temperature Scope sees the final norm's gain):
    TransformerLens with TransformerBridge (3.x, 4.x): ``TransformerBridge.boot_transformers``
    (no compatibility mode). TransformerLens 2.x: ``HookedTransformer.from_pretrained_no_processing``
    for hub names it supports, and :func:`hooked_transformer_from_hf_directory` with every
    processing flag off for a local directory. (``HookedTransformer.from_pretrained``'s default
    folds the final norm into ``W_U``, which fixes ``‖y‖`` and makes every Temperature score 0.)

    Before a hub name is looked up, one quick connection probe checks that the hub is reachable
    (no probe when ``HF_HUB_OFFLINE`` is set). Offline, a model missing from the local cache fails
    at once (instead of after the hub client's retries, about half a minute) with a message saying
    how to point at a local copy, and a cached one is loaded in offline mode.
    """
    local = Path(name_or_path).expanduser()
    if local.exists() and not local.is_dir():
        raise ModelLoadError(
            f"{name_or_path!r} is a file; pass the directory that holds the model's config.json."
        )
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelLoadError(
                f"{name_or_path!r} has no config.json, so it is not a saved Hugging Face model "
                "(save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))."
            )
        return _load_transformer_lens_model(str(local), device=device, is_local=True)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"no such model directory: {name_or_path!r}.")
    offline = hub_offline_requested() or not hub_reachable()
    if offline and not _in_hub_cache(name_or_path):
        raise ModelLoadError(
            f"could not load model {name_or_path!r}: the Hugging Face Hub is not reachable from here "
            "(offline) and the model is not in the local cache.\n"
            f"{_LOCAL_COPY_HINT.format(name=name_or_path)}"
        )
    with _hub_offline_mode(offline):
        return _load_transformer_lens_model(name_or_path, device=device, is_local=False)


_LOCAL_COPY_HINT = (
    "Download it where you have internet (e.g. `huggingface-cli download {name} --local-dir ./my-model`) "
    "and pass that directory instead, or point HF_HOME at a cache that already holds it."
)


def _load_transformer_lens_model(source: str, *, device: str | None, is_local: bool) -> Any:
    try:
        if _bridge_builder_available():
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_transformers(source, device=device)
        if is_local:
            return hooked_transformer_from_hf_directory(
                source,
                device=device,
                fold_ln=False,
                center_writing_weights=False,
                center_unembed=False,
                fold_value_biases=False,
            )
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained_no_processing(source, device=device)
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ModelLoadError(
            f"could not load model {source!r}: {type(error).__name__}: {first_line}\n"
            f"{'' if is_local else _LOCAL_COPY_HINT.format(name=source)}"
        ) from error


def hub_offline_requested() -> bool:
    """True when the environment asks the Hugging Face libraries to stay offline."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout_seconds: float = 2.0) -> bool:
    """One TCP connection to the hub endpoint (``HF_ENDPOINT``), no retries."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except (ImportError, ValueError):  # ValueError: not a valid repo id
        return False


@contextlib.contextmanager
def _hub_offline_mode(offline: bool) -> Iterator[None]:
    """Make the hub clients read only their cache (they read the flag at import, so set both)."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved_environment = os.environ.get("HF_HUB_OFFLINE")
    saved_flag = hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_flag
        if saved_environment is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_environment


def _bridge_builder_available() -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_transformer_from_hf_directory(
    directory: str | Any,
    *,
    hf_model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    device: str | None = None,
) -> Any:
    """A HookedTransformer (TransformerLens 2.x, 3.x) from a local directory of a saved HF causal LM.

    ``HookedTransformer.from_pretrained`` accepts hub names only; this goes the same way by hand:
    TransformerLens's config conversion (which reads ``directory/config.json``), its weight
    conversion for the architecture, and ``load_and_process_state_dict``. The processing flags
    default to ``from_pretrained``'s (LayerNorm folded, writing weights and unembedding centred);
    turn them all off to keep the Hugging Face model's numerics exactly.
    """
    if not hooked_transformer_available():
        raise UnsupportedModelError(
            f"TransformerLens {transformer_lens_version()} has no HookedTransformer (removed in 4.0); "
            "use a TransformerBridge instead."
        )
    import transformers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    from jscopes_tl import families

    directory = str(directory)
    if hf_model is None:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    if tokenizer is None and (Path(directory) / "tokenizer_config.json").exists():
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    family = families.family_of(hf_model)
    if family is not None and family.hooked_transformer is not None:
        raise UnsupportedModelError(
            f"{type(hf_model).__name__} ({family.name}) cannot be a HookedTransformer: {family.hooked_transformer}. "
            "Use a TransformerBridge (TransformerLens 4.x) instead."
        )
    if family is not None and family.hooked_config is not None:
        config = HookedTransformerConfig(**_processed_config(family.hooked_config(hf_model.config), fold_ln, device))
    else:
        config = loading.get_pretrained_model_config(directory, fold_ln=fold_ln, device=device)
        if family is not None and family.hooked_overrides is not None:
            config = HookedTransformerConfig(**{**config.to_dict(), **family.hooked_overrides(hf_model.config)})
    model = HookedTransformer(config, tokenizer=tokenizer)
    state_dict = loading.get_pretrained_state_dict(directory, config, hf_model)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    return model.eval()


def _processed_config(config: dict[str, Any], fold_ln: bool, device: str | None) -> dict[str, Any]:
    """What ``get_pretrained_model_config`` adds to a family's config dictionary."""
    config = dict(config, device=device, init_weights=False, model_name=config.get("original_architecture", "external"))
    if fold_ln:
        config["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(config["normalization_type"], config["normalization_type"])
    return config


def hooked_transformer_from_hf_model(hf_model: torch.nn.Module, tokenizer: Any = None, **processing: Any) -> Any:
    """A HookedTransformer (TransformerLens 2.x, 3.x) around an already-built Hugging Face causal LM
    (no download): :func:`hooked_transformer_from_hf_directory` on its saved config.
    ``processing``: ``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``
    (default: ``from_pretrained``'s, all on), ``device``."""
    with tempfile.TemporaryDirectory(prefix="jscopes_tl_config_") as directory:
        config = copy.deepcopy(hf_model.config)  # a model built from a config has no architectures yet
        config.architectures = [type(hf_model).__name__]
        config.save_pretrained(directory)
        return hooked_transformer_from_hf_directory(directory, hf_model=hf_model.eval(), tokenizer=tokenizer, **processing)
