"""The FastAPI app: ``POST /predict``, the health endpoints, ``/metrics`` and the generated OpenAPI docs (``/docs``).

Bad input never reaches the model and never costs a 500: the body's size is checked while it is read (a 413 as soon
as it passes the limit), its content type before it is parsed, the bytes are parsed and typed in one step that
cannot recurse or raise anything but its own error (pydantic's ``model_validate_json``), each limit is checked
before tokenization, and each text is tokenized on its own request's account before it joins a batch. Every refusal
is a 4xx (or a 503 when overloaded) with a JSON body ``{"error": ..., "detail": ...}``, and every limit on the
texts and ``top_k`` is declared in the OpenAPI document (the body's byte limit cannot be; its default holds the
largest body the schema accepts).

The model loads in a background thread and is warmed up with one forward pass before ``/health/ready`` says 200;
``/health/live`` answers 200 as long as the process runs. Forward passes run in the batcher's worker thread, so
the event loop stays free. Every response carries an ``X-Request-ID``; every request writes one JSON log line;
``/metrics`` serves Prometheus counters and histograms.
"""

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from behind_pipeline.pipeline_by_hand import ranked_labels, scores_from_logits
from behind_pipeline.service.batcher import MicroBatcher, QueueFull
from behind_pipeline.service.schemas import (
    ErrorResponse,
    LabelScore,
    PredictRequest,
    PredictResponse,
    Route,
    Routing,
    ServedModel,
    is_blank,
    request_model,
)
from behind_pipeline.service.settings import ServiceSettings

LOG = logging.getLogger("behind_pipeline.service")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's X-Request-ID is kept only when it looks like one
WARM_UP_TEXT = "A warm-up review: the first real request must not pay for lazy initialisation."
INT8_WARNING = ("dynamic int8 computes each activation scale over the whole forward pass, so a text's scores move "
                "slightly with the other texts batched with it (chapter 15): do not put a hard threshold on them")


class RequestRefused(Exception):
    """A request the service will not run, with the status and the message its client gets."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def refusal(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail}, headers=headers)


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The request's body, or a RequestRefused (413) as soon as it is over ``max_body_bytes``: the declared length
    is checked before reading, and the bytes are counted while reading (a missing or false length cannot slip
    past)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise RequestRefused(413, "body_too_large", f"the body has {declared[:20]} bytes; at most {max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise RequestRefused(413, "body_too_large", f"the body is over {max_body_bytes} bytes")
    return bytes(body)


def answer(logits: torch.Tensor, id2label: dict, top_k: int | None, served: ServedModel) -> PredictResponse:
    """The response body: each text's ``top_k`` labels with their softmax scores, best first, and the model.

    For a router (``served.routing``, chapter 19) the scores are calibrated, softmax(logits / temperature), and
    each text also gets its route: its queue, or "to a person" below the threshold, with that confidence.
    """
    routes = None
    if served.routing is None:
        scores = scores_from_logits(logits)
    else:
        from behind_pipeline.capstone.triage import routes as route_each

        scores = scores_from_logits(logits.double() / served.routing.temperature)
        routes = [Route(**route) for route in route_each(scores.numpy(), served.routing.threshold, id2label)]
    predictions = [[LabelScore(**entry) for entry in ranked_labels(row, id2label, top_k)] for row in scores]
    return PredictResponse(predictions=predictions, routes=routes, model=served)


def error_responses() -> dict:
    """The OpenAPI ``responses`` of ``POST /predict``: every refusal has the ErrorResponse shape."""
    errors = {status: {"model": ErrorResponse} for status in (400, 413, 415, 422, 500)}
    errors[503] = {"model": ErrorResponse, "description": "overloaded, timed out, or the model is not ready; "
                   "retry after the Retry-After header's seconds when there is one"}
    return errors


def add_error_handlers(app: FastAPI) -> None:
    """FastAPI's own refusals (404, 405, a body it could not validate) in the same JSON shape as ours."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # 404, 405 (its Allow header kept)
        return refusal(error.status_code, "http_error", str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return refusal(422, "invalid_request", str(error.errors())[:500])


def weights_fingerprint(model) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes): 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if isinstance(tensor, torch.Tensor):
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_routing(settings: ServiceSettings) -> Routing | None:
    """The triage settings saved beside a router's weights (chapter 19's ``triage.json``); None for a classifier."""
    from pathlib import Path

    from behind_pipeline.models import classifier_id

    folder = Path(settings.model or classifier_id())
    if not (folder / "triage.json").is_file():  # capstone.triage.TRIAGE_FILE: a classifier's start-up skips the import
        return None
    from behind_pipeline.capstone.triage import read_triage

    saved = read_triage(folder)
    return None if saved is None else Routing(**{name: saved[name] for name in Routing.model_fields})


