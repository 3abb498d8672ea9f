"""Chapter 6: hand-built padding equals the tokenizer's, batching never changes logits, checkers grade fairly.

Each checker must accept the reference answer and valid alternatives, reject the typical wrong answers named
below (each named after the mistake it models), and never raise, whatever the learner returns.
"""

import itertools
import math
import random
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from behind_pipeline import batching
from behind_pipeline.batching import (
    batches_in_order,
    fastest_seconds,
    length_sorted_batches,
    pad_batch,
    padding_tokens,
    tokens_computed,
)
from behind_pipeline.checks.ch06_batching import (
    BUDGET_CASES,
    THROUGHPUT_CASES,
    FakeMachine,
    check_left_pad_batch,
    check_throughput,
    check_token_budget_batches,
    fewest_batches,
)
from behind_pipeline.predict import predict_logits

from checker_asserts import assert_accepted, assert_rejected

SAMPLE = 256  # test reviews run through the classifier: enough to mix short and long ones, quick on 2 cores


@pytest.fixture(scope="module")
def test_texts(splits):
    return list(splits["test"]["text"])


@pytest.fixture(scope="module")
def test_lengths(tokenizer, test_texts):
    return [len(ids) for ids in tokenizer(test_texts)["input_ids"]]


# ---------------------------------------------------------------------------------------------------------------
# The chapter's claims


def test_pad_batch_equals_tokenizer_pad_on_the_test_split(tokenizer, test_texts):
    for batch in batches_in_order(len(test_texts), 64):
        ids = tokenizer([test_texts[i] for i in batch])["input_ids"]
        expected = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        padded = pad_batch(ids, tokenizer.pad_token_id)
        assert torch.equal(padded["input_ids"], expected["input_ids"])
        assert torch.equal(padded["attention_mask"], expected["attention_mask"])


def test_padding_count_equals_zeros_in_the_tokenizer_masks(tokenizer, test_texts, test_lengths):
    for batches in (batches_in_order(len(test_texts), 32), length_sorted_batches(test_lengths, 32)):
        masks = [tokenizer([test_texts[i] for i in batch], padding=True, return_tensors="pt")["attention_mask"]
                 for batch in batches]
        assert sum(int((mask == 0).sum()) for mask in masks) == padding_tokens(test_lengths, batches)
        assert sum(mask.numel() for mask in masks) == tokens_computed(test_lengths, batches)
    in_order = batches_in_order(len(test_texts), 32)
    assert padding_tokens(test_lengths, length_sorted_batches(test_lengths, 32)) < padding_tokens(
        test_lengths, in_order) < padding_tokens(test_lengths, in_order, pad_to=128)


def test_tokens_computed_is_real_tokens_plus_padding():
    assert tokens_computed([5, 2, 9, 2], [[1, 3], [0, 2]]) == 22 == 18 + padding_tokens([5, 2, 9, 2], [[1, 3], [0, 2]])


def test_length_sorted_batches_cover_every_index_once(test_lengths):
    batches = length_sorted_batches(test_lengths, 32)
    assert sorted(i for batch in batches for i in batch) == list(range(len(test_lengths)))
    flat = [test_lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat) and all(len(batch) <= 32 for batch in batches)


def test_sorted_batching_gives_the_same_logits_as_in_order_and_one_by_one(tokenizer, classifier, test_texts,
                                                                          test_lengths):
    texts, lengths = test_texts[:SAMPLE], test_lengths[:SAMPLE]
    sorted_logits = predict_logits(classifier, tokenizer, texts, batches=length_sorted_batches(lengths, 32))
    in_order_logits = predict_logits(classifier, tokenizer, texts, batches=batches_in_order(len(texts), 32))
    assert (sorted_logits - in_order_logits).abs().max() < 1e-4
    alone = predict_logits(classifier, tokenizer, texts[:32], batches=batches_in_order(32, 1))
    assert (in_order_logits[:32] - alone).abs().max() < 1e-4


def test_dropping_the_mask_changes_padded_logits(tokenizer, classifier, test_texts):
    encoding = tokenizer(test_texts[:16], padding=True, return_tensors="pt")
    with torch.no_grad():
        masked = classifier(**encoding).logits
        unmasked = classifier(input_ids=encoding["input_ids"]).logits
    assert (masked - unmasked).abs().max() > 1e-2


