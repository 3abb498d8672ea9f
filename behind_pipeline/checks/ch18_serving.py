"""Checkers for the exercises of chapter 18: a guard in front of the tokenizer, whole requests packed into forward
passes, and a request timeout that leaves the batcher serving.

Each checker tries several cases (other limits, limits met exactly, other batch sizes, other timeouts), checks
every field on every call, and never raises: whatever the learner returns becomes an ``ok`` or a ``FIX`` line.
"""

import asyncio
import inspect
import threading
import time

import torch

from behind_pipeline.checks._core import CheckReport, course_tokenizer
from behind_pipeline.service.app import RequestRefused

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: a guard in front of the tokenizer


class CountingTokenizer:
    """The course tokenizer, counting how often it is asked to encode anything."""

    ENCODING_METHODS = ("encode", "encode_plus", "batch_encode_plus", "tokenize", "_encode_plus", "_batch_encode_plus")

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        attribute = getattr(self._tokenizer, name)
        if name in self.ENCODING_METHODS and callable(attribute):
            def counted(*args, **kwargs):
                self.calls += 1
                return attribute(*args, **kwargs)

            return counted
        return attribute


# (case name, texts, limits, expected status or None, expected error or None)
LIMITS = {"max_chars": 40, "max_texts": 4, "max_total_chars": 100}
WORDS_41 = "good " * 8 + "o"  # 41 characters but only 10 tokens: a token count would let it through
GUARD_CASES = [
    ("one text as a string", "A gorgeous, moving film.", LIMITS, None, None),
    ("a list of texts", ["Dull.", "Too long, too loud.", "A delight."], LIMITS, None, None),
    ("a text of exactly max_chars", ["x" * 40], LIMITS, None, None),
    ("exactly max_texts texts", ["one", "two", "three", "four"], LIMITS, None, None),
    ("a total of exactly max_total_chars", ["y" * 40, "z" * 40, "w" * 20], LIMITS, None, None),
    ("accented text at max_chars (characters, not bytes)", ["é" * 40], LIMITS, None, None),
    ("a text one character over max_chars", ["fine", "x" * 41], LIMITS, 413, "text_too_long"),
    ("a text over max_chars in few tokens", [WORDS_41], LIMITS, 413, "text_too_long"),
    ("one text more than max_texts", ["a", "b", "c", "d", "e"], LIMITS, 413, "too_many_texts"),
    ("a total one character over", ["y" * 40, "z" * 40, "w" * 21], LIMITS, 413, "request_too_long"),
    ("an empty text", ["fine", ""], LIMITS, 422, "empty_text"),
    ("whitespace only", " \n\t ", LIMITS, 422, "empty_text"),
    ("an empty list", [], LIMITS, 422, "invalid_request"),
    ("a number instead of text", ["fine", 42], LIMITS, 422, "invalid_request"),
    ("a nested list", [["nested"]], LIMITS, 422, "invalid_request"),
    ("None", None, LIMITS, 422, "invalid_request"),
    ("other limits: max_chars 10 met exactly", ["0123456789", "abc"], {"max_chars": 10, "max_texts": 2,
                                                                       "max_total_chars": 13}, None, None),
    ("other limits: max_texts 2 exceeded", ["a", "b", "c"], {"max_chars": 10, "max_texts": 2,
                                                             "max_total_chars": 100}, 413, "too_many_texts"),
    ("other limits: max_total_chars 13 exceeded", ["0123456789", "abcd"], {"max_chars": 10, "max_texts": 2,
                                                                          "max_total_chars": 13},
     413, "request_too_long"),
    ("a huge text", ["z" * 1_000_000], LIMITS, 413, "text_too_long"),
]


