"""Holding a model for one call: locked, eval mode, parameters frozen, and given back as found.

A scope changes three things on the user's model for the duration of a call, and hooks into it:
every parameter's ``requires_grad`` (off: only the perturbation needs a gradient, so autograd
saves nothing for weight gradients), every module's mode (eval: no dropout), and, on a
TransformerBridge, the tensors its attention bridges cache during a forward pass, which hold the
call's autograd graph (1.3 GB measured at 1,024 tokens on a GPT-2-size model).

What this module guarantees (``ModelHolding``, a part of
:class:`~jscopes_tl.adapter.ModelAdapter`):

* A call holds a per-model re-entrant lock throughout: two threads scoring one model take turns
  instead of interleaving hooks, frozen flags and eval mode; a call nested in another (a scope
  inside faithfulness) runs on the model as the outer call holds it and restores nothing itself.
* Weights autograd cannot use (created under ``torch.inference_mode()``, or on the ``meta``
  device and never loaded) are refused with an actionable message *before* anything is changed
  (``check_differentiable()``); so is a call under ``torch.inference_mode()``.
* On exit, errors included, every flag and mode that was changed is restored, each one even when
  another restore fails (the first failure is raised after all were tried), and every cache slot
  that now holds an autograd graph gets its value from the start of the call back.
* A forward pass goes through ``ModelHolding.forward()``, which marks the call's snapshot: a
  call whose last forward pass's graph was already released has nothing to give back.
"""

from __future__ import annotations

import contextlib
import operator
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int

from jscopes_tl.adapter.model_tree import ModelTree, model_tree
from jscopes_tl.adapter.offload import offloaded_parameter_slots, offloaded_tensor_ids
from jscopes_tl.errors import UnsupportedModelError

if TYPE_CHECKING:
    from jscopes_tl.adapter.generations import GenerationFacts

# One re-entrant lock per model: a scope call holds it throughout, so two threads scoring one model
# take turns instead of interleaving hooks, frozen flags and eval mode. Re-entrant because a call
# nests (a scope inside faithfulness, prepared_for_scopes inside a scope).
_model_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()
# How many prepared_for_scopes blocks are open on a model (only ever by the thread holding its lock).
_prepared_depth: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
# The model's cache slots as the outermost open prepared_for_scopes block found them, and whether
# they were released after the block's last forward pass (see ModelAdapter.release_call_graph).
_call_snapshots: weakref.WeakKeyDictionary[torch.nn.Module, _CallSnapshot] = weakref.WeakKeyDictionary()


# A module's cache slots as a call found them: (module, names, values).
_SlotValues = tuple[torch.nn.Module, tuple[str, ...], tuple[Any, ...]]


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


def restore_all(restores: list[Callable[[], None]]) -> None:
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
_in_training = operator.attrgetter("training")
_is_meta = operator.attrgetter("is_meta")


def _unfreeze(weight: torch.Tensor) -> None:
    weight.requires_grad_(True)


def _set_training(module: torch.nn.Module) -> None:
    module.training = True


def _cached_tensors(tree: ModelTree) -> list[_SlotValues]:
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


def check_differentiable(
    tensors: Iterable[torch.Tensor], name_of: Callable[[torch.Tensor], str], model: torch.nn.Module | None = None
) -> bool:
    """Refuse weights autograd cannot use (``name_of`` names the first one, in the message); return
    whether some are offloaded.

    Tensors created under ``torch.inference_mode()`` are *inference tensors*: autograd cannot record
    through them, and their ``requires_grad`` cannot be set outside that mode. ``meta`` tensors have
    no values at all (a model built on the ``meta`` device and never loaded), unless Accelerate
    offloaded them from ``model`` (see ``jscopes_tl.adapter.offload.offloaded_modules``): those are
    loaded for each forward pass, and autograd records through the loaded values.
    """
    tensors = list(tensors)
    if not any(map(_is_meta, tensors)) and not any(map(torch.Tensor.is_inference, tensors)):
        return False  # the usual case, checked in C loops
    offloaded: set[int] | None = None
    for tensor in tensors:
        if tensor.is_meta:
            if offloaded is None:
                offloaded = set() if model is None else offloaded_tensor_ids(model)
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


def _weight_name(model: torch.nn.Module, tensor: torch.Tensor) -> str:
    """The dotted name of one of the model's parameters or buffers (for messages only: slow)."""
    wrapped = vars(model).get("original_model")
    for root in [model, *([wrapped] if isinstance(wrapped, torch.nn.Module) else [])]:
        for name, candidate in (*root.named_parameters(remove_duplicate=False), *root.named_buffers(remove_duplicate=False)):
            if candidate is tensor:
                return name
    return "an unnamed weight"


class ModelHolding:
    """The part of :class:`~jscopes_tl.adapter.ModelAdapter` that holds the model for a call."""

    model: Any
    input_device: torch.device
    generation_facts: GenerationFacts

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> Any:
        """The model on a batch whose every token is real (right padding only ever follows them).

        Tokens go positionally, to the token embedding's device (``input_device``; a
        HookedTransformer moves them only when their device *type* differs from ``cfg.device``'s),
        through the generation's own call (:meth:`GenerationFacts.run`): HookedTransformer and the
        bridge name the argument differently, and a HookedTransformer is told that the batch is
        right-padded.
        """
        tokens = tokens.to(self.input_device)
        snapshot = _call_snapshots.get(self.model)
        if snapshot is not None:
            snapshot.released = False  # this pass may leave a graph in a cache slot
        return self.generation_facts.run(tokens)

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

        Example:
            >>> from jscopes_tl.adapter import ModelAdapter
            >>> with ModelAdapter(model).prepared_for_scopes():
            ...     model.training, torch.is_grad_enabled()
            (False, True)
            >>> model.training                                      # restored on exit
            False
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
            modules, weights, tree = model_tree(self.model)
            offloaded = check_differentiable(weights, lambda tensor: _weight_name(self.model, tensor), self.model)
            before = _cached_tensors(tree)
            frozen = list(filter(_requires_grad, weights))
            offloaded_slots = offloaded_parameter_slots(self.model) if offloaded else []
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
                restore_all([
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
        restored on exit. ``modules``: the model's modules whose mode matters (:func:`model_tree`),
        when the caller has them. A HookPoint passes its input through in either mode, and so does a
        module of a ``families.MODE_FREE_MODULES`` class: their modes are looked at only when another
        module is in training mode (then the model's ``eval()`` switches them too, and they are given
        back); otherwise they are left as they are."""
        with self.lock():
            training = list(filter(_in_training, model_tree(self.model)[0] if modules is None else modules))
            try:
                if training:
                    training += filter(_in_training, model_tree(self.model)[2].live_mode_free())
                    self.model.eval()
                yield
            finally:
                _restore_each(training, _set_training)
