"""The architecture matrix: every family of :data:`jscopes_tl.families.FAMILIES`, loaded every way the
installed TransformerLens can, checked against the float64 oracle on the Hugging Face model.

Per (family, load mode): the TransformerLens logits against the Hugging Face logits; Semantic (top-1
and a contrast), Fisher (rank 1 and exact), Temperature at the last position, Semantic at
``position="all"`` and ``layer="all"``, each against :mod:`family_oracle`; the model left exactly
as it was (:class:`model_state.ModelState`); bf16 and fp16 copies giving finite scores, their error
relative to float32. Errors are ``max |score − oracle| / max |oracle|`` (so a scope that perturbs
another point, or scales differently, shows up). Load modes where TransformerLens processes the
weights (HookedTransformer's default ``fold_ln`` / centring, the bridge's compatibility mode) fold
the final norm into ``W_U`` and centre it: there single-logit Semantic and Temperature are different
quantities by design (documented; Temperature must warn and vanish), so those rows check contrast,
Fisher and Temperature's warning. Fisher rank 1 of a folded model reads the top eigenvector of
``diag(g) F diag(g)`` (``g``: the final norm's gain, now in ``W_U``) and is checked against the
oracle in that folded basis (``Oracle.fisher(..., folded=True)``).

Used by ``scripts/architecture_matrix.py`` (the full matrix, printed) and by
``tests/test_architecture_matrix.py`` (the fast part).
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from family_oracle import float64_copy, oracle
from model_state import ModelState
from jscopes_tl import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.adapter import ModelAdapter, bridge_from_hf_model, hooked_transformer_available, hooked_transformer_from_hf_model
from jscopes_tl.errors import UnsupportedModelError
from jscopes_tl.families import FAMILIES, toy_hf_model
from jscopes_tl.toy import toy_tokenizer

PROMPT = "Tom loves Korean food. He is a"
CONTRAST = (11, 42)
TOLERANCE = 1e-4  # float32 TransformerLens against the float64 oracle, relative to the largest score
# Half precision against float32, relative to the largest float32 score (measured worst case, with
# room; see docs/guide/architectures.md's matrix for each family's error).
HALF_TOLERANCE = {torch.bfloat16: 0.25, torch.float16: 0.05}
TL_FAILS = "TransformerLens's own forward pass fails: "
HALF_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def generation() -> str:
    from importlib.metadata import version

    return f"TransformerLens {version('transformer_lens')}"


def load_modes() -> list[str]:
    """The ways the installed TransformerLens loads a Hugging Face model."""
    if hooked_transformer_available():
        return ["hooked", "hooked-processed"]
    return ["bridge", "bridge-compat"]


def processed(mode: str) -> bool:
    return mode in ("hooked-processed", "bridge-compat")


def build(family: str, mode: str, dtype: torch.dtype = torch.float32) -> tuple[Any, torch.nn.Module]:
    """(TransformerLens model, float32 Hugging Face model) for one family and load mode."""
    tokenizer = toy_tokenizer()
    hf_model = toy_hf_model(family, vocab_size=len(tokenizer))
    if mode.startswith("bridge"):
        model = bridge_from_hf_model(
            toy_hf_model(family, vocab_size=len(tokenizer), dtype=dtype), tokenizer=tokenizer,
            compatibility_mode=mode == "bridge-compat",
        )
    else:
        flags = processed(mode)
        model = hooked_transformer_from_hf_model(
            hf_model, tokenizer, fold_ln=flags, center_writing_weights=flags, center_unembed=flags, fold_value_biases=flags,
        )
        if dtype != torch.float32:
            model.cfg.dtype = dtype  # HookedTransformer's norms cast their output to cfg.dtype
            model = model.to(dtype)
    model(torch.tensor([[0, 1]]))  # a bridge wires some hooks on its first forward pass
    return model, hf_model


def prompt_ids() -> torch.Tensor:
    return torch.tensor([0, *toy_tokenizer()(PROMPT).input_ids])  # BOS (id 0) + the prompt


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    if actual.shape != expected.shape:
        return math.inf
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


def oracle_point(model: Any, layer: int = 0) -> Any:
    """The oracle's perturbation point matching what the scope says it perturbs (its numerics)."""
    if layer > 0:
        return ("layer", layer)
    kind = ModelAdapter(model).input_embedding().kind
    return "module:transformer.word_embeddings_layernorm" if kind == "after_embedding_norm" else "input"


@dataclass
class Row:
    family: str
    mode: str
    status: str = "ok"
    errors: dict[str, float] = field(default_factory=dict)
    half: dict[str, float | str] = field(default_factory=dict)
    perturbed: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "ok" or self.status.startswith(("unsupported", "warned"))


