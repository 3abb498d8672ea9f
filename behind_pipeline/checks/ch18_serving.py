"""Checkers for the exercises of chapter 18: a token-budget batcher, whole requests packed into forward passes,
and per-request isolation after a failed pass.

Each checker tries several cases (other limits, limits met exactly, failures in other places), checks every field
on every call, and never raises: whatever the learner returns becomes an ``ok`` or a ``FIX`` line. An error raised
inside the learner's function is reported with the learner's own line (``describe_error``).
"""

import threading

import torch

from behind_pipeline.checks._core import CheckReport, describe_error

CHECK_BOUND_S = 10.0  # the checker's own limit on one call: a learner's function that never returns is reported


def _call_bounded(report: CheckReport, function, *args, name: str, bound_s: float = CHECK_BOUND_S):
    """``function(*args)`` on a thread, at most ``bound_s``: the result, or Ellipsis and a FIX line saying why
    (an error with the learner's line, None returned, or no answer in time)."""
    outcome = ["hung", None]

    def target():
        try:
            outcome[:] = ["done", function(*args)]
        except Exception as error:  # the learner's bug becomes a message
            outcome[:] = ["raised", error]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound_s)
    status, value = outcome if not thread.is_alive() else ("hung", None)
    if status == "hung":
        report.fail(f"{name}(...) gave no answer within {bound_s:.0f} s: a loop that never ends? (a text over the "
                    "budget must still be taken, alone)")
        return Ellipsis
    if status == "raised":
        report.fail(f"{name}(...) raised {describe_error(value)}")
        return Ellipsis
    if value is None:
        report.fail(f"{name}(...) returned None: end it with `return` and the list it builds")
        return Ellipsis
    return value


def _no_rows(index: int, texts: int) -> str:
    """What to say when a request's entry in the answer list is None (the function itself did return): the learner
    wrote an answer, so "still `...`" would be wrong; most often a list made of Nones and never filled for it."""
    return (f"the answer to request {index} is None: every request gets its own rows of the pass's output "
            f"({texts} row(s) of 2 logits); was its entry left as a placeholder (e.g. [None] * len(requests))?")


def _one_per_request(report: CheckReport, got, requests: list, case: str, entry: str,
                     counted: str) -> tuple[list | None, bool]:
    """``got`` (what the learner's function returned, Ellipsis where the call already failed) as a list with one
    entry per request, or None after a FIX line; and whether the check goes on. A failed call or a value that is not
    a list stops the check; a list of another length fails this case only. ``entry`` and ``counted`` are the words
    the two FIX lines use for one entry (packing: "tensor", "answer")."""
    if got is Ellipsis:
        return None, False
    answers = report.collection(got, list, f"{case}: return a list with one {entry} per request, got "
                                           f"{type(got).__name__}")
    if answers is None:
        return None, False
    if len(answers) != len(requests):
        report.fail(f"{case}: {len(answers)} answers for {len(requests)} requests: one {counted} per request")
        return None, True
    return answers, True


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: a token-budget batcher


def reference_budget_passes(lengths: list[int], max_batch: int, max_tokens: int) -> list[list[int]]:
    """The checker's reference: texts in arrival order; a new pass when the next text would break either limit."""
    passes, current, longest = [], [], 0
    for index, length in enumerate(lengths):
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * max(longest, length) > max_tokens):
            passes.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        passes.append(current)
    return passes


# (token lengths in arrival order, max_batch, max_tokens): each case tells one mistake from the right answer
BUDGET_CASES = [
    ([10, 12, 9, 11], 32, 1000),  # everything fits: one pass
    ([10, 40, 40], 32, 100),  # padded: 3 x 40 = 120 > 100, though the sum (90) fits
    ([50, 10, 10], 32, 100),  # the pass pads to its longest (50), not to the newest text (10)
    ([25, 25, 25, 25, 25], 32, 100),  # exactly the budget (4 x 25 = 100) is allowed
    ([3] * 10, 4, 10_000),  # max_batch: passes of 4, 4, 2
    ([8, 300, 8, 8], 8, 64),  # a text over the budget goes alone, and is not dropped
    ([60, 5, 5, 60, 5], 32, 120),  # arrival order: nothing skips ahead to fill a pass
    ([], 4, 100),  # nothing waiting: no pass
]


def _budget_problem(passes, lengths, max_batch, max_tokens) -> str:
    sent = [index for one in passes for index in one]
    if sorted(sent) != list(range(len(lengths))):
        return (f"the passes hold texts {sorted(sent)}, expected each of 0..{len(lengths) - 1} exactly once (a text "
                "longer than the budget still gets a pass, alone)")
    if sent != list(range(len(lengths))):
        return "texts are out of arrival order: take them first come, first served, without reordering"
    for one in passes:
        if len(one) > max_batch:
            return f"a pass of {len(one)} texts is over max_batch {max_batch}"
        padded = len(one) * max(lengths[index] for index in one)
        if len(one) > 1 and padded > max_tokens:
            total = sum(lengths[index] for index in one)
            hint = (" (a pass pads every text to its longest: it costs texts x the longest length, not the sum, "
                    "nor texts x the newest length)" if total <= max_tokens else "")
            longest = max(lengths[index] for index in one)
            return f"a pass costs {len(one)} x {longest} = {padded} padded tokens, over {max_tokens}{hint}"
    return ("a pass was closed although the next text fitted: keep filling while (texts + 1) x the longest "
            "length stays within max_tokens (exactly max_tokens is allowed) and texts stay within max_batch")