def load_model(settings: ServiceSettings):
    """(tokenizer, classifier, ServedModel) for the configured model; int8 when asked. Runs in a worker thread."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from behind_pipeline.models import classifier_id, describe

    torch.set_num_threads(settings.threads)
    model_id = settings.model or classifier_id()
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_id).eval()
    fingerprint = weights_fingerprint(classifier)
    if settings.int8:
        from behind_pipeline.quantize import dynamic_int8

        classifier = dynamic_int8(classifier)
    served = ServedModel(name=describe(model_id) + (" (dynamic int8)" if settings.int8 else ""),
                         fingerprint=fingerprint + ("+int8" if settings.int8 else ""),
                         batch_invariant=not settings.int8, routing=load_routing(settings))
    if served.routing is not None:  # a router reads the token window it was trained and scored with
        tokenizer.model_max_length = served.routing.max_length
    return tokenizer, classifier, served


def parse_request(body: bytes, content_type: str, settings: ServiceSettings, num_labels: int,
                  truncate: bool = False) -> PredictRequest:
    """The validated request, or a RequestRefused saying exactly what is wrong. Nothing here tokenizes.

    ``truncate`` (a router, which reads only its first ``max_length`` tokens): no text is refused for its length;
    the body's byte limit still bounds the work.

    Any bytes at all give one or the other: the JSON is parsed by pydantic's parser (in Rust, with a depth limit),
    never by ``json.loads``, so deep nesting, huge numbers or odd escapes are a 400, not a RecursionError.
    """
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestRefused(415, "unsupported_media_type",
                             f"send the body as JSON with 'Content-Type: application/json', not {content_type[:80]!r}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestRefused(400, "invalid_utf8", f"the body is not valid UTF-8 (byte {error.start})") from None
    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        if problems and problems[0]["type"] == "json_invalid":
            reason = problems[0].get("ctx", {}).get("error", problems[0]["msg"])
            raise RequestRefused(400, "malformed_json", f"the body is not valid JSON: {str(reason)[:200]}") from None
        described = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in problems[:5])
        raise RequestRefused(422, "invalid_request",
                             f'{described} (expected {{"texts": "a review" or ["review", ...], "top_k": 1}})') from None
    texts = [request.texts] if isinstance(request.texts, str) else request.texts
    if len(texts) > settings.max_texts:
        raise RequestRefused(413, "too_many_texts", f"{len(texts)} texts sent; at most {settings.max_texts} a request")
    for index, one in enumerate(texts):
        if not truncate and len(one) > settings.max_chars:  # len() of the text as sent, before any stripping
            raise RequestRefused(413, "text_too_long",
                                 f"texts[{index}] has {len(one)} characters; at most {settings.max_chars}")
        if is_blank(one):
            raise RequestRefused(422, "empty_text", f"texts[{index}] is empty or only whitespace")
        try:
            one.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: no tokenizer can encode it
            raise RequestRefused(422, "unencodable_text",
                                 f"texts[{index}] has an unpaired surrogate at character {error.start}") from None
    if request.top_k is not None and not 1 <= request.top_k <= num_labels:
        raise RequestRefused(422, "invalid_top_k", f"top_k must be between 1 and {num_labels}, or null for all")
    return request


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (several apps can live in one process)."""

    def __init__(self, queue_depth):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("btp_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("btp_request_seconds", "Time from the request's arrival to its answer",
                                 ["path"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("btp_batch_texts", "Texts per forward pass", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.failed_passes = Counter("btp_failed_passes", "Forward passes that raised", registry=self.registry)
        self.queue = Gauge("btp_queue_texts", "Texts waiting for a forward pass", registry=self.registry)
        self.queue.set_function(queue_depth)

    def on_pass(self, size: int, seconds: float, failed: bool) -> None:
        if failed:
            self.failed_passes.inc()
        else:
            self.batch.observe(size)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    from behind_pipeline.paths import configure_environment

    configure_environment()  # an entry point: caches inside the project, offline unless BTP_ONLINE=1
    settings = settings or ServiceSettings.from_environment()  # SettingsError here: the server does not start
    if not LOG.handlers:  # one JSON line per request on stderr, whatever uvicorn's own log level
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False
    state: dict = {"status": "loading"}
    routing = None
    try:
        num_labels = _num_labels(settings)
        routing = load_routing(settings)
    except Exception:  # no model to read: the server still starts, and says so on /health
        LOG.exception(json.dumps({"event": "model_failed_to_load"}))
        state["status"], num_labels = "failed", 2
    # a router truncates every text to its token window (load_model), so no text is refused for its length
    documented = request_model(None if routing else settings.max_chars, settings.max_texts, num_labels)
    metrics = Metrics(lambda: state["batcher"].queued if "batcher" in state else 0)

    def run_batch(token_ids: list[list[int]]) -> torch.Tensor:
        padded = state["tokenizer"].pad({"input_ids": token_ids}, return_tensors="pt")
        with torch.inference_mode():
            return state["classifier"](**padded).logits.float()

    async def load_in_background():
        try:
            tokenizer, classifier, served = await asyncio.to_thread(load_model, settings)
            state.update(tokenizer=tokenizer, classifier=classifier, served=served)
            warm = await asyncio.to_thread(lambda: tokenizer([WARM_UP_TEXT] * 2, truncation=True)["input_ids"])
            await asyncio.to_thread(run_batch, warm)  # lazy initialisation happens here, not in a client's request
        except Exception:  # reported by /health as failed, logged in full for the operator, never sent to clients
            LOG.exception(json.dumps({"event": "model_failed_to_load"}))
            state["status"] = "failed"
            return
        state["batcher"] = MicroBatcher(run_batch, settings.max_batch, settings.max_wait_ms,
                                        max_tokens=settings.max_batch_tokens, max_queue=settings.max_queue,
                                        on_pass=metrics.on_pass)
        state["batcher"].start()
        state["status"] = "ready"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load_in_background() if state["status"] == "loading" else asyncio.sleep(0))
        yield
        loading.cancel()
        if "batcher" in state:
            await state["batcher"].stop()

    app = FastAPI(title="Behind the Pipeline: review classifier", version="2.0", lifespan=lifespan,
                  description="The course's fresh/rotten classifier, served with micro-batching (chapter 18).")
    errors = error_responses()

    def not_ready() -> JSONResponse:
        if state["status"] == "failed":
            return refusal(503, "model_unavailable", "the model failed to load; the operator must fix the server "
                           "(retrying will not help)")
        return refusal(503, "loading", "the model is still loading; try again in a few seconds",
                       {"Retry-After": str(max(1, settings.retry_after_s))})

    @app.middleware("http")
    async def request_id_log_and_metrics(request: Request, call_next):
        given = request.headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.state.texts = 0
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # a bug of ours: still a JSON answer with the request id, and logged in full
            LOG.exception(json.dumps({"request_id": request_id, "event": "unhandled_error"}))
            response = refusal(500, "internal_error", "the service failed on this request; quote its request id")
        seconds = time.perf_counter() - started
        response.headers["X-Request-ID"] = request_id
        route = request.url.path if request.url.path in KNOWN_PATHS else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        LOG.info(json.dumps({"request_id": request_id, "method": request.method, "path": request.url.path[:200],
                             "status": response.status_code, "texts": request.state.texts,
                             "latency_ms": round(seconds * 1000, 2)}))
        return response

    add_error_handlers(app)

    @app.get("/health/live", responses={200: {"description": "the process is up (it may still be loading)"}})
    async def live():
        """Liveness: 200 while the process answers at all. Restart the process only when this fails."""
        return {"status": "alive"}

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    @app.get("/health/ready", responses={503: {"model": ErrorResponse}})
    async def ready():
        """Readiness: 200 once the model is loaded and warmed up; 503 ``loading`` before, ``model_unavailable``
        when it failed to load. Send traffic only on 200."""
        if state["status"] != "ready":
            return not_ready()
        stats = state["batcher"].stats
        served = state["served"]
        return {"status": "ready", "model": served.model_dump(exclude_none=True),
                "warnings": [] if served.batch_invariant else [INT8_WARNING],
                "max_batch": settings.max_batch, "max_batch_tokens": settings.max_batch_tokens,
                "max_wait_ms": settings.max_wait_ms, "max_queue": settings.max_queue,
                "queued_texts": state["batcher"].queued, "forward_passes": stats.forward_passes,
                "failed_passes": stats.failed_passes, "refused_overloaded": stats.refused_full,
                "texts_served": stats.texts, "largest_batch": stats.largest_batch,
                "busy_seconds": round(stats.busy_seconds, 3)}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=PredictResponse, responses=errors, response_model_exclude_none=True,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": documented.model_json_schema()}}}})
    async def predict(request: Request):
        try:
            body = await read_body(request, settings.max_body_bytes)
        except RequestRefused as refused:
            return refusal(refused.status, refused.error, refused.detail)
        if state["status"] != "ready":
            return not_ready()
        try:
            parsed = parse_request(body, request.headers.get("content-type", ""), settings, num_labels,
                                   truncate=routing is not None)
        except RequestRefused as refused:
            return refusal(refused.status, refused.error, refused.detail)
        texts = [parsed.texts] if isinstance(parsed.texts, str) else parsed.texts
        request.state.texts = len(texts)
        try:  # tokenized on this request's own account: a text the tokenizer refuses fails no batch-mate
            token_ids = await asyncio.to_thread(lambda: state["tokenizer"](texts, truncation=True)["input_ids"])
        except Exception:
            return refusal(422, "untokenizable_text", "the tokenizer could not encode these texts")
        try:
            logits = await asyncio.wait_for(state["batcher"].logits(token_ids, [len(ids) for ids in token_ids]),
                                            settings.request_timeout_s)
        except QueueFull as full:
            return refusal(503, "overloaded", f"the service is at capacity ({full}); retry later",
                           {"Retry-After": str(settings.retry_after_s)})
        except TimeoutError:
            return refusal(503, "timeout", f"no answer within {settings.request_timeout_s:g} s; the service is busy",
                           {"Retry-After": str(settings.retry_after_s)})
        except Exception:  # the model failed on this request alone (the batcher isolated it)
            LOG.exception(json.dumps({"event": "forward_pass_failed"}))
            return refusal(500, "internal_error", "the model failed on this request; the others were served")
        return answer(logits, state["classifier"].config.id2label, parsed.top_k, state["served"])

    KNOWN_PATHS = {"/predict", "/health", "/health/live", "/health/ready", "/metrics"}
    return app


def _num_labels(settings: ServiceSettings) -> int:
    """The model's number of labels, from its config alone (fast), for the schema's ``top_k`` bound."""
    from transformers import AutoConfig

    from behind_pipeline.models import classifier_id

    return AutoConfig.from_pretrained(settings.model or classifier_id()).num_labels


def app() -> FastAPI:
    """Factory for ``uvicorn --factory behind_pipeline.service.app:app``: settings from the environment."""
    return create_app()
