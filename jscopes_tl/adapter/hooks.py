"""Hook points: names resolved against the model's own hook dictionary, hooks added and removed.

Which hook names exist depends on the TransformerLens version and on a bridge's compatibility
mode (``blocks.0.hook_resid_pre`` or ``blocks.0.hook_in``, ``blocks.L.attn.hook_z`` or
``blocks.L.attn.o.hook_in``), so every name is resolved at run time against ``model.hook_dict``
from a short list of candidates rather than trusted from one table.

What this module guarantees (``HookAccess``, a part of
:class:`~jscopes_tl.adapter.ModelAdapter`):

* A hook point that none of the candidates names raises an
  :class:`~jscopes_tl.errors.UnsupportedModelError` listing them; a layer out of range or a hook a
  scope cannot read (``[batch, head, query_pos, key_pos]``, or one that runs only with a model
  option on) raises a :class:`~jscopes_tl.errors.ScopeInputError` naming the argument.
* Hooks are always removed on exit, errors included: the model's own scoped ``hooks()`` context
  (``HookAccess.hooks()``), or jscopes_tl's own hooks at a context level of their own
  (``HookAccess.own_hooks()``), which never touches the user's hooks at the same point.
* The hook dictionary is read once per model and kept (a TransformerBridge builds it on every
  access), read again whenever the module tree or what the generation's dictionary follows
  (:meth:`~jscopes_tl.adapter.generations.GenerationFacts.hook_dict_state`) may have changed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from jscopes_tl.adapter.holding import restore_all
from jscopes_tl.adapter.model_tree import model_tree, registration_count
from jscopes_tl.errors import ScopeInputError, UnsupportedModelError

if TYPE_CHECKING:
    from jscopes_tl.adapter.generations import GenerationFacts

HookFunction = Callable[[torch.Tensor, Any], torch.Tensor | None]

# Context levels for ModelAdapter.own_hooks, far above the small ones TransformerLens's own hook
# contexts count up from.
_own_hook_levels = itertools.count(1 << 40)
# Per model, its hook dictionary and the state it was read in (ModelAdapter.hook_points).
_hook_dicts: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[Any, ...], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _hook_dict_state(generation_facts: GenerationFacts) -> tuple[Any, ...]:
    """What a model's hook dictionary follows: its module tree (registrations), and what the
    generation's dictionary follows besides (:meth:`GenerationFacts.hook_dict_state`)."""
    return (registration_count[0], generation_facts.hook_dict_state())


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


class HookAccess:
    """The part of :class:`~jscopes_tl.adapter.ModelAdapter` that names and runs hook points."""

    model: Any
    cfg: Any
    family: str
    generation_facts: GenerationFacts
    n_layers: int
    architecture: str | None

    @functools.cached_property
    def hook_points(self) -> dict[str, Any]:
        """The model's ``hook_dict`` (name → HookPoint, aliases included). A TransformerBridge builds
        that dictionary on every access (0.1–0.3 ms at GPT-2 size), so it is kept per model and read
        again only when the model's module tree or its aliases may have changed
        (:func:`_hook_dict_state`). A stale entry could only name a HookPoint the model no longer
        calls, and a scope whose hooks did not run raises."""
        cached = _hook_dicts.get(self.model)
        if cached is not None and cached[0] == _hook_dict_state(self.generation_facts):
            return cached[1]
        model_tree(self.model)  # its modules' registrations count from now on
        state = _hook_dict_state(self.generation_facts)
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
    def token_embedding_hook(self) -> str:
        """Hook on the token embedding alone, before any positional embedding is added (zeroing it
        ablates a token's identity and keeps its position)."""
        return self._resolve_hook(["hook_embed", "embed.hook_out"])

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
            restore_all([lambda point=point: point.remove_hooks("fwd", level=level) for point in dict.fromkeys(points)])

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
