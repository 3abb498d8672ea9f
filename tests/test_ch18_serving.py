"""Chapter 18: the local-server helpers, the service benchmark's file, and checkers that grade fairly.

Each checker must accept the reference answer and valid alternatives, reject the typical wrong answers named
below (each named after the mistake it models), and never raise, whatever the learner returns. The service itself
(every bad input, parity with ``pipeline()``, load) is tested in ``tests/test_service.py``.
"""

import json

import pytest
import torch

from behind_pipeline.checks.ch18_serving import (
    check_budget_passes,
    check_run_isolated,
    check_serve_requests,
    fifo_passes,
)
from behind_pipeline.service import bench

from checker_asserts import assert_rejected


def test_request_summary_is_in_milliseconds():
    figures = bench.request_summary([0.010] * 19 + [0.110])
    assert figures == {"median_ms": 10.0, "p95_ms": 15.0, "requests": 20}


def test_the_tiny_benchmark_writes_a_well_formed_service_section(tmp_path):
    """A real run in its tiny setting (servers, HTTP, in-process): the file's shape, never its speed."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"variants": {"kept": 1}}))
    assert bench.main(["--tiny", "--output", str(path)]) == 0
    results = json.loads(path.read_text())
    assert results["variants"] == {"kept": 1}
    section = results["service"]
    assert section["run"] == "tiny" and section["settings"]["clients"] == bench.CLIENTS
    assert set(section["models"]) == set(bench.TINY_MODELS)
    for figures in section["models"].values():
        latency = figures[f"latency_batch_{bench.BATCH}"]
        assert latency["repeats"] == bench.SIZES["tiny"]["repeats"] == len(latency["runs"])
        for run in latency["runs"]:
            assert 0 < run["median_ms"] <= run["p95_ms"] and run["requests"] == bench.SIZES["tiny"]["latency_requests"]
        for mode in ("throughput_micro_batching", "throughput_one_by_one"):
            for run in figures[mode]["runs"]:
                assert run["texts_per_second"] > 0 and run["failed"] == 0 and 0 <= run["busy_share"] <= 1
                assert run["requests"] == bench.CLIENTS * bench.SIZES["tiny"]["requests_per_client"]
            assert figures[mode]["texts_per_second"] == pytest.approx(
                sum(run["texts_per_second"] for run in figures[mode]["runs"]) / len(figures[mode]["runs"]), abs=0.01)
        assert {run["largest_batch"] for run in figures["throughput_one_by_one"]["runs"]} == {1}  # really one by one
        ratio = figures["throughput_micro_batching"]["texts_per_second"] / figures["throughput_one_by_one"][
            "texts_per_second"]
        assert figures["micro_batching_vs_one_by_one"] == pytest.approx(ratio, abs=0.01)
        assert figures[f"in_process_batch_{bench.IN_PROCESS_BATCH}_texts_per_second"] > 0
        for setting in ("token_budget", "no_token_budget"):
            for run in figures["head_of_line"][setting]["runs"]:
                assert 0 < run["short_request_median_ms"] <= run["short_request_max_ms"]
        assert ("wrk_micro_batching" in figures) == (section["wrk"] is not None)


def test_repeated_reports_mean_spread_and_every_run():
    values = iter([1.0, 2.0, 6.0])
    summary = bench.repeated(lambda: {"x": next(values)}, 3, ("x",))
    assert summary["x"] == 3.0 and summary["x_sd"] == pytest.approx(2.65, abs=0.01) and len(summary["runs"]) == 3


def test_wrk_output_is_read_in_milliseconds(monkeypatch):
    """wrk prints latencies in us, ms or s; the bench stores milliseconds."""
    import subprocess

    out = ("Running 1s test\n  Latency Distribution\n     50%  850.00us\n     75%    1.20ms\n     90%    2.00ms\n"
           "     99%    1.50s\n  100 requests in 1.00s\nRequests/sec:    123.45\nNon-2xx or 3xx responses: 7\n")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, out, ""))
    monkeypatch.setattr(bench, "_busy", lambda url: (0.0, 0))
    figures = bench.wrk_throughput("/usr/bin/wrk", "http://127.0.0.1:1", ["a review"], 4, 1)
    assert (figures["texts_per_second"], figures["median_ms"], figures["p99_ms"], figures["non_2xx"]) == (
        123.5, 0.8, 1500.0, 7)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: a token-budget batcher


def reference_budget_passes(lengths, max_batch, max_tokens):
    passes, current, longest = [], [], 0
    for index, length in enumerate(lengths):
        longer = max(longest, length)
        if current and (len(current) == max_batch or (len(current) + 1) * longer > max_tokens):
            passes.append(current)
            current, longer = [], length
        current.append(index)
        longest = longer
    return passes + [current] if current else passes


def counts_the_sum(lengths, max_batch, max_tokens):
    """Budget on the sum of lengths: a pass pads every text to its longest, so it costs more than the sum."""
    passes, current, total = [], [], 0
    for index, length in enumerate(lengths):
        if current and (len(current) == max_batch or total + length > max_tokens):
            passes.append(current)
            current, total = [], 0
        current.append(index)
        total += length
    return passes + [current] if current else passes


def pads_to_the_newest(lengths, max_batch, max_tokens):
    """(texts + 1) x the newest text's length: a short text after a long one hides the long one's padding."""
    passes, current = [], []
    for index, length in enumerate(lengths):
        if current and (len(current) == max_batch or (len(current) + 1) * length > max_tokens):
            passes.append(current)
            current = []
        current.append(index)
    return passes + [current] if current else passes


def budget_strictly_below(lengths, max_batch, max_tokens):
    """``>=`` instead of ``>``: a pass of exactly max_tokens padded tokens is refused."""
    return reference_budget_passes(lengths, max_batch, max_tokens - 1)


def ignores_max_batch_in_budget(lengths, max_batch, max_tokens):
    """Only the token budget: a pass of many short texts goes over max_batch."""
    return reference_budget_passes(lengths, 10**9, max_tokens)


def drops_texts_over_the_budget(lengths, max_batch, max_tokens):
    """A text longer than the whole budget is skipped: its request never gets an answer."""
    kept = [index for index, length in enumerate(lengths) if length <= max_tokens]
    passes = reference_budget_passes([lengths[index] for index in kept], max_batch, max_tokens)
    return [[kept[position] for position in one] for one in passes]


def loops_on_a_text_over_the_budget(lengths, max_batch, max_tokens):
    """Waits for a pass with room for a text that can never fit: never returns."""
    if any(length > max_tokens for length in lengths):
        import time

        time.sleep(60)
    return reference_budget_passes(lengths, max_batch, max_tokens)


def shortest_first(lengths, max_batch, max_tokens):
    """Sorts by length to pack better: a long text can wait forever behind short ones, and answers come out of
    order."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    passes = reference_budget_passes([lengths[index] for index in order], max_batch, max_tokens)
    return [[order[position] for position in one] for one in passes]


