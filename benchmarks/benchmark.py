"""Speed and memory of Jacobian Scopes, as ratios to a plain forward+backward pass in the same run.

    .venv/bin/python benchmarks/benchmark.py                 # GPT-2-small- and Llama-sized models
    .venv/bin/python benchmarks/benchmark.py --quick         # shorter prompts, fewer repeats
    .venv/bin/python benchmarks/benchmark.py --tiny          # 2-layer models: checks the script runs
    .venv/bin/python benchmarks/benchmark.py --json out.json

Models have random weights (no download) at realistic sizes: GPT-2 small (12 layers, d_model
768, 50,257-token vocabulary) and a Llama-style model of similar size (12 layers, d_model 768,
grouped-query attention, 32,000 tokens). The floor is what any gradient attribution needs: one
forward pass and ``loss.backward()`` on one logit. Every scope is reported as a ratio to it, so
the figures transfer across machines; absolute seconds are printed too. Peak memory is measured
in a fresh subprocess per configuration (resident set size above the loaded model).

The Fisher eigen-solve depends on the next-token distribution, which random weights make nearly
uniform (entropy ≈ ln d_vocab): the worst case, where no vocabulary row can be dropped and the
top of the Fisher spectrum is flat. The Fisher rows are therefore measured three times: on the
random model as it is, and with its unembedding scaled (a separate copy, so the forward pass is
unchanged) until the entropy at the scored position is ``--peaked-entropy`` nats (default 3.3,
about GPT-2 small's next-token loss on web text), as for a trained model, and until
``1 - p_max`` is ``--confident-gap`` (default 1e-6), as for a confident prediction.

    .venv/bin/python benchmarks/benchmark.py --fisher-only --quick   # the Fisher rows alone
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore")

from jscopes_tl import fisher_scope, integrated_gradients, semantic_scope, temperature_scope  # noqa: E402
from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available  # noqa: E402
from jscopes_tl.components import component_scope  # noqa: E402
from jscopes_tl.fisher import fisher_eigenpairs  # noqa: E402
from jscopes_tl.scopes import DEFAULT_FISHER_TAIL_TOLERANCE  # noqa: E402


# Sizes: GPT-2 small and a Llama-style model of similar size; "tiny" only checks the script runs.
SIZES = {
    "full": dict(n_layers=12, d_model=768, n_heads=12, gpt2_vocab=50257, llama_vocab=32000, gpt2_mlp=3072, llama_mlp=2048),
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, gpt2_vocab=1000, llama_vocab=1000, gpt2_mlp=256, llama_mlp=128),
}


def build_model(architecture: str, size: str = "full", tokenizer: Any = None) -> Any:
    """A randomly initialised model (TransformerBridge, or HookedTransformer on TransformerLens 2.x),
    with ``tokenizer`` if given (the bundled recall model's, for the dataset rows)."""
    torch.manual_seed(0)
    z = SIZES[size]
    n_layers, d_model, n_heads = z["n_layers"], z["d_model"], z["n_heads"]
    if hooked_transformer_available():
        from jscopes_tl.adapter import hooked_transformer_from_config

        common = dict(
            n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, n_ctx=2048,
            default_prepend_bos=False,
        )
        if architecture == "gpt2":
            config = dict(common, d_vocab=z["gpt2_vocab"], d_mlp=z["gpt2_mlp"], act_fn="gelu_new", normalization_type="LN")
        else:
            config = dict(
                common, d_vocab=z["llama_vocab"], d_mlp=z["llama_mlp"], act_fn="silu", normalization_type="RMS",
                positional_embedding_type="rotary", gated_mlp=True, n_key_value_heads=n_heads // 3 or 1,
            )
        return hooked_transformer_from_config(config, tokenizer=tokenizer)
    import transformers

    from jscopes_tl.adapter import bridge_from_hf_model

    if architecture == "gpt2":
        config = transformers.GPT2Config(
            n_positions=2048, n_layer=n_layers, n_embd=d_model, n_head=n_heads, vocab_size=z["gpt2_vocab"],
            n_inner=z["gpt2_mlp"],
        )
    else:
        config = transformers.LlamaConfig(
            vocab_size=z["llama_vocab"], hidden_size=d_model, intermediate_size=z["llama_mlp"],
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads // 3 or 1,
            max_position_embeddings=2048,
        )
    return bridge_from_hf_model(transformers.AutoModelForCausalLM.from_config(config), tokenizer=tokenizer)


def best_time(function: Callable[[], Any], repeats: int) -> float:
    """Best of ``repeats`` runs after one warm-up run (no warm-up for single long runs)."""
    if repeats > 1:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def forward_backward(model: Any, tokens: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        for parameter in model.parameters():
            parameter.grad = None
        model(tokens)[0, -1, 0].backward()

    return run


def unembedding_slot(model: Any) -> tuple[torch.nn.Module, str]:
    """Where W_U lives: HookedTransformer's ``unembed.W_U`` ([d_model, d_vocab]) or the Hugging
    Face ``lm_head.weight`` ([d_vocab, d_model]) inside a TransformerBridge."""
    unembed = model.unembed
    if isinstance(getattr(unembed, "W_U", None), torch.nn.Parameter):
        return unembed, "W_U"
    return unembed.original_component, "weight"


def unembedding_weight(model: Any) -> torch.nn.Parameter:
    return getattr(*unembedding_slot(model))


def sharpen_unembedding(
    model: Any, tokens: torch.Tensor, entropy: float | None = None, gap: float | None = None
) -> tuple[float, float]:
    """Scale W_U (untied from the embedding first, so the forward pass is unchanged) until the
    next-token entropy at the last position is ``entropy`` nats, or its ``1 - p_max`` is ``gap``.
    Returns (scale, the entropy or gap reached)."""
    owner, name = unembedding_slot(model)
    weight = getattr(owner, name)
    original = weight.detach().clone()
    untied = torch.nn.Parameter(original.clone(), requires_grad=weight.requires_grad)
    setattr(owner, name, untied)
    target = entropy if gap is None else gap

    def statistic_at(scale: float) -> float:  # falls as the logits sharpen
        with torch.no_grad():
            untied.copy_(original * scale)
            logits = model(tokens)[0, -1].double()
        log_p = torch.log_softmax(logits, -1)
        return float(-(log_p.exp() * log_p).sum()) if gap is None else float(-torch.expm1(log_p.max()))

    low, high = 1.0, 1.0
    while statistic_at(high) > target:
        high *= 2
    for _ in range(20 if gap is None else 40):  # bisection on log-scale
        middle = (low * high) ** 0.5
        low, high = (middle, high) if statistic_at(middle) > target else (low, middle)
    return high, statistic_at(high)


class _Stop(Exception):
    pass


def scope_parts(model: Any, tokens: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Seconds of the two parts of a Semantic Scope: the forward pass recording the graph for the
    perturbation δ (with the scope's hooks, stopped at the unembedding input, plus the one row of
    logits the prediction needs), and one backward vector through it. Both run on the model as a
    scope holds it (locked, eval mode, weights frozen), prepared once outside the timing: what a
    scope costs beyond these two parts is its bookkeeping."""
    adapter = ModelAdapter(model)
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        delta = torch.zeros(*tokens.shape, adapter.d_model, requires_grad=True)

        def stop(activation: torch.Tensor, hook: Any) -> None:
            state["y"], state["delta"] = activation, delta
            raise _Stop

        hooks = [(adapter.resid_pre_hook(0), lambda activation, hook: activation + delta), (adapter.final_hidden_hook, stop)]
        with adapter.own_hooks(hooks):
            try:
                adapter.forward(tokens)
            except _Stop:
                pass
        with torch.no_grad():
            adapter.logits(adapter.final_hidden(state["y"])[:, -1])

    with adapter.prepared_for_scopes():
        forward_seconds = best_time(forward, repeats)
        y = adapter.final_hidden(state["y"])[0, -1]
        direction = torch.randn(adapter.d_model)
        backward_seconds = best_time(
            lambda: torch.autograd.grad(y, state["delta"], direction, retain_graph=True), repeats
        )
    return forward_seconds, backward_seconds


def measure_bookkeeping(row: dict[str, Any], model: Any, tokens: torch.Tensor, repeats: int, rounds: int) -> None:
    """A Semantic Scope's time beyond its own forward pass (the hooked model call), its one row of
    logits, its backward pass and freeing that pass's graph, all timed inside the same call:
    argument checks, tokens and positions, holding the model (lock, eval mode, frozen weights),
    adding and removing hooks, the readout, the result. The median over ``rounds × repeats``
    calls; ``graph_release_ms`` is the median time of freeing the graph (its nodes, and a
    TransformerBridge's cached attention patterns), which ``backward(retain_graph=False)`` does
    as part of any backward pass.

    (Subtracting separately timed parts (:func:`scope_parts`) from the scope's time is no good
    here: the same forward pass timed in two places differs by ±10 ms at GPT-2 size on this CPU,
    more than the quantity.)"""
    import jscopes_tl.engine as engine

    inside: list[float] = []
    released: list[float] = []

    def timed(function: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - start)

        return run

    originals = (ModelAdapter.forward, ModelAdapter.logits, engine._vector_jacobian_products, engine._release_graph)
    ModelAdapter.forward, ModelAdapter.logits = timed(originals[0], inside), timed(originals[1], inside)
    engine._vector_jacobian_products = timed(originals[2], inside)
    engine._release_graph = timed(originals[3], released)
    try:
        semantic_scope(model, tokens[0])
        bookkeeping, release = [], []
        for _ in range(rounds * repeats):
            inside.clear()
            released.clear()
            start = time.perf_counter()
            semantic_scope(model, tokens[0])
            bookkeeping.append(time.perf_counter() - start - sum(inside) - sum(released))
            release.append(sum(released))
    finally:
        ModelAdapter.forward, ModelAdapter.logits = originals[0], originals[1]
        engine._vector_jacobian_products, engine._release_graph = originals[2], originals[3]
    bookkeeping.sort()
    row["bookkeeping_ms"] = 1000 * bookkeeping[len(bookkeeping) // 2]
    row["bookkeeping_min_ms"] = 1000 * bookkeeping[0]
    row["graph_release_ms"] = 1000 * sorted(release)[len(release) // 2]
    row["scope_forward_s"], row["scope_backward_vector_s"] = scope_parts(model, tokens, repeats)


def random_tokens(model: Any, n_prompts: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, ModelAdapter(model).d_vocab, (n_prompts, length), generator=generator)


def measure_speed(architecture: str, args: argparse.Namespace) -> dict[str, Any]:
    model = build_model(architecture, args.size)
    length, repeats = args.length, args.repeats
    tokens = random_tokens(model, 1, length)
    row: dict[str, Any] = {"model": architecture, "tokens": length}

    with torch.no_grad():
        row["forward_s"] = best_time(lambda: model(tokens), repeats)
    row["forward_backward_s"] = floor = best_time(forward_backward(model, tokens), repeats)
    report(row, "forward_s", "forward_backward_s")
    # A scope's own floor: a forward pass recording the graph for δ, and one backward vector.
    # Rank k costs one forward + k backward vectors; position="all" over n tokens needs n backward
    # vectors (one per position) but can share forward passes, so it cannot beat a loop of
    # positions by more than about (forward + backward) / backward.
    measure_bookkeeping(row, model, tokens, repeats, args.bookkeeping_rounds)
    row["all_speedup_bound"] = (row["scope_forward_s"] + row["scope_backward_vector_s"]) / row["scope_backward_vector_s"]
    report(row, "scope_forward_s", "scope_backward_vector_s", "bookkeeping_ms", "bookkeeping_min_ms", "graph_release_ms", "all_speedup_bound")

    scopes: dict[str, Callable[[], Any]] = {
        "semantic": lambda: semantic_scope(model, tokens[0]),
        "temperature": lambda: temperature_scope(model, tokens[0]),
        "fisher_rank1": lambda: fisher_scope(model, tokens[0], rank=1),
        "fisher_rank8": lambda: fisher_scope(model, tokens[0], rank=8),
        "fisher_rank64": lambda: fisher_scope(model, tokens[0], rank=64),
    }
    if args.fisher_only:
        del scopes["temperature"]
    if not args.skip_exact:
        scopes["fisher_exact"] = lambda: fisher_scope(model, tokens[0], rank=None)
    for name, scope in scopes.items():
        seconds = best_time(scope, 1 if name in ("fisher_rank64", "fisher_exact") else repeats)
        row[f"{name}_s"] = seconds
        row[f"{name}_vs_floor"] = seconds / floor
        report(row, f"{name}_s", f"{name}_vs_floor")
    for name in ("fisher_rank1", "fisher_rank8", "fisher_rank64", "fisher_exact"):
        if f"{name}_s" in row:
            row[f"{name}_vs_semantic"] = row[f"{name}_s"] / row["semantic_s"]
    # Component scope: every head's and MLP's output perturbed in the same forward pass, one backward.
    row["component_s"] = best_time(lambda: component_scope(model, tokens[0]), repeats)
    row["component_vs_semantic"] = row["component_s"] / row["semantic_s"]
    report(row, "component_s", "component_vs_semantic")
    measure_integrated_gradients(row, model, tokens)
    # What any exact rank-64 scope must cost, from the two parts: one forward and 64 backward vectors.
    forward, backward = row["scope_forward_s"], row["scope_backward_vector_s"]
    row["fisher_rank64_floor_vs_semantic"] = (forward + 64 * backward) / (forward + backward)

    measure_eigensolve(row, "", model, tokens, repeats)

    # The same Fisher scopes on a trained-like (peaked) next-token distribution.
    row["peaked_unembedding_scale"], row["peaked_entropy_nats"] = sharpen_unembedding(model, tokens, args.peaked_entropy)
    report(row, "peaked_unembedding_scale", "peaked_entropy_nats")
    row["peaked_semantic_s"] = best_time(lambda: semantic_scope(model, tokens[0]), repeats)
    for rank in (1, 8, 64):
        seconds = best_time(lambda: fisher_scope(model, tokens[0], rank=rank), 1 if rank == 64 else repeats)
        row[f"peaked_fisher_rank{rank}_s"] = seconds
        row[f"peaked_fisher_rank{rank}_vs_semantic"] = seconds / row["peaked_semantic_s"]
        report(row, f"peaked_fisher_rank{rank}_s", f"peaked_fisher_rank{rank}_vs_semantic")
    kept = fisher_scope(model, tokens[0], rank=1).metadata
    row["peaked_kept_vocabulary_rows"] = int(kept["kept_vocabulary_rows"])
    row["peaked_eigen_solver"] = ",".join(kept["eigen_solver"])
    measure_eigensolve(row, "peaked_", model, tokens, repeats)
    with torch.no_grad():
        unembedding_weight(model).copy_(unembedding_weight(model) / row["peaked_unembedding_scale"])

    # And on a confident prediction (1 - p_max = --confident-gap), where F is of that size and
    # its mass lies in the tokens other than the top one.
    scale, gap = sharpen_unembedding(model, tokens, gap=args.confident_gap)
    row["confident_unembedding_scale"], row["confident_gap"] = scale, gap
    report(row, "confident_unembedding_scale", "confident_gap")
    row["confident_semantic_s"] = best_time(lambda: semantic_scope(model, tokens[0]), repeats)
    for rank in (1, 8):
        seconds = best_time(lambda: fisher_scope(model, tokens[0], rank=rank), repeats)
        row[f"confident_fisher_rank{rank}_s"] = seconds
        row[f"confident_fisher_rank{rank}_vs_semantic"] = seconds / row["confident_semantic_s"]
        report(row, f"confident_fisher_rank{rank}_s", f"confident_fisher_rank{rank}_vs_semantic")
    kept = fisher_scope(model, tokens[0], rank=1).metadata
    row["confident_kept_vocabulary_rows"] = int(kept["kept_vocabulary_rows"])
    row["confident_eigen_solver"] = ",".join(kept["eigen_solver"])
    measure_eigensolve(row, "confident_", model, tokens, repeats)
    with torch.no_grad():
        unembedding_weight(model).copy_(unembedding_weight(model) / row["confident_unembedding_scale"])
    if args.fisher_only:
        return row

    # Batch of 16 prompts vs the same prompts one by one.
    batch = random_tokens(model, 16, length, seed=1)
    one_by_one = best_time(lambda: [semantic_scope(model, prompt) for prompt in batch], 1)
    batched = best_time(lambda: semantic_scope(model, batch), 1)
    row["batch16_s"], row["one_by_one16_s"] = batched, one_by_one
    row["batch16_throughput_ratio"] = one_by_one / batched
    report(row, "batch16_s", "one_by_one16_s", "batch16_throughput_ratio")

    # position="all" vs a loop over positions (the loop is timed on evenly spaced positions and
    # scaled up: each call costs what its position costs, so the sample mean is unbiased).
    for all_length in args.all_lengths:
        prompt = random_tokens(model, 1, all_length, seed=2)[0]
        all_seconds = best_time(lambda: semantic_scope(model, prompt, position="all"), 1)
        sample = list(range(all_length - 1, -1, -max(1, all_length // args.loop_samples)))
        loop_sample = best_time(lambda: [semantic_scope(model, prompt, position=p) for p in sample], 1)
        loop_seconds = loop_sample * all_length / len(sample)
        row[f"all_{all_length}_s"] = all_seconds
        row[f"loop_{all_length}_estimated_s"] = loop_seconds
        row[f"all_{all_length}_speedup_vs_loop"] = loop_seconds / all_seconds
        report(row, f"all_{all_length}_s", f"loop_{all_length}_estimated_s", f"all_{all_length}_speedup_vs_loop")
    return row


def dataset_prompts(n_prompts: int, seed: int = 0) -> list[str]:
    """Key–value recall prompts of the bundled task (2–8 pairs: several token lengths)."""
    from jscopes_tl.models.tasks import get_task

    return [prompt.text for prompt in get_task("recall").labelled_prompts(n_prompts, seed=seed)]


def dataset_model(name: str, size: str) -> Any:
    """The bundled recall model, or a random model of the benchmark's size with its tokenizer."""
    from jscopes_tl import models

    if name == "recall":
        return models.load("recall")
    return build_model(name, size, tokenizer=models.load_hf("recall")[1])


def measure_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``run_dataset`` (Semantic Scope, records written as Parquet) on ``--dataset-prompts`` prompts
    against calling ``semantic_scope`` on each prompt in a Python loop, on the same model."""
    from jscopes_tl.runs import run_dataset

    model = dataset_model(name, args.size)
    prompts = dataset_prompts(args.dataset_prompts)
    row: dict[str, Any] = {"model": f"{name} (dataset)", "tokens": max(len(ModelAdapter(model).tokenize(p)) for p in prompts)}
    with tempfile.TemporaryDirectory() as directory:
        run = lambda: run_dataset(model, prompts, Path(directory) / "run", overwrite=True, progress=False)  # noqa: E731
        run_dataset(model, prompts[:4], Path(directory) / "warm-up", progress=False)
        semantic_scope(model, prompts[0])
        row["dataset_loop_s"] = best_time(lambda: [semantic_scope(model, prompt) for prompt in prompts], 1)
        row["dataset_run_s"] = best_time(run, 1)
    row["dataset_prompts"] = len(prompts)
    row["dataset_run_prompts_per_s"] = len(prompts) / row["dataset_run_s"]
    row["dataset_run_vs_loop"] = row["dataset_loop_s"] / row["dataset_run_s"]
    report(row, "dataset_loop_s", "dataset_run_s", "dataset_run_prompts_per_s", "dataset_run_vs_loop")
    return row


def dataset_memory_child(n_prompts: int) -> None:
    """Run in a fresh process: the resident-set growth of a dataset run on the recall model."""
    from jscopes_tl.runs import run_dataset

    model = dataset_model("recall", "full")
    prompts = dataset_prompts(n_prompts)
    with tempfile.TemporaryDirectory() as directory:
        run_dataset(model, prompts[:4], Path(directory) / "warm-up", progress=False)
        baseline = _rss_mb()
        sampler = _PeakSampler()
        sampler.start()
        run_dataset(model, prompts, Path(directory) / "run", progress=False)
        sampler.running = False
        sampler.join()
    print(json.dumps({"peak_mb": max(sampler.peak, _rss_mb()) - baseline}))


def measure_dataset_memory(sizes: list[int]) -> dict[str, Any]:
    """Peak memory of dataset runs of growing size: flat if records stream to disk."""
    row: dict[str, Any] = {"model": "recall (dataset run)", "tokens": 0}
    for n_prompts in sizes:
        output = subprocess.run(
            [sys.executable, __file__, "--dataset-memory-child", str(n_prompts)], check=True, capture_output=True, text=True
        ).stdout
        row[f"dataset_{n_prompts}_peak_mb"] = json.loads(output.strip().splitlines()[-1])["peak_mb"]
    row["dataset_peak_growth"] = row[f"dataset_{sizes[-1]}_peak_mb"] / max(row[f"dataset_{sizes[0]}_peak_mb"], 1.0)
    return row


def measure_integrated_gradients(row: dict[str, Any], model: Any, tokens: torch.Tensor) -> None:
    """Integrated Gradients from a zero baseline on the random model as built. A fixed rule puts all
    its nodes (and both ends, for the gap) in one engine call, so one gradient evaluation of it is
    held to the price of a Semantic Scope; the adaptive default's cost is its evaluations, which this
    prompt decides (on these zero-bias models every normalisation layer sees zero variance near the
    baseline, and the path has features down to α ≈ 1e-34: the rule follows them)."""
    fixed = integrated_gradients(model, tokens[0], n_steps=32)
    row["ig_fixed32_s"] = best_time(lambda: integrated_gradients(model, tokens[0], n_steps=32), 1)
    row["ig_fixed32_evaluations"] = fixed.n_evaluations
    row["ig_evaluation_vs_semantic"] = row["ig_fixed32_s"] / fixed.n_evaluations / row["semantic_s"]
    start = time.perf_counter()
    adaptive = integrated_gradients(model, tokens[0])
    row["ig_adaptive_s"] = time.perf_counter() - start
    row["ig_adaptive_evaluations"], row["ig_adaptive_rounds"] = adaptive.n_evaluations, adaptive.n_rounds
    row["ig_adaptive_relative_gap"] = adaptive.relative_completeness_gap
    row["ig_adaptive_smallest_alpha"] = float(adaptive.alphas.min())
    report(row, "ig_fixed32_s", "ig_evaluation_vs_semantic", "ig_adaptive_s", "ig_adaptive_evaluations", "ig_adaptive_relative_gap")


def measure_eigensolve(row: dict[str, Any], prefix: str, model: Any, tokens: torch.Tensor, repeats: int) -> None:
    """The rank-1 eigen-solve alone, on the model's own distribution at the last position, and its
    share of the whole rank-1 Fisher Scope."""
    adapter = ModelAdapter(model)
    with torch.no_grad():
        logits = model(tokens)[0, -1]
    probabilities = torch.softmax(logits.double(), -1)  # as the Fisher readout computes them
    W_U, norms = adapter.W_U.detach(), adapter.unembed_statistics.column_sq_norms
    row[f"{prefix}fisher_eigensolve_rank1_s"] = best_time(
        lambda: fisher_eigenpairs(
            W_U, probabilities, 1, tail_tolerance=DEFAULT_FISHER_TAIL_TOLERANCE, column_sq_norms=norms
        ),
        repeats,
    )
    row[f"{prefix}eigensolve_share_of_fisher_rank1"] = row[f"{prefix}fisher_eigensolve_rank1_s"] / row[f"{prefix}fisher_rank1_s"]
    report(row, f"{prefix}fisher_eigensolve_rank1_s", f"{prefix}eigensolve_share_of_fisher_rank1")


def report(row: dict[str, Any], *keys: str) -> None:
    """Progress on stderr as figures come in (the tables are printed at the end)."""
    figures = ", ".join(f"{key}={row[key]:.3f}" if isinstance(row[key], float) else f"{key}={row[key]}" for key in keys)
    print(f"[{row['model']}] {figures}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


class _PeakSampler(threading.Thread):
    """Polls the resident set size every millisecond (ru_maxrss would include model building)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = _rss_mb(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.001)


def memory_child(architecture: str, mode: str, length: int, size: str) -> None:
    """Run in a fresh process: print the resident-set growth of one run above the loaded model."""
    model = build_model(architecture, size)
    tokens = random_tokens(model, 1, length)
    run = {
        "floor": forward_backward(model, tokens),
        "semantic": lambda: semantic_scope(model, tokens[0]),
        "fisher_rank8": lambda: fisher_scope(model, tokens[0], rank=8),
    }[mode]
    baseline = _rss_mb()
    sampler = _PeakSampler()
    sampler.start()
    run()
    sampler.running = False
    sampler.join()
    print(json.dumps({"peak_mb": max(sampler.peak, _rss_mb()) - baseline}))


def measure_memory(architecture: str, length: int, size: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": architecture, "tokens": length}
    for mode in ("floor", "semantic", "fisher_rank8"):
        output = subprocess.run(
            [sys.executable, __file__, "--memory-child", architecture, mode, str(length), size],
            check=True, capture_output=True, text=True,
        ).stdout
        row[f"{mode}_peak_mb"] = json.loads(output.strip().splitlines()[-1])["peak_mb"]
    row["semantic_vs_floor"] = row["semantic_peak_mb"] / row["floor_peak_mb"]
    row["fisher_rank8_vs_floor"] = row["fisher_rank8_peak_mb"] / row["floor_peak_mb"]
    return row


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n## {title}")
    for row in rows:
        print(f"- {row['model']} ({row['tokens']} tokens)")
        for key, value in row.items():
            if key not in ("model", "tokens"):
                print(f"    {key:38s} {value:10.3f}" if isinstance(value, float) else f"    {key:38s} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,llama", help="models of the speed and memory rows ('' to skip)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--all-lengths", type=int, nargs="*", default=[128, 512])
    parser.add_argument("--loop-samples", type=int, default=16)
    parser.add_argument("--memory-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peaked-entropy", type=float, default=3.3, help="next-token entropy (nats) of the peaked Fisher rows")
    parser.add_argument("--confident-gap", type=float, default=1e-6, help="1 - p_max of the confident Fisher rows")
    parser.add_argument("--skip-exact", action="store_true", help="skip exact Fisher (d_model backward vectors)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--fisher-only", action="store_true", help="only the Fisher rows (and Semantic, their baseline)")
    parser.add_argument("--quick", action="store_true", help="64 tokens, 1 repeat, no exact Fisher, all at 128 only")
    parser.add_argument("--tiny", action="store_true", help="2-layer models, 16 tokens: checks the script runs (tests)")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--bookkeeping-rounds", type=int, default=5, help="bookkeeping_ms: the median of rounds × repeats calls")
    parser.add_argument("--dataset-models", default="recall,gpt2", help="models of the dataset rows ('' to skip)")
    parser.add_argument("--dataset-prompts", type=int, default=200)
    parser.add_argument("--dataset-memory-prompts", type=int, nargs="*", default=[200, 2000])
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--dataset-memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dataset_memory_child:
        dataset_memory_child(args.dataset_memory_child)
        return
    if args.memory_child:
        architecture, mode, length, size = args.memory_child
        memory_child(architecture, mode, int(length), size)
        return
    args.size = "tiny" if args.tiny else "full"
    if args.quick:
        args.length, args.repeats, args.skip_exact, args.all_lengths = 64, 1, True, [128]
        args.memory_length = 512
    if args.tiny:
        args.length, args.repeats, args.all_lengths, args.memory_length, args.loop_samples = 16, 1, [16], 32, 4
        args.bookkeeping_rounds, args.dataset_prompts, args.dataset_memory_prompts = 1, 12, [8, 24]

    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "transformer_lens": __import__("importlib.metadata").metadata.version("transformer_lens"),
        "model_size": args.size,
    }
    print("machine:", machine)
    architectures = [name for name in args.models.split(",") if name]
    speed = [measure_speed(architecture, args) for architecture in architectures]
    if speed:
        print_rows("speed (seconds, and ratios)", speed)
    skip_memory = args.skip_memory or args.fisher_only
    memory = [] if skip_memory else [measure_memory(a, args.memory_length, args.size) for a in architectures]
    if memory:
        print_rows("peak memory (MB above the loaded model)", memory)
    dataset_models = [name for name in args.dataset_models.split(",") if name] if not args.fisher_only else []
    dataset = [measure_dataset(name, args) for name in dataset_models]
    if dataset and not skip_memory and args.dataset_memory_prompts:
        dataset.append(measure_dataset_memory(args.dataset_memory_prompts))
    if dataset:
        print_rows("dataset runs (run_dataset vs a loop of semantic_scope; peak MB above the loaded model)", dataset)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "speed": speed, "memory": memory, "dataset": dataset}, handle, indent=2)


if __name__ == "__main__":
    main()
