"""Ground-truth accuracy: how often does an attribution rank the true source token first?

On the bundled tasks the token an answer is read from is known (:mod:`jscopes_tl.models.tasks`),
so an attribution method can be checked directly rather than through a proxy such as AOPC:
for every held-out prompt, rank the context tokens (``candidate_indices``) by the method's score
and count a hit when the top-ranked one is a true source (``source_indices``).

Scorers compared are those of the faithfulness table (:func:`jscopes_tl.faithfulness.builtin_scorers`:
the Semantic Scope of the gold token, Fisher at rank 1, Temperature, gradient × input and
Integrated Gradients on ``log p(answer)``, random) plus the last layer's attention from the
prediction position (mean over heads), the attribution people often read off a model first.
All share the faithfulness scorers' signature ``(model, tokens [pos], answer_id) -> scores [pos]``
(or a :class:`~jscopes_tl.faithfulness.ScorerOutput` holding them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from jaxtyping import Float, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.faithfulness import ScorerOutput, builtin_scorers
from jscopes_tl.models.tasks import LabelledPrompt, Task, get_task

Scorer = Callable[[Any, Int[torch.Tensor, " pos"], int], Union[Float[torch.Tensor, " pos"], ScorerOutput]]


def last_layer_attention_scorer(model: Any, tokens: Int[torch.Tensor, " pos"], answer: int) -> Float[torch.Tensor, " pos"]:
    """The last layer's attention from the final position to every token, averaged over heads."""
    return ModelAdapter(model).attention_patterns(tokens)[-1, :, -1].mean(dim=0)


def scorers(seed: int = 0) -> dict[str, Scorer]:
    """Every scorer compared, by name (the faithfulness scorers and last-layer attention).

    Example:
        >>> from jscopes_tl.models.ground_truth import scorers
        >>> sorted(scorers())
        ['fisher', 'gradient_x_input', 'integrated_gradients', 'last_layer_attention', 'random', 'semantic', 'temperature']
    """
    return {**builtin_scorers(seed), "last_layer_attention": last_layer_attention_scorer}


SCORER_NAMES = tuple(scorers())


@dataclass(frozen=True)
class GroundTruthAccuracy:
    """Top-1 ground-truth accuracy of each scorer on one task's held-out prompts.

    ``chance`` is the expected accuracy of a uniformly random ranking; ``model_accuracy`` the
    fraction of prompts the model itself answers correctly.

    Example:
        >>> from jscopes_tl.models.ground_truth import ground_truth_accuracy
        >>> from jscopes_tl.models.ground_truth import scorers
        >>> report = ground_truth_accuracy(model, "recall", n_prompts=3, scorers_by_name={"random": scorers()["random"]})
        >>> report.task, report.n_prompts, report.hits
        ('recall', 3, {'random': [False, True, False]})
    """

    task: str
    n_prompts: int
    accuracy: dict[str, float]
    chance: float
    model_accuracy: float
    hits: dict[str, list[bool]] = field(repr=False, default_factory=dict)


def top_source_hits(scores: Float[torch.Tensor, "batch pos"], prompts: Sequence[LabelledPrompt]) -> list[bool]:
    """Per prompt: is the highest-scoring candidate token one of the true sources?"""
    hits = []
    for row, prompt in zip(scores, prompts):
        candidates = torch.tensor(prompt.candidate_indices)
        top = int(candidates[row[candidates].float().argmax()])
        hits.append(top in prompt.source_indices)
    return hits


def prompt_token_ids(model: Any, prompt: LabelledPrompt) -> Int[torch.Tensor, " pos"]:
    """The prompt's tokens (BOS first) as ids of the model's tokenizer, exactly as labelled."""
    return torch.tensor(model.tokenizer.convert_tokens_to_ids(prompt.tokens))


def ground_truth_accuracy(
    model: Any,
    task: str | Task,
    *,
    n_prompts: int = 200,
    seed: int = 0,
    scorers_by_name: dict[str, Scorer] | None = None,
    progress: bool = False,
) -> GroundTruthAccuracy:
    """How often each scorer ranks a true source token first, on ``n_prompts`` held-out prompts.

    ``scorers_by_name`` defaults to :func:`scorers` (every scorer compared); ``progress`` shows a
    progress bar over the prompts (stderr).

    Example:
        >>> from jscopes_tl.models.ground_truth import ground_truth_accuracy
        >>> from jscopes_tl.models.ground_truth import scorers
        >>> report = ground_truth_accuracy(model, "recall", n_prompts=5, scorers_by_name={"semantic": scorers()["semantic"]})
        >>> report.accuracy, round(report.chance, 3), report.model_accuracy
        ({'semantic': 0.8}, 0.153, 1.0)
    """
    from tqdm.auto import tqdm

    task = get_task(task) if isinstance(task, str) else task
    chosen = scorers(seed) if scorers_by_name is None else scorers_by_name
    adapter = ModelAdapter(model)
    prompts = task.labelled_prompts(n_prompts, seed=seed)
    hits: dict[str, list[bool]] = {name: [] for name in chosen}
    correct = 0
    for prompt in tqdm(prompts, desc=f"ground truth ({task.name})", unit="prompt", disable=not progress):
        tokens = prompt_token_ids(model, prompt)
        answer = int(model.tokenizer.convert_tokens_to_ids(prompt.answer))
        for name, scorer in chosen.items():
            output = scorer(model, tokens, answer)
            scores = output.scores if isinstance(output, ScorerOutput) else output
            hits[name] += top_source_hits(scores[None], [prompt])
        with torch.no_grad():
            correct += int(adapter.forward(tokens[None])[0, -1].argmax()) == answer
    chance = sum(
        len(set(p.source_indices) & set(p.candidate_indices)) / len(p.candidate_indices) for p in prompts
    ) / n_prompts
    return GroundTruthAccuracy(
        task=task.name,
        n_prompts=n_prompts,
        accuracy={name: sum(values) / n_prompts for name, values in hits.items()},
        chance=chance,
        model_accuracy=correct / n_prompts,
        hits=hits,
    )


def format_table(reports: Sequence[GroundTruthAccuracy]) -> str:
    """A Markdown table: one row per scorer, one column per task."""
    names = list(reports[0].accuracy)
    header = "| scorer | " + " | ".join(f"{r.task} (n={r.n_prompts})" for r in reports) + " |"
    lines = [header, "|---|" + "---:|" * len(reports)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r.accuracy[name]:.2f}" for r in reports) + " |")
    lines.append("| *chance* | " + " | ".join(f"{r.chance:.2f}" for r in reports) + " |")
    lines.append("| *model answers correctly* | " + " | ".join(f"{r.model_accuracy:.2f}" for r in reports) + " |")
    return "\n".join(lines)
