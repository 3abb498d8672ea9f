"""Checkers for the exercises of chapter 6 (padding by hand, counting padding, length-sorted batching)."""

import torch

from behind_pipeline.batching import batches_in_order, pad_batch, padding_tokens
from behind_pipeline.checks._core import CheckReport, course_tokenizer

PAD_TEXTS = ["A masterpiece.", "Too long, too loud and far too pleased with itself.", "Dull."]


def _tensor_field(report: CheckReport, result, key: str):
    """``result[key]`` as a tensor, or None with a FIX line saying what is missing."""
    try:
        return torch.as_tensor(result[key])
    except Exception as error:  # not a dict, a missing key, ragged lists: all become messages
        report.fail(f"the result should be a dict with a tensor under {key!r} ({type(error).__name__}: {error})")
        return None


def check_pad_batch(pad_batch_answer) -> CheckReport:
    """``pad_batch(sequences, pad_id) -> {"input_ids", "attention_mask"}``: equal to ``tokenizer.pad``."""
    report = CheckReport("Pad a batch by hand")
    tokenizer = course_tokenizer()
    sequences = tokenizer(PAD_TEXTS)["input_ids"]
    expected = tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
    result = report.call(pad_batch_answer, [list(ids) for ids in sequences], tokenizer.pad_token_id, name="pad_batch")
    if result is Ellipsis:
        return report
    input_ids, mask = _tensor_field(report, result, "input_ids"), _tensor_field(report, result, "attention_mask")
    if input_ids is None or mask is None:
        return report
    if not report.expect(input_ids.shape == expected["input_ids"].shape,
                         f"shape {tuple(input_ids.shape)}: every row padded to the longest sequence",
                         f"input_ids has shape {tuple(input_ids.shape)}, expected "
                         f"{tuple(expected['input_ids'].shape)} (3 rows, as long as the longest)"):
        return report
    if not report.expect(torch.equal(input_ids.long(), expected["input_ids"]),
                         "input_ids equal tokenizer.pad(...): real ids first, pad ids after",
                         f"input_ids differ from tokenizer.pad(...): got {input_ids.tolist()}, expected "
                         f"{expected['input_ids'].tolist()} (pad on the right)"):
        return report
    report.expect(mask.shape == expected["attention_mask"].shape
                  and torch.equal(mask.long(), expected["attention_mask"]),
                  "attention_mask is 1 on real tokens and 0 on padding, as tokenizer.pad(...) gives",
                  f"attention_mask is {mask.tolist()}, expected {expected['attention_mask'].tolist()}")
    other = report.call(pad_batch_answer, [[5, 6, 7], [8]], 99, name="pad_batch")
    if other is not Ellipsis and (other_ids := _tensor_field(report, other, "input_ids")) is not None:
        report.expect(torch.equal(other_ids.long(), pad_batch([[5, 6, 7], [8]], 99)["input_ids"]),
                      "uses the pad_id it is given", f"pad_batch([[5, 6, 7], [8]], 99) gave {other_ids.tolist()}: "
                                                     "fill with pad_id, not a fixed number")
    return report


# (lengths, batches) pairs: batches in dataset order, sorted by length, and uneven sizes.
COUNT_CASES = [
    ([5, 3, 8, 2, 7], [[0, 1], [2, 3], [4]]),
    ([5, 3, 8, 2, 7], [[3, 1], [0, 4], [2]]),
    ([12, 40, 9, 9, 31, 17, 25, 10], [[0, 1, 2], [3, 4, 5], [6, 7]]),
    ([4, 4, 4], [[0, 1, 2]]),
]


def check_count_padding(count_padding) -> CheckReport:
    """``count_padding(lengths, batches) -> int``: pad tokens when each batch is padded to its own longest member."""
    report = CheckReport("Count padding tokens")
    for lengths, batches in COUNT_CASES:
        value = report.call(count_padding, list(lengths), [list(batch) for batch in batches])
        if value is Ellipsis:
            return report
        expected = padding_tokens(lengths, batches)
        if not report.expect(value == expected, f"lengths {lengths}, batches {batches}: {expected} pad tokens",
                             f"lengths {lengths}, batches {batches}: got {value}, expected {expected}"):
            if value == padding_tokens(lengths, batches, pad_to=max(lengths)):
                report.fail("that pads every batch to the longest sequence overall: use each batch's own longest")
            elif value == sum(lengths):
                report.fail("that counts the real tokens: count the pad tokens added to reach the batch's longest")
            return report
    return report


SORT_TEXTS = [f"review {i}" for i in range(11)]
SORT_LENGTHS = [14, 3, 27, 9, 9, 41, 5, 22, 18, 3, 30]


def check_sorted_predictions(predict_sorted) -> CheckReport:
    """``predict_sorted(texts, lengths, batch_size, predict_batch)``: length-sorted batches, results in input order."""
    report = CheckReport("Length-sorted batching, results in the original order")
    calls: list[list[str]] = []

    def predict_batch(batch):
        calls.append(list(batch))
        return [f"prediction for {text}" for text in batch]

    result = report.call(predict_sorted, list(SORT_TEXTS), list(SORT_LENGTHS), 4, predict_batch,
                         name="predict_sorted")
    if result is Ellipsis:
        return report
    index_of = {text: index for index, text in enumerate(SORT_TEXTS)}
    seen = sorted(index_of.get(text, -1) for batch in calls for text in batch)
    if not report.expect(seen == list(range(len(SORT_TEXTS))), "predict_batch saw every text exactly once",
                         f"predict_batch saw these text indices: {seen}; expected each of 0..10 once"):
        return report
    report.expect(all(len(batch) <= 4 for batch in calls), "no batch is larger than batch_size",
                  f"batch sizes {[len(b) for b in calls]} exceed batch_size=4")
    batches = [[index_of[text] for text in batch] for batch in calls]
    # Grouped by length means the batches' length ranges do not overlap (ascending or descending order both do).
    ranges = sorted((min(SORT_LENGTHS[i] for i in batch), max(SORT_LENGTHS[i] for i in batch)) for batch in batches)
    grouped = all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:], strict=False))
    padding = padding_tokens(SORT_LENGTHS, batches)
    unsorted = padding_tokens(SORT_LENGTHS, batches_in_order(len(SORT_LENGTHS), 4))
    report.expect(grouped, f"batches grouped by length: {padding} pad tokens instead of {unsorted} in input order",
                  f"batches mix short and long texts ({padding} pad tokens): sort the indices by length first")
    expected = [f"prediction for {text}" for text in SORT_TEXTS]
    try:
        result = list(result)
    except TypeError:
        report.fail(f"predict_sorted should return a list; got {type(result).__name__}")
        return report
    if not report.expect(result == expected, "results come back in the original order of the texts",
                         "results are not in the original order of the texts"):
        in_batch_order = [f"prediction for {text}" for batch in calls for text in batch]
        if result == in_batch_order:
            report.fail("they are in sorted (batch) order: put each result back at its text's original index")
    return report
