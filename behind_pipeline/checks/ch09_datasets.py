"""Checkers for chapter 9's exercises: a collator padding to a multiple, head-and-tail truncation with a batched
``map``, and a stratified split grouped by movie, by hand."""

import math
from functools import cache

import numpy as np
import torch

from behind_pipeline.checks._core import CheckReport, course_tokenizer

# Reviews of different lengths; the checks build batches from them whose longest is and is not a multiple of 8.
COLLATE_TEXTS = [
    "A masterpiece.",
    "Too long, too loud and far too pleased with itself.",
    "Dull.",
    "The cast is wonderful, but the plot falls apart in the last act and never recovers.",
]
MODEL_LIMIT = 512  # the encoder's max_position_embeddings: what padding="max_length" pads to by default


def _features(token_lists, labels, as_tensors=False) -> list[dict]:
    """Rows as a DataLoader hands them to a collator: input_ids, attention_mask, label."""
    make = torch.tensor if as_tensors else list
    return [{"input_ids": make(ids), "attention_mask": make([1] * len(ids)),
             "label": torch.tensor(label) if as_tensors else label} for ids, label in zip(token_lists, labels,
                                                                                          strict=True)]


def padded_to_multiple(token_lists, labels, pad_id: int, multiple: int) -> dict[str, torch.Tensor]:
    """The expected batch: right-padded with ``pad_id`` to the longest length rounded up to ``multiple``."""
    width = math.ceil(max(len(ids) for ids in token_lists) / multiple) * multiple
    return {"input_ids": torch.tensor([list(ids) + [pad_id] * (width - len(ids)) for ids in token_lists]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in token_lists]),
            "labels": torch.tensor(labels)}


def _collate_cases():
    """(description, token lists, labels, pad_id, multiple)."""
    tokenizer = course_tokenizer()
    ids = tokenizer(COLLATE_TEXTS)["input_ids"]
    longest = max(ids, key=len)
    # The longest review cut (its [SEP] kept) to exactly 16 and 10 tokens: at and between multiples of 8 and 4.
    at_boundary, short = [longest[:15] + longest[-1:], ids[0], ids[2]], [longest[:9] + longest[-1:], ids[0], ids[2]]
    pad_id = tokenizer.pad_token_id
    return [
        (f"4 reviews (longest {len(longest)} tokens), multiple 8", ids, [1, 0, 0, 1], pad_id, 8),
        ("3 reviews whose longest is 16 tokens, multiple 8", at_boundary, [1, 0, 1], pad_id, 8),
        ("3 reviews whose longest is 10 tokens, multiple 4", short, [0, 1, 1], pad_id, 4),
        ("4 reviews, multiple 1 (plain dynamic padding)", ids, [1, 1, 0, 0], pad_id, 1),
        ("ids [5, 6, 7] and [8], pad id 99, multiple 4", [[5, 6, 7], [8]], [1, 0], 99, 4),
        (f"4 reviews, multiple 32 (longest {len(longest)})", ids, [1, 0, 1, 0], pad_id, 32),
    ]


def _field(report: CheckReport, result, key: str, where: str) -> torch.Tensor | None:
    """The batch's ``key`` as the tensor it is: a list, or a tensor of another dtype than the library's, fails."""
    try:
        value = result[key]
    except Exception:  # not a dict, or the key is missing
        hint = " (DataCollatorWithPadding renames the rows' `label` to `labels`)" if key == "labels" else ""
        report.fail(f"{where}: the batch has no {key!r}{hint}")
        return None
    if not isinstance(value, torch.Tensor):
        report.fail(f"{where}: {key} is a {type(value).__name__}, not a tensor: a model takes tensors; stack the "
                    "padded rows with torch.tensor(...), as DataCollatorWithPadding(return_tensors='pt') does")
        return None
    if value.dtype != torch.long:
        report.fail(f"{where}: {key} is a {value.dtype} tensor, DataCollatorWithPadding gives torch.int64: ids, "
                    "mask and labels are integers (an embedding layer refuses float ids, the loss float labels)")
        return None
    return value


