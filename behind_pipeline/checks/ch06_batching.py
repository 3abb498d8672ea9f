"""Checkers for the exercises of chapter 6: batches under a token budget, throughput in real tokens per second,
and left padding that keeps BERT's positions.

Each checker tries several cases (other sizes, other budgets, other pad ids, limits met exactly), checks every
field on every call, and never raises: whatever the learner returns becomes an ``ok`` or a ``FIX`` line.
"""

import math
import operator
from collections.abc import Mapping
from functools import cache

import torch

from behind_pipeline.batching import batches_in_order, padding_tokens, tokens_computed
from behind_pipeline.checks._core import CheckReport, course_encoder, course_tokenizer, named_mistakes

# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def _batches(report: CheckReport, result, count: int, name: str) -> list[list[int]] | None:
    """The learner's batching as lists of ints (lists, tuples, tensors, NumPy arrays), or None and a FIX line.

    Checks that no batch is empty and that every index 0..count-1 appears exactly once.
    """
    try:
        batches = [[operator.index(index) for index in batch] for batch in result]
    except Exception as error:  # not iterable, floats, strings: all become a message
        report.fail(f"{name} should be a list of batches, each a list of integer indices "
                    f"({type(error).__name__}: {error})")
        return None
    if any(not batch for batch in batches):
        report.fail(f"{name}: batch {next(i for i, b in enumerate(batches) if not b)} is empty: "
                    "start a new batch only when there is a text to put in it")
        return None
    seen = [index for batch in batches for index in batch]
    outside = sorted({index for index in seen if not 0 <= index < count})
    missing = sorted(set(range(count)) - set(seen))
    repeated = sorted({index for index in seen if seen.count(index) > 1})
    if outside or missing or repeated:
        problems = [f"indices outside 0..{count - 1}: {outside}" if outside else "",
                    f"texts left out (dropped): {missing}" if missing else "",
                    f"texts in more than one batch (duplicated): {repeated}" if repeated else ""]
        report.fail(f"{name}: every text must be in exactly one batch; " + "; ".join(p for p in problems if p))
        return None
    return batches


def _grouped_by_length(lengths, batches) -> bool:
    """Batches whose length ranges do not overlap: what sorting by length (ascending or descending) gives."""
    ranges = sorted((min(lengths[i] for i in batch), max(lengths[i] for i in batch)) for batch in batches)
    return all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:], strict=False))


@cache
def _course_classifier():
    """The course classifier in eval mode, loaded once however many times a checker runs."""
    from transformers import AutoModelForSequenceClassification

    from behind_pipeline.models import classifier_id

    return AutoModelForSequenceClassification.from_pretrained(classifier_id()).eval()


@cache
def _test_reviews(count: int) -> tuple[str, ...]:
    from behind_pipeline.data import load_rotten_tomatoes

    return tuple(load_rotten_tomatoes()["test"]["text"][:count])


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: batches under a token budget


def fewest_batches(lengths, max_tokens: int) -> int:
    """How many batches the budget needs when texts are taken in length order and each batch is filled up.

    Filling greedily is optimal for cutting a sorted list: a part of a batch that fits the budget also fits it.
    """
    count, size, longest = 0, 0, 0
    for length in sorted(lengths):
        if size and (size + 1) * max(longest, length) > max_tokens:
            count, size, longest = count + 1, 0, 0
        size, longest = size + 1, max(longest, length)
    return count + (1 if size else 0)


# (lengths, max_tokens): uneven lengths, budgets met exactly, a batch that fits on real tokens but not padded,
# texts longer than the budget (the shortest one too), and a larger sample with two budgets.
BUDGET_CASES = [
    ([12, 40, 9, 9, 31, 17, 25, 10, 40, 8], 80),
    ([8] * 12, 32),  # 4 texts of 8 fill 32 exactly: 3 batches
    ([3, 10, 3, 10, 3], 20),  # 3 + 3 + 3 + 10 real tokens fit in 20, but padded they are 4 x 10 = 40
    ([70, 5, 64, 6], 64),  # 64 fits alone, exactly; 70 is over the budget and gets a batch of its own
    ([90, 65], 64),  # every text over the budget, one of them by a single token: two batches of one
    ([23, 7, 41, 15, 15, 30, 9, 52, 11, 26, 18, 33, 5, 47, 12, 20, 28, 14, 36, 9], 100),
    ([23, 7, 41, 15, 15, 30, 9, 52, 11, 26, 18, 33, 5, 47, 12, 20, 28, 14, 36, 9], 150),
]
REVIEW_COUNT = 48  # test reviews run through the classifier with the learner's batches
REVIEW_BUDGET = 256  # tokens per padded batch for those reviews
REVIEW_BATCH_SIZE = 8  # the fixed-size, dataset-order batching the budget is compared with


