"""Where the bundled models live on disk and how their word-level tokenizers are built.

A bundled model is a directory under ``jscopes_tl/models/<name>/`` holding what
``transformers`` saves for a model and a tokenizer (``config.json``, ``model.safetensors``,
``tokenizer.json``, ...) plus ``training.json`` (seed, steps, time, held-out accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jscopes_tl.models.tasks import BOS_TOKEN, Task

MODELS_DIRECTORY = Path(__file__).resolve().parent
UNKNOWN_TOKEN = "<unk>"
TRAINING_RECORD = "training.json"


def model_directory(name: str) -> Path:
    return MODELS_DIRECTORY / name


def word_tokenizer(task: Task) -> Any:
    """A ``PreTrainedTokenizerFast`` with one token per word of the task's vocabulary.

    Words are split on whitespace and punctuation, except that a key–value pair is one word
    (``a=3 b=`` → ``a=3``, ``b=``; ``51,53`` → ``51``, ``,``, ``53``), so text typed with or
    without spaces after commas tokenises as expected.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {word: index for index, word in enumerate((*task.vocabulary, UNKNOWN_TOKEN))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token=UNKNOWN_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+=\w*|\w+|[^\w\s]+"), behavior="isolated")]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        unk_token=UNKNOWN_TOKEN,
    )


def training_record(name: str) -> dict[str, Any]:
    """What the training script recorded for a bundled model (accuracy, steps, seed, time).

    Example:
        >>> record = models.training_record("recall")
        >>> sorted(record)[:4]
        ['batch_size', 'held_out_accuracy', 'held_out_prompts', 'seed']
    """
    return json.loads((model_directory(name) / TRAINING_RECORD).read_text(encoding="utf-8"))
