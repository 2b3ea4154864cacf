"""Train the bundled models: ``python -m jscopes_tl.models.train [recall induction periodic]``.

Each model is a 2-layer GPT-2 (``GPT2LMHeadModel``, d_model 64, 4 heads, no dropout) trained
from scratch with AdamW on sequences drawn from its task (:mod:`jscopes_tl.models.tasks`), the
loss taken only where the next token is determined by the context. Everything is seeded and runs
on a CPU in a few minutes; the script writes the model, its tokenizer and ``training.json``
(steps, seconds, held-out accuracy on prompts from a separate random stream) into
``jscopes_tl/models/<name>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from jscopes_tl.models.files import TRAINING_RECORD, model_directory, word_tokenizer
from jscopes_tl.models.tasks import TASKS, LabelledPrompt, Task, get_task

SEED = 0
N_HELD_OUT = 1000
TRAINING_STEPS = {"recall": 2000, "induction": 3000, "periodic": 3000}
ARCHITECTURE = dict(n_layer=2, n_embd=64, n_head=4)


def gpt2_config(task: Task, vocab_size: int) -> Any:
    import transformers

    return transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_ctx=128,  # read by TransformerLens 2.x's config conversion (GPT-2's own config.json has it)
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **ARCHITECTURE,
    )


@torch.no_grad()
def held_out_accuracy(hf_model: torch.nn.Module, tokenizer: Any, prompts: list[LabelledPrompt]) -> float:
    """Fraction of prompts whose argmax next token is the answer (the HF model, one by one)."""
    correct = 0
    for prompt in prompts:
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(prompt.tokens)])
        predicted = hf_model(ids).logits[0, -1].argmax()
        correct += int(tokenizer.convert_ids_to_tokens(int(predicted)) == prompt.answer)
    return correct / len(prompts)


def train(name: str, *, steps: int | None = None, out: Path | None = None, log_every: int = 500) -> dict[str, Any]:
    """Train one bundled model and save it; returns the training record."""
    import transformers

    task = get_task(name)
    steps = steps or TRAINING_STEPS[name]
    out = out or model_directory(name)
    torch.manual_seed(SEED)
    tokenizer = word_tokenizer(task)
    model = transformers.GPT2LMHeadModel(gpt2_config(task, len(tokenizer)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = steps // 20

    def learning_rate_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, learning_rate_factor)
    vocabulary = tokenizer.get_vocab()
    batches = task.training_batches(vocabulary, batch_size=64, seed=SEED)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        tokens, mask = next(batches)
        logits = model(tokens).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        loss = (losses * mask[:, :-1]).sum() / mask[:, :-1].sum()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"{name}: step {step:5d}  loss {loss.item():.4f}", file=sys.stderr)
    seconds = time.perf_counter() - started
    model.eval()
    accuracy = held_out_accuracy(model, tokenizer, task.labelled_prompts(N_HELD_OUT, seed=SEED))
    record = {
        "task": name,
        "seed": SEED,
        "steps": steps,
        "batch_size": 64,
        "training_seconds": round(seconds, 1),
        "held_out_prompts": N_HELD_OUT,
        "held_out_accuracy": accuracy,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out)
    (out / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _portable_tokenizer_config(directory: Path) -> None:
    """Name the tokenizer class that transformers 4.x and 5.x both know (5.x writes its own
    ``TokenizersBackend``, which 4.x cannot load)."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(TASKS), help=f"models to train (default: all of {sorted(TASKS)})")
    parser.add_argument("--steps", type=int, help="training steps (default: per model)")
    parser.add_argument("--out", type=Path, help="output directory (one model only); default: the package")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in TASKS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(TASKS)}")
    if args.out and len(args.names) != 1:
        parser.error("--out needs exactly one model name")
    for name in args.names:
        record = train(name, steps=args.steps, out=args.out)
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
