"""Every offline demo runs top to bottom on the bundled models and writes its output."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

DEMOS = Path(__file__).resolve().parent.parent / "demos"
OFFLINE_DEMOS = {
    "political_contrast": [],
    "translation_fisher": [],
    "time_series_temperature": [],
    "scope_vs_attention_heads": [],
    "ground_truth_accuracy": ["--prompts", "1"],
    "components": ["--prompts", "1"],
}


def load_demo(name: str):
    sys.path.insert(0, str(DEMOS))  # demos import their shared helpers as a sibling module
    try:
        spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMOS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(DEMOS))
    return module


@pytest.mark.parametrize("name", sorted(OFFLINE_DEMOS))
def test_offline_demo_runs_and_writes_output(name, tmp_path: Path, capsys):
    assert load_demo(name).main(["--out", str(tmp_path), *OFFLINE_DEMOS[name]]) == 0
    assert any(tmp_path.iterdir())
    assert "wrote" in capsys.readouterr().out


def test_time_series_demo_runs_the_lorenz_series_on_the_bundled_model(tmp_path: Path):
    assert load_demo("time_series_temperature").main(["--out", str(tmp_path), "--series", "lorenz"]) == 0
    assert (tmp_path / "time_series_lorenz.html").exists()


def test_lorenz_series_is_two_digit_and_oscillates():
    values = load_demo("time_series_temperature").lorenz_x(60)
    assert all(10 <= v <= 99 for v in values)
    assert max(values) - min(values) > 10
