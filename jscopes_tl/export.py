"""Scope results as plain data: explicit axes, dict/JSON (round-trippable), numpy and pandas.

A :class:`~jscopes_tl.result.ScopeResult` drops the axes a user did not ask for (one prompt, one
position, one layer). Code that treats every result alike first restores them:
:func:`full_axes` lays any per-score tensor out as ``[batch, n_positions, n_layers, pos, ...]``.

The dict form keeps every field: tensors become nested lists with their dtype recorded, so
``ScopeResult.from_dict(result.to_dict())`` gives back equal tensors (float32 values survive JSON
exactly). The pandas form is a tidy long table, one row per (prompt, prediction position, layer,
token) — or per word with ``words="sum"`` / ``"max"`` — which is what plotting and groupby want.

:func:`from_dict` checks its input against the schema below before building anything
and rejects what does not fit with one :class:`~jscopes_tl.errors.ResultFormatError` (a
``ValueError``) naming the offending key, so a damaged or hand-edited file never becomes a result
that fails later.

Schema, format version 1 (``batch?``, ``positions?``, ``layers?`` are present or absent together
across fields, exactly as in the :class:`~jscopes_tl.result.ScopeResult` that was exported)::

    format             "jscopes_tl.ScopeResult"
    version            1
    kind               non-empty str ("semantic", "fisher", "temperature", or a custom kind)
    tokens             int tensor   [batch?, pos]             token ids, right-padded
    lengths            int tensor   [batch]                   real tokens per prompt, 1..pos
    str_tokens         [pos_b] str, per prompt (a list of such lists with a batch axis)
    position           int tensor   [batch?, positions?]      each in [0, lengths[b])
    scores             float tensor [batch?, positions?, layers?, pos]
    gradient_x_input   null | float tensor shaped like scores
    gradients          null | float tensor [*scores.shape, d_model]
    target             null | int tensor [batch?, positions?, k]   (k = 1, or 2 for a contrast)
    prediction         null (a scope read at an internal hook: readout_hook=) |
                       {token_ids: int tensor [batch?, positions?, top_k],
                        probabilities: float tensor of the same shape,
                        str_tokens: nested lists of str of the same shape}
    metadata           dict; "layer" is an int, or a list of ints when the layers axis is present

A tensor is ``{"__tensor__": true, "dtype": "<torch dtype name>", "data": <nested lists>}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float

from jscopes_tl.errors import ResultFormatError, ScopeInputError
from jscopes_tl.result import Prediction, ResultAxes, ScopeResult
from jscopes_tl.words import Reduction, aggregate_words

if TYPE_CHECKING:
    import pandas

FORMAT_NAME = "jscopes_tl.ScopeResult"
FORMAT_VERSION = 1
_TENSOR_FIELDS = ("scores", "tokens", "lengths", "position", "target", "gradient_x_input", "gradients")
_TENSOR_TAG = "__tensor__"


# ------------------------------------------------------------------------------------ axes
# The facts about a result's shape are the result's own (ScopeResult.axes, .layers,
# .str_tokens_per_prompt, .word_starts_per_prompt); these names stay for code that imported them here.
def result_axes(result: ScopeResult) -> ResultAxes:
    """:attr:`ScopeResult.axes`."""
    return result.axes


def full_axes(result: ScopeResult, tensor: torch.Tensor) -> torch.Tensor:
    """``result.scores`` (or ``gradient_x_input``, ``gradients``) as ``[batch, n_positions, n_layers, pos, ...]``.

    Example:
        >>> from jscopes_tl.export import full_axes
        >>> result = semantic_scope(model, prompt)                      # scores [pos]
        >>> full_axes(result, result.scores).shape                       # [batch, n_positions, n_layers, pos]
        torch.Size([1, 1, 1, 5])
    """
    return result.axes.expand_score(tensor)


def layer_list(result: ScopeResult) -> list[int]:
    """:attr:`ScopeResult.layers`."""
    return result.layers


def str_tokens_per_prompt(result: ScopeResult) -> list[list[str]]:
    """:attr:`ScopeResult.str_tokens_per_prompt`."""
    return result.str_tokens_per_prompt


def word_starts_per_prompt(result: ScopeResult) -> list[list[bool] | None]:
    """:attr:`ScopeResult.word_starts_per_prompt`."""
    return result.word_starts_per_prompt


# ------------------------------------------------------------------------------------ dict / JSON
def _encode(value: Any, where: str) -> Any:
    if isinstance(value, torch.Tensor):
        return {_TENSOR_TAG: True, "dtype": str(value.dtype).removeprefix("torch."), "data": value.tolist()}
    if isinstance(value, dict):
        return {str(key): _encode(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{where} has type {type(value).__name__}, which cannot be exported to JSON.")


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        if value.get(_TENSOR_TAG):
            return _decode_tensor(value, where)
        return {key: _decode(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


_DTYPES = {name: dtype for name, dtype in vars(torch).items() if isinstance(dtype, torch.dtype)}


def _decode_tensor(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, dict) or not value.get(_TENSOR_TAG) or "data" not in value:
        raise ResultFormatError(
            f"{where} must be a tensor, {{'{_TENSOR_TAG}': true, 'dtype': ..., 'data': [...]}}; got {_describe(value)}."
        )
    dtype = _DTYPES.get(value.get("dtype")) if isinstance(value.get("dtype"), str) else None
    if dtype is None:
        raise ResultFormatError(f"{where} has dtype {value.get('dtype')!r}, which is not a torch dtype name.")
    try:
        return torch.tensor(value["data"], dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ResultFormatError(f"{where} data is not a rectangular nested list of numbers: {error}.") from None


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _tensor_field(data: dict[str, Any], name: str, *, integer: bool, optional: bool = False) -> torch.Tensor | None:
    if name not in data:
        raise ResultFormatError(f"data has no {name!r}; an exported ScopeResult has every field (see jscopes_tl.export).")
    if data[name] is None and optional:
        return None
    tensor = _decode_tensor(data[name], f"data[{name!r}]")
    if integer and (tensor.is_floating_point() or tensor.dtype == torch.bool):
        raise ResultFormatError(f"data[{name!r}] must hold integers; got dtype {tensor.dtype}.")
    if not integer and not tensor.is_floating_point():
        raise ResultFormatError(f"data[{name!r}] must hold floats; got dtype {tensor.dtype}.")
    return tensor


def _check_shape(tensor: torch.Tensor | None, expected: tuple[int, ...], where: str, meaning: str) -> None:
    if tensor is not None and tuple(tensor.shape) != expected:
        raise ResultFormatError(f"data[{where!r}] has shape {tuple(tensor.shape)}; expected {expected} ({meaning}).")


def _nested_strings(value: Any, shape: tuple[int, ...], where: str) -> None:
    """``value`` is nested lists of str with exactly ``shape``."""
    if not shape:
        if not isinstance(value, str):
            raise ResultFormatError(f"{where} must be a str; got {_describe(value)}.")
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise ResultFormatError(f"{where} must be a list of {shape[0]} items; got {_describe(value)}.")
    for index, item in enumerate(value):
        _nested_strings(item, shape[1:], f"{where}[{index}]")


def validate(data: Any) -> None:
    """Check ``data`` against the exported ScopeResult schema (module docstring); raise
    :class:`~jscopes_tl.errors.ResultFormatError` naming the first key that does not fit.

    Example:
        >>> from jscopes_tl.export import validate
        >>> validate(semantic_scope(model, prompt).to_dict())            # None: the data fits the schema
        >>> validate({"format": "something else"})
        Traceback (most recent call last):
            ...
        ResultFormatError: data is not an exported ScopeResult: expected a dict with ...
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ResultFormatError(
            f"data is not an exported ScopeResult: expected a dict with format={FORMAT_NAME!r}, "
            f"got {type(data).__name__}{'' if not isinstance(data, dict) else ' with format=' + repr(data.get('format'))}."
        )
    if data.get("version") != FORMAT_VERSION:
        raise ResultFormatError(
            f"data has format version {data.get('version')!r}; this jscopes_tl reads version {FORMAT_VERSION}."
        )
    if not isinstance(data.get("kind"), str) or not data["kind"]:
        raise ResultFormatError(f"data['kind'] must be a non-empty str; got {_describe(data.get('kind'))}.")
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise ResultFormatError(f"data['metadata'] must be a dict; got {_describe(metadata)}.")
    layer = metadata.get("layer", 0)
    layers_axis = isinstance(layer, list)
    if not (isinstance(layer, int) and not isinstance(layer, bool)) and not (
        layers_axis and layer and all(isinstance(v, int) and not isinstance(v, bool) for v in layer)
    ):
        raise ResultFormatError(f"data['metadata']['layer'] must be an int or a non-empty list of ints; got {layer!r}.")

    tokens = _tensor_field(data, "tokens", integer=True)
    if tokens.ndim not in (1, 2) or tokens.shape[-1] == 0:
        raise ResultFormatError(f"data['tokens'] must have shape [pos] or [batch, pos]; got {tuple(tokens.shape)}.")
    batch_axis = tokens.ndim == 2
    batch, width = (tokens.shape[0] if batch_axis else 1), tokens.shape[-1]
    lengths = _tensor_field(data, "lengths", integer=True)
    _check_shape(lengths, (batch,), "lengths", "one length per prompt")
    if not bool(((lengths >= 1) & (lengths <= width)).all()):
        raise ResultFormatError(f"data['lengths'] must lie in [1, {width}] (the tokens' width); got {lengths.tolist()}.")
    str_tokens = data.get("str_tokens")
    if batch_axis:
        rows = str_tokens if isinstance(str_tokens, list) and len(str_tokens) == batch else None
        if rows is None:
            raise ResultFormatError(f"data['str_tokens'] must be a list of {batch} lists of str, one per prompt.")
        for row, length in enumerate(lengths.tolist()):
            _nested_strings(str_tokens[row], (length,), f"data['str_tokens'][{row}]")
    else:
        _nested_strings(str_tokens, (int(lengths[0]),), "data['str_tokens']")

    position = _tensor_field(data, "position", integer=True)
    if position.ndim not in ((1, 2) if batch_axis else (0, 1)) or (batch_axis and position.shape[0] != batch):
        expected = "[batch] or [batch, positions]" if batch_axis else "[] or [positions]"
        raise ResultFormatError(
            f"data['position'] has shape {tuple(position.shape)}; expected {expected} for tokens of shape "
            f"{tuple(tokens.shape)}."
        )
    per_prompt_position = position.reshape(batch, -1)
    if not bool(((per_prompt_position >= 0) & (per_prompt_position < lengths[:, None])).all()):
        raise ResultFormatError("data['position'] holds a position outside its prompt's real tokens [0, length).")
    prediction_shape = tuple(position.shape)
    score_shape = prediction_shape + ((len(layer),) if layers_axis else ()) + (width,)
    scores = _tensor_field(data, "scores", integer=False)
    _check_shape(scores, score_shape, "scores", "[batch?, positions?, layers?, pos] per tokens, position, metadata")
    signed = _tensor_field(data, "gradient_x_input", integer=False, optional=True)
    _check_shape(signed, score_shape, "gradient_x_input", "shaped like scores")
    gradients = _tensor_field(data, "gradients", integer=False, optional=True)
    if gradients is not None:
        _check_shape(gradients, score_shape + tuple(gradients.shape[-1:]), "gradients", "scores' shape plus d_model")
    target = _tensor_field(data, "target", integer=True, optional=True)
    if target is not None:
        _check_shape(target, prediction_shape + tuple(target.shape[-1:]), "target", "the position's shape plus k")

    if "prediction" not in data:
        raise ResultFormatError("data has no 'prediction' (null for a scope read at an internal hook).")
    prediction = data["prediction"]
    if prediction is None:
        return
    if not isinstance(prediction, dict):
        raise ResultFormatError(f"data['prediction'] must be a dict or null; got {_describe(prediction)}.")
    token_ids = _tensor_field(prediction, "token_ids", integer=True)
    top_shape = prediction_shape + tuple(token_ids.shape[-1:])
    _check_shape(token_ids, top_shape, "prediction.token_ids", "the position's shape plus top_k")
    probabilities = _tensor_field(prediction, "probabilities", integer=False)
    _check_shape(probabilities, top_shape, "prediction.probabilities", "as token_ids")
    _nested_strings(prediction.get("str_tokens"), top_shape, "data['prediction']['str_tokens']")