def check_budget_passes(budget_passes) -> CheckReport:
    """Passes in arrival order, each within max_batch and max_tokens padded tokens, each as full as allowed."""
    report = CheckReport("A token-budget batcher")
    if not report.answered(budget_passes, "budget_passes"):
        return report
    for lengths, max_batch, max_tokens in BUDGET_CASES:
        case = f"lengths {lengths}, max_batch={max_batch}, max_tokens={max_tokens}"
        expected = reference_budget_passes(lengths, max_batch, max_tokens)
        got = _call_bounded(report, budget_passes, list(lengths), max_batch, max_tokens, name="budget_passes")
        if got is Ellipsis:
            return report
        try:
            passes = [[int(index) for index in one] for one in got]
        except (TypeError, ValueError):
            report.fail(f"{case}: return a list of passes, each a list of text indices; got {type(got).__name__}")
            return report
        if passes == expected:
            report.ok(f"{case}: {len(passes)} pass(es) {passes}")
        else:
            report.fail(f"{case}: {_budget_problem(passes, lengths, max_batch, max_tokens)}")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: whole requests packed into forward passes


class RecordingModel:
    """A stand-in for the model: row i of its answer identifies text i, and every call is recorded."""

    def __init__(self):
        self.passes: list[list[str]] = []

    def __call__(self, texts):
        texts = list(texts)
        self.passes.append(texts)
        # Column 0 is the text's own number, column 1 its length: a row in the wrong place shows at once.
        return torch.tensor([[float(text_number(text)), float(len(text))] for text in texts])


def text_number(text: str) -> int:
    return int(text.split("#")[1])


def requests_of(sizes: list[int]) -> list[list[str]]:
    """Requests of the given sizes whose texts are numbered in arrival order (and of different lengths)."""
    requests, first = [], 0
    for size in sizes:
        requests.append([f"text#{n}#" + "x" * (n % 7) for n in range(first, first + size)])
        first += size
    return requests


def fifo_passes(sizes: list[int], max_batch: int) -> list[list[int]]:
    """The reference packing: requests in arrival order, each whole, a pass filled while the next request fits."""
    passes, current, filled = [], [], 0
    for index, size in enumerate(sizes):
        if current and filled + size > max_batch:
            passes.append(current)
            current, filled = [], 0
        current.append(index)
        filled += size
    if current:
        passes.append(current)
    return passes


# (sizes of the requests in arrival order, max_batch)
PACK_CASES = [([1, 1, 1, 1, 1], 2), ([3, 1, 4, 1, 5, 2], 8), ([2, 2, 2, 2], 4), ([1, 9, 1, 1], 4),
              ([5, 3, 8, 1, 1, 1, 2], 8), ([1] * 16, 32), ([4], 1)]


def check_serve_requests(serve_requests) -> CheckReport:
    """Each request gets exactly its own rows; requests stay whole and in order; passes are full but not over."""
    report = CheckReport("Whole requests packed into forward passes")
    if not report.answered(serve_requests, "serve_requests"):
        return report
    for sizes, max_batch in PACK_CASES:
        case = f"request sizes {sizes}, max_batch={max_batch}"
        requests = requests_of(sizes)
        model = RecordingModel()
        got = report.call(serve_requests, model, [list(texts) for texts in requests], max_batch,
                          name="serve_requests")
        answers, going_on = _one_per_request(report, got, requests, case, "tensor", "answer")
        if not going_on:
            return report
        if answers is None:
            continue
        wrong = []
        for index, (texts, answer) in enumerate(zip(requests, answers, strict=True)):
            expected = torch.tensor([[float(text_number(text)), float(len(text))] for text in texts])
            if answer is None:
                report.fail(f"{case}: {_no_rows(index, len(texts))}")
                break
            got = report.tensor(answer, f"the answer to request {index}", shape=tuple(expected.shape))
            if got is None:
                break
            if not torch.equal(got.float(), expected):
                wrong.append(index)
        else:
            if wrong:
                report.fail(f"{case}: requests {wrong} got rows that belong to other texts: after one pass over all "
                            "the texts, give each request the rows at its own offset, in its own order")
                continue
            expected_passes = [[text for index in group for text in requests[index]]
                               for group in fifo_passes(sizes, max_batch)]
            if model.passes == expected_passes:
                report.ok(f"{case}: {len(model.passes)} forward pass(es), each request whole and answered with its "
                          "own rows")
                continue
            sent = [text for one_pass in model.passes for text in one_pass]
            if sorted(sent, key=text_number) != [text for texts in requests for text in texts]:
                report.fail(f"{case}: the model saw some texts twice or not at all ({len(sent)} texts sent for "
                            f"{sum(sizes)}): send each text exactly once")
            elif sent != [text for texts in requests for text in texts]:
                report.fail(f"{case}: the texts reached the model out of arrival order: keep requests first come, "
                            "first served, or a large request can wait forever")
            elif any(_splits_a_request(one_pass, requests) for one_pass in model.passes):
                report.fail(f"{case}: a request was split across two passes: keep each request whole, or its "
                            "answer waits for two passes")
            elif any(len(one_pass) > max_batch and one_pass not in requests for one_pass in model.passes):
                report.fail(f"{case}: a pass of {max(len(p) for p in model.passes)} texts is over max_batch "
                            f"{max_batch}; only a single request larger than max_batch may exceed it")
            else:
                report.fail(f"{case}: {len(model.passes)} forward passes, expected {len(expected_passes)}: fill each "
                            "pass while the next request fits (a pass of exactly max_batch texts is allowed)")
    return report