def test_left_padding_moves_bert_positions_and_right_padding_does_not(tokenizer, classifier, test_texts):
    ids = tokenizer(test_texts[:16])["input_ids"]
    lengths = torch.tensor([len(row) for row in ids])
    right = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    left = tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")
    with torch.inference_mode():
        alone = [classifier.base_model(input_ids=torch.tensor([row])).last_hidden_state[0, 0] for row in ids]
        cls_right = classifier.base_model(**right).last_hidden_state[:, 0]
        cls_left = classifier.base_model(**left).last_hidden_state[torch.arange(16), lengths.max() - lengths]
    alone = torch.stack(alone)
    assert (cls_right - alone).abs().max() < 1e-4
    padded = lengths < lengths.max()
    assert (cls_left[padded] - alone[padded]).abs().max() > 1e-2
    assert (cls_left[~padded] - alone[~padded]).abs().max() < 1e-4


def test_fastest_seconds_keeps_the_fastest_run(monkeypatch):
    durations = iter([3.0, 1.0, 2.0])

    @contextmanager
    def fake_stopwatch():
        duration = next(durations)
        yield lambda: duration

    monkeypatch.setattr(batching, "stopwatch", fake_stopwatch)
    calls = []
    assert fastest_seconds(lambda: calls.append(1), repeats=3) == 1.0
    assert len(calls) == 3


def test_fewest_batches_is_the_fewest_over_every_cut_of_the_sorted_lengths():
    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 20) for _ in range(rng.randint(1, 8)))
        budget = rng.randint(1, 60)
        best = len(lengths)
        for cuts in itertools.product((False, True), repeat=len(lengths) - 1):
            batches, batch = [], [lengths[0]]
            for length, cut in zip(lengths[1:], cuts, strict=True):
                batches, batch = (batches + [batch], [length]) if cut else (batches, batch + [length])
            batches.append(batch)
            if all(len(b) == 1 or len(b) * max(b) <= budget for b in batches):
                best = min(best, len(batches))
        assert fewest_batches(lengths, budget) == best, (lengths, budget)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: batches under a token budget


def token_budget_batches(lengths, max_tokens):
    """The reference answer: length order, each batch filled while its padded size fits the budget."""
    batches, batch = [], []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batch and (len(batch) + 1) * lengths[index] > max_tokens:
            batches.append(batch)
            batch = []
        batch.append(index)
    return batches + [batch] if batch else batches


def longest_first(lengths, max_tokens):
    """Valid alternative: longest texts first, as numpy arrays."""
    batches, batch, longest = [], [], 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        longest = longest or lengths[index]
        if batch and (len(batch) + 1) * longest > max_tokens:
            batches.append(np.array(batch))
            batch, longest = [], lengths[index]
        batch.append(index)
    return batches + [np.array(batch)] if batch else batches


def as_tensors(lengths, max_tokens):
    """Valid alternative: batches as tensors of indices."""
    return [torch.tensor(batch) for batch in token_budget_batches(lengths, max_tokens)]


def budget_on_real_tokens(lengths, max_tokens):
    batches, batch, real = [], [], 0
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batch and real + lengths[index] > max_tokens:
            batches.append(batch)
            batch, real = [], 0
        batch.append(index)
        real += lengths[index]
    return batches + [batch] if batch else batches


def checks_before_adding(lengths, max_tokens):
    """Checks the budget of the batch as it is, before the new text: every batch goes one text over."""
    batches, batch = [], []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batch and len(batch) * lengths[batch[-1]] > max_tokens:
            batches.append(batch)
            batch = []
        batch.append(index)
    return batches + [batch] if batch else batches


def strictly_below_budget(lengths, max_tokens):
    """`<` instead of `<=`: a batch that fills the budget exactly is refused."""
    return token_budget_batches(lengths, max_tokens - 1)


def drops_texts_over_budget(lengths, max_tokens):
    return [[i for i in batch if lengths[i] <= max_tokens] for batch in token_budget_batches(lengths, max_tokens)
            if any(lengths[i] <= max_tokens for i in batch)]


def drops_the_last_batch(lengths, max_tokens):
    return token_budget_batches(lengths, max_tokens)[:-1]


def duplicates_the_last_batch(lengths, max_tokens):
    batches = token_budget_batches(lengths, max_tokens)
    return batches + batches[-1:]