def check_pad_to_multiple(pad_to_multiple) -> CheckReport:
    """``pad_to_multiple(features, pad_id, multiple)``: DataCollatorWithPadding(pad_to_multiple_of=multiple)."""
    from transformers import DataCollatorWithPadding

    report = CheckReport("A collator that pads to a multiple of 8")
    tokenizer = course_tokenizer()
    for where, token_lists, labels, pad_id, multiple in _collate_cases():
        expected = padded_to_multiple(token_lists, labels, pad_id, multiple)
        if pad_id == tokenizer.pad_token_id:  # the library is the reference wherever it can be
            library = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple, return_tensors="pt")
            expected = {key: library(_features(token_lists, labels))[key] for key in expected}
        for as_tensors in (False, True):
            kind = "tensors" if as_tensors else "lists"
            result = report.call(pad_to_multiple, _features(token_lists, labels, as_tensors), pad_id, multiple,
                                 name="pad_to_multiple")
            if result is Ellipsis:
                return report
            fields = {key: _field(report, result, key, f"{where}, rows as {kind}") for key in expected}
            if any(value is None for value in fields.values()):
                return report
            wanted = expected["input_ids"].shape[1]
            if fields["input_ids"].shape != expected["input_ids"].shape:
                width = fields["input_ids"].shape[-1] if fields["input_ids"].dim() == 2 else None
                longest = max(len(ids) for ids in token_lists)
                if width == MODEL_LIMIT:
                    why = "you padded to 512, the model's limit: pad to the batch's longest, rounded up"
                elif width == longest:
                    why = f"that is the longest row ({longest}): round it up to a multiple of {multiple}"
                elif multiple != 8 and width == math.ceil(longest / 8) * 8:
                    why = f"that is a multiple of 8; round up to the `multiple` argument ({multiple})"
                elif width == wanted + multiple:
                    why = f"{longest} rounded up is {wanted}: a length that is already a multiple needs no extra block"
                else:
                    why = f"expected {wanted}: the longest row ({longest}) rounded up to a multiple of {multiple}"
                report.fail(f"{where}: input_ids has shape {tuple(fields['input_ids'].shape)}; {why}")
                return report
            for key, value in expected.items():
                if fields[key].shape != value.shape or not torch.equal(fields[key], value):
                    hint = {"input_ids": f"real ids first, then pad id {pad_id} (right padding)",
                            "attention_mask": "1 on real tokens, 0 on padding",
                            "labels": "the rows' labels in order"}[key]
                    report.fail(f"{where}, rows as {kind}: {key} is {fields[key].tolist()}, expected "
                                f"{value.tolist()} ({hint})")
                    return report
        report.ok(f"{where}: width {wanted}, equal to "
                  + ("DataCollatorWithPadding" if pad_id == tokenizer.pad_token_id else "right padding by hand")
                  + ", rows as lists or tensors")
    return report


# Reviews of many lengths (test reviews, the longest ones included), and texts shorter than any limit.
HEAD_TAIL_EXTRA_TEXTS = ["", "Great.", "An un-be-liev-ably overwrought melodrama!!!"]
HEAD_TAIL_CASES = ((32, 8), (20, 0), (24, 22))  # (max_length, head): head 0 keeps the tail only, 22 the head only
HEAD_TAIL_BATCH_SIZES = (1, 7, 1000)


@cache
def _head_tail_texts() -> tuple[str, ...]:
    from behind_pipeline.data import load_rotten_tomatoes

    texts = list(load_rotten_tomatoes()["test"]["text"])
    longest = sorted(texts, key=len)[-3:]  # well over any max_length of the cases
    return tuple(texts[:12] + longest + HEAD_TAIL_EXTRA_TEXTS)


def head_and_tail_ids(ids: list[int], max_length: int, head: int) -> list[int]:
    """The reference: ``[CLS] + first head tokens + last (max_length - head - 2) tokens + [SEP]`` when too long."""
    if len(ids) <= max_length:
        return list(ids)
    body, tail = ids[1:-1], max_length - 2 - head
    return [ids[0], *body[:head], *(body[len(body) - tail:] if tail else []), ids[-1]]


