"""The served model (chapter 18): a real uvicorn server on a free loopback port, started and stopped here.

Every kind of bad input gets a 4xx with a JSON message and the server keeps serving; answers equal
``pipeline()``'s; concurrent clients lose no request; ``/health`` answers while a batch computes.
"""

import asyncio

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
def server():
    with start_server(LIMITS) as running:
        yield running.url


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


def test_unknown_routes_and_methods_answer_json_4xx(server):
    assert httpx.get(f"{server}/nowhere", timeout=10).status_code == 404
    wrong_method = httpx.get(f"{server}/predict", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "http_error"


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
    with pytest.raises(RuntimeError, match="invalid literal for int"):
        start_server({"BTP_SERVICE_MAX_BATCH": "many"}, timeout_s=60)


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