def _input_ids(value) -> list | None:
    """``value["input_ids"]`` as a list of lists of ints, or None when the value has no such field."""
    try:
        ids = value["input_ids"]
        return [[int(token) for token in row] for row in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    except Exception:  # a learner's value of any shape: reported by the caller
        return None


def check_guarded_encode(guarded_encode) -> CheckReport:
    """Refusals come before the tokenizer, at the exact limits, with the right status; good input is encoded."""
    report = CheckReport("A guard in front of the tokenizer")
    if not report.answered(guarded_encode, "guarded_encode"):
        return report
    tokenizer = course_tokenizer()
    for case, texts, limits, status, error in GUARD_CASES:
        counting = CountingTokenizer(tokenizer)
        started = time.perf_counter()
        try:
            result = guarded_encode(texts, counting, **limits)
        except RequestRefused as refused:
            seconds = time.perf_counter() - started
            if status is None:
                report.fail(f"{case}: refused with {refused.status} {refused.error!r} ({refused.detail}), but it is "
                            f"within every limit {limits}: a limit of n allows exactly n")
            elif (refused.status, refused.error) != (status, error):
                report.fail(f"{case}: refused with {refused.status} {refused.error!r}, expected {status} {error!r}")
            elif not isinstance(refused.detail, str) or not refused.detail.strip():
                report.fail(f"{case}: refused with {status} {error!r} but an empty detail: say what is wrong")
            elif counting.calls:
                report.fail(f"{case}: refused, but only after calling the tokenizer {counting.calls} time(s): check "
                            "the limits before tokenizing, so that an over-long text costs nothing")
            elif seconds > 0.5:
                report.fail(f"{case}: refused after {seconds:.1f} s: check lengths with len(), never by tokenizing")
            else:
                report.ok(f"{case}: refused with {status} {error!r} before any tokenization")
            continue
        except Exception as error_raised:  # the learner's bug becomes a message
            report.fail(f"{case}: raised {type(error_raised).__name__}: {error_raised}; refuse bad input with "
                        "RequestRefused(status, error, detail)")
            continue
        if status is not None:
            report.fail(f"{case}: accepted, expected a refusal {status} {error!r} (limits {limits})")
            continue
        as_list = [texts] if isinstance(texts, str) else list(texts)
        expected = tokenizer(as_list, truncation=True)["input_ids"]
        got = _input_ids(result)
        if got is None:
            report.fail(f"{case}: return the tokenizer's encoding (with 'input_ids'), got {type(result).__name__}")
        elif got != expected:
            report.fail(f"{case}: the input_ids differ from tokenizer(texts, truncation=True)'s "
                        f"({len(got)} rows, expected {len(expected)}): encode every text, in order, once")
        elif counting.calls != 1:
            report.fail(f"{case}: the tokenizer was called {counting.calls} times; once, on all the texts, is enough")
        else:
            report.ok(f"{case}: encoded ({len(expected)} text(s)) with one tokenizer call")
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
        answers = report.call(serve_requests, model, [list(texts) for texts in requests], max_batch,
                              name="serve_requests")
        if answers is Ellipsis:
            return report
        try:
            answers = list(answers)
        except TypeError:
            report.fail(f"{case}: return a list with one tensor per request, got {type(answers).__name__}")
            return report
        if len(answers) != len(requests):
            report.fail(f"{case}: {len(answers)} answers for {len(requests)} requests: one answer per request")
            continue
        wrong = []
        for index, (texts, answer) in enumerate(zip(requests, answers, strict=True)):
            expected = torch.tensor([[float(text_number(text)), float(len(text))] for text in texts])
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
# Exercise 3: a timeout that leaves the batcher serving

# (seconds a forward pass takes, the late request's timeout): short, so the check takes a few seconds
TIMEOUT_CASES = ((0.3, 0.05), (0.5, 0.15))
CHECK_BOUND_S = 10.0  # the checker's own limit on one scenario: a learner's function that never returns is reported


class SlowModel(RecordingModel):
    """A recording model that takes ``seconds`` per forward pass, as a busy server would."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def __call__(self, texts):
        time.sleep(self.seconds)
        return super().__call__(texts)


def _run_in_own_loop(scenario, bound_s: float = CHECK_BOUND_S):
    """Run ``scenario()`` (a coroutine function) in a fresh event loop on its own thread, at most ``bound_s``.

    A notebook already runs an event loop, so ``asyncio.run`` cannot be called from its cells; a thread can.
    Returns ``("done", result)``, ``("raised", exception)`` or ``("hung", None)``.
    """
    outcome = ["hung", None]

    def target():
        try:
            outcome[:] = ["done", asyncio.run(scenario())]
        except BaseException as error:  # the learner's bug becomes a message
            outcome[:] = ["raised", error]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound_s)
    return tuple(outcome) if not thread.is_alive() else ("hung", None)


async def _call_within(function, batcher, texts, timeout_s, bound_s):
    """``await function(batcher, texts, timeout_s)`` with the checker's own bound; ("hung", None) past it."""
    called = function(batcher, texts, timeout_s)
    if not inspect.isawaitable(called):
        return "not_async", called
    began = time.perf_counter()
    try:
        result = await asyncio.wait_for(called, bound_s)
    except TimeoutError:
        return "hung", None
    except Exception as error:
        return "raised", error
    return "done", (result, time.perf_counter() - began)


def _expected_rows(texts):
    return torch.tensor([[float(text_number(text)), float(len(text))] for text in texts])


async def _timeout_scenario(predict_within, pass_seconds: float, timeout_s: float):
    """A slow pass is running when a request with a short timeout arrives; then the service must still serve."""
    from behind_pipeline.service.batcher import MicroBatcher

    model = SlowModel(pass_seconds)
    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=1)
    batcher.start()
    try:
        running = asyncio.ensure_future(batcher.logits(["text#100#running"]))
        await asyncio.sleep(0.05)  # the slow pass has started
        late = await _call_within(predict_within, batcher, ["text#101#late"], timeout_s, pass_seconds * 2 + 1)
        try:
            running_rows = await asyncio.wait_for(running, pass_seconds + 1)
        except (TimeoutError, asyncio.CancelledError):
            running_rows = None
        outcome = {"late": late, "running": running_rows, "after": ("hung", None)}
        if running_rows is not None:  # a stopped worker would leave the next request waiting too
            outcome["after"] = await _call_within(predict_within, batcher, ["text#102#after", "text#103#"], 2.0, 3.0)
            await asyncio.sleep(pass_seconds + 0.1)  # time for a late request left in the queue to reach the model
        outcome["passes"] = list(model.passes)
        outcome["worker_alive"] = batcher.worker is not None and not batcher.worker.done()
        return outcome
    finally:
        await batcher.stop()


