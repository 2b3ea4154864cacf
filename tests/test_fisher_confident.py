"""Fisher Scope on confident predictions, against a float64 oracle that shares no code with jscopes_tl.

Trained models are often confident (``1 - p_max`` of 1e-6 and below), where the textbook
``Σ p g gᵀ - μ μᵀ`` cancels catastrophically and an absolute probability cut removes most of
``F``. The oracle here is built from the Hugging Face model itself in float64: the full Jacobian
of the final hidden state with respect to the input embeddings
(``torch.autograd.functional.jacobian``), the centred ``F = Σ_v p_v (g_v - μ)(g_v - μ)ᵀ`` from
``W_U`` and a float64 softmax, and ``torch.linalg.eigh``. Scopes run on the TransformerLens model
of whichever family the installed TransformerLens has (HookedTransformer on 2.x, bridge on 4.x).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import transformers

from jscopes_tl import fisher_scope, models
from jscopes_tl.adapter import (
    bridge_from_hf_model,
    hooked_transformer_available,
    hooked_transformer_from_hf_directory,
)
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.fisher import fisher_eigenpairs
from jscopes_tl.models.files import model_directory

TOLERANCE = 1e-4  # max |score error| / max score, the bar for rank 1, rank 4 and exact


# --------------------------------------------------------------------------------- the oracle
def hf_model(name: str) -> torch.nn.Module:
    return transformers.GPT2LMHeadModel.from_pretrained(model_directory(name)).eval()


class Oracle:
    """Float64 Jacobians and Fisher eigenpairs of a GPT-2 LM head model (already in float64) at
    the last of ``tokens``."""

    def __init__(self, model64: torch.nn.Module, tokens: torch.Tensor):
        embeddings = model64.transformer.wte(tokens).detach()

        def final_hidden(x: torch.Tensor) -> torch.Tensor:  # ln_f output: what lm_head reads
            return model64.transformer(inputs_embeds=x[None]).last_hidden_state[0, -1]

        # One backward pass per output coordinate (vectorize=True is slower on this model).
        self.J = torch.autograd.functional.jacobian(final_hidden, embeddings).permute(1, 0, 2)  # [pos, d (y), d (x)]
        with torch.no_grad():
            W_U = model64.lm_head.weight.T.detach()
            log_p = torch.log_softmax(final_hidden(embeddings) @ W_U, -1)
        p = log_p.exp()
        centred = W_U - (W_U @ p)[:, None]
        values, vectors = torch.linalg.eigh((centred * p) @ centred.T)
        self.values, self.vectors = values.flip(0), vectors.flip(1)
        self.gap = float(-torch.expm1(log_p.max()))  # 1 - p_max

    def scores(self, rank: int) -> torch.Tensor:
        projected = torch.einsum("dk,tde->tke", self.vectors[:, :rank], self.J)
        return (self.values[:rank] * projected.pow(2).sum(-1)).sum(-1)


def assert_scores_match(model, tokens, oracle, ranks=(1, 4, None), **options):
    """Rank 1, rank 4 and exact (rank None) Fisher Scopes with default truncation, at the last
    token, within TOLERANCE of the oracle's (``backward_batch`` only batches the backward vectors:
    on these tiny models 64 vectors in one pass are 10x faster than 64 passes)."""
    for rank in ranks:
        result = fisher_scope(model, tokens, rank=rank, backward_batch=64, **options)
        expected = oracle.scores(rank or oracle.J.shape[1])
        error = float((result.scores.double() - expected).abs().max() / expected.max())
        assert error <= TOLERANCE, f"rank {rank}, 1 - p_max = {oracle.gap:.1e}: error {error:.1e}"
        assert float(result.metadata["dropped_trace_fraction"]) <= 1e-6


def spanning_predictions(model64: torch.nn.Module, name: str, n_prompts: int = 12) -> list[torch.Tensor]:
    """Prefixes of held-out prompts whose next-token 1 - p_max is in each decade 1e-1, 1e-3,
    1e-5, ... (the shortest such prefix), plus the most confident prediction of all."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_directory(name))
    found: list[tuple[float, torch.Tensor]] = []
    for prompt in models.get_task(name).labelled_prompts(n_prompts, seed=1):
        tokens = torch.tensor(tokenizer.convert_tokens_to_ids(prompt.tokens))
        with torch.no_grad():
            log_p = torch.log_softmax(model64(tokens[None]).logits[0], -1)
        for position, gap in enumerate((-torch.expm1(log_p.max(-1).values)).tolist()):
            if position > 0 and gap > 0:
                found.append((gap, tokens[: position + 1]))
    chosen = [min(found, key=lambda item: item[0])]
    for decade in range(1, 9, 2):
        in_decade = [item for item in found if abs(math.log10(item[0]) + decade) < 0.5]
        if in_decade:
            chosen.append(min(in_decade, key=lambda item: len(item[1])))
    return [tokens for _, tokens in sorted(chosen, key=lambda item: -item[0])]


