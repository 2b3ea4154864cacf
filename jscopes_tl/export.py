"""Scope results as plain data: explicit axes, dict/JSON (round-trippable), numpy and pandas.

A :class:`~jscopes_tl.result.ScopeResult` drops the axes a user did not ask for (one prompt, one
position, one layer). Code that treats every result alike first restores them:
:func:`full_axes` lays any per-score tensor out as ``[batch, n_positions, n_layers, pos, ...]``.

The dict form keeps every field: tensors become nested lists with their dtype recorded, so
``ScopeResult.from_dict(result.to_dict())`` gives back equal tensors (float32 values survive JSON
exactly). The pandas form is a tidy long table, one row per (prompt, prediction position, layer,
token) — or per word with ``words="sum"`` / ``"max"`` — which is what plotting and groupby want.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float

from jscopes_tl.result import Prediction, ResultAxes, ScopeResult
from jscopes_tl.words import Reduction, aggregate_words

if TYPE_CHECKING:
    import pandas

FORMAT_NAME = "jscopes_tl.ScopeResult"
FORMAT_VERSION = 1
_TENSOR_FIELDS = ("scores", "tokens", "lengths", "position", "target", "gradient_x_input", "gradients")
_TENSOR_TAG = "__tensor__"


# ------------------------------------------------------------------------------------ axes
def result_axes(result: ScopeResult) -> ResultAxes:
    prompts = result.tokens.ndim == 2
    return ResultAxes(
        prompts=prompts,
        positions=result.position.ndim == (2 if prompts else 1),
        layers=isinstance(result.metadata.get("layer"), (list, tuple)),
    )


def full_axes(result: ScopeResult, tensor: torch.Tensor) -> torch.Tensor:
    """``result.scores`` (or ``gradient_x_input``, ``gradients``) as ``[batch, n_positions, n_layers, pos, ...]``."""
    return result_axes(result).expand_score(tensor)


def layer_list(result: ScopeResult) -> list[int]:
    layer = result.metadata.get("layer", 0)
    return list(layer) if isinstance(layer, (list, tuple)) else [int(layer)]


def str_tokens_per_prompt(result: ScopeResult) -> list[list[str]]:
    return result.str_tokens if result_axes(result).prompts else [result.str_tokens]


def word_starts_per_prompt(result: ScopeResult) -> list[list[bool] | None]:
    """The tokenizer's word boundaries of each prompt (``metadata["word_starts"]``; None if unknown)."""
    starts = result.metadata.get("word_starts")
    if starts is None:
        return [None] * len(str_tokens_per_prompt(result))
    return starts if result_axes(result).prompts else [starts]


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


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(_TENSOR_TAG):
            return torch.tensor(value["data"], dtype=getattr(torch, value["dtype"]))
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def to_dict(result: ScopeResult) -> dict[str, Any]:
    """Every field of ``result`` as JSON-compatible data (tensors as tagged nested lists)."""
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
    """The inverse of :func:`to_dict`."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(
            f"data is not an exported ScopeResult: expected a dict with format={FORMAT_NAME!r}, "
            f"got {type(data).__name__}{'' if not isinstance(data, dict) else ' with format=' + repr(data.get('format'))}."
        )
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"data has format version {data.get('version')!r}; this jscopes_tl reads version {FORMAT_VERSION}.")
    prediction = data["prediction"]
    return ScopeResult(
        kind=data["kind"],
        str_tokens=data["str_tokens"],
        prediction=None if prediction is None else Prediction(
            token_ids=_decode(prediction["token_ids"]),
            probabilities=_decode(prediction["probabilities"]),
            str_tokens=prediction["str_tokens"],
        ),
        metadata=_decode(data["metadata"]),
        **{name: _decode(data[name]) for name in _TENSOR_FIELDS},
    )


def to_json(result: ScopeResult, indent: int | None = None) -> str:
    return json.dumps(to_dict(result), indent=indent, ensure_ascii=False)


def from_json(text: str) -> ScopeResult:
    return from_dict(json.loads(text))


# ------------------------------------------------------------------------------------ numpy / pandas
def to_numpy(result: ScopeResult) -> np.ndarray:
    """``result.scores`` as a float32 numpy array of the same shape (a copy)."""
    return result.scores.detach().cpu().numpy().copy()


def to_pandas(result: ScopeResult, words: Reduction | None = None) -> "pandas.DataFrame":
    """A tidy long table of scores, one row per (prompt, position, layer, token) or word.

    Columns: ``kind, prompt, position, layer, token_index, token, score`` (and
    ``gradient_x_input`` when the result has it). With ``words="sum"`` or ``"max"`` sub-word tokens
    are merged (:func:`jscopes_tl.words.aggregate_words`) and the token columns become
    ``word_index, word, first_token, last_token``. Padding is left out; tokens after the
    prediction position are kept (their scores are 0 by causality).
    """
    import pandas

    axes = result_axes(result)
    scores: Float[torch.Tensor, "batch n_positions n_layers pos"] = axes.expand_score(result.scores)
    signed = None if result.gradient_x_input is None else axes.expand_score(result.gradient_x_input)
    positions = axes.expand_prediction(result.position)
    layers = layer_list(result)
    rows: list[dict[str, Any]] = []
    prompts = zip(str_tokens_per_prompt(result), word_starts_per_prompt(result))
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
