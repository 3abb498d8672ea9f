"""Chapter 18: the local-server helpers, the service benchmark's file, and checkers that grade fairly.

Each checker must accept the reference answer and valid alternatives, reject the typical wrong answers named
below (each named after the mistake it models), and never raise, whatever the learner returns. The service itself
(every bad input, parity with ``pipeline()``, load) is tested in ``tests/test_service.py``.
"""

import asyncio
import json

import pytest
import torch

from behind_pipeline.checks.ch18_serving import (
    check_guarded_encode,
    check_predict_within,
    check_serve_requests,
    fifo_passes,
)
from behind_pipeline.service import bench
from behind_pipeline.service.app import RequestRefused

# ---------------------------------------------------------------------------------------------------------------
# The service benchmark writes only its own section


def test_write_section_keeps_the_other_sections(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"variants": {"fp32": {"accuracy": 0.83}}, "service": {"old": True}}))
    bench.write_section({"run": "tiny"}, path)
    assert json.loads(path.read_text()) == {"variants": {"fp32": {"accuracy": 0.83}}, "service": {"run": "tiny"}}


def test_write_section_refuses_a_file_that_is_not_a_dict_of_sections(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        bench.write_section({"run": "tiny"}, path)
    assert path.read_text() == "[1, 2]"


def test_percentiles_are_in_milliseconds():
    figures = bench.percentiles_ms([0.010] * 19 + [0.110])
    assert figures == {"p50_ms": 10.0, "p95_ms": 15.0, "requests": 20}


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
        assert 0 < latency["p50_ms"] <= latency["p95_ms"] and latency["requests"] == bench.SIZES["tiny"][
            "latency_requests"]
        for mode in ("throughput_micro_batching", "throughput_one_by_one"):
            run = figures[mode]
            assert run["texts_per_second"] > 0 and run["failed"] == 0
            assert run["requests"] == bench.CLIENTS * bench.SIZES["tiny"]["requests_per_client"]
        assert figures["throughput_one_by_one"]["largest_batch"] == 1  # max_batch=1 really served one by one
        ratio = figures["throughput_micro_batching"]["texts_per_second"] / figures["throughput_one_by_one"][
            "texts_per_second"]
        assert figures["micro_batching_vs_one_by_one"] == pytest.approx(ratio, abs=0.01)
        assert figures[f"in_process_batch_{bench.IN_PROCESS_BATCH}_texts_per_second"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: a guard in front of the tokenizer


def _refuse(status, error, detail="see the limits"):
    raise RequestRefused(status, error, detail)


def reference_guarded_encode(texts, tokenizer, max_chars, max_texts, max_total_chars):
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        _refuse(422, "invalid_request")
    if len(texts) > max_texts:
        _refuse(413, "too_many_texts")
    for text in texts:
        if not text.strip():
            _refuse(422, "empty_text")
        if len(text) > max_chars:
            _refuse(413, "text_too_long")
    if sum(len(text) for text in texts) > max_total_chars:
        _refuse(413, "request_too_long")
    return tokenizer(texts, truncation=True)


def limit_checked_after_tokenization(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """Tokenizes first, then checks: every refused request already cost a tokenization."""
    encoding = tokenizer([texts] if isinstance(texts, str) else texts, truncation=True)
    reference_guarded_encode(texts, _NoTokenizer(), max_chars, max_texts, max_total_chars)
    return encoding


class _NoTokenizer:
    def __call__(self, *args, **kwargs):
        return {}


def limit_in_tokens(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """Measures each text in tokens: few long words pass a character limit they break."""
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        _refuse(422, "invalid_request")
    if len(texts) > max_texts:
        _refuse(413, "too_many_texts")
    encoding = tokenizer(texts, truncation=True)
    for text, ids in zip(texts, encoding["input_ids"], strict=True):
        if not text.strip():
            _refuse(422, "empty_text")
        if len(ids) > max_chars:
            _refuse(413, "text_too_long")
    if sum(len(text) for text in texts) > max_total_chars:
        _refuse(413, "request_too_long")
    return encoding


def off_by_one_at_the_limit(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """``>=`` instead of ``>``: a text of exactly max_chars is refused."""
    return reference_guarded_encode(texts, tokenizer, max_chars - 1, max_texts, max_total_chars)


def limit_in_bytes(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """Counts UTF-8 bytes: an accented review of max_chars characters is refused."""
    as_list = [texts] if isinstance(texts, str) else texts
    if isinstance(as_list, list) and any(isinstance(t, str) and len(t.encode()) > max_chars for t in as_list):
        _refuse(413, "text_too_long")
    return reference_guarded_encode(texts, tokenizer, max_chars, max_texts, max_total_chars)


def whitespace_accepted(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """Refuses "" but lets "  \\n" through to the model."""
    as_list = [texts] if isinstance(texts, str) else texts
    if isinstance(as_list, list) and all(isinstance(t, str) for t in as_list) and as_list and all(as_list):
        as_list = [t if t.strip() else "x" for t in as_list]
        reference_guarded_encode(as_list, _NoTokenizer(), max_chars, max_texts, max_total_chars)
        return tokenizer([texts] if isinstance(texts, str) else texts, truncation=True)
    return reference_guarded_encode(texts, tokenizer, max_chars, max_texts, max_total_chars)


def no_total_limit(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """Forgets the new limit on the request's total characters."""
    return reference_guarded_encode(texts, tokenizer, max_chars, max_texts, 10**9)


def wrong_status_for_too_long(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """Refuses an over-long text with 422 rather than 413 (payload too large)."""
    try:
        return reference_guarded_encode(texts, tokenizer, max_chars, max_texts, max_total_chars)
    except RequestRefused as refused:
        if refused.error == "text_too_long":
            _refuse(422, "text_too_long")
        raise


def raises_value_error(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """Refuses with a plain exception the app cannot turn into a 4xx."""
    try:
        return reference_guarded_encode(texts, tokenizer, max_chars, max_texts, max_total_chars)
    except RequestRefused as refused:
        raise ValueError(refused.detail) from None


def tokenizes_one_by_one(texts, tokenizer, max_chars, max_texts, max_total_chars):
    """One tokenizer call per text, then stitched together."""
    reference_guarded_encode(texts, _NoTokenizer(), max_chars, max_texts, max_total_chars)
    texts = [texts] if isinstance(texts, str) else texts
    return {"input_ids": [tokenizer(text, truncation=True)["input_ids"] for text in texts]}


def test_guard_checker_accepts_the_solution():
    assert check_guarded_encode(reference_guarded_encode).passed


@pytest.mark.parametrize("wrong", [limit_checked_after_tokenization, limit_in_tokens, off_by_one_at_the_limit,
                                   limit_in_bytes, whitespace_accepted, no_total_limit, wrong_status_for_too_long,
                                   raises_value_error, tokenizes_one_by_one], ids=lambda f: f.__name__)
def test_guard_checker_rejects(wrong):
    assert not check_guarded_encode(wrong).passed


def test_guard_checker_names_the_tokenization_before_the_limits():
    shown = repr(check_guarded_encode(limit_checked_after_tokenization))
    assert "only after calling the tokenizer" in shown


@pytest.mark.parametrize("answer", [..., None, 42, lambda *args, **kwargs: None,
                                    lambda *args, **kwargs: 1 / 0, lambda *args, **kwargs: "encoding"])
def test_guard_checker_never_raises(answer):
    assert not check_guarded_encode(answer).passed


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


@pytest.mark.parametrize("answer", [..., None, 3, lambda *args: [], lambda *args: 1 / 0, lambda *args: [None],
                                    lambda run, requests, max_batch: ["rows"] * len(requests)])
def test_pack_checker_never_raises(answer):
    assert not check_serve_requests(answer).passed


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: a timeout that leaves the batcher serving


async def reference_predict_within(batcher, texts, timeout_s):
    try:
        return await asyncio.wait_for(batcher.logits(texts), timeout_s)
    except TimeoutError:
        return None


async def timeout_kills_the_worker(batcher, texts, timeout_s):
    """Stops the batcher's worker when time is up: every other request then waits forever."""
    try:
        return await asyncio.wait_for(batcher.logits(texts), timeout_s)
    except TimeoutError:
        batcher.worker.cancel()
        return None


async def no_timeout(batcher, texts, timeout_s):
    """Ignores the timeout: the answer comes, however late."""
    return await batcher.logits(texts)


async def timeout_escapes(batcher, texts, timeout_s):
    """Lets TimeoutError escape instead of returning None."""
    return await asyncio.wait_for(batcher.logits(texts), timeout_s)


async def work_left_queued(batcher, texts, timeout_s):
    """Stops waiting but never cancels: the late text still costs a forward pass nobody reads."""
    task = asyncio.ensure_future(batcher.logits(texts))
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    return task.result() if done else None


def not_async(batcher, texts, timeout_s):
    """A plain function: it cannot await the batcher."""
    return None


def test_timeout_checker_accepts_the_solution():
    assert check_predict_within(reference_predict_within).passed


def test_timeout_checker_accepts_asyncio_timeout():
    async def with_timeout_block(batcher, texts, timeout_s):
        try:
            async with asyncio.timeout(timeout_s):
                return await batcher.logits(texts)
        except TimeoutError:
            return None

    assert check_predict_within(with_timeout_block).passed


@pytest.mark.parametrize("wrong", [timeout_kills_the_worker, no_timeout, timeout_escapes, work_left_queued,
                                   not_async], ids=lambda f: f.__name__)
def test_timeout_checker_rejects(wrong):
    assert not check_predict_within(wrong).passed


def test_timeout_checker_names_the_killed_worker():
    assert "stopped the batcher's worker" in repr(check_predict_within(timeout_kills_the_worker))


def test_timeout_checker_names_the_work_left_queued():
    assert "still went through the model" in repr(check_predict_within(work_left_queued))


@pytest.mark.parametrize("answer", [..., None, 7])
def test_timeout_checker_never_raises(answer):
    assert not check_predict_within(answer).passed


def test_timeout_checker_never_raises_on_a_raising_coroutine():
    async def raises(batcher, texts, timeout_s):
        raise RuntimeError("boom")

    async def returns_a_string(batcher, texts, timeout_s):
        return "logits"

    assert not check_predict_within(raises).passed
    assert not check_predict_within(returns_a_string).passed