def forgets_the_last_pass(lengths, max_batch, max_tokens):
    """The pass still open at the end is never returned."""
    return reference_budget_passes(lengths, max_batch, max_tokens)[:-1]


def no_return(lengths, max_batch, max_tokens):
    reference_budget_passes(lengths, max_batch, max_tokens)


def test_budget_checker_accepts_the_solution():
    assert check_budget_passes(reference_budget_passes).passed


def test_budget_checker_accepts_tuples_and_numpy_indices():
    import numpy as np

    def as_tuples(lengths, max_batch, max_tokens):
        return tuple(tuple(np.int64(i) for i in one) for one in reference_budget_passes(lengths, max_batch, max_tokens))

    assert check_budget_passes(as_tuples).passed


@pytest.mark.parametrize(("wrong", "words"), [
    (counts_the_sum, ("padded tokens", "not the sum")), (pads_to_the_newest, ("padded tokens", "newest")),
    (budget_strictly_below, ("exactly max_tokens is allowed",)), (ignores_max_batch_in_budget, ("over max_batch",)),
    (drops_texts_over_the_budget, ("exactly once", "alone")), (loops_on_a_text_over_the_budget, ("no answer",)),
    (shortest_first, ("arrival order",)), (forgets_the_last_pass, ("exactly once",)),
    (no_return, ("returned none", "return")),
], ids=lambda value: getattr(value, "__name__", ""))
def test_budget_checker_names_the_mistake(wrong, words, monkeypatch):
    from behind_pipeline.checks import ch18_serving

    monkeypatch.setattr(ch18_serving, "CHECK_BOUND_S", 2.0)
    assert_rejected(check_budget_passes(wrong), *words)


def test_budget_checker_reports_the_learners_line():
    def crashes(lengths, max_batch, max_tokens):
        return [[lengths[0]]] if not lengths else max(lengths) / 0

    shown = repr(check_budget_passes(crashes))
    assert "ZeroDivisionError" in shown and "line" in shown and "of your crashes" in shown


@pytest.mark.parametrize("answer", [..., None, 3, lambda *args: 42, lambda *args: [None], lambda *args: [["a"]],
                                    lambda *args: "passes"])
def test_budget_checker_never_raises(answer):
    assert not check_budget_passes(answer).passed


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: whole requests packed into forward passes


