"""Chapter 6: hand-built padding equals the tokenizer's, batching never changes logits, checkers grade fairly."""

import pytest
import torch

from behind_pipeline.batching import (
    batches_in_order,
    length_sorted_batches,
    pad_batch,
    padding_tokens,
    predict_logits,
    seconds_per_example,
)
from behind_pipeline.checks.ch06_batching import check_count_padding, check_pad_batch, check_sorted_predictions

SAMPLE = 256  # test reviews run through the classifier: enough to mix short and long ones, quick on 2 cores


@pytest.fixture(scope="module")
def test_texts(splits):
    return list(splits["test"]["text"])


@pytest.fixture(scope="module")
def test_lengths(tokenizer, test_texts):
    return [len(ids) for ids in tokenizer(test_texts)["input_ids"]]


def test_pad_batch_equals_tokenizer_pad_on_the_test_split(tokenizer, test_texts):
    for batch in batches_in_order(len(test_texts), 64):
        ids = tokenizer([test_texts[i] for i in batch])["input_ids"]
        expected = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        padded = pad_batch(ids, tokenizer.pad_token_id)
        assert torch.equal(padded["input_ids"], expected["input_ids"])
        assert torch.equal(padded["attention_mask"], expected["attention_mask"])


def test_padding_count_equals_zeros_in_the_tokenizer_masks(tokenizer, test_texts, test_lengths):
    for batches in (batches_in_order(len(test_texts), 32), length_sorted_batches(test_lengths, 32)):
        zeros = sum(int((tokenizer([test_texts[i] for i in batch], padding=True, return_tensors="pt")
                         ["attention_mask"] == 0).sum()) for batch in batches)
        assert zeros == padding_tokens(test_lengths, batches)
    in_order = batches_in_order(len(test_texts), 32)
    assert padding_tokens(test_lengths, length_sorted_batches(test_lengths, 32)) < padding_tokens(
        test_lengths, in_order) < padding_tokens(test_lengths, in_order, pad_to=128)


def test_length_sorted_batches_cover_every_index_once(test_lengths):
    batches = length_sorted_batches(test_lengths, 32)
    assert sorted(i for batch in batches for i in batch) == list(range(len(test_lengths)))
    flat = [test_lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat) and all(len(batch) <= 32 for batch in batches)


def test_sorted_batching_gives_the_same_logits_as_one_by_one(tokenizer, classifier, test_texts, test_lengths):
    texts, lengths = test_texts[:SAMPLE], test_lengths[:SAMPLE]
    sorted_logits = predict_logits(classifier, tokenizer, texts, length_sorted_batches(lengths, 32))
    in_order_logits = predict_logits(classifier, tokenizer, texts, batches_in_order(len(texts), 32))
    assert (sorted_logits - in_order_logits).abs().max() < 1e-4
    alone = predict_logits(classifier, tokenizer, texts[:32], batches_in_order(32, 1))
    assert (in_order_logits[:32] - alone).abs().max() < 1e-4


def test_dropping_the_mask_changes_padded_logits(tokenizer, classifier, test_texts):
    encoding = tokenizer(test_texts[:16], padding=True, return_tensors="pt")
    with torch.no_grad():
        masked = classifier(**encoding).logits
        unmasked = classifier(input_ids=encoding["input_ids"]).logits
    assert (masked - unmasked).abs().max() > 1e-2


def test_seconds_per_example_is_positive():
    assert seconds_per_example(lambda batch: sum(map(len, batch)), ["ab"] * 10, 4, repeats=2) > 0


def test_check_pad_batch():
    assert check_pad_batch(pad_batch).passed

    def mask_of_ones(sequences, pad_id):
        padded = pad_batch(sequences, pad_id)
        return {"input_ids": padded["input_ids"], "attention_mask": torch.ones_like(padded["attention_mask"])}

    def left_padded(sequences, pad_id):
        longest = max(map(len, sequences))
        return {"input_ids": torch.tensor([[pad_id] * (longest - len(s)) + list(s) for s in sequences]),
                "attention_mask": torch.tensor([[0] * (longest - len(s)) + [1] * len(s) for s in sequences])}

    def fixed_pad_id(sequences, pad_id):
        return pad_batch(sequences, 0)

    for wrong in (mask_of_ones, left_padded, fixed_pad_id):
        assert not check_pad_batch(wrong).passed, wrong.__name__
    assert "still `...`" in repr(check_pad_batch(...))


def test_check_count_padding():
    assert check_count_padding(padding_tokens).passed
    report = check_count_padding(lambda lengths, batches: padding_tokens(lengths, batches, pad_to=max(lengths)))
    assert not report.passed and "longest sequence overall" in repr(report)
    assert not check_count_padding(lambda lengths, batches: sum(lengths)).passed
    assert "still `...`" in repr(check_count_padding(...))


def _sorted_in_place(texts, lengths, batch_size, predict_batch):
    results = [None] * len(texts)
    for batch in length_sorted_batches(lengths, batch_size):
        for index, result in zip(batch, predict_batch([texts[i] for i in batch]), strict=True):
            results[index] = result
    return results


def test_check_sorted_predictions():
    assert check_sorted_predictions(_sorted_in_place).passed

    def descending(texts, lengths, batch_size, predict_batch):
        return _sorted_in_place(texts, [-n for n in lengths], batch_size, predict_batch)

    assert check_sorted_predictions(descending).passed

    def sorted_order(texts, lengths, batch_size, predict_batch):
        return [r for b in length_sorted_batches(lengths, batch_size) for r in predict_batch([texts[i] for i in b])]

    def never_sorted(texts, lengths, batch_size, predict_batch):
        return [r for b in batches_in_order(len(texts), batch_size) for r in predict_batch([texts[i] for i in b])]

    report = check_sorted_predictions(sorted_order)
    assert not report.passed and "original index" in repr(report)
    assert not check_sorted_predictions(never_sorted).passed

    def blank(texts, lengths, batch_size, predict_batch):
        ...

    assert not check_sorted_predictions(blank).passed
