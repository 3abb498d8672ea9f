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
    check_head_and_tail,
    check_pad_to_multiple,
    check_stratified_grouped_split,
    head_and_tail_ids,
    padded_to_multiple,
)
from behind_pipeline.data import movie_bucket
from behind_pipeline.splits import group_majority_predictions, halves_by_group, shared_groups

from checker_asserts import assert_accepted, assert_rejected


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


def returns_float_tensors(features, pad_id, multiple=8):
    return {key: value.float() for key, value in pad_to_multiple(features, pad_id, multiple).items()}


def returns_lists(features, pad_id, multiple=8):
    return {key: value.tolist() for key, value in pad_to_multiple(features, pad_id, multiple).items()}


def float_labels_only(features, pad_id, multiple=8):
    batch = pad_to_multiple(features, pad_id, multiple)
    return batch | {"labels": batch["labels"].float()}


def breaks_on_tensor_rows(features, pad_id, multiple=8):
    if isinstance(features[0]["input_ids"], torch.Tensor):
        raise TypeError("expected lists")
    return pad_to_multiple(features, pad_id, multiple)


def test_check_pad_to_multiple():
    assert check_pad_to_multiple(pad_to_multiple).passed
    messages = {pads_to_512: "512", pads_to_the_longest: "round it up", adds_a_block_at_the_boundary: "no extra block",
                pads_on_the_left: "right padding", pads_with_zero: "pad id 99", keeps_the_label_key: "`labels`",
                mask_of_ones: "0 on padding", rounds_to_eight_whatever_the_multiple: "`multiple` argument",
                breaks_on_tensor_rows: "TypeError", returns_float_tensors: "torch.float32",
                returns_lists: "not a tensor", float_labels_only: "labels is a torch.float32"}
    for wrong, message in messages.items():
        assert_rejected(check_pad_to_multiple(wrong), message)
    assert_rejected(check_pad_to_multiple(...), "still `...`")
    assert_rejected(check_pad_to_multiple(lambda features, pad_id, multiple: None), "returned None")
    assert not check_pad_to_multiple(lambda features, pad_id, multiple: [1, 2, 3]).passed


def test_head_and_tail_ids_keeps_both_ends():
    ids = [101, *range(1, 21), 102]  # [CLS], 20 tokens, [SEP]
    assert head_and_tail_ids(ids, 8, 2) == [101, 1, 2, 17, 18, 19, 20, 102]
    assert head_and_tail_ids(ids, 8, 0) == [101, 15, 16, 17, 18, 19, 20, 102]
    assert head_and_tail_ids(ids, 8, 6) == [101, 1, 2, 3, 4, 5, 6, 102]
    assert head_and_tail_ids(ids, 22, 3) == ids  # fits: unchanged


@pytest.fixture(scope="module")
def head_tail_answers():
    from behind_pipeline.checks._core import course_tokenizer

    tokenizer = course_tokenizer()

    def columns(rows):
        return {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}

    def head_and_tail(batch, max_length, head):
        rows = []
        for ids in tokenizer(batch["text"])["input_ids"]:
            if len(ids) > max_length:
                ids = ids[:1 + head] + ids[len(ids) - 1 - (max_length - 2 - head):]
            rows.append(ids)
        return columns(rows)

    def plain_truncation(batch, max_length, head):
        encoding = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}

    def loses_sep(batch, max_length, head):
        rows = []
        for ids in tokenizer(batch["text"])["input_ids"]:
            if len(ids) > max_length:
                ids = ids[:1 + head] + ids[len(ids) - 1 - (max_length - 2 - head) - 1:-1]
            rows.append(ids)
        return columns(rows)

    def one_token_too_many(batch, max_length, head):
        rows = []
        for ids in tokenizer(batch["text"])["input_ids"]:
            if len(ids) > max_length:
                ids = ids[:1 + head] + ids[len(ids) - 1 - (max_length - 1 - head):]
            rows.append(ids)
        return columns(rows)

    def cuts_short_reviews_too(batch, max_length, head):
        rows = []
        for ids in tokenizer(batch["text"])["input_ids"]:  # no length test: short reviews get tokens twice
            rows.append(ids[:1 + head] + ids[len(ids) - 1 - (max_length - 2 - head):])
        return columns(rows)

    def written_for_one_row(batch, max_length, head):
        ids = tokenizer(batch["text"])["input_ids"]
        if len(ids) > max_length:
            ids = ids[:1 + head] + ids[len(ids) - 1 - (max_length - 2 - head):]
        return columns([ids])

    def mask_of_wrong_length(batch, max_length, head):
        result = head_and_tail(batch, max_length, head)
        return result | {"attention_mask": [[1] * max_length for _ in result["input_ids"]]}

    def forgets_the_mask(batch, max_length, head):
        return {"input_ids": head_and_tail(batch, max_length, head)["input_ids"]}

    return {"head_and_tail": head_and_tail, "plain_truncation": plain_truncation, "loses_sep": loses_sep,
            "one_token_too_many": one_token_too_many, "cuts_short_reviews_too": cuts_short_reviews_too,
            "written_for_one_row": written_for_one_row, "mask_of_wrong_length": mask_of_wrong_length,
            "forgets_the_mask": forgets_the_mask}