def reference_serve_requests(run, requests, max_batch):
    answers = []
    for group in fifo_passes([len(texts) for texts in requests], max_batch):
        logits = run([text for index in group for text in requests[index]])
        start = 0
        for index in group:
            answers.append(logits[start:start + len(requests[index])])
            start += len(requests[index])
    return answers


def mixes_up_answers(run, requests, max_batch):
    """Every request of a pass gets the pass's first rows: neighbours' answers are swapped in."""
    answers = []
    for group in fifo_passes([len(texts) for texts in requests], max_batch):
        logits = run([text for index in group for text in requests[index]])
        answers.extend(logits[:len(requests[index])] for index in group)
    return answers


def answers_in_reverse(run, requests, max_batch):
    """Rows handed back from the end of the pass."""
    answers = []
    for group in fifo_passes([len(texts) for texts in requests], max_batch):
        logits = run([text for index in group for text in requests[index]])
        end = len(logits)
        for index in group:
            answers.append(logits[end - len(requests[index]):end])
            end -= len(requests[index])
    return answers


def one_pass_per_request(run, requests, max_batch):
    """No batching at all: correct answers, as many passes as requests."""
    return [run(texts) for texts in requests]


def splits_requests(run, requests, max_batch):
    """Cuts the stream of texts into chunks of max_batch, splitting requests across passes."""
    texts = [text for request in requests for text in request]
    logits = torch.cat([run(texts[start:start + max_batch]) for start in range(0, len(texts), max_batch)])
    answers, start = [], 0
    for request in requests:
        answers.append(logits[start:start + len(request)])
        start += len(request)
    return answers


def largest_requests_first(run, requests, max_batch):
    """Sorts requests by size to pack better: a small request can wait forever behind big ones."""
    order = sorted(range(len(requests)), key=lambda index: -len(requests[index]))
    answers = reference_serve_requests(run, [requests[index] for index in order], max_batch)
    back = [None] * len(requests)
    for position, index in enumerate(order):
        back[index] = answers[position]
    return back


def full_pass_refused(run, requests, max_batch):
    """Off by one: a pass of exactly max_batch texts is closed one request early."""
    return reference_serve_requests(run, requests, max_batch - 1) if max_batch > 1 else reference_serve_requests(
        run, requests, max_batch)


def ignores_max_batch(run, requests, max_batch):
    """Everything in one pass, however large."""
    return reference_serve_requests(run, requests, 10**9)


def test_pack_checker_accepts_the_solution():
    assert check_serve_requests(reference_serve_requests).passed


def test_pack_checker_accepts_answers_as_lists():
    def as_lists(run, requests, max_batch):
        return [answer.tolist() for answer in reference_serve_requests(run, requests, max_batch)]

    assert check_serve_requests(as_lists).passed


@pytest.mark.parametrize("wrong", [mixes_up_answers, answers_in_reverse, one_pass_per_request, splits_requests,
                                   largest_requests_first, full_pass_refused, ignores_max_batch],
                         ids=lambda f: f.__name__)
def test_pack_checker_rejects(wrong):
    assert not check_serve_requests(wrong).passed


def test_pack_checker_names_the_mix_up():
    assert "rows that belong to other texts" in repr(check_serve_requests(mixes_up_answers))


def last_of_each_pass_left_none(run, requests, max_batch):
    """Answers kept in a list of placeholders, and the loop over a pass's requests stops one short."""
    answers = [None] * len(requests)
    for group in fifo_passes([len(texts) for texts in requests], max_batch):
        logits = run([text for index in group for text in requests[index]])
        start = 0
        for index in group[:-1]:
            answers[index] = logits[start:start + len(requests[index])]
            start += len(requests[index])
    return answers


def test_pack_checker_names_a_request_left_none_without_saying_still_dots():
    """Issue 23: an entry left None was told "still `...`: replace it with your answer", though the function had
    an answer and returned it."""
    report = check_serve_requests(last_of_each_pass_left_none)
    assert_rejected(report, "the answer to request 0 is None", "placeholder")
    assert "`...`" not in repr(report), report


@pytest.mark.parametrize("answer", [..., None, 3, lambda *args: [], lambda *args: 1 / 0, lambda *args: [None],
                                    lambda run, requests, max_batch: ["rows"] * len(requests)])
def test_pack_checker_never_raises(answer):
    assert not check_serve_requests(answer).passed


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: one failing request never fails its batch-mates


def reference_run_isolated(run, requests):
    try:
        return _shared(run, requests)
    except Exception:
        return always_one_by_one(run, requests)  # a failed shared pass: each request alone


def fails_everyone(run, requests):
    """The naive batcher: a failed pass fails every request in it."""
    try:
        return _shared(run, requests)
    except Exception as error:
        return [error] * len(requests)


