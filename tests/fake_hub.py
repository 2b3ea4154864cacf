"""An offline Hugging Face hub cache holding a tiny random "gpt2", so the real loaders run end to end.

``HookedTransformer.from_pretrained("gpt2")``, ``TransformerBridge.boot_transformers("gpt2")`` and
``load_pretrained("gpt2")`` resolve a hub name to files through ``huggingface_hub``: with
``HF_HUB_OFFLINE=1`` and a cache that holds ``models--gpt2/snapshots/<commit>/…`` and
``refs/main``, every file is served from the cache, and the loaders' own code runs — config
conversion (TransformerLens 2.18 reads GPT-2's sizes from the cached ``config.json``: only names
containing "llama" or "gemma" get hard-coded configs instead), weight conversion, tokenizer loading,
weight processing — up to the one thing missing here: the download of a file not in the cache
(with an empty cache the same calls stop there: ``tests/test_readme.py``).

The cached model is a 2-layer GPT-2 built from ``transformers.GPT2Config`` with random weights and
random final-norm gains (:func:`jscopes_tl.families.toy_hf_model`), with the BPE tokenizer of the
README's stand-in (``" liberal"`` and ``" conservative"`` are single tokens, as in GPT-2's).

The hub clients read their environment at import, so a process that uses the cache is a fresh
one (:func:`run_python`): the test process's environment is never changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
NAME = "gpt2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40 hex digits: refs/main names the snapshot


@dataclass
class FakeHub:
    home: Path  # HF_HOME
    snapshot: Path  # the cached files of NAME
    saved: Path  # the same model and tokenizer written by save_pretrained to a plain directory
    hf_model: Any  # the float32 Hugging Face model the cache holds
    tokenizer: Any

    def environment(self) -> dict[str, str]:
        """The environment of a process that must read the cache and nothing else."""
        environment = {
            name: value for name, value in os.environ.items()
            if not name.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
        }
        return dict(
            environment, HF_HOME=str(self.home), HF_HUB_CACHE=str(self.home / "hub"), HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1",
        )


def build(root: Path) -> FakeHub:
    """Write the cache (and a save_pretrained directory of the same model) under ``root``."""
    from jscopes_tl.families import toy_hf_model
    from jscopes_tl.toy import toy_tokenizer

    tokenizer = toy_tokenizer(vocab_size=1000)
    hf_model = toy_hf_model(NAME, vocab_size=len(tokenizer))
    hf_model.config.architectures = [type(hf_model).__name__]  # what a checkpoint's config.json says
    repository = root / "hub" / f"models--{NAME.replace('/', '--')}"
    snapshot = repository / "snapshots" / COMMIT
    saved = root / "my-model"
    for directory in (snapshot, saved):
        hf_model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(COMMIT)
    return FakeHub(root, snapshot, saved, hf_model, tokenizer)


def run_python(hub: FakeHub, arguments: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <arguments>`` in a fresh process that sees only the fake cache."""
    return subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, env=hub.environment(), cwd=cwd, timeout=timeout
    )