# --------------------------------------------------------------------------------- bundled models
@pytest.mark.parametrize("name", models.BUNDLED_MODELS)
def test_fisher_matches_float64_oracle_from_flat_to_most_confident(name):
    model, model64 = models.load(name), hf_model(name).double()
    oracles = [(tokens, Oracle(model64, tokens)) for tokens in spanning_predictions(model64, name)]
    gaps = [oracle.gap for _, oracle in oracles]
    assert max(gaps) > 3e-2 and max(gaps) / min(gaps) > 1e3  # from flat-ish to the most confident
    for tokens, oracle in oracles:
        assert_scores_match(model, tokens, oracle)


# --------------------------------------------------------------------------------- synthetic unembeddings
def build_like_bundled(hf: torch.nn.Module, name: str):
    """The TransformerLens model of the installed family around this (modified) HF model, loaded
    unprocessed like :func:`jscopes_tl.models.load`."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_directory(name))
    if hooked_transformer_available():
        return hooked_transformer_from_hf_directory(
            model_directory(name), hf_model=hf, tokenizer=tokenizer,
            fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
        )
    return bridge_from_hf_model(hf, tokenizer=tokenizer)


def recall_tokens(*words: str) -> torch.Tensor:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_directory("recall"))
    return torch.tensor(tokenizer.convert_tokens_to_ids(list(words)))


def with_unembedding(hf: torch.nn.Module, W_U: torch.Tensor) -> torch.nn.Module:
    """A copy of ``hf`` whose lm_head (untied from the input embedding) is ``W_U`` [d_model, d_vocab]."""
    hf = copy.deepcopy(hf)
    hf.config.tie_word_embeddings = False
    hf.lm_head.weight = torch.nn.Parameter(W_U.T.contiguous().float())
    return hf


def solve_for_gap(gap_of, target: float) -> float:
    """The parameter (on a log scale, gap decreasing in it) at which ``gap_of`` equals ``target``."""
    low, high = 1e-3, 1e4
    for _ in range(200):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if gap_of(middle) > target else (low, middle)
    return high


def confident_unembedding(hf: torch.nn.Module, tokens: torch.Tensor, shape: str, gap: float) -> torch.Tensor:
    """``W_U`` giving ``1 - p_max = gap`` at the last position: the model's own scaled up
    ("scaled": a peaked tail), or the other columns shrunk and the top token's pushed along ``y``
    ("flat tail": the Fisher mass spread evenly over the whole vocabulary)."""
    model = copy.deepcopy(hf).double()
    with torch.no_grad():
        y = model.transformer(tokens[None]).last_hidden_state[0, -1]
    W_U = model.lm_head.weight.T.detach().clone()
    top = int((y @ W_U).argmax())
    if shape == "scaled":
        scale = solve_for_gap(lambda c: float(-torch.expm1(torch.log_softmax(c * (y @ W_U), -1).max())), gap)
        return scale * W_U
    W_U = 0.05 * W_U
    W_U[:, top] = 20 * W_U[:, top]

    def pushed(beta: float) -> torch.Tensor:
        pushed_W = W_U.clone()
        pushed_W[:, top] += beta * y / (y @ y)
        return pushed_W

    beta = solve_for_gap(lambda b: float(-torch.expm1(torch.log_softmax(y @ pushed(b), -1).max())), gap)
    return pushed(beta)


@pytest.mark.parametrize("shape", ["scaled", "flat tail"])
@pytest.mark.parametrize("gap", [1e-9, 1e-12])
def test_fisher_matches_float64_oracle_on_a_synthetic_confident_unembedding(shape, gap):
    base = hf_model("recall")
    tokens = recall_tokens("<bos>", "a=3", "k=7", "c=1", "q=4", "x=0", "k=")
    hf = with_unembedding(base, confident_unembedding(base, tokens, shape, gap))
    oracle = Oracle(copy.deepcopy(hf).double(), tokens)
    assert oracle.gap == pytest.approx(gap, rel=1e-3)
    assert_scores_match(build_like_bundled(hf, "recall"), tokens, oracle)


# --------------------------------------------------------------------------------- float64 models
def test_float64_model_gives_float64_accurate_scores():
    """A float64 model's scores are float64 throughout: Fisher eigenvalues and Fisher, Semantic and
    Temperature scores within 1e-10 of the float64 oracle's."""
    from jscopes_tl import semantic_scope, temperature_scope

    model64 = hf_model("recall").double()
    model = copy.deepcopy(models.load("recall")).to(torch.float64)
    tokens = model.to_tokens("a=3 k=7 c=1 q=4 k=")[0]
    W_U = model64.lm_head.weight.detach().T
    for prefix in (tokens, tokens[:-1]):  # a confident prediction, then a flatter one
        oracle = Oracle(model64, prefix)
        with torch.no_grad():
            y = model64.transformer(prefix[None]).last_hidden_state[0, -1]
        top = int((y @ W_U).argmax())
        expected = {
            "fisher": oracle.scores(4),
            "semantic": torch.einsum("d,tde->te", W_U[:, top], oracle.J).norm(dim=-1),
            "temperature": torch.einsum("d,tde->te", y / y.norm(), oracle.J).norm(dim=-1),
        }
        results = {
            "fisher": fisher_scope(model, prefix, rank=4, tail_tolerance=0.0),
            "semantic": semantic_scope(model, prefix),
            "temperature": temperature_scope(model, prefix),
        }
        eigenvalues = results["fisher"].metadata["eigenvalues"]
        assert eigenvalues.dtype == torch.float64
        assert float((eigenvalues - oracle.values[:4]).abs().max() / oracle.values[0]) <= 1e-10
        for kind, result in results.items():
            assert result.scores.dtype == torch.float64, kind
            error = float((result.scores - expected[kind]).abs().max() / expected[kind].max())
            assert error <= 1e-10, f"{kind}: {error:.1e}"


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", ["dense", "krylov"])
def test_eigenpairs_match_float64_eigh_at_every_confidence(solver, weights_dtype):
    """Both solvers, with a vocabulary large enough for truncation and gathering to matter, from
    1 - p_max = 1e-1 down to 1e-12: the top-4 eigenvalues, and each returned pair's residual
    ‖F u - λ u‖ under the oracle's F (well defined even where eigenvalues are degenerate), are
    within 1e-5 of λ_1 (float32 weights) or 1e-10 (float64 weights)."""
    generator = torch.Generator().manual_seed(0)
    W_U = torch.randn(64, 20_000, generator=generator, dtype=torch.float64).to(weights_dtype)
    direction = (torch.randn(64, generator=generator, dtype=torch.float64) @ W_U.double()) / 8
    float64 = weights_dtype == torch.float64
    bar = 1e-10 if float64 else 1e-5
    for gap in (1e-1, 1e-4, 1e-8, 1e-12):
        scale = solve_for_gap(lambda c: float(-torch.expm1(torch.log_softmax(c * direction, -1).max())), gap)
        p = torch.softmax(scale * direction, -1)
        centred = W_U.double() - (W_U.double() @ p)[:, None]
        fisher = (centred * p) @ centred.T
        values = torch.linalg.eigvalsh(fisher).flip(0)
        result = fisher_eigenpairs(
            W_U, p, 4, tail_tolerance=1e-12 if float64 else 1e-9, solver=solver, tolerance=1e-12 if float64 else 1e-7
        )
        assert result.solver == solver
        assert float((result.eigenvalues - values[:4]).abs().max()) <= bar * float(values[0]), gap
        residuals = fisher @ result.eigenvectors - result.eigenvectors * result.eigenvalues
        assert float(residuals.norm(dim=0).max()) <= bar * float(values[0]), gap
        assert abs(result.trace - float(values.sum())) <= bar * float(values.sum())