def _budget_case(report: CheckReport, token_budget_batches, lengths: list[int], max_tokens: int):
    """Check one call on every property; return the batches, or None after a FIX line."""
    shown = (f"lengths {lengths}" if len(lengths) <= 12 else
             f"{len(lengths)} lengths from {min(lengths)} to {max(lengths)}")
    where = f"{shown}, max_tokens={max_tokens}"
    result = report.call(token_budget_batches, list(lengths), max_tokens, name="token_budget_batches")
    if result is Ellipsis:
        return None
    batches = _batches(report, result, len(lengths), where)
    if batches is None:
        return None
    for number, batch in enumerate(batches):
        longest = max(lengths[i] for i in batch)
        padded = len(batch) * longest
        if padded <= max_tokens or len(batch) == 1:
            continue
        real = sum(lengths[i] for i in batch)
        shorter = sorted(lengths[i] for i in batch)[:-1]
        why = [f"{len(batch)} x {longest} = {padded} padded tokens"]
        if real <= max_tokens:
            why.append(f"it holds only {real} real tokens, but the budget is on the padded size")
        if len(shorter) * shorter[-1] <= max_tokens:
            why.append("without its longest text it fits: check the budget with the text you are about to add "
                       "(it may be the batch's new longest)")
        report.fail(f"{where}: batch {number} {[lengths[i] for i in batch]} is over the budget: " + "; ".join(why))
        return None
    if not _grouped_by_length(lengths, batches):
        report.fail(f"{where}: batches mix short and long texts ({[[lengths[i] for i in b] for b in batches]}): "
                    "sort the indices by length first")
        return None
    fewest = fewest_batches(lengths, max_tokens)
    if len(batches) > fewest:
        exactly = fewest_batches(lengths, max_tokens - 1) == len(batches)
        report.fail(f"{where}: {len(batches)} batches where {fewest} do: fill each batch as far as the budget allows"
                    + (" (a batch of exactly max_tokens is allowed: <=, not <)" if exactly else ""))
        return None
    report.ok(f"{where}: {len(batches)} batches, each within the budget (or one text alone), every text once, "
              "grouped by length")
    return batches


def check_token_budget_batches(token_budget_batches) -> CheckReport:
    """``token_budget_batches(lengths, max_tokens)``: batches of indices, each at most ``max_tokens`` once padded."""
    report = CheckReport("Batches under a token budget")
    for lengths, max_tokens in BUDGET_CASES:
        if _budget_case(report, token_budget_batches, lengths, max_tokens) is None:
            return report
    from behind_pipeline.predict import predict_logits

    tokenizer, classifier = course_tokenizer(), _course_classifier()
    texts = list(_test_reviews(REVIEW_COUNT))
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    batches = _budget_case(report, token_budget_batches, lengths, REVIEW_BUDGET)
    if batches is None:
        return report
    try:
        logits = predict_logits(classifier, tokenizer, texts, batches=batches)
    except Exception as error:  # should not happen once the batches passed, but a checker never raises
        report.fail(f"predict_logits(..., batches=your batches) raised {type(error).__name__}: {error}")
        return report
    reference = predict_logits(classifier, tokenizer, texts)
    diff = (logits - reference).abs().max().item()
    report.expect(diff < 1e-4 and torch.equal(logits.argmax(-1), reference.argmax(-1)),
                  f"{REVIEW_COUNT} test reviews through predict_logits with your batches: the same predictions "
                  "as the default path",
                  f"{REVIEW_COUNT} test reviews: logits differ from the default path by {diff:.1e}")
    pads = padding_tokens(lengths, batches)
    in_order = padding_tokens(lengths, batches_in_order(len(texts), REVIEW_BATCH_SIZE))
    report.expect(pads < in_order,
                  f"{pads} pad tokens in {len(batches)} batches, against {in_order} in dataset order "
                  f"(batches of {REVIEW_BATCH_SIZE})",
                  f"{pads} pad tokens, not fewer than the {in_order} of dataset order (batches of "
                  f"{REVIEW_BATCH_SIZE}): sort by length first")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: throughput in real tokens per second