def opens_an_empty_batch(lengths, max_tokens):
    """Closes the current batch before checking whether it holds anything: an empty first batch."""
    batches, batch = [], []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if (len(batch) + 1) * lengths[index] > max_tokens:
            batches.append(batch)
            batch = []
        batch.append(index)
    return batches + [batch]


def in_dataset_order(lengths, max_tokens):
    batches, batch, longest = [], [], 0
    for index in range(len(lengths)):
        if batch and (len(batch) + 1) * max(longest, lengths[index]) > max_tokens:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(index)
        longest = max(longest, lengths[index])
    return batches + [batch] if batch else batches


def fixed_batch_size(lengths, max_tokens):
    return length_sorted_batches(lengths, 4)


def test_check_token_budget_batches_accepts_the_answer_and_valid_alternatives():
    for report in assert_accepted(check_token_budget_batches, token_budget_batches, longest_first, as_tensors):
        assert "same predictions" in repr(report) and "pad tokens" in repr(report), report


@pytest.mark.parametrize("wrong, hint", [
    (budget_on_real_tokens, "the budget is on the padded size"),
    (checks_before_adding, "check the budget with the text you are about to add"),
    (strictly_below_budget, "<=, not <"),
    (drops_texts_over_budget, "dropped"),
    (drops_the_last_batch, "dropped"),
    (duplicates_the_last_batch, "duplicated"),
    (opens_an_empty_batch, "is empty"),
    (in_dataset_order, "batches"),
    (fixed_batch_size, "over the budget"),
])
def test_check_token_budget_batches_rejects_typical_mistakes(wrong, hint):
    assert_rejected(check_token_budget_batches(wrong), hint)


def _fails(answer, lengths, max_tokens) -> bool:
    """Whether an answer breaks a rule on one case: coverage, budget, or more batches than needed."""
    batches = [[int(i) for i in batch] for batch in answer(lengths, max_tokens)]
    if any(not batch for batch in batches):
        return True
    covered = sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    fits = all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens for b in batches)
    return not (covered and fits and len(batches) <= fewest_batches(lengths, max_tokens))


def test_budget_cases_are_sharp_enough_to_expose_each_mistake():
    """The boundary, the real-token and the over-budget cases each catch a mistake that a tame case lets pass."""
    assert not _fails(strictly_below_budget, [8, 9, 10, 11, 12], 100)  # a budget nobody reaches: no difference
    assert _fails(strictly_below_budget, [8] * 12, 32)  # the budget met exactly
    assert not _fails(budget_on_real_tokens, [8] * 12, 32)  # equal lengths: real and padded sizes agree
    assert _fails(budget_on_real_tokens, [3, 10, 3, 10, 3], 20)
    assert all(not _fails(drops_texts_over_budget, lengths, budget) for lengths, budget in BUDGET_CASES[:3])
    assert _fails(drops_texts_over_budget, *BUDGET_CASES[3]) and _fails(opens_an_empty_batch, *BUDGET_CASES[4])
    assert ([8] * 12, 32) in BUDGET_CASES and ([3, 10, 3, 10, 3], 20) in BUDGET_CASES


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: throughput in real tokens per second


def _timed_passes(run_batch, batches, repeats, clock):
    """The seconds each of ``repeats`` whole passes over ``batches`` takes on ``clock``: the timing that the reference
    answer and its mistaken variants (``_with``) share."""
    passes = []
    for _ in range(repeats):
        start = clock()
        for batch in batches:
            run_batch(batch)
        passes.append(clock() - start)
    return passes