def test_check_head_and_tail(head_tail_answers):
    assert check_head_and_tail(head_tail_answers["head_and_tail"]).passed
    messages = {"plain_truncation": "plain truncation", "loses_sep": "[SEP]", "one_token_too_many": "at most",
                "cuts_short_reviews_too": "fits in max_length", "written_for_one_row": "list of texts",
                "mask_of_wrong_length": "attention_mask", "forgets_the_mask": "no column 'attention_mask'"}
    for name, message in messages.items():
        assert_rejected(check_head_and_tail(head_tail_answers[name]), message)
    assert_rejected(check_head_and_tail(...), "still `...`")


def stratified_grouped_split(groups, labels, test_share, seed):
    folds = StratifiedGroupKFold(n_splits=round(1 / test_share), shuffle=True, random_state=seed)
    train, test = next(folds.split(np.zeros(len(labels)), labels, groups))
    return train.tolist(), test.tolist()


def greedy_stratified_grouped_split(groups, labels, test_share, seed):
    """The solution's way, by hand: move to test, one at a time, the movie that brings it closest to its targets."""
    movies, movie_of = np.unique(np.asarray(groups), return_inverse=True)
    labels = np.asarray(labels)
    fresh = np.bincount(movie_of, weights=labels, minlength=len(movies))
    rotten = np.bincount(movie_of, weights=1 - labels, minlength=len(movies))
    want_fresh, want_rotten = test_share * fresh.sum(), test_share * rotten.sum()
    order = np.random.default_rng(seed).permutation(len(movies))
    in_test = np.zeros(len(movies), dtype=bool)
    while True:
        distance = np.abs(want_fresh - fresh[order]) + np.abs(want_rotten - rotten[order])
        distance[in_test[order]] = np.inf
        if distance.min() >= abs(want_fresh) + abs(want_rotten):
            break
        best = order[np.argmin(distance)]
        in_test[best] = True
        want_fresh, want_rotten = want_fresh - fresh[best], want_rotten - rotten[best]
    return np.flatnonzero(~in_test[movie_of]).tolist(), np.flatnonzero(in_test[movie_of]).tolist()


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
    assert_accepted(check_stratified_grouped_split, stratified_grouped_split, greedy_stratified_grouped_split)
    # GroupShuffleSplit ignores the labels (and its test_size is a share of the movies): the first case already
    # finds the label balance off. The md5 buckets keep the balance but miss the test share on the skewed corpus.
    messages = {splits_reviews_at_random: "both train and test", grouped_without_stratifying: "(stratified)",
                md5_buckets: "count reviews", forgets_some_reviews: "exactly one"}
    for wrong, message in messages.items():
        assert_rejected(check_stratified_grouped_split(wrong), message)
    assert_rejected(check_stratified_grouped_split(...), "still `...`")
    assert_rejected(check_stratified_grouped_split(lambda groups, labels, test_share, seed: 7), "two lists")