def to_dict(result: ScopeResult) -> dict[str, Any]:
    """Every field of ``result`` as JSON-compatible data (tensors as tagged nested lists).

    Example:
        >>> from jscopes_tl.export import to_dict
        >>> sorted(to_dict(semantic_scope(model, prompt)))[:6]
        ['format', 'gradient_x_input', 'gradients', 'kind', 'lengths', 'metadata']
    """
    data: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": result.kind}
    for name in _TENSOR_FIELDS:
        data[name] = _encode(getattr(result, name), name)
    data["str_tokens"] = result.str_tokens
    data["prediction"] = None if result.prediction is None else {  # None: an internal readout
        "token_ids": _encode(result.prediction.token_ids, "prediction.token_ids"),
        "probabilities": _encode(result.prediction.probabilities, "prediction.probabilities"),
        "str_tokens": result.prediction.str_tokens,
    }
    data["metadata"] = _encode(result.metadata, "metadata")
    return data


def from_dict(data: dict[str, Any]) -> ScopeResult:
    """The inverse of :func:`to_dict`; ``data`` is checked against the schema first (:func:`validate`).

    Example:
        >>> from jscopes_tl.export import from_dict, to_dict
        >>> result = semantic_scope(model, prompt)
        >>> torch.equal(from_dict(to_dict(result)).scores, result.scores)
        True
    """
    validate(data)
    prediction = data["prediction"]
    return ScopeResult(
        kind=data["kind"],
        str_tokens=data["str_tokens"],
        prediction=None if prediction is None else Prediction(
            token_ids=_decode(prediction["token_ids"], "data['prediction']['token_ids']"),
            probabilities=_decode(prediction["probabilities"], "data['prediction']['probabilities']"),
            str_tokens=prediction["str_tokens"],
        ),
        metadata=_decode(data["metadata"], "data['metadata']"),
        **{name: _decode(data[name], f"data[{name!r}]") for name in _TENSOR_FIELDS},
    )


