"""Exceptions raised by jscopes_tl.

Every user-facing check raises one of these, with a message that names the argument, what was
given and what was expected. They subclass the built-in exception a caller would catch anyway
(`ValueError`, `TypeError`, `RuntimeError`), so code written against plain Python keeps working.
"""


class ScopeInputError(ValueError):
    """An argument (prompt, position, target, rank, ...) has a value a scope cannot use.

    Example:
        >>> semantic_scope(model, prompt, position=9)
        Traceback (most recent call last):
            ...
        ScopeInputError: position 9 is out of range for prompt 0, which has 5 tokens ...
    """


class UnsupportedModelError(TypeError):
    """The model is not a TransformerLens model with local, differentiable weights.

    Example:
        >>> semantic_scope(torch.nn.Linear(2, 2), prompt)
        Traceback (most recent call last):
            ...
        UnsupportedModelError: model must be a TransformerLens HookedTransformer or ...
    """


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits at a prediction position.

    Example:
        >>> nan = ("blocks.1.hook_resid_post", lambda activation, hook: activation * float("nan"))
        >>> semantic_scope(model, prompt, fwd_hooks=[nan])          # the hook is removed after the call
        Traceback (most recent call last):
            ...
        NonFiniteLogitsError: the model's logits are NaN or infinite for prompt 0 at ...
    """


class NonFiniteScoresError(RuntimeError):
    """A scope's scores came out NaN or infinite (a target callable's value or gradient, or the
    model's own gradients, are not finite).

    Example:
        >>> from jscopes_tl.readouts import Readout
        >>> infinite = lambda y, logits: Readout(y[:, None] * float("inf"), torch.ones(len(y), 1), squared=False)
        >>> jacobian_scope(model, prompt, infinite, kind="infinite")
        Traceback (most recent call last):
            ...
        NonFiniteScoresError: the infinite scope's scores are NaN or infinite (first at ...
    """


class ResultFormatError(ValueError):
    """Data given to ``ScopeResult.from_dict`` / ``from_json`` does not fit the exported schema.

    Example:
        >>> ScopeResult.from_json('{"format": "jscopes_tl.ScopeResult", "version": 99}')
        Traceback (most recent call last):
            ...
        ResultFormatError: data has format version 99; this jscopes_tl reads version 1.
    """
