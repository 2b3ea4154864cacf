"""Glue to TransformerLens's own activation patching (``transformer_lens.patching``).

jscopes_tl lays its layer-resolved and component scopes beside TransformerLens's patching results
(``get_act_patch_resid_pre``, ``get_act_patch_attn_head_out_*``, ``get_act_patch_mlp_out``), and
uses TransformerLens's own functions for them where they run on the model, so the two sides come
from the code users already trust.

What this module guarantees (``TransformerLensPatching``, a part of
:class:`~jscopes_tl.adapter.ModelAdapter`):

* A patching function is offered only where it can run: the installed TransformerLens has
  ``transformer_lens.patching`` (2.x; 4.x, where it also runs on a TransformerBridge), the model
  has every hook name it patches, and ``cfg.device`` is a real device. Otherwise the method
  returns None and the caller uses jscopes_tl's own hooks.
* The bound ``get_act_patch_resid_pre`` puts the tokens on the token embedding's execution device,
  as the adapter's own forward pass does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Int


class TransformerLensPatching:
    """The part of :class:`~jscopes_tl.adapter.ModelAdapter` that binds TransformerLens's patching."""

    model: Any
    cfg: Any
    n_layers: int
    hook_names: Any
    input_device: torch.device

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

    def _records_meta_device(self) -> bool:
        """``cfg.device`` is ``meta``: TransformerLens 4.x's ``boot_transformers`` records the input
        embedding's parameter device, a placeholder when Accelerate offloaded the embedding, and
        ``transformer_lens.patching`` creates its result tensors there (no values)."""
        return str(getattr(self.cfg, "device", None)) == "meta"
