"""A run's manifest: its arguments, its dataset, the model it ran and the library versions.

Three parts identify a run and must match for a re-run to resume it: ``run`` (the scope
arguments, batch size included: it fixes the batches, hence the exact floating-point results),
``dataset`` (a fingerprint of the content and the number of rows) and ``model`` (name, family,
dtype, load mode and a SHA-256 of every weight). ``versions`` and ``world_size`` are recorded for
the reader and not compared: a run may be resumed on another number of ranks.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import torch

from jscopes_tl.adapter import ModelAdapter, offloaded_weight_loaders, transformer_lens_version
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.runs.prompts import PromptDataset

FORMAT_NAME = "jscopes_tl.run"
FORMAT_VERSION = 1
IDENTIFYING = ("run", "dataset", "model")


class RunConflictError(ScopeInputError):
    """The output directory holds a run made with other arguments (pass overwrite=True to replace it).

    Example:
        >>> import tempfile
        >>> out_dir = tempfile.mkdtemp()
        >>> _ = run_dataset(model, [prompt], out_dir, kinds="semantic", progress=False)
        >>> run_dataset(model, [prompt], out_dir, kinds="fisher", progress=False)     # overwrite=True replaces it
        Traceback (most recent call last):
            ...
        RunConflictError: out_dir '...' holds a run with other arguments ...
    """


def weight_hash(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer: name, dtype, shape and bytes, in name order. Weights
    Accelerate offloaded are read from where it keeps them, one module at a time (the same hash as
    the model undispatched)."""
    digest = hashlib.sha256()
    offloaded = offloaded_weight_loaders(model)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if not isinstance(tensor, torch.Tensor):
                continue
            if tensor.is_meta and id(tensor) in offloaded:
                tensor = offloaded[id(tensor)]()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            flat = tensor.detach().reshape(-1).contiguous().cpu()
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return "sha256:" + digest.hexdigest()


def model_identity(model: Any, model_name: str | None = None) -> dict[str, Any]:
    """Name, family, dtype, load mode (the numerics every score depends on) and weight hash."""
    adapter = ModelAdapter(model)
    numerics = adapter.numerics(adapter.resid_pre_hook(0)).as_dict()
    return {
        "name": model_name or adapter.model_name,
        "family": adapter.family,
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "load_mode": {
            "compatibility_mode": numerics["compatibility_mode"],
            "final_norm_folded_into_unembed": numerics["final_norm_folded_into_unembed"],
            "unembed_centred": numerics["unembed_centred"],
        },
        "n_parameters": sum(parameter.numel() for parameter in model.parameters()),
        "weight_hash": weight_hash(model),
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"transformer_lens": transformer_lens_version(), "torch": torch.__version__}
    for package in ("jscopes_tl", "pyarrow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "(not installed)"
    return versions


def build_manifest(run: dict[str, Any], data: PromptDataset, model: dict[str, Any], world_size: int) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "run": run,
        "dataset": {"fingerprint": data.fingerprint, "rows": len(data.rows), "source": data.source},
        "model": model,
        "versions": library_versions(),
        "world_size": world_size,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def conflicts(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two manifests' identifying parts, as ``"run.batch_size: 16 → 8"``."""
    if previous.get("format") != FORMAT_NAME:
        return [f"manifest.json is not a {FORMAT_NAME} manifest"]
    # A directory of `jscopes run` records is not one of `jscopes eval` rows: say only that.
    commands = [(manifest.get("run") or {}).get("command", "run") for manifest in (previous, current)]
    if commands[0] != commands[1]:
        return [f"run.command: {commands[0]!r} → {commands[1]!r}"]
    differences = []
    for part in IDENTIFYING:
        old, new = previous.get(part) or {}, current.get(part) or {}
        for key in sorted(set(old) | set(new)):
            if part == "dataset" and key == "source":
                continue  # the same content under another path resumes
            if part == "run" and key == "command":
                continue  # compared above (manifests written before it existed are `run`s)
            if _normalise(old.get(key)) != _normalise(new.get(key)):
                shown_old, shown_new = _shown_apart(old.get(key), new.get(key))
                differences.append(f"{part}.{key}: {shown_old} → {shown_new}")
    return differences


def _normalise(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_normalise(item) for item in value]
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    return value


def _shown_apart(old: Any, new: Any, width: int = 40) -> tuple[str, str]:
    """Two differing values, each cut to ``width`` characters around where they first differ (two
    fingerprints cut to their common prefix would look identical)."""
    texts = [repr(old), repr(new)]
    if max(map(len, texts)) <= width:
        return texts[0], texts[1]
    differ = next((i for i, (a, b) in enumerate(zip(*texts)) if a != b), min(map(len, texts)))
    start = max(0, min(differ - width // 4, max(map(len, texts)) - width))

    def window(text: str) -> str:
        piece = text[start : start + width]
        return ("..." if start > 0 else "") + piece + ("..." if start + width < len(text) else "")

    return window(texts[0]), window(texts[1])
