"""Checkers for chapter 9's exercises: a collator padding to a multiple, a batched length column and its filter,
and a stratified split grouped by movie."""

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
    try:
        value = result[key]
    except Exception:  # not a dict, or the key is missing
        hint = " (DataCollatorWithPadding renames the rows' `label` to `labels`)" if key == "labels" else ""
        report.fail(f"{where}: the batch has no {key!r}{hint}")
        return None
    return report.tensor(value, f"{where}: {key}", dtype=torch.long)


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


# Texts whose token counts differ from their character and word counts, including the empty review.
LENGTH_EXTRA_TEXTS = ["", "Great.", "An un-be-liev-ably overwrought melodrama!!!"]
LENGTH_BATCH_SIZES = (1, 3, 1000)


@cache
def _length_texts() -> tuple[str, ...]:
    from behind_pipeline.data import load_rotten_tomatoes

    return tuple(list(load_rotten_tomatoes()["test"]["text"])[:9]) + tuple(LENGTH_EXTRA_TEXTS)


def _expected_lengths(texts) -> list[int]:
    return [len(ids) for ids in course_tokenizer()(list(texts))["input_ids"]]


def check_add_n_tokens(add_n_tokens) -> CheckReport:
    """``ds.map(add_n_tokens, batched=True)`` adds ``n_tokens``, the same for every batch size."""
    import datasets

    report = CheckReport("A token-count column with a batched map")
    if not report.answered(add_n_tokens, "add_n_tokens"):
        return report
    texts = list(_length_texts())
    labels = [index % 2 for index in range(len(texts))]
    expected = _expected_lengths(texts)
    dataset = datasets.Dataset.from_dict({"text": texts, "label": labels})
    for batch_size in LENGTH_BATCH_SIZES:
        where = f"map(add_n_tokens, batched=True, batch_size={batch_size})"
        # A fixed fingerprint: datasets need not hash the learner's function (and warn when it cannot).
        result = report.call(dataset.map, add_n_tokens, batched=True, batch_size=batch_size,
                             new_fingerprint=f"check-add-n-tokens-{batch_size}", name=f"ds.{where}")
        if result is Ellipsis:
            report.fail("with batched=True, `batch` maps each column to a list (batch['text'] is a list of texts), "
                        "and each new column must be a list too, one value per text")
            return report
        if "n_tokens" not in result.column_names:
            report.fail(f"{where} added no column `n_tokens` (columns: {result.column_names}): return a dict "
                        "{'n_tokens': [one count per text of the batch]}")
            return report
        if list(result["text"]) != texts or list(result["label"]) != labels:
            report.fail(f"{where} changed the existing columns: add `n_tokens`, leave `text` and `label` as they are")
            return report
        counts = list(result["n_tokens"])
        if counts != expected:
            if counts == [len(text) for text in texts]:
                why = "those are characters: count the tokenizer's input_ids"
            elif counts == [len(text.split()) for text in texts]:
                why = "those are words: count the tokenizer's input_ids (word pieces)"
            elif counts == [n - 2 for n in expected]:
                why = "[CLS] and [SEP] are missing: count them, the model sees them"
            elif counts == [len(texts[start:start + batch_size]) for start in range(0, len(texts), batch_size)
                            for _ in texts[start:start + batch_size]]:
                why = ("every row got the number of texts in its batch: with batched=True, batch['text'] is a list "
                       "of texts; return one count per text")
            else:
                why = f"expected {expected}"
            report.fail(f"{where}: n_tokens is {counts}; {why}")
            return report
    report.ok(f"n_tokens equals the tokenizer's count for {len(texts)} texts, empty one included, with batch sizes "
              f"{', '.join(map(str, LENGTH_BATCH_SIZES))}")
    return report


def check_keep_up_to(keep_up_to) -> CheckReport:
    """``keep_up_to(ds, max_tokens)`` keeps the rows with ``n_tokens <= max_tokens``, as a Dataset, in order."""
    import datasets

    report = CheckReport("Keep the reviews of at most max_tokens tokens")
    texts = list(_length_texts())
    lengths = _expected_lengths(texts)
    dataset = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))],
                                          "n_tokens": lengths})
    middle = sorted(lengths)[len(lengths) // 2]
    for max_tokens in (middle, min(lengths) - 1, max(lengths)):
        where = f"keep_up_to(ds, {max_tokens})"
        result = report.call(keep_up_to, dataset, max_tokens, name="keep_up_to")
        if result is Ellipsis:
            return report
        if not isinstance(result, datasets.Dataset):
            report.fail(f"{where} returned a {type(result).__name__}: return the filtered Dataset (ds.filter(...))")
            return report
        expected = [text for text, n in zip(texts, lengths, strict=True) if n <= max_tokens]
        if result.column_names != dataset.column_names:
            report.fail(f"{where}: columns {result.column_names}, expected {dataset.column_names} (filter keeps "
                        "every column)")
            return report
        kept = list(result["text"])
        if kept != expected:
            strict = [text for text, n in zip(texts, lengths, strict=True) if n < max_tokens]
            why = (f"the reviews of exactly {max_tokens} tokens are missing: keep n_tokens <= max_tokens"
                   if kept == strict else f"expected {len(expected)} reviews, in their original order")
            report.fail(f"{where}: kept {len(kept)} reviews; {why}")
            return report
    report.ok(f"keeps n_tokens <= max_tokens, the boundary included ({middle}), down to an empty result, in order")
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