async def _quick_scenario(predict_within, timeout_s: float):
    from behind_pipeline.service.batcher import MicroBatcher

    batcher = MicroBatcher(RecordingModel(), max_batch=8, max_wait_ms=1)
    batcher.start()
    try:
        return await _call_within(predict_within, batcher, ["text#7#ab", "text#8#", "text#9#abcd"], timeout_s, 5.0)
    finally:
        await batcher.stop()


def check_predict_within(predict_within) -> CheckReport:
    """A late request gets None in time; the running pass and later requests still get their answers."""
    report = CheckReport("A timeout that leaves the batcher serving")
    if not report.answered(predict_within, "predict_within"):
        return report
    if not inspect.iscoroutinefunction(predict_within):
        report.fail("predict_within should be an `async def` function: it awaits the batcher")
        return report
    status, value = _run_in_own_loop(lambda: _quick_scenario(predict_within, 2.0))
    if status == "done":  # the scenario finished: its value is the learner's call's (status, value)
        status, value = value
    if not _answered_rows(report, "a quick request (timeout 2 s)", status, value,
                          ["text#7#ab", "text#8#", "text#9#abcd"]):
        return report
    for pass_seconds, timeout_s in TIMEOUT_CASES:
        case = f"a {pass_seconds:.1f} s pass running, timeout {timeout_s} s"
        status, outcome = _run_in_own_loop(lambda p=pass_seconds, t=timeout_s: _timeout_scenario(predict_within, p, t))
        if status != "done":
            report.fail(f"{case}: the scenario {'never finished' if status == 'hung' else f'raised {outcome!r}'}")
            continue
        late_status, late = outcome["late"]
        if late_status == "raised":
            report.fail(f"{case}: raised {type(late).__name__} {late}; return None when the time is up (the app "
                        "turns None into a 503), don't let the exception escape")
            continue
        if late_status == "hung" or late[0] is not None:
            report.fail(f"{case}: the late request got an answer instead of None: give up after timeout_s "
                        "(asyncio.wait_for around the batcher's call)")
            continue
        if late[1] > timeout_s + pass_seconds / 2:
            report.fail(f"{case}: None came after {late[1]:.2f} s, not within {timeout_s} s: wait at most "
                        "timeout_s, not until the running pass ends")
            continue
        report.ok(f"{case}: the late request got None in time")
        if outcome["running"] is None or not torch.equal(outcome["running"], _expected_rows(["text#100#running"])):
            report.fail(f"{case}: the request whose pass was running never got its answer: the timeout stopped the "
                        "batcher's worker; cancel only your own request, never the worker or the batcher")
            continue
        if not _answered_rows(report, f"{case}: a request after the timeout", *outcome["after"],
                              ["text#102#after", "text#103#"]):
            continue
        if not outcome["worker_alive"]:
            report.fail(f"{case}: the batcher's worker is no longer running after the timeout")
            continue
        if any("text#101#late" in one_pass for one_pass in outcome["passes"]):
            report.fail(f"{case}: the timed-out text still went through the model: cancel the request when time "
                        "is up (asyncio.wait_for does), so that the batcher drops it")
            continue
        report.ok(f"{case}: the running request and a later one were answered; the late text never reached the "
                  "model")
    return report


def _answered_rows(report: CheckReport, case: str, status: str, value, texts: list[str]) -> bool:
    if status == "not_async":
        report.fail(f"{case}: predict_within returned {type(value).__name__}, not something to await")
        return False
    if status == "hung":
        report.fail(f"{case}: no answer within the checker's bound: await the batcher with a timeout")
        return False
    if status == "raised":
        report.fail(f"{case}: raised {type(value).__name__}: {value}")
        return False
    result, _ = value
    rows = report.tensor(result, f"{case}: the answer", shape=(len(texts), 2))
    if rows is None:
        return False
    if not torch.equal(rows.float(), _expected_rows(texts)):
        report.fail(f"{case}: the rows differ from the batcher's answer for these texts")
        return False
    report.ok(f"{case}: answered with the batcher's rows")
    return True
