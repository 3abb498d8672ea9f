"""The served model (chapter 18): a real uvicorn server on a free loopback port, started and stopped here.

Every kind of bad input gets a 4xx with a JSON message and the server keeps serving; answers equal
``pipeline()``'s; concurrent clients lose no request; ``/health`` answers while a batch computes; overload is
refused at once with Retry-After; a failed pass fails only its own request; every response says which model
answered and carries a request id; ``/metrics`` counts it all. Every server started here is stopped here.
"""

import asyncio
import json
import time

import httpx
import pytest

from behind_pipeline.service.local import start_server

# Small limits keep the boundary cases cheap; the defaults are tested through ServiceSettings below.
LIMITS = {"BTP_SERVICE_MAX_CHARS": "200", "BTP_SERVICE_MAX_TEXTS": "8", "BTP_SERVICE_MAX_BODY_BYTES": "4096"}


@pytest.fixture(scope="module")
def reviews(splits):
    """Test reviews within the tests' 200-character limit."""
    return [text for text in splits["test"]["text"] if len(text) <= 200]


@pytest.fixture(scope="module")
def local_server():
    with start_server(LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def server(local_server):
    return local_server.url


def post(url: str, content: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{url}/predict", content=content, headers={"content-type": content_type}, timeout=30)


BAD_REQUESTS = {
    # name: (body, content type, expected status, expected error)
    "empty text": (b'{"texts": ""}', "application/json", 422, "empty_text"),
    "whitespace only": (b'{"texts": ["fine", " \\n\\t "]}', "application/json", 422, "empty_text"),
    "text over the limit": (b'{"texts": "' + b"a" * 201 + b'"}', "application/json", 413, "text_too_long"),
    "too many texts": (b'{"texts": [' + b",".join([b'"ok"'] * 9) + b"]}", "application/json", 413,
                       "too_many_texts"),
    "empty list": (b'{"texts": []}', "application/json", 422, "invalid_request"),
    "a number": (b'{"texts": 42}', "application/json", 422, "invalid_request"),
    "null": (b'{"texts": null}', "application/json", 422, "invalid_request"),
    "a number in the list": (b'{"texts": ["ok", 3]}', "application/json", 422, "invalid_request"),
    "nested lists": (b'{"texts": [["nested"]]}', "application/json", 422, "invalid_request"),
    "malformed JSON": (b'{"texts": "unclosed', "application/json", 400, "malformed_json"),
    "JSON that is not an object": (b'["a review"]', "application/json", 422, "invalid_request"),
    "missing field": (b'{"top_k": 1}', "application/json", 422, "invalid_request"),
    "unknown field": (b'{"texts": "ok", "topk": 2}', "application/json", 422, "invalid_request"),
    "invalid UTF-8": (b'{"texts": "caf\xe9"}', "application/json", 400, "invalid_utf8"),
    "wrong content type": (b"a review", "text/plain", 415, "unsupported_media_type"),
    "form content type": (b"texts=a+review", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    "top_k zero": (b'{"texts": "ok", "top_k": 0}', "application/json", 422, "invalid_top_k"),
    "top_k above the labels": (b'{"texts": "ok", "top_k": 3}', "application/json", 422, "invalid_top_k"),
    "top_k a string": (b'{"texts": "ok", "top_k": "2"}', "application/json", 422, "invalid_request"),
    "top_k a float": (b'{"texts": "ok", "top_k": 1.5}', "application/json", 422, "invalid_request"),
    "body over the limit": (b'{"texts": "' + b"a" * 5000 + b'"}', "application/json", 413, "body_too_large"),
    # Three bodies that gave a 500 when the JSON was read with json.loads: RecursionError, int-digits, surrogate.
    "deeply nested arrays": (b'{"texts": ' + b"[" * 2000 + b"]" * 2000 + b"}", "application/json", 400,
                             "malformed_json"),
    # (past Python's 4,300-digit limit json.loads raised; that body is over this server's 4,096 bytes, so it is
    # tested in tests/test_service_contract.py and on the default server in the chapter)
    "an integer of 1,900 digits": (b'{"texts": "ok", "top_k": ' + b"7" * 1900 + b"}", "application/json",
                                   422, "invalid_top_k"),
    "a lone surrogate escape": (b'{"texts": ["\\ud800"]}', "application/json", 400, "malformed_json"),
    "a lone low surrogate escape": (b'{"texts": "fine \\udc00"}', "application/json", 400, "malformed_json"),
    "a blank made of a Unicode space": ('{"texts": "\u3000\u2003"}'.encode(), "application/json", 422,
                                        "empty_text"),
    "a text over the limit once padded": (b'{"texts": " ' + b"a" * 199 + b' "}', "application/json", 413,
                                          "text_too_long"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(server, name):
    body, content_type, status, error = BAD_REQUESTS[name]
    response = post(server, body, content_type)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["detail"]
    assert post(server, b'{"texts": "Still here?"}').status_code == 200
    assert httpx.get(f"{server}/health", timeout=10).json()["status"] == "ready"


def test_limits_hold_exactly_at_their_boundary(server):
    assert post(server, b'{"texts": "' + b"a" * 200 + b'"}').status_code == 200
    assert post(server, b'{"texts": [' + b",".join([b'"ok"'] * 8) + b"]}").status_code == 200
    padded = b'{"texts": "ok"}'.ljust(4096)  # JSON allows trailing whitespace: exactly the byte limit
    assert post(server, padded).status_code == 200
    assert post(server, padded + b" ").json()["error"] == "body_too_large"


def test_the_largest_body_the_schema_accepts_is_under_the_default_byte_limit():
    """The schema cannot state a byte limit, so the default must not refuse what the schema accepts (issue 18)."""
    from behind_pipeline.service.app import parse_request
    from behind_pipeline.service.settings import ServiceSettings

    settings = ServiceSettings()
    widest = "\U0001F600" * settings.max_chars  # one character, 12 bytes escaped: \ud83d\ude00
    body = json.dumps({"texts": [widest] * settings.max_texts, "top_k": None}).encode()  # ASCII, every escape
    assert len(body) <= settings.max_body_bytes, (len(body), settings.max_body_bytes)
    request = parse_request(body, "application/json", settings, num_labels=2)  # one the service takes
    assert len(request.texts) == settings.max_texts


def test_unknown_routes_and_methods_answer_json_4xx(server):
    assert httpx.get(f"{server}/nowhere", timeout=10).status_code == 404
    wrong_method = httpx.get(f"{server}/predict", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "http_error"
    assert wrong_method.headers["allow"] == "POST"  # RFC 9110: a 405 names the methods that are allowed


def test_answers_equal_the_pipeline(server, reviews):
    from transformers import pipeline

    from behind_pipeline.models import classifier_id

    texts = reviews[:8]
    served = httpx.post(f"{server}/predict", json={"texts": texts, "top_k": None}, timeout=60).json()["predictions"]
    expected = pipeline("text-classification", model=classifier_id())(texts, top_k=None)
    for got, want in zip(served, expected, strict=True):
        assert [entry["label"] for entry in got] == [entry["label"] for entry in want]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want, strict=True)) < 1e-5
    one = httpx.post(f"{server}/predict", json={"texts": texts[0]}, timeout=60).json()["predictions"]
    assert len(one) == 1 and len(one[0]) == 1 and one[0][0]["label"] == expected[0][0]["label"]


async def _concurrent_clients(url: str, texts: list[str], clients: int, requests_each: int):
    """Each client sends its requests one after another; returns (client, request, text, labels) per answer."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async def client(number: int):
            answers = []
            for request in range(requests_each):
                text = texts[(number * requests_each + request) % len(texts)]
                response = await http.post("/predict", json={"texts": [text]})
                answers.append((text, response.status_code, response.json()))
            return answers

        return [answer for answers in await asyncio.gather(*(client(n) for n in range(clients))) for answer in answers]


def test_sixteen_concurrent_clients_lose_nothing_and_get_their_own_answers(server, reviews):
    texts = reviews[:48]
    alone = {text: httpx.post(f"{server}/predict", json={"texts": text}, timeout=60).json()["predictions"][0][0]
             for text in texts}
    passes_before = httpx.get(f"{server}/health", timeout=10).json()["forward_passes"]
    answers = asyncio.run(_concurrent_clients(server, texts, clients=16, requests_each=6))
    assert len(answers) == 96 and all(status == 200 for _, status, _ in answers)
    for text, _, body in answers:  # each answer belongs to its own text, not a neighbour's in the batch
        assert body["predictions"][0][0]["label"] == alone[text]["label"]
        assert abs(body["predictions"][0][0]["score"] - alone[text]["score"]) < 1e-5
    health = httpx.get(f"{server}/health", timeout=10).json()
    # Micro-batching at work: 96 requests took fewer forward passes than requests.
    assert health["forward_passes"] - passes_before < 96 and health["largest_batch"] > 1


def test_health_answers_while_a_batch_is_computing(server, reviews):
    long_texts = sorted(reviews, key=len)[-8:]

    async def race():
        async with httpx.AsyncClient(base_url=server, timeout=60) as http:
            order = []

            async def predict():
                await asyncio.gather(*(http.post("/predict", json={"texts": long_texts}) for _ in range(6)))
                order.append("predictions")

            async def health():
                await asyncio.sleep(0.05)  # once the first batch is running
                assert (await http.get("/health")).status_code == 200
                order.append("health")

            await asyncio.gather(predict(), health())
            return order

    assert asyncio.run(race()) == ["health", "predictions"]


def test_a_request_that_outlives_its_timeout_gets_503_and_the_server_recovers():
    with start_server(LIMITS | {"BTP_SERVICE_REQUEST_TIMEOUT_S": "0.000001"}) as running:
        response = post(running.url, b'{"texts": "too slow for a microsecond"}')
        assert response.status_code == 503 and response.json()["error"] == "timeout"
        assert httpx.get(f"{running.url}/health", timeout=10).status_code == 200
    assert not running.running  # leaving the `with` stopped the server


def test_a_server_that_cannot_start_says_why():
    with pytest.raises(RuntimeError, match="BTP_SERVICE_MAX_BATCH='many': not a whole number"):
        start_server({"BTP_SERVICE_MAX_BATCH": "many"}, timeout_s=60)


def test_settings_out_of_range_stop_the_server_at_start_up():
    """MAX_BATCH=0 used to give a server that said ready and answered every request with a 500."""
    with pytest.raises(RuntimeError, match="BTP_SERVICE_MAX_BATCH=0: a whole number of at least 1"):
        start_server({"BTP_SERVICE_MAX_BATCH": "0"}, timeout_s=60)


def test_requests_that_queued_during_a_pass_share_the_next_one():
    """Requests that arrive while a batch runs are already late for their wait: they must still be grouped."""
    import time

    import torch

    from behind_pipeline.service.batcher import MicroBatcher

    passes = []

    def run(texts):
        passes.append(len(texts))
        time.sleep(0.05)
        return torch.tensor([[float(len(text)), 0.0] for text in texts])  # row i tells which text it came from

    async def scenario():
        batcher = MicroBatcher(run, max_batch=32, max_wait_ms=1)
        batcher.start()
        first = asyncio.create_task(batcher.logits(["x"]))
        await asyncio.sleep(0.02)  # the first pass is running now
        rest = [asyncio.create_task(batcher.logits(["y" * n, "z" * (20 + n)])) for n in range(1, 11)]
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert passes == [1, 20]
    assert answers[0].tolist() == [[1.0, 0.0]]
    assert [answer[:, 0].tolist() for answer in answers[1:]] == [[n, 20 + n] for n in range(1, 11)]


def test_a_lone_request_is_not_kept_waiting_but_one_under_load_waits_for_company():
    import torch

    from behind_pipeline.service.batcher import MicroBatcher

    passes = []

    def run(texts):
        passes.append(len(texts))
        return torch.zeros(len(texts), 2)

    async def scenario():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=5000)  # a wait long enough to see, never to sit out
        batcher.start()
        await asyncio.wait_for(batcher.logits(["alone"]), 2)  # idle: no wait, answered at once
        await asyncio.gather(*(batcher.logits(["busy"]) for _ in range(4)))  # a batch with company: under load
        first = asyncio.create_task(batcher.logits(["opens a batch"]))
        await asyncio.sleep(0.1)  # the first waits for company; these three arrive later and fill its batch
        await asyncio.wait_for(asyncio.gather(first, *(batcher.logits(["joins"]) for _ in range(3))), 2)
        await batcher.stop()

    asyncio.run(scenario())
    assert passes == [1, 4, 4]


def test_settings_come_from_the_environment(monkeypatch):
    from behind_pipeline.service.settings import ServiceSettings

    assert ServiceSettings.from_environment() == ServiceSettings()
    monkeypatch.setenv("BTP_SERVICE_MAX_CHARS", "17")
    monkeypatch.setenv("BTP_SERVICE_INT8", "1")
    assert ServiceSettings.from_environment().max_chars == 17 and ServiceSettings.from_environment().int8


def test_every_response_names_the_model_and_its_fingerprint(server, classifier):
    from behind_pipeline.service.app import weights_fingerprint

    health = httpx.get(f"{server}/health", timeout=10).json()
    answer = httpx.post(f"{server}/predict", json={"texts": "A film."}, timeout=30).json()
    assert answer["model"] == health["model"]
    assert health["model"]["fingerprint"] == weights_fingerprint(classifier)  # the weights the tests load
    assert health["model"]["batch_invariant"] and health["warnings"] == []


def test_the_fingerprint_changes_with_the_weights(classifier):
    import copy

    import torch

    from behind_pipeline.service.app import weights_fingerprint

    changed = copy.deepcopy(classifier)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(changed) != weights_fingerprint(classifier)


def test_request_ids_are_kept_or_made_and_each_request_logs_one_json_line(local_server):
    url = local_server.url
    given = httpx.post(f"{url}/predict", json={"texts": ["a", "b"]}, timeout=30,
                                      headers={"X-Request-ID": "client-42"})
    assert given.headers["x-request-id"] == "client-42"
    made = httpx.post(f"{url}/predict", json={"texts": ""}, timeout=30, headers={"X-Request-ID": "bad id\x7f"})
    assert made.status_code == 422 and made.headers["x-request-id"] not in ("", "bad id\x7f")
    assert len({made.headers["x-request-id"], httpx.get(f"{url}/nowhere").headers["x-request-id"]}) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the log line is written just after the answer
        lines = [json.loads(line) for line in local_server.log_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") in ("client-42", made.headers["x-request-id"])]
        if len(mine) == 2:
            break
        time.sleep(0.1)
    assert [(line["request_id"], line["status"], line["texts"], line["path"]) for line in mine] == [
        ("client-42", given.status_code, 2, "/predict"), (made.headers["x-request-id"], 422, 0, "/predict")]
    assert all(line["latency_ms"] >= 0 for line in mine)


def test_metrics_count_requests_batches_and_the_queue(server):
    def sample(text: str, name: str, labels: str = "") -> float:
        for line in text.splitlines():
            if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = httpx.get(f"{server}/metrics", timeout=10).text
    for _ in range(3):
        httpx.post(f"{server}/predict", json={"texts": ["one", "two"]}, timeout=30)
    httpx.post(f"{server}/predict", json={"texts": 42}, timeout=30)
    after = httpx.get(f"{server}/metrics", timeout=10)
    assert after.headers["content-type"].startswith("text/plain")
    ok, refused = '{path="/predict",status="200"}', '{path="/predict",status="422"}'
    assert sample(after.text, "btp_requests_total", ok) - sample(before, "btp_requests_total", ok) == 3
    assert sample(after.text, "btp_requests_total", refused) - sample(before, "btp_requests_total", refused) == 1
    assert sample(after.text, "btp_batch_texts_sum") - sample(before, "btp_batch_texts_sum") == 6
    assert "btp_queue_texts 0.0" in after.text and "btp_failed_passes_total 0.0" in after.text
    assert sample(after.text, "btp_request_seconds_count", '{path="/predict"}') >= 4


def test_liveness_and_readiness_are_separate(server):
    assert httpx.get(f"{server}/health/live", timeout=10).json() == {"status": "alive"}
    assert httpx.get(f"{server}/health/ready", timeout=10).json()["status"] == "ready"


def test_a_model_that_fails_to_load_is_reported_as_failed_without_its_error_text(tmp_path):
    missing = tmp_path / "no-such-model"
    with start_server({"BTP_SERVICE_MODEL": str(missing)}, timeout_s=60, wait_for="/health/live") as running:
        health = httpx.get(f"{running.url}/health", timeout=10)
        predict = httpx.post(f"{running.url}/predict", json={"texts": "ok"}, timeout=10)
        assert httpx.get(f"{running.url}/health/live", timeout=10).status_code == 200
        assert running.running  # the process stays up: an operator can read why on /health and in the log
        log = running.log_text()
    assert health.status_code == 503 and health.json()["error"] == "model_unavailable"
    assert predict.status_code == 503 and predict.json()["error"] == "model_unavailable"
    assert "retry" not in health.headers and "no-such-model" not in health.text + predict.text  # no path leaks
    assert "no-such-model" in log  # ...but the operator's log has the full error


def test_overload_is_refused_at_once_with_retry_after_and_no_pass_exceeds_max_batch(reviews):
    tight = LIMITS | {"BTP_SERVICE_MAX_BATCH": "2", "BTP_SERVICE_MAX_QUEUE": "8", "BTP_SERVICE_RETRY_AFTER_S": "3"}

    async def flood(url):
        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     limits=httpx.Limits(max_connections=40)) as http:
            return await asyncio.gather(*(http.post("/predict", json={"texts": reviews[:8]}) for _ in range(40)))

    with start_server(tight) as running:
        answers = asyncio.run(flood(running.url))
        health = httpx.get(f"{running.url}/health", timeout=10).json()
        after = httpx.post(f"{running.url}/predict", json={"texts": reviews[:8]}, timeout=30)
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200, 503}, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["error"] == "overloaded" and answer.headers["retry-after"] == "3"
    assert health["refused_overloaded"] == statuses.count(503)
    assert health["largest_batch"] == 2 and health["texts_served"] % 2 == 0  # 8-text requests in passes of 2
    assert after.status_code == 200  # the flood is over: served again


def test_scores_of_int8_depend_on_batch_mates_and_fp32_do_not(classifier, tokenizer, reviews):
    """Dynamic int8 computes each activation scale over the whole pass: a text's score moves with its batch."""
    from behind_pipeline.predict import predict_logits
    from behind_pipeline.quantize import dynamic_int8

    text = reviews[0]
    mates = [text] + sorted(reviews, key=len)[-7:]  # long, different texts share the pass
    for model, moves in ((classifier, False), (dynamic_int8(classifier), True)):
        alone = predict_logits(model, tokenizer, [text]).softmax(-1)[0]
        batched = predict_logits(model, tokenizer, mates, batch_size=8).softmax(-1)[0]
        difference = float((alone - batched).abs().max())
        assert (difference > 1e-4) if moves else (difference < 1e-5), difference


def test_the_int8_service_says_its_scores_depend_on_the_batch():
    from fastapi.testclient import TestClient

    from behind_pipeline.service.app import create_app
    from behind_pipeline.service.settings import ServiceSettings

    with TestClient(create_app(ServiceSettings(int8=True))) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        health = client.get("/health").json()
        answer = client.post("/predict", json={"texts": "A film."}).json()
    assert health["model"]["batch_invariant"] is False and health["model"]["fingerprint"].endswith("+int8")
    assert "threshold" in health["warnings"][0] and answer["model"] == health["model"]


# ---- the batcher alone: passes, budget, isolation, the bounded queue (no model: rows say which text they are)


def _rows(items):
    import torch

    return torch.tensor([[float(len(item)), 0.0] for item in items])


def test_a_pass_never_exceeds_max_batch_nor_the_token_budget():
    from behind_pipeline.service.batcher import MicroBatcher

    passes = []

    def run(items):
        passes.append(list(items))
        return _rows(items)

    async def scenario():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=1, max_tokens=100)
        batcher.start()
        long = [("L" * n) for n in range(1, 11)]  # costs 50: at most 2 a pass
        short = [("s" * n) for n in range(1, 10)]  # costs 5: at most 4 a pass (max_batch)
        answers = await asyncio.gather(batcher.logits(long, [50] * 10), batcher.logits(short, [5] * 9))
        await batcher.stop()
        return long, short, answers

    long, short, answers = asyncio.run(scenario())
    assert answers[0][:, 0].tolist() == [len(text) for text in long]  # each request its own rows, in order
    assert answers[1][:, 0].tolist() == [len(text) for text in short]
    assert max(len(one) for one in passes) <= 4
    assert all(len(one) * max(50 if t.startswith("L") else 5 for t in one) <= 100 for one in passes)
    assert sorted(t for one in passes for t in one) == sorted(long + short)  # every text exactly once


def test_a_short_request_waits_for_one_bounded_pass_not_for_a_whole_long_request():
    """Head-of-line blocking: the rest of a long request goes behind requests that arrived meanwhile."""
    from behind_pipeline.service.batcher import MicroBatcher

    passes = []

    def run(items):
        passes.append(list(items))
        time.sleep(0.05)
        return _rows(items)

    async def scenario():
        batcher = MicroBatcher(run, max_batch=32, max_wait_ms=0, max_tokens=200)
        batcher.start()
        long = asyncio.create_task(batcher.logits(["L" * 20] * 16, [100] * 16))  # 8 passes of 2
        await asyncio.sleep(0.02)  # its first pass is running
        short = await batcher.logits(["s"], [3])
        await long
        await batcher.stop()
        return short

    assert asyncio.run(scenario()).tolist() == [[1.0, 0.0]]
    served_short = next(index for index, one in enumerate(passes) if "s" in one)
    assert served_short == 1  # the very next pass, not after the long request's other passes
    assert passes[served_short] == ["s"]  # and a pass of its own, not padded to the long request's texts
    assert sorted(text for one in passes for text in one) == sorted(["L" * 20] * 16 + ["s"])  # nothing lost


def test_one_failing_request_never_fails_its_batch_mates_under_concurrency():
    from behind_pipeline.service.batcher import MicroBatcher

    calls = []

    def run(items):
        calls.append(len(items))
        time.sleep(0.01)
        if "poison" in items:
            raise ValueError("the model cannot take this text")
        return _rows(items)

    async def scenario():
        batcher = MicroBatcher(run, max_batch=32, max_wait_ms=20)
        batcher.start()
        requests = [[f"r{n}", "x" * n] for n in range(12)]
        requests.insert(5, ["fine", "poison"])
        answers = await asyncio.gather(*(batcher.logits(texts) for texts in requests), return_exceptions=True)
        stats = batcher.stats
        await batcher.stop()
        return requests, answers, stats

    requests, answers, stats = asyncio.run(scenario())
    for texts, answer in zip(requests, answers, strict=True):
        if "poison" in texts:
            assert isinstance(answer, ValueError)
        else:
            assert answer.tolist() == _rows(texts).tolist()
    assert stats.failed_passes >= 2 and max(calls) > 2  # the shared pass failed, then the poisoned request alone


def test_a_full_queue_refuses_at_once_and_frees_up_again():
    from behind_pipeline.service.batcher import MicroBatcher, QueueFull

    release = __import__("threading").Event()

    def run(items):
        release.wait(5)
        return _rows(items)

    async def scenario():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=0, max_queue=6)
        batcher.start()
        first = asyncio.create_task(batcher.logits(["a"] * 4))  # taken into the blocked pass
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(batcher.logits(["b"] * 6))  # fills the queue exactly
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.logits(["c"])
        release.set()
        await asyncio.gather(first, waiting)
        again = await batcher.logits(["d"] * 6)
        await batcher.stop()
        return batcher.stats.refused_full, again

    refused, again = asyncio.run(scenario())
    assert refused == 1 and again.shape == (6, 2)


def test_settings_are_checked_when_made():
    from behind_pipeline.service.settings import ServiceSettings, SettingsError

    for bad in ({"max_batch": 0}, {"max_queue": 4, "max_texts": 8}, {"max_wait_ms": float("nan")},
                {"request_timeout_s": 0}, {"max_batch_tokens": -1}):
        with pytest.raises(SettingsError, match="BTP_SERVICE_"):
            ServiceSettings(**bad)
    with pytest.raises(SettingsError, match="BTP_SERVICE_THREADS='two'"):
        ServiceSettings.from_environment({"BTP_SERVICE_THREADS": "two"})
    assert ServiceSettings.from_environment({"BTP_SERVICE_MAX_QUEUE": "64"}).max_queue == 64