def check_head_and_tail(head_and_tail) -> CheckReport:
    """``ds.map(head_and_tail, batched=True, fn_kwargs=...)``: reviews longer than ``max_length`` keep their
    beginning and their end."""
    import datasets

    report = CheckReport("Head-and-tail truncation with a batched map")
    if not report.answered(head_and_tail, "head_and_tail"):
        return report
    tokenizer = course_tokenizer()
    texts = list(_head_tail_texts())
    full = tokenizer(texts)["input_ids"]
    dataset = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))]})
    for max_length, head in HEAD_TAIL_CASES:
        expected = [head_and_tail_ids(ids, max_length, head) for ids in full]
        for batch_size in HEAD_TAIL_BATCH_SIZES:
            where = f"max_length={max_length}, head={head}, batch_size={batch_size}"
            # A fixed fingerprint: datasets need not hash the learner's function (and warn when it cannot).
            result = report.call(dataset.map, head_and_tail, batched=True, batch_size=batch_size,
                                 fn_kwargs={"max_length": max_length, "head": head},
                                 new_fingerprint=f"check-head-tail-{max_length}-{head}-{batch_size}",
                                 name=f"ds.map(head_and_tail, batched=True), {where}")
            if result is Ellipsis:
                report.fail("with batched=True, batch['text'] is a list of texts, and each column you return "
                            "must be a list too, one value per text")
                return report
            missing = [key for key in ("input_ids", "attention_mask") if key not in result.column_names]
            if missing:
                report.fail(f"{where}: no column {missing[0]!r} (columns: {result.column_names}): return the "
                            "tokenizer's input_ids and attention_mask")
                return report
            ids, mask = [list(row) for row in result["input_ids"]], [list(row) for row in result["attention_mask"]]
            if any(not isinstance(token, int) for row in ids for token in row):
                report.fail(f"{where}: a row of input_ids holds lists, not ids: with batched=True, batch['text'] is "
                            "a list of texts; return one list of ids per text")
                return report
            if ids != expected:
                wrong = next(i for i, (got, want) in enumerate(zip(ids, expected, strict=True)) if got != want)
                got, want = ids[wrong], expected[wrong]
                if got == full[wrong][:max_length - 1] + full[wrong][-1:] and got != want:
                    why = "that is plain truncation (the head only): keep the last tokens too"
                elif len(got) > max_length:
                    why = f"{len(got)} tokens: at most max_length ({max_length}), [CLS] and [SEP] included"
                elif len(full[wrong]) <= max_length:
                    why = "this review fits in max_length: leave it as the tokenizer gives it"
                elif not got or got[-1] != want[-1] or got[0] != want[0]:
                    why = "keep [CLS] first and [SEP] last: cut the tokens between them"
                elif got[1:1 + head] != want[1:1 + head]:
                    why = f"the first {head} tokens after [CLS] are not the review's first ones"
                else:
                    why = (f"expected the last {max_length - 2 - head} tokens before [SEP] after the head "
                           f"(got {len(got)} tokens, expected {len(want)})")
                report.fail(f"{where}: review {wrong} ({len(full[wrong])} tokens) gets {len(got)} ids; {why}")
                return report
            if mask != [[1] * len(row) for row in expected]:
                report.fail(f"{where}: attention_mask must be 1 for every kept token, one per input_id (nothing "
                            "is padded yet)")
                return report
            if list(result["text"]) != texts or list(result["label"]) != dataset["label"][:]:
                report.fail(f"{where}: the existing columns changed: add the new ones, leave text and label alone")
                return report
    cut = sum(len(ids) > HEAD_TAIL_CASES[0][0] for ids in full)
    report.ok(f"{len(texts)} reviews ({cut} longer than {HEAD_TAIL_CASES[0][0]} tokens), max_length and head "
              f"{', '.join(map(str, HEAD_TAIL_CASES))}, batch sizes {', '.join(map(str, HEAD_TAIL_BATCH_SIZES))}: "
              "head and tail kept, [CLS] and [SEP] too, short reviews as they are")
    return report


