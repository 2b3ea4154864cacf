"""Exceptions raised by jscopes_tl.

Every user-facing check raises one of these, with a message that names the argument, what was
given and what was expected. They subclass the built-in exception a caller would catch anyway
(`ValueError`, `TypeError`, `RuntimeError`), so code written against plain Python keeps working.
"""


class ScopeInputError(ValueError):
    """An argument (prompt, position, target, rank, ...) has a value a scope cannot use."""


class UnsupportedModelError(TypeError):
    """The model is not a TransformerLens model with local, differentiable weights."""


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits at a prediction position."""


class NonFiniteScoresError(RuntimeError):
    """A scope's scores came out NaN or infinite (a target callable's value or gradient, or the
    model's own gradients, are not finite)."""


class ResultFormatError(ValueError):
    """Data given to ``ScopeResult.from_dict`` / ``from_json`` does not fit the exported schema."""
