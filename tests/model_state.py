"""Everything a jscopes_tl call must leave as it found it, captured so that two snapshots compare.

``ModelState.capture(model)`` records, for one model and the process: the hooks of every
submodule (a TransformerBridge's wrapped Hugging Face model included) (forward, forward-pre, backward, backward-pre, with and without kwargs), the hooks of
every TransformerLens hook point, torch's global module hooks (``torch.nn.modules.module._global_*``),
each parameter's ``requires_grad`` and ``.grad``, each module's train/eval mode, the bytes of every
parameter and buffer, and torch's grad and inference modes. ``assert_unchanged`` names what differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.modules.module as torch_module

_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _bytes(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], bytes]:
    """A digest of a tensor's raw bytes, with its dtype and shape (NaN equals the same NaN, -0.0
    differs from 0.0); hashing reads the bytes in place, where a copy of every tensor costs more.
    A ``meta`` tensor (a weight Accelerate offloaded) has no bytes: it digests as ``b"meta"``, so a
    call that left the loaded weight in its place shows as a change."""
    if tensor.is_meta:
        return str(tensor.dtype), tuple(tensor.shape), b"meta"
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return str(tensor.dtype), tuple(tensor.shape), hashlib.blake2b(data).digest()


def _global_hooks() -> dict[str, tuple[Any, ...]]:
    return {
        name: tuple(value.keys())
        for name, value in vars(torch_module).items()
        if name.startswith("_global_") and isinstance(value, dict)
    }


def _named_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The registered modules, and a TransformerBridge's wrapped Hugging Face model (not registered
    with the bridge, yet switched by ``bridge.eval()``)."""
    named = list(model.named_modules(remove_duplicate=False))
    wrapped = vars(model).get("original_model")
    if isinstance(wrapped, torch.nn.Module):
        named += [(f"original_model.{name}", module) for name, module in wrapped.named_modules(remove_duplicate=False)]
    return named


@dataclass
class ModelState:
    module_hooks: dict[str, tuple[tuple[Any, ...], ...]]
    hook_point_hooks: dict[str, tuple[int, int]]
    global_hooks: dict[str, tuple[Any, ...]]
    requires_grad: dict[str, bool]
    grads: dict[str, tuple[str, tuple[int, ...], bytes] | None]
    training: dict[str, bool]
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]]
    grad_enabled: bool
    inference_mode: bool

    @classmethod
    def capture(cls, model: torch.nn.Module) -> ModelState:
        parameters = dict(model.named_parameters(remove_duplicate=False))
        modules = dict(_named_modules(model))
        return cls(
            module_hooks={
                name: tuple(tuple(getattr(module, d, {}).keys()) for d in _MODULE_HOOK_DICTS)
                for name, module in modules.items()
            },
            hook_point_hooks={
                name: (len(getattr(point, "fwd_hooks", [])), len(getattr(point, "bwd_hooks", [])))
                for name, point in getattr(model, "hook_dict", {}).items()
            },
            global_hooks=_global_hooks(),
            requires_grad={name: p.requires_grad for name, p in parameters.items()},
            grads={name: None if p.grad is None else _bytes(p.grad) for name, p in parameters.items()},
            training={name: module.training for name, module in modules.items()},
            tensors={
                **{f"parameter {name}": _bytes(p) for name, p in parameters.items()},
                **{f"buffer {name}": _bytes(b) for name, b in model.named_buffers(remove_duplicate=False)},
            },
            grad_enabled=torch.is_grad_enabled(),
            inference_mode=torch.is_inference_mode_enabled(),
        )

    def assert_unchanged(self, model: torch.nn.Module, context: str = "") -> None:
        """Raise AssertionError naming the first kind of state that differs from this snapshot."""
        now = ModelState.capture(model)
        where = f" after {context}" if context else ""
        for field in ("module_hooks", "hook_point_hooks", "global_hooks", "requires_grad", "training", "tensors", "grads"):
            before, after = getattr(self, field), getattr(now, field)
            changed = [key for key in set(before) | set(after) if key not in before or key not in after or before[key] != after[key]]
            assert not changed, f"{field} changed{where}: {sorted(changed)[:5]}"
        assert (now.grad_enabled, now.inference_mode) == (self.grad_enabled, self.inference_mode), (
            f"torch grad mode changed{where}"
        )
