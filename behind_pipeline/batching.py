"""Batching by hand: dynamic padding, padding counts, length-sorted batches and latency per example (chapter 6)."""

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

    ``sorted`` is stable, so reviews of equal length keep their dataset order and the batches are the same on
    every run.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def padding_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]], pad_to: int | None = None) -> int:
    """Pad tokens added when each batch is padded to ``pad_to`` (fixed length) or, if None, to its longest member."""
    total = 0
    for batch in batches:
        target = pad_to if pad_to is not None else max(lengths[index] for index in batch)
        total += sum(target - lengths[index] for index in batch)
    return total


def predict_logits(classifier, tokenizer, texts: Sequence[str], batches: Sequence[Sequence[int]]) -> torch.Tensor:
    """The classifier's logits for ``texts``, batch by batch, each row written back at its text's original index."""
    logits = None
    with torch.no_grad():
        for batch in batches:
            encoding = tokenizer([texts[index] for index in batch], padding=True, return_tensors="pt")
            batch_logits = classifier(**encoding).logits
            if logits is None:
                logits = batch_logits.new_empty(len(texts), batch_logits.shape[-1])
            # Writing by index undoes any reordering, so row i always belongs to texts[i].
            logits[torch.tensor(batch)] = batch_logits
    return logits


def seconds_per_example(run_batch: Callable[[list[str]], object], texts: Sequence[str], batch_size: int,
                        repeats: int = 1) -> float:
    """Wall time to push all ``texts`` through ``run_batch`` in batches of ``batch_size``, divided by their number.

    The best of ``repeats`` runs is kept: other programs can only make a run slower, never faster.
    """
    best = float("inf")
    for _ in range(repeats):
        with stopwatch() as elapsed:
            for start in range(0, len(texts), batch_size):
                run_batch(list(texts[start:start + batch_size]))
        best = min(best, elapsed())
    return best / len(texts)
