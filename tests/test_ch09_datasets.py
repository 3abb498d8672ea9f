"""Chapter 9: the grouped split shares no movie, the leakage helpers do what they say, the checkers' references equal
the library, and each checker accepts the right answer, rejects the typical wrong ones (each named after its
mistake) and never raises."""

import math

import numpy as np
import pytest
import torch
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
from transformers import DataCollatorWithPadding

from behind_pipeline.checks.ch09_datasets import (
    check_add_n_tokens,
    check_keep_up_to,
    check_pad_to_multiple,
    check_stratified_grouped_split,
    padded_to_multiple,
)
from behind_pipeline.data import movie_bucket
from behind_pipeline.splits import group_majority_predictions, halves_by_group, shared_groups


def test_the_grouped_split_shares_no_movie_and_a_random_one_shares_almost_all(splits):
    import datasets

    movies = {name: list(split["movie_name"]) for name, split in splits.items()}
    assert not shared_groups(movies["train"], movies["test"])
    assert not shared_groups(movies["train"], movies["validation"])
    reviews = datasets.concatenate_datasets(list(splits.values()))
    shuffled = reviews.train_test_split(test_size=len(splits["test"]), seed=0)
    seen = set(shuffled["train"]["movie_name"])
    assert np.mean([movie in seen for movie in shuffled["test"]["movie_name"]]) > 0.95


def test_group_majority_predictions():
    assert group_majority_predictions(["a", "a", "b"], [1, 1, 0], ["a", "c"]) == [1, 1]
    assert group_majority_predictions(["a", "a", "a", "b", "b"], [0, 0, 1, 1, 1], ["a", "b", "z"]) == [0, 1, 1]
    assert group_majority_predictions(["a", "a"], [1, 0], ["a"]) == [1]  # a tie: the label met first


def test_halves_by_group_cut_every_group_in_two():
    groups = ["x"] * 7 + ["y"] * 4 + ["z"] + ["x"] * 2
    first, second = halves_by_group(groups, seed=3)
    assert sorted(first + second) == list(range(len(groups)))
    for group, size in (("x", 9), ("y", 4), ("z", 1)):
        assert sum(groups[i] == group for i in first) == size // 2
        assert sum(groups[i] == group for i in second) == size - size // 2
    assert halves_by_group(groups, seed=3) == (first, second)
    assert any(halves_by_group(groups, seed=seed) != (first, second) for seed in range(4, 10))


@pytest.mark.parametrize("multiple", [1, 4, 8])
def test_padding_to_a_multiple_by_hand_equals_data_collator_with_padding(tokenizer, splits, multiple):
    texts = list(splits["test"]["text"])[:64]
    encoded = tokenizer(texts)["input_ids"]
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple, return_tensors="pt")
    for start in range(0, len(texts), 8):
        ids, labels = encoded[start:start + 8], list(splits["test"]["label"])[start:start + 8]
        library = collator([{"input_ids": i, "attention_mask": [1] * len(i), "label": y}
                            for i, y in zip(ids, labels, strict=True)])
        mine = padded_to_multiple(ids, labels, tokenizer.pad_token_id, multiple)
        assert library["input_ids"].shape[1] == math.ceil(max(map(len, ids)) / multiple) * multiple
        for key, value in mine.items():
            assert torch.equal(library[key], value), key


# Chapter 9's exercises, solved, and their typical wrong answers.