class FakeMachine:
    """A clock and a ``run_batch`` for the throughput checker: time passes only while a batch runs.

    Pass ``p`` of batch ``b`` takes ``slowdown[p][b] * tokens computed * 1 ms``, so the checker knows the time of
    every pass exactly, whatever the learner's computer is doing.
    """

    def __init__(self, lengths, batches, slowdown):
        self.lengths, self.batches, self.slowdown = lengths, [tuple(batch) for batch in batches], slowdown
        self.now = 1000.0  # a clock's zero is arbitrary: only differences mean something
        self.calls: list[tuple] = []
        self.strangers: list = []

    def clock(self) -> float:
        return self.now

    def cost(self, pass_index: int, position: int) -> float:
        return self.slowdown[pass_index][position] * tokens_computed(self.lengths, [self.batches[position]]) / 1000

    def run_batch(self, batch) -> None:
        try:
            key = tuple(operator.index(index) for index in batch)
        except Exception:  # a batch we cannot read is recorded, not raised on
            key = None
        pass_index = len(self.calls) // len(self.batches)
        self.calls.append(key)
        if key not in self.batches:
            self.strangers.append(batch)
            self.now += 0.001  # time still passes, so a learner's division by the time cannot fail
        elif pass_index >= len(self.slowdown):
            self.now += tokens_computed(self.lengths, [key]) / 1000  # calls beyond the passes asked for
        else:
            self.now += self.cost(pass_index, self.batches.index(key))

    def pass_seconds(self) -> list[float]:
        return [sum(self.cost(p, b) for b in range(len(self.batches))) for p in range(len(self.slowdown))]


# (lengths, batches, slowdown per pass and batch). The fastest pass is neither the first nor the last in case 1,
# the last in case 2; the fastest batches come from different passes; case 2 leaves some texts out of the
# batches; case 3 has one repeat and a batch of one text.
THROUGHPUT_CASES = [
    ([12, 40, 9, 9, 31, 17, 25, 10], [[0, 1, 2], [3, 4, 5], [6, 7]],
     [[2.0, 2.0, 2.0], [1.0, 1.5, 1.0], [1.5, 1.0, 1.5]]),
    ([5, 33, 18, 7, 26, 61, 12, 44, 9, 20], [[0, 3, 8], [6, 2, 9], [4, 1]],
     [[3.0, 1.0, 3.0], [2.0, 2.5, 2.0], [1.0, 4.0, 1.0], [1.2, 1.2, 1.2]]),
    ([14, 6, 30], [[1, 0], [2]], [[1.7, 0.9]]),
]
THROUGHPUT_FIELDS = ("seconds", "real_tokens", "tokens_computed", "real_tokens_per_second")


def _field(result, key: str) -> float | None:
    """``float(result[key])``, or None when the result has no such number. Never raises."""
    try:
        value = float(result[key]) if isinstance(result, Mapping) else None
    except Exception:  # not a dict, a missing key, a tensor with several elements, a string...
        return None
    return value if value is not None and math.isfinite(value) else None


def _same(value: float | None, expected: float) -> bool:
    return value is not None and math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-12)