# (corpus, test_share, seed): the real corpus, and a made-up one where big movies are fresh and small ones rotten.
SPLIT_CASES = (("corpus", 0.1, 0), ("corpus", 0.2, 1), ("skewed", 0.1, 2), ("skewed", 0.25, 0))
SHARE_TOLERANCE = 0.02  # test share and fresh share within 2 points of the target


@cache
def _split_corpus(name: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if name == "corpus":
        from behind_pipeline.data import load_rotten_tomatoes

        splits = load_rotten_tomatoes()
        return (tuple(movie for split in splits.values() for movie in split["movie_name"]),
                tuple(int(label) for split in splits.values() for label in split["label"]))
    # 30 movies of 20-59 reviews, mostly fresh, and 300 of 2-7 reviews, mostly rotten: a split that picks movies
    # at random without looking at labels lands far from the overall balance.
    generator = np.random.default_rng(0)
    groups, labels = [], []
    for prefix, count, sizes, fresh in (("big", 30, (20, 60), 0.9), ("small", 300, (2, 8), 0.2)):
        for movie in range(count):
            size = int(generator.integers(*sizes))
            groups += [f"{prefix}-{movie}"] * size
            labels += [int(x) for x in generator.random(size) < fresh]
    return tuple(groups), tuple(labels)


def _indices(report: CheckReport, value, name: str) -> list[int] | None:
    try:
        return [int(index) for index in (value.tolist() if hasattr(value, "tolist") else value)]
    except (TypeError, ValueError):
        report.fail(f"{name} should be a list (or array) of integer indices, got {type(value).__name__}")
        return None


def check_stratified_grouped_split(stratified_grouped_split) -> CheckReport:
    """``stratified_grouped_split(groups, labels, test_share, seed) -> (train_indices, test_indices)``."""
    report = CheckReport("A stratified split grouped by movie")
    for corpus, test_share, seed in SPLIT_CASES:
        groups, labels = _split_corpus(corpus)
        described = "the corpus" if corpus == "corpus" else "a skewed corpus"
        where = f"{described} ({len(labels):,} reviews), test_share={test_share}, seed={seed}"
        result = report.call(stratified_grouped_split, list(groups), list(labels), test_share, seed,
                             name="stratified_grouped_split")
        if result is Ellipsis:
            return report
        try:
            train_value, test_value = result
        except (TypeError, ValueError):
            report.fail(f"{where}: return two lists, (train_indices, test_indices); got {type(result).__name__}")
            return report
        train, test = _indices(report, train_value, "train_indices"), _indices(report, test_value, "test_indices")
        if train is None or test is None:
            return report
        if sorted(train + test) != list(range(len(labels))):
            report.fail(f"{where}: every index 0..{len(labels) - 1} must be in exactly one of the two lists "
                        f"(got {len(train) + len(test):,} indices, {len(set(train + test)):,} distinct)")
            return report
        leaked = {groups[i] for i in train} & {groups[i] for i in test}
        if leaked:
            report.fail(f"{where}: {len(leaked)} movies have reviews in both train and test: assign whole movies "
                        "to one side (a random split of the reviews leaks)")
            return report
        share = len(test) / len(labels)
        if abs(share - test_share) > SHARE_TOLERANCE:
            report.fail(f"{where}: test holds {share:.1%} of the reviews, asked {test_share:.0%} (count reviews, "
                        "not movies)")
            return report
        overall, in_test = np.mean(labels), np.mean([labels[i] for i in test])
        if abs(in_test - overall) > SHARE_TOLERANCE:
            report.fail(f"{where}: test is {in_test:.1%} fresh against {overall:.1%} overall: choose the movies so "
                        "that the label balance is kept (stratified)")
            return report
        report.ok(f"{where}: no shared movie, test {share:.1%} of reviews, {in_test:.1%} fresh (overall "
                  f"{overall:.1%})")
    return report