def pad_to_multiple(features, pad_id, multiple=8):
    rows = [[int(i) for i in feature["input_ids"]] for feature in features]
    width = math.ceil(max(len(row) for row in rows) / multiple) * multiple
    return {"input_ids": torch.tensor([row + [pad_id] * (width - len(row)) for row in rows]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
            "labels": torch.tensor([int(feature["label"]) for feature in features])}


def _padded_to(features, pad_id, width, left=False):
    rows = [[int(i) for i in feature["input_ids"]] for feature in features]
    pads = [[pad_id] * (width - len(row)) for row in rows]
    return {"input_ids": torch.tensor([p + r if left else r + p for r, p in zip(rows, pads, strict=True)]),
            "attention_mask": torch.tensor([[0] * len(p) + [1] * len(r) if left else [1] * len(r) + [0] * len(p)
                                            for r, p in zip(rows, pads, strict=True)]),
            "labels": torch.tensor([int(feature["label"]) for feature in features])}


def pads_to_512(features, pad_id, multiple=8):
    return _padded_to(features, pad_id, 512)


def pads_to_the_longest(features, pad_id, multiple=8):
    return _padded_to(features, pad_id, max(len(f["input_ids"]) for f in features))


def adds_a_block_at_the_boundary(features, pad_id, multiple=8):
    return _padded_to(features, pad_id, (max(len(f["input_ids"]) for f in features) // multiple + 1) * multiple)


def pads_on_the_left(features, pad_id, multiple=8):
    return _padded_to(features, pad_id, math.ceil(max(len(f["input_ids"]) for f in features) / multiple) * multiple,
                      left=True)


def pads_with_zero(features, pad_id, multiple=8):
    return pad_to_multiple(features, 0, multiple)


def keeps_the_label_key(features, pad_id, multiple=8):
    batch = pad_to_multiple(features, pad_id, multiple)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "label": batch["labels"]}


def mask_of_ones(features, pad_id, multiple=8):
    batch = pad_to_multiple(features, pad_id, multiple)
    return batch | {"attention_mask": torch.ones_like(batch["attention_mask"])}


def rounds_to_eight_whatever_the_multiple(features, pad_id, multiple=8):
    return pad_to_multiple(features, pad_id, 8)


def breaks_on_tensor_rows(features, pad_id, multiple=8):
    if isinstance(features[0]["input_ids"], torch.Tensor):
        raise TypeError("expected lists")
    return pad_to_multiple(features, pad_id, multiple)


def test_check_pad_to_multiple():
    assert check_pad_to_multiple(pad_to_multiple).passed
    messages = {pads_to_512: "512", pads_to_the_longest: "round it up", adds_a_block_at_the_boundary: "no extra block",
                pads_on_the_left: "right padding", pads_with_zero: "pad id 99", keeps_the_label_key: "`labels`",
                mask_of_ones: "0 on padding", rounds_to_eight_whatever_the_multiple: "`multiple` argument",
                breaks_on_tensor_rows: "TypeError"}
    for wrong, message in messages.items():
        report = check_pad_to_multiple(wrong)
        assert not report.passed and message in repr(report), (wrong.__name__, repr(report))
    assert "still `...`" in repr(check_pad_to_multiple(...))
    assert "returned None" in repr(check_pad_to_multiple(lambda features, pad_id, multiple: None))
    assert not check_pad_to_multiple(lambda features, pad_id, multiple: [1, 2, 3]).passed


@pytest.fixture(scope="module")
def n_tokens_answers():
    from behind_pipeline.checks._core import course_tokenizer

    tokenizer = course_tokenizer()

    def add_n_tokens(batch):
        return {"n_tokens": [len(ids) for ids in tokenizer(batch["text"])["input_ids"]]}

    def counts_characters(batch):
        return {"n_tokens": [len(text) for text in batch["text"]]}

    def counts_words(batch):
        return {"n_tokens": [len(text.split()) for text in batch["text"]]}

    def forgets_special_tokens(batch):
        return {"n_tokens": [len(ids) for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]}

    def written_for_one_row(row):
        return {"n_tokens": [len(tokenizer(row["text"])["input_ids"])]}

    def returns_a_number_not_a_list(row):
        return {"n_tokens": len(tokenizer(row["text"])["input_ids"])}

    def replaces_the_columns(batch):
        return {"text": batch["text"], "label": [0] * len(batch["text"]), **add_n_tokens(batch)}

    return {"add_n_tokens": add_n_tokens, "counts_characters": counts_characters, "counts_words": counts_words,
            "forgets_special_tokens": forgets_special_tokens, "written_for_one_row": written_for_one_row,
            "returns_a_number_not_a_list": returns_a_number_not_a_list,
            "replaces_the_columns": replaces_the_columns}


def test_check_add_n_tokens(n_tokens_answers):
    assert check_add_n_tokens(n_tokens_answers["add_n_tokens"]).passed
    messages = {"counts_characters": "characters", "counts_words": "words", "forgets_special_tokens": "[CLS]",
                "written_for_one_row": "number of texts in its batch", "replaces_the_columns": "existing columns",
                "returns_a_number_not_a_list": "must be a list too"}
    for name, message in messages.items():
        report = check_add_n_tokens(n_tokens_answers[name])
        assert not report.passed and message in repr(report), (name, repr(report))

    def blank(batch):
        ...

    assert "added no column" in repr(check_add_n_tokens(blank))
    assert "still `...`" in repr(check_add_n_tokens(...))
    report = check_add_n_tokens(lambda batch: {"n_tokens": 3})  # not one value per row: datasets refuses it
    assert not report.passed and "raised" in repr(report)


def keep_up_to(ds, max_tokens):
    return ds.filter(lambda batch: [n <= max_tokens for n in batch["n_tokens"]], batched=True)


def test_check_keep_up_to():
    assert check_keep_up_to(keep_up_to).passed
    strictly_below = check_keep_up_to(lambda ds, max_tokens: ds.filter(lambda row: row["n_tokens"] < max_tokens))
    assert not strictly_below.passed and "exactly" in repr(strictly_below)
    as_list = check_keep_up_to(lambda ds, max_tokens: [row for row in ds if row["n_tokens"] <= max_tokens])
    assert not as_list.passed and "filtered Dataset" in repr(as_list)
    by_characters = check_keep_up_to(lambda ds, max_tokens: ds.filter(lambda row: len(row["text"]) <= max_tokens))
    assert not by_characters.passed
    dropped_column = check_keep_up_to(lambda ds, max_tokens: keep_up_to(ds, max_tokens).remove_columns("label"))
    assert not dropped_column.passed and "columns" in repr(dropped_column)
    assert "still `...`" in repr(check_keep_up_to(...))


def stratified_grouped_split(groups, labels, test_share, seed):
    folds = StratifiedGroupKFold(n_splits=round(1 / test_share), shuffle=True, random_state=seed)
    train, test = next(folds.split(np.zeros(len(labels)), labels, groups))
    return train.tolist(), test.tolist()


def splits_reviews_at_random(groups, labels, test_share, seed):
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = round(test_share * len(labels))
    return order[cut:].tolist(), order[:cut].tolist()


def grouped_without_stratifying(groups, labels, test_share, seed):
    train, test = next(GroupShuffleSplit(n_splits=1, test_size=test_share, random_state=seed).split(
        np.zeros(len(labels)), labels, groups))
    return train, test


def md5_buckets(groups, labels, test_share, seed):
    test = [i for i, group in enumerate(groups) if movie_bucket(group) < round(10 * test_share)]
    return sorted(set(range(len(groups))) - set(test)), test


def forgets_some_reviews(groups, labels, test_share, seed):
    train, test = stratified_grouped_split(groups, labels, test_share, seed)
    return train[:-5], test


def test_check_stratified_grouped_split():
    assert check_stratified_grouped_split(stratified_grouped_split).passed
    # GroupShuffleSplit's test_size is a share of the movies, and it ignores the labels: either may show first.
    messages = {splits_reviews_at_random: ("both train and test",), grouped_without_stratifying: ("stratified",
                "count reviews"), md5_buckets: ("stratified",), forgets_some_reviews: ("exactly one",)}
    for wrong, expected in messages.items():
        report = check_stratified_grouped_split(wrong)
        assert not report.passed and any(message in repr(report) for message in expected), (wrong.__name__,
                                                                                              repr(report))
    assert "still `...`" in repr(check_stratified_grouped_split(...))
    assert "two lists" in repr(check_stratified_grouped_split(lambda groups, labels, test_share, seed: 7))