def _splits_a_request(one_pass: list[str], requests: list[list[str]]) -> bool:
    sent = set(one_pass)
    return any(sent & set(texts) and not set(texts) <= sent for texts in requests)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: one failing request never fails its batch-mates


class PoisonedModel(RecordingModel):
    """A recording model that raises on any pass holding a text that contains ``poison``."""

    def __call__(self, texts):
        texts = list(texts)
        if any("poison" in text for text in texts):
            self.passes.append(texts)
            raise ValueError("the model cannot take a poisoned text")
        return super().__call__(texts)


def poisoned_requests(sizes: list[int], poisoned: set[int]) -> list[list[str]]:
    requests = requests_of(sizes)
    for index in poisoned:
        requests[index][-1] = requests[index][-1] + "#poison"
    return requests


# (request sizes, indices of the poisoned requests)
ISOLATION_CASES = [([2, 1, 3], set()), ([1, 2, 1, 3, 1], {3}), ([2, 2, 2, 2], {0, 2}), ([1, 1, 1], {0, 1, 2}),
                   ([4], {0})]


def check_run_isolated(run_isolated) -> CheckReport:
    """One pass when it succeeds; after a failed pass, each request alone: only the poisoned ones get an error."""
    report = CheckReport("One failing request never fails its batch-mates")
    if not report.answered(run_isolated, "run_isolated"):
        return report
    for sizes, poisoned in ISOLATION_CASES:
        case = f"request sizes {sizes}, poisoned {sorted(poisoned) or 'none'}"
        requests = poisoned_requests(sizes, poisoned)
        model = PoisonedModel()
        got = _call_bounded(report, run_isolated, model, [list(texts) for texts in requests], name="run_isolated")
        answers, going_on = _one_per_request(report, got, requests, case, "entry", "entry")
        if not going_on:
            return report
        if answers is None:
            continue
        problem = None
        for index, (texts, answer) in enumerate(zip(requests, answers, strict=True)):
            if index in poisoned:
                if not isinstance(answer, Exception):
                    problem = (f"request {index} made the model fail, but its entry is {type(answer).__name__}: put "
                               "the exception it raised (alone) in its place")
                    break
                continue
            if isinstance(answer, Exception):
                problem = (f"request {index} is fine but got {type(answer).__name__}: after a failed pass, run each "
                           "request again on its own, so only the poisoned one fails")
                break
            if answer is None:
                problem = _no_rows(index, len(texts))
                break
            rows = report.tensor(answer, f"{case}: the answer to request {index}", shape=(len(texts), 2))
            if rows is None:
                problem = ""
                break
            if not torch.equal(rows.float(), torch.tensor([[float(text_number(t)), float(len(t))] for t in texts])):
                problem = (f"request {index} got rows that belong to other texts: give each request the rows at its "
                           "own offset")
                break
        if problem is not None:
            if problem:
                report.fail(f"{case}: {problem}")
            continue
        expected_calls = 1 if not poisoned else 1 + len(requests)
        calls = len(model.passes)
        alone_ok = poisoned and len(requests) == 1 and calls in (1, 2)
        if calls != expected_calls and not alone_ok:
            if not poisoned:
                report.fail(f"{case}: {calls} forward passes for a batch that did not fail: one shared pass is enough")
            elif calls > expected_calls:
                report.fail(f"{case}: {calls} forward passes; after the failed shared pass, run each request once, "
                            f"alone ({expected_calls} passes in all), not each text")
            else:
                report.fail(f"{case}: {calls} forward passes; expected the shared one, then one per request "
                            f"({expected_calls})")
            continue
        if model.passes and model.passes[0] != [text for texts in requests for text in texts]:
            report.fail(f"{case}: the first pass should hold every request's texts, in order (one shared pass)")
            continue
        report.ok(f"{case}: {calls} pass(es); " + ("every request answered with its own rows" if not poisoned else
                                                   f"only request(s) {sorted(poisoned)} got an error"))
    return report
