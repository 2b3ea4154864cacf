"""Models Accelerate dispatched with offloading (a ``device_map`` with ``"cpu"`` or ``"disk"`` entries).

Outside its own forward pass an offloaded module's parameters are ``meta`` placeholders, and the
module's ``AlignDevicesHook`` loads them onto its execution device for each call. A scope needs
to know where such a module computes, and sometimes the values themselves outside a forward pass
(``W_U``, the final norm's gain, every weight for a run's model hash).

What this module guarantees:

* Without Accelerate installed, or on a model that was not dispatched with offloading, every
  function here finds nothing offloaded and changes nothing.
* ``offloaded_weights_loaded()`` and :func:`offloaded_weight_loaders` load weights through
  Accelerate's own ``align_module_device``, which puts the placeholders back on exit: reading an
  offloaded model never leaves its weights loaded, and never holds more than one module's weights
  in memory at a time.
* ``execution_device()`` names a real device for an offloaded weight (the one its hook loads
  it to), never ``meta``, whenever Accelerate knows one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch

from jscopes_tl.adapter.model_tree import all_modules


def offloaded_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose weights Accelerate offloaded (a ``device_map`` with ``"cpu"`` or ``"disk"``
    entries): outside the module's own forward pass their parameters are ``meta`` placeholders, and
    the module's ``AlignDevicesHook`` loads them onto its execution device for each call."""
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:  # without Accelerate nothing can be offloaded
        return []
    return [module for module in all_modules(model) if has_offloaded_params(module)]


def offloaded_tensor_ids(model: torch.nn.Module) -> set[int]:
    return {
        id(tensor)
        for module in offloaded_modules(model)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    }


def offloaded_weight_loaders(model: torch.nn.Module) -> dict[int, Callable[[], torch.Tensor]]:
    """For every weight Accelerate offloaded (a ``meta`` placeholder, by ``id``), a function that
    returns its value on the CPU, loading one module's weights at a time (reading every weight of
    an offloaded model, e.g. to hash it, never holds more than one module's in memory).

    Example:
        >>> from jscopes_tl.adapter import offloaded_weight_loaders
        >>> offloaded_weight_loaders(model)                    # nothing offloaded: every weight is local
        {}
    """

    def load(module: torch.nn.Module, name: str) -> torch.Tensor:
        from accelerate.utils import align_module_device

        with align_module_device(module):
            value = module._parameters.get(name)
            value = module._buffers.get(name) if value is None else value
            return value.detach().cpu().clone()

    return {
        id(tensor): functools.partial(load, module, name)
        for module in offloaded_modules(model)
        for name, tensor in (*module._parameters.items(), *module._buffers.items())
        if tensor is not None and tensor.is_meta
    }


@contextlib.contextmanager
def offloaded_weights_loaded(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, the offloaded weights of ``module``'s subtree hold their values (Accelerate's
    own pre-forward hook loads them; its post-forward hook puts the placeholders back on exit).
    A no-op for a model that was not dispatched with offloading."""
    with contextlib.ExitStack() as stack:
        offloaded = offloaded_modules(module)
        if offloaded:
            from accelerate.utils import align_module_device

            for submodule in offloaded:
                stack.enter_context(align_module_device(submodule))
        yield


def execution_device(module: torch.nn.Module, weight: torch.Tensor) -> torch.device:
    """Where ``module`` computes: its weight's device, or for an offloaded weight (a ``meta``
    placeholder) the device its Accelerate hook loads it to."""
    if not weight.is_meta:
        return weight.device
    for submodule in offloaded_modules(module):
        device = getattr(submodule._hf_hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return weight.device  # never loaded: holding.check_differentiable refuses it


def offloaded_parameter_slots(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(module, name) of every offloaded parameter that requires grad. Accelerate replaces an
    offloaded parameter by a new object on each forward pass (the loaded copy, then a new
    placeholder), each taking ``requires_grad`` from the one before: freezing the placeholder freezes
    the call's copies, and the flag is given back to whatever placeholder holds the name at the end."""
    return [
        (module, name)
        for module in offloaded_modules(model)
        for name, parameter in module._parameters.items()
        if parameter is not None and parameter.requires_grad
    ]
