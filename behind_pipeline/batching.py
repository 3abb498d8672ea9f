"""Batching by hand: dynamic padding, padding counts, length-sorted and length-grouped batches, timing (chapter 6).

The book's prediction path (:mod:`behind_pipeline.predict`, length-sorted batches) and its training loop
(:mod:`behind_pipeline.training`, length-grouped batches) batch with these functions.
"""

from collections.abc import Callable, Sequence

import torch

from behind_pipeline.runtime import stopwatch


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to the longest one; the attention mask is 1 on real tokens, 0 on padding."""
    longest = max(len(ids) for ids in sequences)
    input_ids = [list(ids) + [pad_id] * (longest - len(ids)) for ids in sequences]
    attention_mask = [[1] * len(ids) + [0] * (longest - len(ids)) for ids in sequences]
    return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(attention_mask)}


def batches_in_order(count: int, batch_size: int) -> list[list[int]]:
    """Indices 0..count-1 cut into consecutive batches, the order a plain loop over a dataset uses."""
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, then cut into batches: neighbours have similar lengths, so little padding.

    ``sorted`` is stable, so texts of equal length keep their original order and the batches are the same on
    every run: ``length_sorted_batches([5, 2, 9, 2], 2) -> [[1, 3], [0, 2]]``.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                           group_factor: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length texts, for training: little padding, yet every batch a random draw.

    Sorting the whole split would give every epoch the same batches, from shortest to longest, which trains
    badly. Instead: shuffle, cut the shuffled order into groups of ``group_factor * batch_size`` texts, sort each
    group by length, cut it into batches, then shuffle the order of all batches. Trainer's ``group_by_length=True``
    sorts within random groups ("megabatches", at most 50 batches each) in the same way; it keeps each group's
    batches together, longest first, where this function also shuffles them.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    group_size = group_factor * batch_size
    batches = []
    for start in range(0, len(order), group_size):
        group = sorted(order[start:start + group_size], key=lambda index: lengths[index])
        batches += [group[first:first + batch_size] for first in range(0, len(group), batch_size)]
    return [batches[index] for index in torch.randperm(len(batches), generator=generator).tolist()]


def padding_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]], pad_to: int | None = None) -> int:
    """Pad tokens added when each batch is padded to ``pad_to`` (fixed length) or, if None, to its longest member."""
    total = 0
    for batch in batches:
        target = pad_to if pad_to is not None else max(lengths[index] for index in batch)
        total += sum(target - lengths[index] for index in batch)
    return total


def tokens_computed(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Positions the model computes when each batch is padded to its longest member: real tokens plus pad tokens.

    ``tokens_computed([5, 2, 9, 2], [[1, 3], [0, 2]]) -> 2 * 2 + 2 * 9 = 22`` (18 real tokens, 4 pads).
    """
    return sum(len(batch) * max(lengths[index] for index in batch) for batch in batches)


def fastest_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """Wall time of the fastest of ``repeats`` calls of ``run()``.

    Other programs on the machine can only make a run slower, never faster, so the fastest run is the best
    estimate of what the work itself costs; a mean would average in whatever else was running.
    """
    best = float("inf")
    for _ in range(repeats):
        with stopwatch() as elapsed:
            run()
        best = min(best, elapsed())
    return best