# --------------------------------------------------------------------------------- truncation, warnings
def test_a_confident_prediction_keeps_the_rows_holding_its_fisher_mass():
    """With 1 - p_max = 1e-9 almost all the probability sits on the top token and none of the
    Fisher mass: the kept rows are the alternatives, and the bound is relative to tr F."""
    base = hf_model("recall")
    tokens = recall_tokens("<bos>", "a=3", "k=7", "k=")
    hf = with_unembedding(base, confident_unembedding(base, tokens, "flat tail", 1e-9))
    with pytest.warns(UserWarning, match="tail_tolerance=0.1 dropped"):
        result = fisher_scope(build_like_bundled(hf, "recall"), tokens, rank=1, tail_tolerance=0.1)
    metadata = result.metadata
    assert float(metadata["dropped_probability_mass"]) < 1e-9  # an absolute 1e-6 cut would drop every alternative
    assert 0 < float(metadata["dropped_trace_fraction"]) <= 0.1
    assert float(metadata["dropped_trace_bound"]) == pytest.approx(
        float(metadata["dropped_trace_fraction"]) * float(metadata["fisher_trace"]), rel=1e-5
    )
    assert int(metadata["kept_vocabulary_rows"]) > 100


def test_a_coarse_tail_tolerance_warns_at_the_callers_line():
    model = models.load("periodic")
    tokens = model.to_tokens("51 , 73 , 28 , 51 , 73 ,")[0]
    with pytest.warns(UserWarning, match=r"tail_tolerance=0.5 dropped .* of tr\(F\)") as caught:
        fisher_scope(model, tokens, rank=1, tail_tolerance=0.5)
    assert [w.filename for w in caught if "tail_tolerance" in str(w.message)] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fisher_scope(model, tokens, rank=1)  # the default never comes near 1 % of tr F


def test_tail_mass_is_replaced_by_tail_tolerance():
    model = models.load("recall")
    tokens = model.to_tokens("a=3 k=7 k=")[0]
    with pytest.warns(DeprecationWarning, match="tail_tolerance"):
        old = fisher_scope(model, tokens, rank=2, tail_mass=0.0)
    torch.testing.assert_close(old.scores, fisher_scope(model, tokens, rank=2, tail_tolerance=0.0).scores)
    with pytest.raises(ScopeInputError, match="tail_mass=1e-06 is no longer supported.*tail_tolerance"):
        fisher_scope(model, tokens, tail_mass=1e-6)
    with pytest.raises(ScopeInputError, match="tail_tolerance must be"):
        fisher_scope(model, tokens, tail_tolerance=1.0)