def _throughput_case(report: CheckReport, throughput, lengths, batches, slowdown) -> bool:
    machine = FakeMachine(lengths, batches, slowdown)
    repeats = len(slowdown)
    where = f"{len(batches)} batches, repeats={repeats}"
    result = report.call(throughput, machine.run_batch, [list(b) for b in batches], list(lengths), repeats,
                         machine.clock, name="throughput")
    if result is Ellipsis:
        return False
    expected_calls = repeats * len(batches)
    if not report.expect(len(machine.calls) == expected_calls and not machine.strangers,
                         f"{where}: run_batch called once per batch in each pass",
                         f"{where}: run_batch was called {len(machine.calls)} times"
                         + (f" (with {len(machine.strangers)} batches that are not among those given)"
                            if machine.strangers else "")
                         + f"; expected {repeats} passes x {len(batches)} batches = {expected_calls}, no warm-up"):
        return False
    passes = machine.pass_seconds()
    real = sum(lengths[i] for batch in batches for i in batch)
    computed = tokens_computed(lengths, batches)
    expected = {"seconds": min(passes), "real_tokens": real, "tokens_computed": computed,
                "real_tokens_per_second": real / min(passes)}
    got = {key: _field(result, key) for key in THROUGHPUT_FIELDS}
    if any(value is None for value in got.values()):
        missing = [key for key, value in got.items() if value is None]
        report.fail(f"{where}: the result should be a dict with a number under each of {list(THROUGHPUT_FIELDS)}; "
                    f"missing or not a number: {missing}")
        return False
    wrong = [key for key in THROUGHPUT_FIELDS if not _same(got[key], expected[key])]
    if not wrong:
        report.ok(f"{where}: fastest pass {expected['seconds']:.4f} s of {[round(p, 4) for p in passes]}, "
                  f"{real} real tokens, {computed} computed, {expected['real_tokens_per_second']:.1f} real tokens/s")
        return True
    seconds = got["seconds"]
    minima = sum(min(machine.cost(p, b) for p in range(repeats)) for b in range(len(batches)))
    summaries = {"mean of the passes": sum(passes) / repeats, "first pass": passes[0], "last pass": passes[-1],
                 "slowest pass": max(passes)}
    names = named_mistakes(seconds, summaries, _same)
    hints = {
        "seconds": (f"that is the {' and the '.join(names)}: keep the fastest pass" if names else
                    "that adds the fastest time of each batch from different passes: time whole passes"
                    if _same(seconds, minima) else
                    "use the clock you are given (the checker passes one that only moves while a batch runs)"
                    if seconds < min(passes) / 100 else
                    f"expected {min(passes):.4f} (passes {[round(p, 4) for p in passes]})"),
        "real_tokens": ("that counts the padding too: real tokens are the texts' own lengths"
                        if _same(got["real_tokens"], computed) else
                        "count only the texts that are in the batches" if _same(got["real_tokens"], sum(lengths))
                        else f"expected {real}"),
        "tokens_computed": ("that is the real tokens: each batch computes len(batch) x its longest text"
                            if _same(got["tokens_computed"], real) else
                            "that pads every batch to the longest text of all: each batch is padded to its own "
                            "longest" if _same(got["tokens_computed"], len(lengths) * max(lengths))
                            or _same(got["tokens_computed"], sum(map(len, batches)) * max(lengths))
                            else f"expected {computed}"),
        "real_tokens_per_second": (
            "it follows from the fields above: fix them first" if ({"seconds", "real_tokens"} & set(wrong)) and
            got["seconds"] and _same(got["real_tokens_per_second"], got["real_tokens"] / got["seconds"]) else
            "that divides the tokens computed: count real tokens only" if _same(got["real_tokens_per_second"],
                                                                             computed / min(passes)) else
            "that is seconds per token: tokens per second is real_tokens / seconds"
            if _same(got["real_tokens_per_second"], min(passes) / real) else
            f"expected real_tokens / seconds = {expected['real_tokens_per_second']:.1f}"),
    }
    for key in wrong:
        report.fail(f"{where}: {key} is {got[key]:g}: {hints[key]}")
    return False


def check_throughput(throughput) -> CheckReport:
    """``throughput(run_batch, batches, lengths, repeats, clock)``: the fastest pass and real tokens per second."""
    report = CheckReport("Throughput in real tokens per second")
    for lengths, batches, slowdown in THROUGHPUT_CASES:
        if not _throughput_case(report, throughput, lengths, batches, slowdown):
            return report
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: left padding that keeps every token's position

LEFT_TEXTS = ["A masterpiece.", "Too long, too loud and far too pleased with itself.", "Dull."]
SEP_ID = 102  # [SEP] in the uncased WordPiece vocabulary of both the course classifier and the encoder
# (token id lists, pad_id, description) after the three reviews padded with [PAD]: [SEP] as the pad id (the habit
# of set-ups where an end-of-text token doubles as the pad, like GPT-2's), so a mask computed from the ids marks
# real tokens as padding; four rows of other lengths, two with no padding; rows of equal length; one row alone.
LEFT_CASES = [
    ([[101, 2307, 3185, 1012, 102], [101, 102], [101, 1037, 2200, 2204, 3185, 2007, 1037, 2919, 2203, 1012, 102],
      [101, 2061, 2061, 2919, 2203, 1010, 2061, 2061, 2307, 1012, 102]], SEP_ID, "4 rows, pad_id=102 ([SEP])"),
    ([[101, 6659, 1012, 102], [101, 2204, 1012, 102]], 7, "2 rows of equal length, pad_id=7"),
    ([[101, 1996, 2203, 1012, 102]], 7, "1 row, pad_id=7"),
]


@cache
def _alone(sequence: tuple[int, ...]) -> torch.Tensor:
    """The encoder's hidden states of one sequence run on its own: no padding at all. (1, len, hidden)"""
    with torch.inference_mode():
        return course_encoder()(input_ids=torch.tensor([sequence])).last_hidden_state


