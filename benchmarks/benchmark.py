"""Speed and memory of Jacobian Scopes, as ratios to a plain forward+backward pass in the same run.

    .venv/bin/python benchmarks/benchmark.py                 # GPT-2-small- and Llama-sized models
    .venv/bin/python benchmarks/benchmark.py --quick         # shorter prompts, fewer repeats
    .venv/bin/python benchmarks/benchmark.py --json out.json

Models have random weights (no download) at realistic sizes: GPT-2 small (12 layers, d_model
768, 50,257-token vocabulary) and a Llama-style model of similar size (12 layers, d_model 768,
grouped-query attention, 32,000 tokens). The floor is what any gradient attribution needs: one
forward pass and ``loss.backward()`` on one logit. Every scope is reported as a ratio to it, so
the figures transfer across machines; absolute seconds are printed too. Peak memory is measured
in a fresh subprocess per configuration (resident set size above the loaded model).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

warnings.filterwarnings("ignore")

from jscopes_tl import fisher_scope, semantic_scope, temperature_scope  # noqa: E402
from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available  # noqa: E402
from jscopes_tl.fisher import fisher_eigenpairs  # noqa: E402


def build_model(architecture: str) -> Any:
    """A randomly initialised model of GPT-2-small size (TransformerBridge or HookedTransformer)."""
    torch.manual_seed(0)
    if hooked_transformer_available():
        from jscopes_tl.adapter import hooked_transformer_from_config

        common = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, n_ctx=2048, default_prepend_bos=False)
        if architecture == "gpt2":
            config = dict(common, d_vocab=50257, d_mlp=3072, act_fn="gelu_new", normalization_type="LN")
        else:
            config = dict(
                common, d_vocab=32000, d_mlp=2048, act_fn="silu", normalization_type="RMS",
                positional_embedding_type="rotary", gated_mlp=True, n_key_value_heads=4,
            )
        return hooked_transformer_from_config(config)
    import transformers

    from jscopes_tl.adapter import bridge_from_hf_model

    if architecture == "gpt2":
        config = transformers.GPT2Config(n_positions=2048)
    else:
        config = transformers.LlamaConfig(
            vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
        )
    return bridge_from_hf_model(transformers.AutoModelForCausalLM.from_config(config))


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


def random_tokens(model: Any, n_prompts: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, ModelAdapter(model).d_vocab, (n_prompts, length), generator=generator)


def measure_speed(architecture: str, args: argparse.Namespace) -> dict[str, Any]:
    model = build_model(architecture)
    adapter = ModelAdapter(model)
    length, repeats = args.length, args.repeats
    tokens = random_tokens(model, 1, length)
    row: dict[str, Any] = {"model": architecture, "tokens": length}

    with torch.no_grad():
        row["forward_s"] = best_time(lambda: model(tokens), repeats)
    row["forward_backward_s"] = floor = best_time(forward_backward(model, tokens), repeats)
    report(row, "forward_s", "forward_backward_s")

    scopes: dict[str, Callable[[], Any]] = {
        "semantic": lambda: semantic_scope(model, tokens[0]),
        "temperature": lambda: temperature_scope(model, tokens[0]),
        "fisher_rank1": lambda: fisher_scope(model, tokens[0], rank=1),
        "fisher_rank8": lambda: fisher_scope(model, tokens[0], rank=8),
        "fisher_rank64": lambda: fisher_scope(model, tokens[0], rank=64),
    }
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

    # The eigen-solve alone, on this model's own predictive distribution at the last position.
    logits = model(tokens)[0, -1].detach()
    probabilities = torch.softmax(logits.float(), -1)
    W_U = adapter.W_U.detach()
    row["fisher_eigensolve_rank1_s"] = best_time(lambda: fisher_eigenpairs(W_U, probabilities, 1, tail_mass=1e-6), repeats)
    row["eigensolve_share_of_fisher_rank1"] = row["fisher_eigensolve_rank1_s"] / row["fisher_rank1_s"]
    report(row, "fisher_eigensolve_rank1_s", "eigensolve_share_of_fisher_rank1")

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


def report(row: dict[str, Any], *keys: str) -> None:
    """Progress on stderr as figures come in (the tables are printed at the end)."""
    figures = ", ".join(f"{key}={row[key]:.3f}" for key in keys)
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


def memory_child(architecture: str, mode: str, length: int) -> None:
    """Run in a fresh process: print the resident-set growth of one run above the loaded model."""
    model = build_model(architecture)
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


def measure_memory(architecture: str, length: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": architecture, "tokens": length}
    for mode in ("floor", "semantic", "fisher_rank8"):
        output = subprocess.run(
            [sys.executable, __file__, "--memory-child", architecture, mode, str(length)],
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
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--all-lengths", type=int, nargs="*", default=[128, 512])
    parser.add_argument("--loop-samples", type=int, default=16)
    parser.add_argument("--memory-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-exact", action="store_true", help="skip exact Fisher (d_model backward vectors)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="64 tokens, 1 repeat, no exact Fisher, all at 128 only")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        architecture, mode, length = args.memory_child
        memory_child(architecture, mode, int(length))
        return
    if args.quick:
        args.length, args.repeats, args.skip_exact, args.all_lengths = 64, 1, True, [128]
        args.memory_length = 512

    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "transformer_lens": __import__("importlib.metadata").metadata.version("transformer_lens"),
    }
    print("machine:", machine)
    architectures = args.models.split(",")
    speed = [measure_speed(architecture, args) for architecture in architectures]
    print_rows("speed (seconds, and ratios)", speed)
    memory = [] if args.skip_memory else [measure_memory(a, args.memory_length) for a in architectures]
    if memory:
        print_rows("peak memory (MB above the loaded model)", memory)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "speed": speed, "memory": memory}, handle, indent=2)


if __name__ == "__main__":
    main()