def to_json(result: ScopeResult, indent: int | None = None) -> str:
    """The result as a JSON string: :func:`to_dict`, indented by ``indent`` (as ``json.dumps``).

    Example:
        >>> from jscopes_tl.export import to_json
        >>> print(to_json(semantic_scope(model, prompt), indent=1)[:60])
        {
         "format": "jscopes_tl.ScopeResult",
         "version": 1,
         "kind
    """

    return json.dumps(to_dict(result), indent=indent, ensure_ascii=False)


def from_json(text: str | bytes) -> ScopeResult:
    """The inverse of :func:`to_json`.

    Example:
        >>> from jscopes_tl.export import from_json, to_json
        >>> from_json(to_json(semantic_scope(model, prompt))).top_tokens(1)
        [(2, 'b=7', 5.64...)]
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise ResultFormatError(f"from_json reads a JSON string; got {type(text).__name__} (use from_dict for a dict).")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ResultFormatError(f"text is not valid JSON: {error}.") from None
    return from_dict(data)


# ------------------------------------------------------------------------------------ numpy / pandas
def to_numpy(result: ScopeResult) -> np.ndarray:
    """``result.scores`` as a float32 numpy array of the same shape (a copy).

    Example:
        >>> from jscopes_tl.export import to_numpy
        >>> to_numpy(semantic_scope(model, [prompt, "c=1 d="])).shape    # [batch, pos], padded
        (2, 5)
    """
    return result.scores.detach().cpu().numpy().copy()


def to_pandas(result: ScopeResult, words: Reduction | None = None) -> "pandas.DataFrame":
    """A tidy long table of scores, one row per (prompt, position, layer, token) or word.

    Columns: ``kind, prompt, position, layer, token_index, token, score`` (and
    ``gradient_x_input`` when the result has it). With ``words="sum"`` or ``"max"`` sub-word tokens
    are merged (:func:`jscopes_tl.words.aggregate_words`) and the token columns become
    ``word_index, word, first_token, last_token``. Padding is left out; tokens after the
    prediction position are kept (their scores are 0 by causality).

    Example:
        >>> from jscopes_tl.export import to_pandas
        >>> table = to_pandas(semantic_scope(model, prompt, position="all"))
        >>> len(table), list(table.columns)[:5]
        (25, ['kind', 'prompt', 'position', 'layer', 'token_index'])
    """
    import pandas

    axes = result.axes
    scores: Float[torch.Tensor, "batch n_positions n_layers pos"] = axes.expand_score(result.scores)
    signed = None if result.gradient_x_input is None else axes.expand_score(result.gradient_x_input)
    positions = axes.expand_prediction(result.position)
    layers = result.layers
    rows: list[dict[str, Any]] = []
    prompts = zip(result.str_tokens_per_prompt, result.word_starts_per_prompt)
    for prompt, (tokens, word_starts) in enumerate(prompts):
        length = len(tokens)
        for column, position in enumerate(positions[prompt].tolist()):
            for layer_index, layer in enumerate(layers):
                common = {"kind": result.kind, "prompt": prompt, "position": position, "layer": layer}
                values = scores[prompt, column, layer_index, :length]
                signed_values = None if signed is None else signed[prompt, column, layer_index, :length]
                if words is None:
                    for index, token in enumerate(tokens):
                        row = dict(common, token_index=index, token=token, score=float(values[index]))
                        if signed_values is not None:
                            row["gradient_x_input"] = float(signed_values[index])
                        rows.append(row)
                    continue
                merged = aggregate_words(tokens, values, words, word_starts=word_starts)
                merged_signed = (
                    None if signed_values is None else aggregate_words(tokens, signed_values, words, word_starts=word_starts)
                )
                for index, (word, (start, stop)) in enumerate(zip(merged.words, merged.spans)):
                    row = dict(common, word_index=index, word=word, first_token=start, last_token=stop - 1)
                    row["score"] = float(merged.values[index])
                    if merged_signed is not None:
                        row["gradient_x_input"] = float(merged_signed.values[index])
                    rows.append(row)
    return pandas.DataFrame(rows)


# ------------------------------------------------------------------------------------ files
def missing_directory(directory: Path) -> str:
    """Why ``directory`` (not an existing directory) cannot be written into: the first of it and
    its ancestors that exists is a file, or it does not exist."""
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"{str(ancestor)!r} is a file, not a directory"
            break
    return f"the directory {str(directory)!r} does not exist"


def check_output_path(path: Any, argument: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path` a file can be written to, checked *before* any
    computation (a long run should not fail at its last step): not a directory, in an existing
    directory, writable. Raises :class:`~jscopes_tl.errors.ScopeInputError` naming ``argument``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ScopeInputError(f"{argument} must be a file path (str or pathlib.Path); got {path!r}.")
    target = Path(path).expanduser()
    if target.is_dir():
        raise ScopeInputError(f"{argument} {str(path)!r} is a directory; give a file name, e.g. {str(target / 'view.html')!r}.")
    parent = target.resolve().parent
    if not parent.is_dir():
        raise ScopeInputError(f"cannot write {argument} {str(path)!r}: {missing_directory(parent)}.")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ScopeInputError(f"cannot write {argument} {str(path)!r}: permission denied.")
    return target