def _left_case(report: CheckReport, left_pad_batch, sequences: list[list[int]], pad_id: int, where: str) -> bool:
    given = [list(ids) for ids in sequences]
    result = report.call(left_pad_batch, given, pad_id, name="left_pad_batch")
    if result is Ellipsis:
        return False
    if given != sequences:
        report.fail(f"{where}: left_pad_batch changed the lists it was given: build new lists instead")
        return False
    longest = max(map(len, sequences))
    shape = (len(sequences), longest)
    fields = {}
    for key in ("input_ids", "attention_mask", "position_ids"):
        try:
            value = result[key] if isinstance(result, Mapping) else None
        except Exception:  # a missing key
            value = None
        if value is None:
            report.fail(f"{where}: the result should be a dict with {key!r}"
                        + (": BERT numbers positions from the left edge unless told otherwise, so every real token "
                           "would move by its row's pad count" if key == "position_ids" else ""))
            return False
        fields[key] = report.tensor(value, f"{where}: {key}", shape=shape, dtype=torch.long)
        if fields[key] is None:
            return False
    expected_ids = torch.tensor([[pad_id] * (longest - len(ids)) + ids for ids in sequences])
    expected_mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in sequences])
    if not torch.equal(fields["input_ids"], expected_ids):
        right = torch.tensor([ids + [pad_id] * (longest - len(ids)) for ids in sequences])
        report.fail(f"{where}: input_ids {fields['input_ids'].tolist()}, expected {expected_ids.tolist()}"
                    + (": pads go before the tokens (left), not after" if torch.equal(fields["input_ids"], right)
                       else ": fill with the pad_id you are given" if pad_id != 0 else ""))
        return False
    if not torch.equal(fields["attention_mask"], expected_mask):
        mask = fields["attention_mask"]
        hint = (f": the mask cannot come from the ids when the pad id ({pad_id}) is also a real token; build it "
                "from the lengths" if torch.equal(mask, (expected_ids != pad_id).long()) else
                f": that marks id 0 as padding, but here the pad id is {pad_id}; build the mask from the lengths"
                if torch.equal(mask, (expected_ids != 0).long()) else
                ": 0 on the pads, which now come first" if torch.equal(mask, expected_mask.flip(-1)) else "")
        report.fail(f"{where}: attention_mask {mask.tolist()}, expected {expected_mask.tolist()}{hint}")
        return False
    positions, real = fields["position_ids"], expected_mask.bool()
    expected_positions = [list(range(len(ids))) for ids in sequences]
    got_positions = [positions[row][real[row]].tolist() for row in range(len(sequences))]
    if got_positions != expected_positions:
        report.fail(f"{where}: position_ids of the real tokens are {got_positions}; each real token should keep "
                    f"the position it has alone: {expected_positions}")
        return False
    limit = course_encoder().config.max_position_embeddings
    if not bool(((positions >= 0) & (positions < limit)).all()):
        report.fail(f"{where}: position_ids {positions.tolist()}: every position, even a pad's, must be a row of "
                    f"the position table (0 to {limit - 1}); pads are masked, so 0 does")
        return False
    try:
        with torch.inference_mode():
            hidden = course_encoder()(input_ids=fields["input_ids"], attention_mask=fields["attention_mask"],
                                      position_ids=positions).last_hidden_state
    except Exception as error:  # a checker never raises, whatever the encoder makes of the batch
        report.fail(f"{where}: the encoder refused the batch: {type(error).__name__}: {error}")
        return False
    diff = max((hidden[row, longest - len(ids):] - _alone(tuple(ids))[0]).abs().max().item()
               for row, ids in enumerate(sequences))
    return report.expect(diff < 1e-4, f"{where}: ids, mask and positions right; the encoder's real-token states "
                                      f"equal each sequence's alone (max abs diff {diff:.1e})",
                         f"{where}: the encoder's real-token states differ from each sequence's alone by {diff:.1e}")


def check_left_pad_batch(left_pad_batch) -> CheckReport:
    """``left_pad_batch(sequences, pad_id) -> {"input_ids", "attention_mask", "position_ids"}``, pads on the left."""
    report = CheckReport("Left padding that keeps BERT's positions")
    tokenizer = course_tokenizer()
    sequences = [list(ids) for ids in tokenizer(LEFT_TEXTS)["input_ids"]]
    cases = [(sequences, tokenizer.pad_token_id, f"3 reviews, pad_id={tokenizer.pad_token_id} ([PAD])"), *LEFT_CASES]
    for case_sequences, pad_id, where in cases:
        if not _left_case(report, left_pad_batch, case_sequences, pad_id, where):
            return report
    return report
