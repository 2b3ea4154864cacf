"""The module tree of a model, walked once and cached until a module registers something.

A call touches every module of the model (their modes), every parameter and buffer (frozen for
the call) and the plain tensor attributes a forward pass can leave a cached tensor in. Walking
that tree costs about a millisecond on a GPT-2-size bridge (800 modules), more than a scope's
other bookkeeping together, so it is walked once per model and kept.

What this module guarantees:

* :func:`model_tree` returns the model's modules whose mode matters, its weights (each once) and
  its ``ModelTree``, walked again whenever some module of a cached tree registered a
  submodule, parameter or buffer since the last walk (torch's global registration hooks count
  them in ``registration_count``), or when a module or weight of the cached tree is gone.
* The cache holds modules and weights weakly: it never keeps a model alive.
* A TransformerBridge's wrapped Hugging Face model, which is not registered with the bridge, is
  part of the tree (``all_modules()``).
"""

from __future__ import annotations

import functools
import operator
import weakref
from dataclasses import dataclass
from typing import Any

import torch

_dereference = weakref.ref.__call__  # a weakref's object, or None
_is_not_none = functools.partial(operator.is_not, None)


def all_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
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
registration_count = [0]


def _count_registration(module: torch.nn.Module, name: str, value: Any) -> None:
    # Only registrations on a module of a cached tree count: Hugging Face's Llama slices its
    # ModuleList of layers on every forward pass, and the slice (a new ModuleList) registers them.
    if module in _tree_modules:
        registration_count[0] += 1


# Every module of a cached tree (held weakly).
_tree_modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


torch.nn.modules.module.register_module_module_registration_hook(_count_registration)
torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)
torch.nn.modules.module.register_module_buffer_registration_hook(_count_registration)

# Attributes torch.nn.Module keeps for itself (hook bookkeeping), never a forward pass's cache.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))


@dataclass
class ModelTree:
    """What a call touches on a model, from one walk (:func:`model_tree`), held weakly so the cache
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


_model_trees: weakref.WeakKeyDictionary[torch.nn.Module, ModelTree] = weakref.WeakKeyDictionary()


def model_tree(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.Tensor], ModelTree]:
    """The model's modules whose mode matters and its weights, walked again only when some module
    registered something since the last walk (a walk costs about a millisecond on a GPT-2-size bridge)."""
    tree = _model_trees.get(model)
    if tree is not None and tree.registrations == registration_count[0]:
        live = tree.live()
        if live is not None:
            return (*live, tree)
    registrations = registration_count[0]
    modules = all_modules(model)
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
    tree = ModelTree(
        registrations, [weakref.ref(m) for m in mode_dependent], [weakref.ref(w) for w in weights], cache_slots,
        [weakref.ref(m) for m in mode_free],
    )
    _model_trees[model] = tree
    _tree_modules.update(modules)
    return mode_dependent, weights, tree