def fisher_rank_one_tolerance(reference: Any, p: int, folded: bool = False) -> float:
    """Rank-1 Fisher reads the top eigenvector of F (of ``diag(g) F diag(g)`` when folded), which
    rounding moves by about ``δF / (λ1 − λ2)``: the tolerance grows with the inverse relative
    eigengap (13 on the random Llama, whose λ1 = 0.955, λ2 = 0.884)."""
    top, second = torch.linalg.eigvalsh(reference.fisher_matrix(p, folded))[-2:].flip(0).tolist()
    return TOLERANCE * max(1.0, top / max(top - second, 1e-300))


def _scope_errors(model: Any, hf64: torch.nn.Module, ids: torch.Tensor, fast: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(errors, tolerances where they differ from TOLERANCE)."""
    adapter = ModelAdapter(model)
    folded = adapter.final_norm_has_no_gain()  # the final norm's gain is in W_U
    centred = adapter.unembed_statistics.centred  # W_U's mean column removed: single logits shift
    last = len(ids) - 1
    reference = oracle(hf64, ids, [last], oracle_point(model))
    errors: dict[str, float] = {}
    tolerances: dict[str, float] = {}
    if not centred:
        errors["semantic"] = relative_error(semantic_scope(model, ids).scores, reference.semantic(last))
    errors["contrast"] = relative_error(semantic_scope(model, ids, target=CONTRAST).scores, reference.semantic(last, CONTRAST))
    if fast:
        return errors, tolerances
    # Folding the final norm's gain into W_U changes F's eigenvectors (exact F is invariant): a folded
    # model's rank 1 is checked in the folded basis.
    rank_one = "fisher-1 (folded)" if folded else "fisher-1"
    errors[rank_one] = relative_error(
        fisher_scope(model, ids, rank=1, tail_tolerance=0.0).scores, reference.fisher(last, 1, folded=folded)
    )
    tolerances[rank_one] = fisher_rank_one_tolerance(reference, last, folded)
    errors["fisher-exact"] = relative_error(
        fisher_scope(model, ids, rank=None, tail_tolerance=0.0).scores, reference.fisher(last, None)
    )
    if folded:  # ‖y‖ is fixed by the norm (up to its eps): the scope must say so
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            temperature_scope(model, ids)
        errors["temperature"] = 0.0 if any("final norm has no gain" in str(w.message) for w in caught) else math.inf
    else:
        errors["temperature"] = relative_error(temperature_scope(model, ids).scores, reference.temperature(last))
    # position="all": every prediction position, against the oracle's Jacobian at each.
    target = CONTRAST if centred else None
    everywhere = oracle(hf64, ids, list(range(len(ids))), oracle_point(model))
    scores = semantic_scope(model, ids, position="all", target=target).scores  # [pos, pos]
    expected = torch.stack([everywhere.semantic(p, target) for p in range(len(ids))])
    errors["position=all"] = relative_error(scores, expected)
    # layer="all": the input embedding and the residual stream entering every block (and leaving the last).
    layered = semantic_scope(model, ids, layer="all", target=target).scores  # [n_layers + 1, pos]
    errors["layer=all"] = max(
        relative_error(layered[layer], oracle(hf64, ids, [last], oracle_point(model, layer)).semantic(last, target))
        for layer in range(layered.shape[0])
    )
    return errors, tolerances


def failure(error: BaseException) -> str:
    """An exception as ``Type: first line (at file:line)``, the innermost frame's file relative to
    its package directory."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (at {frame.filename.split('site-packages/')[-1]}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}{where}"


def _half_errors(family: str, mode: str, model32: Any, ids: torch.Tensor) -> dict[str, float | str]:
    """bf16 / fp16 scores against float32 (Semantic on the float32 top-1 token, and Temperature or,
    where the final norm is folded, Fisher rank 1): the error, or the exception's text."""
    folded = ModelAdapter(model32).final_norm_has_no_gain()
    target = int(semantic_scope(model32, ids).target)

    def scores(model: Any) -> list[torch.Tensor]:
        second = fisher_scope(model, ids, rank=1) if folded else temperature_scope(model, ids)
        return [semantic_scope(model, ids, target=target).scores, second.scores]

    reference = scores(model32)
    errors: dict[str, float | str] = {}
    for dtype, name in HALF_NAMES.items():
        try:
            model = build(family, mode, dtype)[0]  # its warm-up forward pass included
            with torch.no_grad():
                model(ids[None])
        except Exception as error:  # noqa: BLE001 - TransformerLens's own forward pass fails: recorded
            errors[name] = TL_FAILS + failure(error)
            continue
        try:
            half = scores(model)
        except Exception as error:  # noqa: BLE001 - recorded in the matrix
            errors[name] = failure(error)
            continue
        finite = all(bool(torch.isfinite(s).all()) for s in half)
        errors[name] = max(relative_error(h, r) for h, r in zip(half, reference)) if finite else math.inf
    return errors


def check(family: str, mode: str, *, fast: bool = False, half: bool = True) -> Row:
    """One cell of the matrix. ``fast``: logits, Semantic top-1 and contrast, and the model-state
    check only. A model jscopes_tl refuses (``UnsupportedModelError``) is listed with the reason.
    Half precision above :data:`HALF_TOLERANCE` is flagged (``half_flags``); a half-precision
    model that fails or gives non-finite scores fails the cell, unless the failure is
    TransformerLens's own one that the family table records (:func:`known_upstream_failure`)."""
    row = Row(family, mode)
    start = time.perf_counter()
    try:
        model, hf_model = build(family, mode)
        ids = prompt_ids()
        with torch.no_grad():
            logits = model(ids[None])[0]
            hf_logits = hf_model(ids[None]).logits[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adapter = ModelAdapter(model)
        # jscopes_tl warns that TransformerLens's processing made another model than HF's: the scopes
        # are that model's, so the oracle on the HF model cannot match; the row says so.
        differs = [str(w.message) for w in caught if "differ from the original model" in str(w.message)]
        row.perturbed = f"{adapter.perturbation_hook(0)} ({adapter.input_embedding().kind})"
        if adapter.unembed_statistics.centred:  # centring W_U shifts every logit of a position equally
            logits, hf_logits = logits - logits.mean(-1, keepdim=True), hf_logits - hf_logits.mean(-1, keepdim=True)
        row.errors["logits"] = relative_error(logits, hf_logits)
        state = ModelState.capture(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            errors, tolerances = _scope_errors(model, float64_copy(hf_model), ids, fast)
            row.errors.update(errors)
            try:
                state.assert_unchanged(model, "the scopes")
            except AssertionError as error:
                row.status = f"model changed: {error}"
            if half and not fast:
                row.half = _half_errors(family, mode, model, ids)
        bad = [name for name, value in row.errors.items() if not value <= tolerances.get(name, TOLERANCE)]
        bad += [
            name for name, value in row.half.items()
            if (isinstance(value, str) and not known_upstream_failure(family, value)) or (isinstance(value, float) and math.isinf(value))
        ]
        if bad and row.status == "ok":
            row.status = "MISMATCH: " + ", ".join(bad)
            if differs:
                row.status = f"warned (TL model ≠ HF model: {', '.join(bad)}): {differs[0].split(':')[0]}"
    except UnsupportedModelError as error:
        row.status = f"unsupported: {error}"
    except Exception as error:  # noqa: BLE001 - a matrix cell reports any failure and the matrix goes on
        row.status = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    finally:
        row.seconds = time.perf_counter() - start
    return row


def known_upstream_failure(family: str, value: float | str) -> bool:
    """A half-precision failure inside TransformerLens's own forward pass that the family table
    records (``Family.half_precision_error``); any other failure fails the cell."""
    recorded = FAMILIES[family].half_precision_error
    return isinstance(value, str) and recorded is not None and value.startswith(TL_FAILS + recorded)


def half_flags(row: Row) -> list[str]:
    """Half-precision errors above the stated tolerance (finite, but less accurate than promised)."""
    limits = {name: HALF_TOLERANCE[dtype] for dtype, name in HALF_NAMES.items()}
    return [name for name, value in row.half.items() if isinstance(value, float) and limits[name] < value < math.inf]


COLUMNS = ["logits", "semantic", "contrast", "fisher-1", "fisher-exact", "temperature", "position=all", "layer=all"]


def format_matrix(rows: list[Row]) -> str:
    """A Markdown table: family × load mode → status, each check's error, half-precision errors."""
    header = ["family", "load mode", "status", "max error", *COLUMNS, "bf16", "fp16", "perturbed (layer 0)", "s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def number(value: float | str | None, flag: bool = False) -> str:
        if value is None:
            return "–"
        if isinstance(value, str):
            return "error"
        text = "inf" if math.isinf(value) else f"{value:.0e}"
        return f"**{text}**" if flag else text

    def cell(row: Row, column: str) -> str:
        folded = f"{column} (folded)"  # Fisher rank 1 of a folded model, in the folded basis
        return number(row.errors[folded]) + " (folded)" if folded in row.errors else number(row.errors.get(column))

    for row in rows:
        status = row.status if len(row.status) <= 110 else row.status[:107] + "..."
        worst = max(row.errors.values()) if row.errors else None
        flags = half_flags(row)
        cells = [
            row.family, row.mode, status.replace("|", "/"), number(worst),
            *[cell(row, column) for column in COLUMNS],
            *[
                "TL error (known)" if known_upstream_failure(row.family, row.half.get(name, 0.0)) else number(row.half.get(name), name in flags)
                for name in ("bf16", "fp16")
            ],
            row.perturbed or "–", f"{row.seconds:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def families() -> list[str]:
    return list(FAMILIES)