def _shared(run, requests):
    logits = run([text for texts in requests for text in texts])
    answers, start = [], 0
    for texts in requests:
        answers.append(logits[start:start + len(texts)])
        start += len(texts)
    return answers


def lets_the_error_escape(run, requests):
    """No try at all: one poisoned request takes the whole batch (and the worker) down."""
    return _shared(run, requests)


def always_one_by_one(run, requests):
    """Isolated, but never batched: as many passes as requests even when nothing fails."""
    answers = []
    for texts in requests:
        try:
            answers.append(run(texts))
        except Exception as error:
            answers.append(error)
    return answers


def text_by_text(run, requests):
    """Re-runs every text alone after a failure: isolated, but a pass per text."""
    try:
        return _shared(run, requests)
    except Exception:
        answers = []
        for texts in requests:
            try:
                answers.append(torch.cat([run([text]) for text in texts]))
            except Exception as error:
                answers.append(error)
        return answers


def poisoned_get_zeros(run, requests):
    """The poisoned request gets rows of zeros, as if it had an answer."""
    answers = reference_run_isolated(run, requests)
    return [torch.zeros(len(texts), 2) if isinstance(answer, Exception) else answer
            for texts, answer in zip(requests, answers, strict=True)]


def offsets_from_the_end(run, requests):
    """Rows handed back from the end of the shared pass."""
    try:
        logits = run([text for texts in requests for text in texts])
    except Exception:
        return reference_run_isolated(run, requests)
    answers, end = [], len(logits)
    for texts in requests:
        answers.append(logits[end - len(texts):end])
        end -= len(texts)
    return answers


def test_isolation_checker_accepts_the_solution():
    assert check_run_isolated(reference_run_isolated).passed


@pytest.mark.parametrize(("wrong", "words"), [
    (fails_everyone, ("is fine but got", "on its own")), (lets_the_error_escape, ("raised", "ValueError")),
    (always_one_by_one, ("did not fail", "one shared pass")), (text_by_text, ("not each text",)),
    (poisoned_get_zeros, ("made the model fail", "exception")), (offsets_from_the_end, ("belong to other texts",)),
], ids=lambda value: getattr(value, "__name__", ""))
def test_isolation_checker_names_the_mistake(wrong, words):
    assert_rejected(check_run_isolated(wrong), *words)


def fine_requests_left_none(run, requests):
    """After a failed pass, only the poisoned requests get an entry: the others are never run again."""
    try:
        return _shared(run, requests)
    except Exception:
        answers = [None] * len(requests)
        for index, texts in enumerate(requests):
            try:
                run(texts)
            except Exception as error:
                answers[index] = error
        return answers


def test_isolation_checker_names_a_request_left_none_without_saying_still_dots():
    """Issue 23: a fine request whose entry stays None was told "still `...`"."""
    report = check_run_isolated(fine_requests_left_none)
    assert_rejected(report, "the answer to request 0 is None", "placeholder")
    assert "`...`" not in repr(report), report


def test_isolation_checker_does_not_say_still_dots_for_a_missing_return():
    def forgot_return(run, requests):
        reference_run_isolated(run, requests)

    shown = repr(check_run_isolated(forgot_return))
    assert "returned None" in shown and "`...`" not in shown


@pytest.mark.parametrize("answer", [..., None, 3, lambda *args: 1 / 0, lambda *args: [None],
                                    lambda run, requests: ["rows"] * len(requests), lambda *args: 7])
def test_isolation_checker_never_raises(answer):
    assert not check_run_isolated(answer).passed


def test_the_ratio_target_needs_every_pairing_of_runs_not_only_the_means():
    from behind_pipeline.service.bench import _ratio_met, ratio_range

    def runs(*values):
        return {"texts_per_second": sum(values) / len(values), "runs": [{"texts_per_second": v} for v in values]}

    steady = {"throughput_micro_batching": runs(90, 95, 100), "throughput_one_by_one": runs(40, 42, 44),
              "micro_batching_vs_one_by_one": 95 / 42}
    assert ratio_range(steady["throughput_micro_batching"], steady["throughput_one_by_one"]) == (90 / 44, 100 / 40)
    assert _ratio_met(steady)
    noisy = {**steady, "throughput_one_by_one": runs(63, 42, 43)}  # mean ratio 1.93, worst pairing 90 / 63 = 1.43
    assert noisy["throughput_micro_batching"]["texts_per_second"] / noisy["throughput_one_by_one"][
        "texts_per_second"] > 1.5 and not _ratio_met(noisy)
    assert not _ratio_met({**steady, "wrk_micro_batching": runs(50), "wrk_one_by_one": runs(40)})  # wrk counts too