def throughput(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
    """The reference answer: time whole passes with the given clock, keep the fastest."""
    seconds = min(_timed_passes(run_batch, batches, repeats, clock))
    real = sum(lengths[index] for batch in batches for index in batch)
    return {"seconds": seconds, "real_tokens": real, "tokens_computed": tokens_computed(lengths, batches),
            "real_tokens_per_second": real / seconds}


def timed_batch_by_batch(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
    """Valid alternative: times each batch, adds them up per pass, returns tensors and numpy numbers."""
    passes = []
    for _ in range(repeats):
        total = 0.0
        for batch in batches:
            start = clock()
            run_batch(batch)
            total += clock() - start
        passes.append(total)
    real = int(np.sum([lengths[i] for batch in batches for i in batch]))
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return {"seconds": torch.tensor(min(passes)), "real_tokens": np.int64(real), "tokens_computed": computed,
            "real_tokens_per_second": real / min(passes)}


def _with(**changes):
    """The reference answer with some fields replaced by what a mistaken answer would compute."""
    def answer(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
        passes = _timed_passes(run_batch, batches, repeats, clock)
        real = sum(lengths[index] for batch in batches for index in batch)
        result = {"seconds": changes.get("seconds", min)(passes), "real_tokens": real,
                  "tokens_computed": tokens_computed(lengths, batches)}
        for key in ("real_tokens", "tokens_computed"):
            if key in changes:
                result[key] = changes[key](lengths, batches)
        result["real_tokens_per_second"] = changes.get("real_tokens_per_second",
                                                       lambda r: r["real_tokens"] / r["seconds"])(result)
        return result
    return answer


mean_of_passes = _with(seconds=lambda passes: sum(passes) / len(passes))
first_pass = _with(seconds=lambda passes: passes[0])
last_pass = _with(seconds=lambda passes: passes[-1])
slowest_pass = _with(seconds=max)
real_tokens_with_padding = _with(real_tokens=tokens_computed)
real_tokens_of_every_length = _with(real_tokens=lambda lengths, batches: sum(lengths))
computed_padded_to_the_longest_of_all = _with(
    tokens_computed=lambda lengths, batches: sum(map(len, batches)) * max(lengths))
computed_without_padding = _with(tokens_computed=lambda lengths, batches: sum(lengths[i] for b in batches for i in b))
per_second_of_computed_tokens = _with(real_tokens_per_second=lambda r: r["tokens_computed"] / r["seconds"])
seconds_per_token = _with(real_tokens_per_second=lambda r: r["seconds"] / r["real_tokens"])


def fastest_batches_from_different_passes(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
    best = [float("inf")] * len(batches)
    for _ in range(repeats):
        for number, batch in enumerate(batches):
            start = clock()
            run_batch(batch)
            best[number] = min(best[number], clock() - start)
    real = sum(lengths[index] for batch in batches for index in batch)
    return {"seconds": sum(best), "real_tokens": real, "tokens_computed": tokens_computed(lengths, batches),
            "real_tokens_per_second": real / sum(best)}


def ignores_the_given_clock(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
    return throughput(run_batch, batches, lengths, repeats, time.perf_counter)


def warms_up_inside(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
    for batch in batches:
        run_batch(batch)
    return throughput(run_batch, batches, lengths, repeats, clock)


def skips_the_last_repeat(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
    return throughput(run_batch, batches, lengths, max(repeats - 1, 1), clock)


def returns_a_tuple(run_batch, batches, lengths, repeats=3, clock=time.perf_counter):
    return tuple(throughput(run_batch, batches, lengths, repeats, clock).values())


def test_check_throughput_accepts_the_answer_and_valid_alternatives():
    assert_accepted(check_throughput, throughput, timed_batch_by_batch)


@pytest.mark.parametrize("wrong, hint", [
    (mean_of_passes, "mean of the passes"),
    (first_pass, "first pass"),
    (last_pass, "last pass"),
    (slowest_pass, "slowest pass"),
    (fastest_batches_from_different_passes, "different passes"),
    (ignores_the_given_clock, "use the clock you are given"),
    (real_tokens_with_padding, "counts the padding"),
    (real_tokens_of_every_length, "only the texts that are in the batches"),
    (computed_padded_to_the_longest_of_all, "its own longest"),
    (computed_without_padding, "len(batch) x its longest"),
    (per_second_of_computed_tokens, "count real tokens only"),
    (seconds_per_token, "seconds per token"),
    (warms_up_inside, "no warm-up"),
    (skips_the_last_repeat, "run_batch was called"),
    (returns_a_tuple, "should be a dict"),
])
def test_check_throughput_rejects_typical_mistakes(wrong, hint):
    assert_rejected(check_throughput(wrong), hint)


def test_throughput_cases_tell_the_estimators_apart():
    """Each wrong way to summarize the passes gives another number than the fastest pass in at least one case."""
    exposed = set()
    for lengths, batches, slowdown in THROUGHPUT_CASES:
        machine = FakeMachine(lengths, batches, slowdown)
        passes = machine.pass_seconds()
        minima = sum(min(machine.cost(p, b) for p in range(len(passes))) for b in range(len(batches)))
        estimates = {"first pass": passes[0], "last pass": passes[-1], "mean": sum(passes) / len(passes),
                     "slowest pass": max(passes), "fastest batch of any pass": minima}
        exposed |= {name for name, value in estimates.items() if not math.isclose(value, min(passes))}
    assert exposed == {"first pass", "last pass", "mean", "slowest pass", "fastest batch of any pass"}


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: left padding that keeps BERT's positions


def left_pad_batch(sequences, pad_id):
    """The reference answer."""
    longest = max(len(ids) for ids in sequences)
    return {
        "input_ids": torch.tensor([[pad_id] * (longest - len(ids)) + list(ids) for ids in sequences]),
        "attention_mask": torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in sequences]),
        "position_ids": torch.tensor([[0] * (longest - len(ids)) + list(range(len(ids))) for ids in sequences]),
    }


def positions_from_the_mask(sequences, pad_id):
    """Valid alternative, as `generate()` numbers positions; pads get position 1 and the result holds lists."""
    padded = left_pad_batch(sequences, pad_id)
    mask = padded["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return {"input_ids": padded["input_ids"].tolist(), "attention_mask": mask.tolist(), "position_ids": positions}


def right_padded(sequences, pad_id):
    padded = pad_batch(sequences, pad_id)
    return {**padded, "position_ids": torch.arange(padded["input_ids"].shape[1]).expand_as(padded["input_ids"])}


def without_position_ids(sequences, pad_id):
    padded = left_pad_batch(sequences, pad_id)
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}


def positions_from_the_left_edge(sequences, pad_id):
    padded = left_pad_batch(sequences, pad_id)
    return {**padded, "position_ids": torch.arange(padded["input_ids"].shape[1]).expand_as(padded["input_ids"])}


def positions_from_one(sequences, pad_id):
    padded = left_pad_batch(sequences, pad_id)
    return {**padded, "position_ids": padded["position_ids"] + padded["attention_mask"]}


def negative_pad_positions(sequences, pad_id):
    padded = left_pad_batch(sequences, pad_id)
    return {**padded, "position_ids": padded["attention_mask"].cumsum(-1) - 1}


def mask_from_the_pad_id(sequences, pad_id):
    padded = left_pad_batch(sequences, pad_id)
    return {**padded, "attention_mask": (padded["input_ids"] != pad_id).long()}


def mask_from_zero(sequences, pad_id):
    padded = left_pad_batch(sequences, pad_id)
    return {**padded, "attention_mask": (padded["input_ids"] != 0).long()}


def pads_with_zero(sequences, pad_id):
    return left_pad_batch(sequences, 0)


def pads_in_place(sequences, pad_id):
    longest = max(map(len, sequences))
    for ids in sequences:
        ids[:0] = [pad_id] * (longest - len(ids))
    return left_pad_batch(sequences, pad_id)


def test_check_left_pad_batch_accepts_the_answer_and_valid_alternatives():
    assert_accepted(check_left_pad_batch, left_pad_batch, positions_from_the_mask)


@pytest.mark.parametrize("wrong, hint", [
    (right_padded, "pads go before the tokens"),
    (without_position_ids, "'position_ids'"),
    (positions_from_the_left_edge, "keep the position it has alone"),
    (positions_from_one, "keep the position it has alone"),
    (negative_pad_positions, "even a pad's"),
    (mask_from_the_pad_id, "also a real token"),
    (mask_from_zero, "marks id 0 as padding"),
    (pads_with_zero, "the pad_id you are given"),
    (pads_in_place, "changed the lists it was given"),
])
def test_check_left_pad_batch_rejects_typical_mistakes(wrong, hint):
    assert_rejected(check_left_pad_batch(wrong), hint)


# ---------------------------------------------------------------------------------------------------------------
# Every checker: a blank stub, a crash and any odd return value become a report, never an exception


def _raises(*args):
    raise RuntimeError("learner bug")


ODD_RESULTS = [None, 3.5, "text", [], [[]], {"input_ids": "x"}, torch.zeros(2, 3, dtype=torch.float64),
               np.arange(4), [[0.5, 1.5]], {"seconds": torch.ones(3)}, [[1, 2], [3]], object()]


@pytest.mark.parametrize("check", [check_token_budget_batches, check_throughput, check_left_pad_batch])
def test_checkers_report_and_never_raise(check):
    assert_rejected(check(...), "still `...`")
    assert_rejected(check(_raises), "RuntimeError: learner bug")
    for odd in ODD_RESULTS:
        report = check(lambda *args, odd=odd: odd)
        assert not report.passed, (check.__name__, odd)
