"""ScopeResult.from_dict / from_json check the documented schema (jscopes_tl.export) and reject
what does not fit with one clear ResultFormatError naming the key, never a bare KeyError or an
object that fails later."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

from jscopes_tl import ScopeResult, semantic_scope
from jscopes_tl.errors import ResultFormatError
from jscopes_tl.export import validate

from conftest import MODEL_SPECS, build

PROMPTS = ["Tom loves Korean food. He is a", "The cat sat"]


@pytest.fixture(scope="module")
def exported() -> dict[str, Any]:
    model = build(MODEL_SPECS[0][0])
    return semantic_scope(model, PROMPTS, position=[0, -1], target=(3, 9), return_gradients=True).to_dict()


def test_every_exported_shape_validates(any_model):
    for result in [
        semantic_scope(any_model, PROMPTS[0]),
        semantic_scope(any_model, PROMPTS[0], position="all"),
        semantic_scope(any_model, PROMPTS, position=[1, -1], layer=[0, 2], return_gradients=True),
    ]:
        data = json.loads(result.to_json())
        validate(data)
        assert torch.equal(ScopeResult.from_dict(data).scores, result.scores)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return mutate


def _drop(*path: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return mutate


BROKEN = {
    "missing scores": (_drop("scores"), r"no 'scores'"),
    "missing prediction ids": (_drop("prediction", "token_ids"), r"no 'token_ids'"),
    "missing kind": (_drop("kind"), r"data\['kind'\]"),
    "wrong version": (_set(("version",), 2), "version 2"),
    "scores as a plain list": (_set(("scores",), [1.0, 2.0]), r"data\['scores'\] must be a tensor"),
    "unknown dtype": (_set(("scores", "dtype"), "floaty"), "not a torch dtype"),
    "ragged data": (_set(("scores", "data"), [[1.0], [1.0, 2.0]]), "rectangular"),
    "text in the data": (_set(("lengths", "data"), ["a", "b"]), r"data\['lengths'\] data"),
    "float token ids": (_set(("tokens", "dtype"), "float32"), "must hold integers"),
    "scores of another width": (
        lambda d: [row.append(0.0) for prompt in d["scores"]["data"] for row in prompt],
        r"data\['scores'\] has shape \(2, 2, \d+\); expected",
    ),
    "length beyond the tokens": (_set(("lengths", "data"), [99, 4]), r"data\['lengths'\] must lie in"),
    "str_tokens one short": (lambda d: d["str_tokens"][0].pop(), r"data\['str_tokens'\]\[0\]"),
    "position outside the prompt": (_set(("position", "data"), [[0, 50], [0, 3]]), "outside its prompt"),
    "target of another shape": (_set(("target", "data"), [[3, 9]]), r"data\['target'\] has shape"),
    "gradients without d_model": (lambda d: d.__setitem__("gradients", d["scores"]), r"data\['gradients'\] has shape"),
    "probabilities of another shape": (_set(("prediction", "probabilities", "data"), [[0.5]]), "probabilities"),
    "prediction strings missing": (_set(("prediction", "str_tokens"), None), r"\['prediction'\]\['str_tokens'\]"),
    "layer not an int": (_set(("metadata", "layer"), "first"), "layer"),
    "metadata not a dict": (_set(("metadata",), []), r"data\['metadata'\] must be a dict"),
    "metadata tensor of unknown dtype": (
        _set(("metadata", "extra"), {"__tensor__": True, "dtype": "nope", "data": []}),
        r"data\['metadata'\]\['extra'\] has dtype 'nope'",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_data_that_does_not_fit_the_schema_is_rejected_naming_the_key(exported, case):
    mutate, message = BROKEN[case]
    data = copy.deepcopy(exported)
    mutate(data)
    with pytest.raises(ResultFormatError, match=message):
        ScopeResult.from_dict(data)
    with pytest.raises(ValueError):  # ResultFormatError is a ValueError
        ScopeResult.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["{not json", b"\xff\xfe", "[1, 2]", "null"])
def test_from_json_rejects_text_that_is_not_an_exported_result(text):
    with pytest.raises(ResultFormatError):
        ScopeResult.from_json(text)


def test_from_json_of_a_dict_points_to_from_dict(exported):
    with pytest.raises(ResultFormatError, match="from_dict"):
        ScopeResult.from_json(exported)
