"""Bundled models: small transformers trained by this project on tasks whose answer is known.

A real attribution method should point at the token the answer came from. On natural text that
token is a matter of opinion; on these synthetic tasks it is known by construction, so they can
measure how often a scope (or a baseline) ranks it first:

========= ===================================== ======================================
name      task                                  the answer's source
========= ===================================== ======================================
recall    ``a=3 b=7 c=1 b=`` → ``7``            the queried pair ``b=7`` (one token)
induction ``cat sun map ... cat sun`` → ``map`` the same word in the first copy
periodic  ``51 , 73 , 28 , 51 , 73 ,`` → ``28`` the value one period back (same phase)
========= ===================================== ======================================

Each is a 2-layer GPT-2 (d_model 64, 4 heads, about 0.5 MB) with a word-level tokenizer, shipped
in the package and loaded with no download:

>>> from jscopes_tl import models, semantic_scope
>>> model = models.load("recall")            # HookedTransformer (TL 2.x) or TransformerBridge (TL 4.x)
>>> labelled = models.get_task("recall").labelled_prompts(1)[0]
>>> labelled.text, labelled.answer
('p=1 q=3 o=5 c=2 k=9 n=9 l=5 d=0 f=6 h=6 p=', '1')
>>> semantic_scope(model, labelled.text).top_tokens(1)       # the answer's source, p=1
[(1, 'p=1', 1.79...)]

Numerics: the weights are loaded *unprocessed* (no LayerNorm folding, no centring) on both
TransformerLens generations, so logits equal the Hugging Face model's and every scope gives the
same scores on a HookedTransformer and on a TransformerBridge.
Retrain with ``python -m jscopes_tl.models.train`` (see :mod:`jscopes_tl.models.train`).
"""

from __future__ import annotations

from typing import Any, Literal

from jscopes_tl import adapter
from jscopes_tl.models.files import model_directory, training_record
from jscopes_tl.models.tasks import TASKS, LabelledPrompt, Task, get_task

BUNDLED_MODELS = tuple(TASKS)

Family = Literal["hooked", "bridge"]


def is_bundled(name: str) -> bool:
    """Whether ``name`` is one of :data:`BUNDLED_MODELS` (loadable offline by :func:`load`).

    Example:
        >>> models.is_bundled("recall"), models.is_bundled("gpt2")
        (True, False)
    """

    return name in TASKS


def _check_name(name: str) -> None:
    if not is_bundled(name):
        raise KeyError(f"unknown bundled model {name!r}; the bundled models are {list(BUNDLED_MODELS)}.")
    if not (model_directory(name) / "model.safetensors").exists():
        raise FileNotFoundError(
            f"the weights of bundled model {name!r} are missing from {model_directory(name)}; "
            f"reinstall jscopes_tl or retrain with `python -m jscopes_tl.models.train {name}`."
        )


def load_hf(name: str) -> tuple[Any, Any]:
    """The Hugging Face ``GPT2LMHeadModel`` (eval mode) and tokenizer of a bundled model.

    Example:
        >>> hf_model, tokenizer = models.load_hf("recall")
        >>> type(hf_model).__name__, tokenizer.tokenize("a=3 b=")
        ('GPT2LMHeadModel', ['a=3', 'b='])
    """
    import transformers

    _check_name(name)
    directory = model_directory(name)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    # Loaded from its directory so that TransformerLens can reload it by name_or_path.
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    return hf_model, tokenizer


def default_family() -> Family:
    """HookedTransformer where the installed TransformerLens has it (2.x, 3.x), else the bridge.

    Example:
        >>> models.default_family()             # TransformerLens 4.x has no HookedTransformer
        'bridge'
    """
    return "hooked" if adapter.hooked_transformer_available() else "bridge"


def load(name: str, *, family: Family | None = None) -> Any:
    """A bundled model as a TransformerLens model, with unprocessed (HF-identical) weights.

    Args:
        name: one of :data:`BUNDLED_MODELS` (``"recall"``, ``"induction"``, ``"periodic"``).
        family: ``"hooked"`` (HookedTransformer, TransformerLens 2.x/3.x) or ``"bridge"``
            (TransformerBridge, TransformerLens 3.x/4.x); default: :func:`default_family`.

    Example:
        >>> induction = models.load("induction")
        >>> type(induction).__name__, induction.cfg.n_layers, induction.cfg.n_heads     # on TransformerLens 4.x
        ('TransformerBridge', 2, 4)
    """
    hf_model, tokenizer = load_hf(name)
    family = family or default_family()
    if family == "hooked":
        return adapter.hooked_transformer_from_hf_directory(
            model_directory(name),
            hf_model=hf_model,
            tokenizer=tokenizer,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
        )
    if family == "bridge":
        return adapter.bridge_from_hf_model(hf_model, tokenizer=tokenizer, model_name=name)
    raise ValueError(f"family must be 'hooked' or 'bridge'; got {family!r}.")


__all__ = [
    "BUNDLED_MODELS",
    "LabelledPrompt",
    "Task",
    "default_family",
    "get_task",
    "is_bundled",
    "load",
    "load_hf",
    "training_record",
]
