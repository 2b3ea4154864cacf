"""Synthetic tasks whose correct attribution is known, for the bundled models.

Each task writes sequences in a small, closed vocabulary of words, one word one token, so a
token's index in the prompt is known exactly. A :class:`LabelledPrompt` carries
the prompt, the answer and the index (or indices) of the *source* token(s) the answer is read
from, which is what a faithful attribution should rank first:

* ``recall`` (key–value recall): ``a=3 b=7 c=1 b=`` → ``7``. Each pair is one token and the
  query another (``<bos> a=3 b=7 c=1 b=``); the source is the queried pair (``b=7`` at index 2
  here, counting the BOS token as 0).
* ``induction`` (copying a repeated random sequence): ``cat sun map ... cat sun`` → ``map``.
  The source is the answer's occurrence in the first copy.
* ``periodic`` (an in-context periodic series, the paper's time-series case in miniature):
  ``51 , 73 , 28 , 51 , 73 , 28 , 51 ,`` → ``73``. The sources are the earlier values at the
  same phase; the primary one lies one period back.

The query at the end of a prompt (the key ``b=``, the current word, the latest value) is causal
by construction too, so attributions are ranked over ``candidate_indices``: the context the answer
has to be found in (the pairs, the first copy, the values before the latest one).

Training sequences (:meth:`Task.training_batches`) come with a loss mask that is 1 exactly where
the next token is determined by the context, so the models learn the rule, not the noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

BOS_TOKEN = "<bos>"
KEYS = tuple("abcdefghijklmnopqrstuvwxyz")
DIGITS = tuple(str(d) for d in range(10))
WORDS = (
    "cat dog sun map cup hat pen box car bus key egg ice jam kit log net owl pig rat "
    "sea tea toy van web yak zip ant bag bed bee cow fan fig fox gem hen ink jar leg "
    "lip mug nut oak pea pot ram rug saw ski tap tin tub urn wax wig axe bat bow"
).split()
NUMBERS = tuple(f"{n:02d}" for n in range(100))


@dataclass(frozen=True)
class LabelledPrompt:
    """One evaluation prompt with its known answer and the token(s) the answer comes from.

    Indices count tokens of the prompt as the model sees it, the BOS token being index 0.

    Example:
        >>> labelled = models.get_task("recall").labelled_prompts(1)[0]
        >>> labelled.tokens[labelled.source_indices[0]], labelled.answer     # the answer comes from this token
        ('p=1', '1')
    """

    text: str
    tokens: list[str]  # the prompt's words, BOS first
    answer: str
    source_indices: tuple[int, ...]  # where the answer is read from; the first is the primary one
    candidate_indices: tuple[int, ...]  # the context an attribution is ranked over

    @property
    def prediction_position(self) -> int:
        return len(self.tokens) - 1


class Task:
    """A synthetic sequence task: its vocabulary, training batches and labelled prompts.

    Example:
        >>> task = models.get_task("periodic")
        >>> labelled = task.labelled_prompts(1)[0]
        >>> labelled.tokens[-4:], labelled.answer
        (['81', ',', '77', ','], '52')
    """

    name: str
    vocabulary: tuple[str, ...]

    def sample(self, rng: random.Random) -> tuple[list[str], list[bool]]:
        """A training sequence (BOS first) and, per token, whether the *next* token is determined.

        Example:
            >>> import random
            >>> tokens, determined = models.get_task("recall").sample(random.Random(0))
            >>> tokens[:3], len(tokens) == len(determined)
            (['<bos>', 'y=5', 'n=9'], True)
        """
        raise NotImplementedError

    def labelled_prompt(self, rng: random.Random) -> LabelledPrompt:
        raise NotImplementedError

    @staticmethod
    def _prompt(words: list[str], answer: str, sources: list[int], candidates: list[int]) -> LabelledPrompt:
        return LabelledPrompt(
            text=" ".join(words[1:]),  # the model's tokenizer adds the BOS token
            tokens=words,
            answer=answer,
            source_indices=tuple(sources),
            candidate_indices=tuple(candidates),
        )

    def labelled_prompts(self, n: int, seed: int = 0) -> list[LabelledPrompt]:
        """``n`` held-out prompts (training uses seeds from a different stream).

        Example:
            >>> [p.answer for p in models.get_task("recall").labelled_prompts(3)]
            ['1', '7', '8']
        """
        rng = random.Random(f"{self.name}-eval-{seed}")
        return [self.labelled_prompt(rng) for _ in range(n)]

    def training_batches(
        self, word_to_id: dict[str, int], batch_size: int, seed: int
    ) -> Iterator[tuple[Int[torch.Tensor, "batch pos"], Float[torch.Tensor, "batch pos"]]]:
        """Endless right-padded batches of (token ids, loss mask on the next-token prediction).

        Example:
            >>> task = models.get_task("recall")
            >>> vocabulary = model.tokenizer.get_vocab()
            >>> tokens, mask = next(task.training_batches(vocabulary, batch_size=4, seed=0))
            >>> tokens.shape == mask.shape, tokens.shape[0]              # [batch, pos]
            (True, 4)
        """
        rng = random.Random(f"{self.name}-train-{seed}")
        pad = word_to_id[BOS_TOKEN]
        while True:
            samples = [self.sample(rng) for _ in range(batch_size)]
            length = max(len(words) for words, _ in samples)
            tokens = torch.full((batch_size, length), pad, dtype=torch.long)
            mask = torch.zeros(batch_size, length)
            for row, (words, determined) in enumerate(samples):
                tokens[row, : len(words)] = torch.tensor([word_to_id[w] for w in words])
                mask[row, : len(words)] = torch.tensor(determined, dtype=torch.float)
            yield tokens, mask


class KeyValueRecall(Task):
    """``a=3 b=7 ... b=`` → ``7``: recall the value bound to a key seen once before.

    A pair such as ``b=7`` is one token and a query such as ``b=`` another, so the source of the
    answer is exactly one token: the queried pair.
    """

    name = "recall"
    vocabulary = (
        BOS_TOKEN,
        *(f"{key}=" for key in KEYS),
        *(f"{key}={digit}" for key in KEYS for digit in DIGITS),
        *DIGITS,
    )
    min_pairs, max_pairs = 3, 10
    max_queries = 2 * max_pairs  # many queries per training sequence: the loss is only taken there

    def sample(self, rng: random.Random) -> tuple[list[str], list[bool]]:
        # Distinct pairs, then queries each followed by its answer: every answer is determined.
        keys = rng.sample(KEYS, rng.randint(self.min_pairs, self.max_pairs))
        values = {key: rng.choice(DIGITS) for key in keys}
        queries = [rng.choice(keys) for _ in range(rng.randint(1, self.max_queries))]
        words = [BOS_TOKEN, *(f"{key}={values[key]}" for key in keys)]
        determined = [False] * len(words)
        for key in queries:
            words += [f"{key}=", values[key]]
            determined += [True, False]
        return words, determined

    def labelled_prompt(self, rng: random.Random) -> LabelledPrompt:
        keys = rng.sample(KEYS, rng.randint(self.min_pairs, self.max_pairs))
        values = {key: rng.choice(DIGITS) for key in keys}
        query = rng.choice(keys)
        words = [BOS_TOKEN, *(f"{key}={values[key]}" for key in keys), f"{query}="]
        candidates = list(range(1, len(keys) + 1))
        return self._prompt(words, values[query], [1 + keys.index(query)], candidates)


class Induction(Task):
    """A random sequence of distinct words, repeated: the next word is known from the first copy."""

    name = "induction"
    vocabulary = (BOS_TOKEN, *WORDS)
    min_length, max_length = 6, 20

    def sample(self, rng: random.Random) -> tuple[list[str], list[bool]]:
        sequence = rng.sample(WORDS, rng.randint(self.min_length, self.max_length))
        repeat = sequence[: rng.randint(2, len(sequence))]
        words = [BOS_TOKEN, *sequence, *repeat]
        # Predicting the second copy's token i+1 from its token i is determined from i >= 0 on.
        determined = [False] * (1 + len(sequence)) + [True] * (len(repeat) - 1) + [False]
        return words, determined

    def labelled_prompt(self, rng: random.Random) -> LabelledPrompt:
        sequence = rng.sample(WORDS, rng.randint(self.min_length, self.max_length))
        copied = rng.randint(1, len(sequence) - 1)  # words of the second copy already in the prompt
        words = [BOS_TOKEN, *sequence, *sequence[:copied]]
        source = 1 + copied  # the answer's index in the first copy
        candidates = list(range(1, 1 + len(sequence)))
        return self._prompt(words, sequence[copied], [source], candidates)


class PeriodicSeries(Task):
    """Comma-separated 2-digit values of a noisy-looking wave with period ``P``, repeated exactly.

    Values within one period are distinct, so the next value is determined by the phase.
    """

    name = "periodic"
    vocabulary = (BOS_TOKEN, ",", *NUMBERS)
    min_period, max_period = 3, 8

    def _pattern(self, rng: random.Random) -> list[str]:
        period = rng.randint(self.min_period, self.max_period)
        while True:
            level, amplitude, phase = rng.uniform(30, 70), rng.uniform(10, 28), rng.uniform(0, 2 * math.pi)
            values = [
                int(round(level + amplitude * math.sin(2 * math.pi * k / period + phase) + rng.gauss(0, 4)))
                for k in range(period)
            ]
            values = [min(99, max(0, v)) for v in values]
            if len(set(values)) == period:
                return [f"{v:02d}" for v in values]

    def _series(self, rng: random.Random) -> tuple[list[str], int]:
        pattern = self._pattern(rng)
        period = len(pattern)
        n_values = rng.randint(2 * period + 1, 4 * period)  # at least two periods before the answer
        return [pattern[k % period] for k in range(n_values)], period

    @staticmethod
    def _words(values: list[str]) -> list[str]:
        words = [BOS_TOKEN]
        for value in values:
            words += [value, ","]
        return words

    def sample(self, rng: random.Random) -> tuple[list[str], list[bool]]:
        values, period = self._series(rng)
        words = self._words(values)
        # The comma after value k predicts value k+1, determined once a full period has been seen.
        determined = [False] * len(words)
        for k in range(period, len(values) - 1):
            determined[2 + 2 * k] = True
        return words, determined

    def labelled_prompt(self, rng: random.Random) -> LabelledPrompt:
        values, period = self._series(rng)
        answer, values = values[-1], values[:-1]
        words = self._words(values)
        value_index = [1 + 2 * k for k in range(len(values))]
        next_k = len(values)
        same_phase = [value_index[k] for k in range(next_k - period, -1, -period)]
        candidates = value_index[:-1]
        return self._prompt(words, answer, same_phase, candidates)


TASKS: dict[str, Task] = {task.name: task for task in (KeyValueRecall(), Induction(), PeriodicSeries())}


def get_task(name: str) -> Task:
    """The synthetic task of bundled model ``name``: its vocabulary, training data and held-out prompts.

    Example:
        >>> models.get_task("recall").labelled_prompts(1)[0].text
        'p=1 q=3 o=5 c=2 k=9 n=9 l=5 d=0 f=6 h=6 p='
    """

    if name not in TASKS:
        raise KeyError(f"unknown bundled task {name!r}; the bundled tasks are {sorted(TASKS)}.")
    return TASKS[name]
