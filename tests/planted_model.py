"""A tiny model with a planted dependency: the answer is a copy of the token at position 1.

Sequences are ``[BOS, key, f_1 … f_6, key]``: keys and fillers come from disjoint token ranges,
fillers are random, and the final token repeats the key. A one-layer GPT-2-shaped model (of the
installed TransformerLens's family) trained briefly on this task predicts the key perfectly, so
everything a faithful attribution method says is known in advance: the prediction at the
second-to-last position depends on position 1 and on nothing else.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from jscopes_tl.adapter import hooked_transformer_available
from jscopes_tl.toy import toy_model

KEY_POSITION = 1
KEY_TOKENS = torch.arange(40, 72)
FILLER_TOKENS = torch.arange(100, 164)
N_FILLERS = 6
BOS_ID = 0


def planted_sequences(n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 2 + N_FILLERS + 1]`` token ids: BOS, key, fillers, key."""
    keys = KEY_TOKENS[torch.randint(len(KEY_TOKENS), (n,), generator=generator)]
    fillers = FILLER_TOKENS[torch.randint(len(FILLER_TOKENS), (n, N_FILLERS), generator=generator)]
    bos = torch.full((n, 1), BOS_ID)
    return torch.cat([bos, keys[:, None], fillers, keys[:, None]], dim=1)


@lru_cache(maxsize=1)
def planted_copy_model() -> Any:
    """Trained until the loss is below 0.05 (about 50 Adam steps), seeded; left in eval mode."""
    family = "hooked" if hooked_transformer_available() else "bridge"
    model = toy_model("gpt2", family=family, d_model=32, n_layers=1, n_heads=2, seed=0, init_scale=0.1)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        tokens = planted_sequences(32, generator)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, -1], tokens[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.05:
            break
    model.eval()
    for parameter in model.parameters():
        parameter.grad = None
    return model


def planted_prompts(n: int, seed: int = 1) -> torch.Tensor:
    return planted_sequences(n, torch.Generator().manual_seed(seed))
