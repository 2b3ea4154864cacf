"""Loading models: checkpoints from the hub or a directory, and models built offline.

What this module guarantees:

* :func:`load_pretrained` loads weights *unprocessed* on every TransformerLens generation (a
  TransformerBridge where TransformerLens has one, else a HookedTransformer with every
  processing flag off), so logits and scores match the Hugging Face model.
* Offline, a hub name that is not in the local cache fails at once, with a
  :class:`ModelLoadError` saying how to point at a local copy, instead of after the hub client's
  retries; a cached one loads in offline mode, and the hub flags are given back afterwards.
* A family TransformerLens 2.x cannot convert to a HookedTransformer, or a TransformerLens without
  the class asked for, raises an :class:`~jscopes_tl.errors.UnsupportedModelError` naming the
  alternative.
* Nothing here downloads: the builders take an already-built Hugging Face model or a config.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from jscopes_tl.adapter.offload import execution_device
from jscopes_tl.errors import UnsupportedModelError


def transformer_lens_version() -> str:
    """The installed TransformerLens version, as ``transformer_lens.__version__`` (or the package metadata).

    Example:
        >>> from jscopes_tl.adapter import transformer_lens_version
        >>> transformer_lens_version().split(".")[0]
        '4'
    """

    from importlib.metadata import version

    return version("transformer_lens")


def hooked_transformer_available() -> bool:
    """True where this TransformerLens still ships HookedTransformer (2.x, 3.x; removed in 4.0).

    Example:
        >>> from jscopes_tl.adapter import hooked_transformer_available
        >>> hooked_transformer_available()                     # the docs build on TransformerLens 4.x
        False
    """
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


def _require_hooked_transformer() -> None:
    if not hooked_transformer_available():
        raise UnsupportedModelError(
            f"TransformerLens {transformer_lens_version()} has no HookedTransformer (removed in 4.0); "
            "use a TransformerBridge instead."
        )


def hooked_transformer_from_config(config: dict[str, Any], tokenizer: Any = None, seed: int = 0) -> Any:
    """A HookedTransformer with random weights from ``HookedTransformerConfig(**config)``.

    Example:
        >>> from jscopes_tl.adapter import hooked_transformer_available
        >>> hooked_transformer_available()                     # the docs build on TransformerLens 4.x
        False
        >>> from jscopes_tl.adapter import hooked_transformer_from_config
        >>> hooked_transformer_from_config(dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=10, act_fn="relu"))
        Traceback (most recent call last):
            ...
        UnsupportedModelError: TransformerLens 4.3.0 has no HookedTransformer (removed in ...
    """
    _require_hooked_transformer()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    model = HookedTransformer(HookedTransformerConfig(**config), tokenizer=tokenizer)
    return model.eval()


def bridge_from_hf_model(
    hf_model: torch.nn.Module, tokenizer: Any = None, compatibility_mode: bool = False, model_name: str = "external"
) -> Any:
    """A TransformerBridge around an already-built Hugging Face causal LM (no download);
    ``model_name`` is recorded as ``cfg.model_name``.

    Example:
        >>> from jscopes_tl.families import toy_hf_model
        >>> hf_model = toy_hf_model("gpt2")                    # a tiny random GPT2LMHeadModel, offline
        >>> from jscopes_tl.adapter import bridge_from_hf_model
        >>> bridge = bridge_from_hf_model(hf_model)
        >>> type(bridge).__name__, semantic_scope(bridge, torch.tensor([1, 2, 3])).scores.shape
        ('TransformerBridge', torch.Size([3]))
    """
    try:
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    except ImportError as error:
        raise UnsupportedModelError(
            f"TransformerLens {transformer_lens_version()} has no TransformerBridge builder; "
            "TransformerBridge needs TransformerLens 4.x."
        ) from error
    # cfg.device is where TransformerLens puts the tensors it creates (tokens, patching results). For
    # a model Accelerate dispatched it is the input embedding's execution device, which for an
    # offloaded embedding is not its parameter's (meta), the builder's default.
    placement: dict[str, Any] = {}
    embedding = hf_model.get_input_embeddings() if getattr(hf_model, "hf_device_map", None) else None
    if embedding is not None:
        placement["device"] = execution_device(embedding, embedding.weight)
    bridge = build_bridge_from_module(
        hf_model.eval(), type(hf_model).__name__, hf_config=hf_model.config, tokenizer=tokenizer, model_name=model_name,
        **placement,
    )
    if compatibility_mode:
        bridge.enable_compatibility_mode()
    return bridge


class ModelLoadError(RuntimeError):
    """A pretrained model could not be loaded (most often: offline with no local copy).

    Example:
        >>> from jscopes_tl.adapter import load_pretrained
        >>> load_pretrained("/nonexistent/jscopes-model")                # not a directory, not a hub name
        Traceback (most recent call last):
            ...
        ModelLoadError: no such model directory: '/nonexistent/jscopes-model'.
    """


def load_pretrained(name_or_path: str, *, device: str | None = None) -> Any:
    """A Hugging Face hub name or a local directory of a saved model, as a TransformerLens model.

    The weights are loaded *unprocessed* on every TransformerLens generation, so the logits and
    every scope match the Hugging Face model (and Temperature Scope sees the final norm's gain):
    TransformerLens with TransformerBridge (3.x, 4.x): ``TransformerBridge.boot_transformers``
    (no compatibility mode). TransformerLens 2.x: ``HookedTransformer.from_pretrained_no_processing``
    for hub names it supports, and :func:`hooked_transformer_from_hf_directory` with every
    processing flag off for a local directory. (``HookedTransformer.from_pretrained``'s default
    folds the final norm into ``W_U``, which fixes ``‖y‖`` and makes every Temperature score 0.)

    Before a hub name is looked up, one quick connection probe checks that the hub is reachable
    (no probe when ``HF_HUB_OFFLINE`` is set). Offline, a model missing from the local cache fails
    at once (instead of after the hub client's retries, about half a minute) with a message saying
    how to point at a local copy, and a cached one is loaded in offline mode.

    Example:
        >>> from jscopes_tl.adapter import load_pretrained
        >>> from jscopes_tl.models.files import model_directory
        >>> local = load_pretrained(str(model_directory("recall")))      # a local directory: no download
        >>> torch.allclose(local(prompt), model(prompt), atol=1e-5)        # the same model as models.load
        True
    """
    local = Path(name_or_path).expanduser()
    if local.exists() and not local.is_dir():
        raise ModelLoadError(
            f"{name_or_path!r} is a file; pass the directory that holds the model's config.json."
        )
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelLoadError(
                f"{name_or_path!r} has no config.json, so it is not a saved Hugging Face model "
                "(save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))."
            )
        return _load_transformer_lens_model(str(local), device=device, is_local=True)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"no such model directory: {name_or_path!r}.")
    offline = hub_offline_requested() or not hub_reachable()
    if offline and not _in_hub_cache(name_or_path):
        raise ModelLoadError(
            f"could not load model {name_or_path!r}: the Hugging Face Hub is not reachable from here "
            "(offline) and the model is not in the local cache.\n"
            f"{_LOCAL_COPY_HINT.format(name=name_or_path)}"
        )
    with _hub_offline_mode(offline):
        return _load_transformer_lens_model(name_or_path, device=device, is_local=False)


_LOCAL_COPY_HINT = (
    "Download it where you have internet (e.g. `huggingface-cli download {name} --local-dir ./my-model`) "
    "and pass that directory instead, or point HF_HOME at a cache that already holds it."
)


def _load_transformer_lens_model(source: str, *, device: str | None, is_local: bool) -> Any:
    try:
        if _bridge_builder_available():
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_transformers(source, device=device)
        if is_local:
            return hooked_transformer_from_hf_directory(
                source,
                device=device,
                fold_ln=False,
                center_writing_weights=False,
                center_unembed=False,
                fold_value_biases=False,
            )
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained_no_processing(source, device=device)
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ModelLoadError(
            f"could not load model {source!r}: {type(error).__name__}: {first_line}\n"
            f"{'' if is_local else _LOCAL_COPY_HINT.format(name=source)}"
        ) from error


def hub_offline_requested() -> bool:
    """True when the environment asks the Hugging Face libraries to stay offline.

    Example:
        >>> import os
        >>> from jscopes_tl.adapter import hub_offline_requested
        >>> os.environ["HF_HUB_OFFLINE"] = "1"
        >>> hub_offline_requested()
        True
        >>> del os.environ["HF_HUB_OFFLINE"]
    """
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout_seconds: float = 2.0) -> bool:
    """One TCP connection to the hub endpoint (``HF_ENDPOINT``), no retries.

    Example:
        >>> import os
        >>> from jscopes_tl.adapter import hub_reachable
        >>> os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"          # nothing listens there
        >>> hub_reachable(timeout_seconds=0.5)
        False
        >>> del os.environ["HF_ENDPOINT"]
    """
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except (ImportError, ValueError):  # ValueError: not a valid repo id
        return False


@contextlib.contextmanager
def _hub_offline_mode(offline: bool) -> Iterator[None]:
    """Make the hub clients read only their cache (they read the flag at import, so set both)."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved_environment = os.environ.get("HF_HUB_OFFLINE")
    saved_flag = hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_flag
        if saved_environment is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_environment


def _bridge_builder_available() -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_transformer_from_hf_directory(
    directory: str | Any,
    *,
    hf_model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    device: str | None = None,
) -> Any:
    """A HookedTransformer (TransformerLens 2.x, 3.x) from a local directory of a saved HF causal LM.

    ``HookedTransformer.from_pretrained`` accepts hub names only; this goes the same way by hand:
    TransformerLens's config conversion (which reads ``directory/config.json``), its weight
    conversion for the architecture, and ``load_and_process_state_dict``. The processing flags
    default to ``from_pretrained``'s (LayerNorm folded, writing weights and unembedding centred);
    turn them all off to keep the Hugging Face model's numerics exactly.

    Example:
        >>> from jscopes_tl.adapter import hooked_transformer_available
        >>> hooked_transformer_available()                     # the docs build on TransformerLens 4.x
        False
        >>> from jscopes_tl.adapter import hooked_transformer_from_hf_directory
        >>> from jscopes_tl.models.files import model_directory
        >>> hooked_transformer_from_hf_directory(model_directory("recall"), fold_ln=False)
        Traceback (most recent call last):
            ...
        UnsupportedModelError: TransformerLens 4.3.0 has no HookedTransformer (removed in ...
    """
    _require_hooked_transformer()
    import transformers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    from jscopes_tl import families

    directory = str(directory)
    if hf_model is None:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    if tokenizer is None and (Path(directory) / "tokenizer_config.json").exists():
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    family = families.family_of(hf_model)
    if family is not None and family.hooked_transformer is not None:
        raise UnsupportedModelError(
            f"{type(hf_model).__name__} ({family.name}) cannot be a HookedTransformer: {family.hooked_transformer}. "
            "Use a TransformerBridge (TransformerLens 4.x) instead."
        )
    if family is not None and family.hooked_config is not None:
        config = HookedTransformerConfig(**_processed_config(family.hooked_config(hf_model.config), fold_ln, device))
    else:
        config = loading.get_pretrained_model_config(directory, fold_ln=fold_ln, device=device)
        if family is not None and family.hooked_overrides is not None:
            config = HookedTransformerConfig(**{**config.to_dict(), **family.hooked_overrides(hf_model.config)})
    model = HookedTransformer(config, tokenizer=tokenizer)
    state_dict = loading.get_pretrained_state_dict(directory, config, hf_model)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    return model.eval()


def _processed_config(config: dict[str, Any], fold_ln: bool, device: str | None) -> dict[str, Any]:
    """What ``get_pretrained_model_config`` adds to a family's config dictionary."""
    config = dict(config, device=device, init_weights=False, model_name=config.get("original_architecture", "external"))
    if fold_ln:
        config["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(config["normalization_type"], config["normalization_type"])
    return config


def hooked_transformer_from_hf_model(hf_model: torch.nn.Module, tokenizer: Any = None, **processing: Any) -> Any:
    """A HookedTransformer (TransformerLens 2.x, 3.x) around an already-built Hugging Face causal LM
    (no download): :func:`hooked_transformer_from_hf_directory` on its saved config.
    ``processing``: ``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``
    (default: ``from_pretrained``'s, all on), ``device``.

    Example:
        >>> from jscopes_tl.adapter import hooked_transformer_available
        >>> hooked_transformer_available()                     # the docs build on TransformerLens 4.x
        False
        >>> from jscopes_tl.families import toy_hf_model
        >>> hf_model = toy_hf_model("gpt2")                    # a tiny random GPT2LMHeadModel, offline
        >>> from jscopes_tl.adapter import hooked_transformer_from_hf_model
        >>> hooked_transformer_from_hf_model(hf_model)
        Traceback (most recent call last):
            ...
        UnsupportedModelError: TransformerLens 4.3.0 has no HookedTransformer (removed in ...
    """
    with tempfile.TemporaryDirectory(prefix="jscopes_tl_config_") as directory:
        config = copy.deepcopy(hf_model.config)  # a model built from a config has no architectures yet
        config.architectures = [type(hf_model).__name__]
        config.save_pretrained(directory)
        return hooked_transformer_from_hf_directory(directory, hf_model=hf_model.eval(), tokenizer=tokenizer, **processing)
