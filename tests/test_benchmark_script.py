"""The benchmark script runs end to end (on 2-layer models) and writes every figure it promises,
so the README's performance table can always be regenerated."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import once_per_suite

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"


@once_per_suite
def test_benchmark_writes_every_ratio(tmp_path):
    output = tmp_path / "figures.json"
    subprocess.run(
        [sys.executable, str(BENCHMARK), "--tiny", "--models", "gpt2", "--json", str(output)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    figures = json.loads(output.read_text())
    speed, memory = figures["speed"][0], figures["memory"][0]
    for key in (
        "semantic_vs_floor", "temperature_vs_floor", "fisher_rank1_vs_semantic", "fisher_rank64_vs_semantic",
        "eigensolve_share_of_fisher_rank1", "peaked_fisher_rank1_vs_semantic", "peaked_fisher_rank64_vs_semantic",
        "peaked_eigensolve_share_of_fisher_rank1", "batch16_throughput_ratio", "all_16_speedup_vs_loop",
        "scope_forward_s", "scope_backward_vector_s", "all_speedup_bound", "fisher_rank64_floor_vs_semantic",
        "confident_fisher_rank1_vs_semantic", "confident_eigensolve_share_of_fisher_rank1",
        "component_vs_semantic", "ig_evaluation_vs_semantic", "ig_adaptive_s",
    ):
        assert math.isfinite(speed[key]) and speed[key] > 0, key
    assert abs(speed["peaked_entropy_nats"] - 3.3) < 0.05
    assert speed["peaked_unembedding_scale"] > 1
    assert abs(speed["confident_gap"] / 1e-6 - 1) < 0.01
    assert memory["semantic_vs_floor"] > 0 and memory["fisher_rank8_vs_floor"] > 0
    assert speed["ig_fixed32_evaluations"] == 34  # 32 Gauss–Legendre nodes and both ends, one engine call
    assert speed["ig_adaptive_evaluations"] >= 34 and speed["ig_adaptive_rounds"] >= 1
    assert speed["ig_adaptive_relative_gap"] <= 0.01 and 0 < speed["ig_adaptive_smallest_alpha"] < 0.25
    assert figures["machine"]["model_size"] == "tiny"
    # A scope's bookkeeping: its time beyond its own forward, logits and backward, timed inside the same calls.
    assert 0 < speed["bookkeeping_min_ms"] <= speed["bookkeeping_ms"] < 1000 * speed["semantic_s"]
    # ... and, apart from it, freeing each forward pass's graph after its backward pass.
    assert 0 < speed["graph_release_ms"] < 1000 * speed["semantic_s"]
    recall, gpt2, growth = figures["dataset"]
    assert [recall["model"], gpt2["model"], growth["model"]] == ["recall (dataset)", "gpt2 (dataset)", "recall (dataset run)"]
    for row in (recall, gpt2):
        assert row["dataset_prompts"] == 12
        assert row["dataset_run_vs_loop"] == row["dataset_loop_s"] / row["dataset_run_s"] > 0
    assert growth["dataset_8_peak_mb"] >= 0 and growth["dataset_24_peak_mb"] >= 0
