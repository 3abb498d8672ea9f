"""The FastAPI app: ``POST /predict``, ``GET /health`` and the generated OpenAPI docs (``/docs``).

Bad input never reaches the model and never costs a 500: the body's size and content type are checked before it
is read as JSON, each text's length before tokenization, and every refusal is a 4xx with a JSON body
``{"error": ..., "detail": ...}``. The model loads in a background thread, so ``/health`` answers (503, then
200) from the first moment, and forward passes run in the batcher's worker thread, so the event loop stays free.
"""

import asyncio
import json
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from behind_pipeline.pipeline_by_hand import ranked_labels, scores_from_logits
from behind_pipeline.service.batcher import MicroBatcher
from behind_pipeline.service.schemas import ErrorResponse, LabelScore, PredictRequest, PredictResponse
from behind_pipeline.service.settings import ServiceSettings


class RequestRefused(Exception):
    """A request the service will not run, with the status and the message its client gets."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def refusal(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail})


def load_model(settings: ServiceSettings):
    """(tokenizer, classifier, name) for the configured model; int8 when asked. Runs in a worker thread."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from behind_pipeline.models import classifier_id, describe

    torch.set_num_threads(settings.threads)
    model_id = settings.model or classifier_id()
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_id).eval()
    if settings.int8:
        from behind_pipeline.quantize import dynamic_int8

        classifier = dynamic_int8(classifier)
    return tokenizer, classifier, describe(model_id) + (" (dynamic int8)" if settings.int8 else "")


def parse_request(body: bytes, content_type: str, settings: ServiceSettings, num_labels: int) -> PredictRequest:
    """The validated request, or a RequestRefused saying exactly what is wrong. Nothing here tokenizes."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestRefused(415, "unsupported_media_type",
                             f"send the body as JSON with 'Content-Type: application/json', not {content_type!r}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestRefused(400, "invalid_utf8", f"the body is not valid UTF-8 (byte {error.start})") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestRefused(400, "malformed_json",
                             f"the body is not valid JSON: {error.msg} (character {error.pos})") from None
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise RequestRefused(422, "invalid_request",
                             f'{problems} (expected {{"texts": "a review" or ["review", ...], "top_k": 1}})') from None
    texts = [request.texts] if isinstance(request.texts, str) else request.texts
    if len(texts) > settings.max_texts:
        raise RequestRefused(413, "too_many_texts", f"{len(texts)} texts sent; at most {settings.max_texts} a request")
    for index, one in enumerate(texts):
        if not one.strip():
            raise RequestRefused(422, "empty_text", f"texts[{index}] is empty or only whitespace")
        if len(one) > settings.max_chars:
            raise RequestRefused(413, "text_too_long",
                                 f"texts[{index}] has {len(one)} characters; at most {settings.max_chars}")
    if request.top_k is not None and not 1 <= request.top_k <= num_labels:
        raise RequestRefused(422, "invalid_top_k", f"top_k must be between 1 and {num_labels}, or null for all")
    return request


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    from behind_pipeline.paths import configure_environment

    configure_environment()  # an entry point: caches inside the project, offline unless BTP_ONLINE=1
    settings = settings or ServiceSettings.from_environment()
    state: dict = {"ready": False, "error": None}

    def run_batch(texts: list[str]) -> torch.Tensor:
        from behind_pipeline.predict import predict_logits

        return predict_logits(state["classifier"], state["tokenizer"], texts, batch_size=settings.max_batch)

    async def load_in_background():
        try:
            tokenizer, classifier, name = await asyncio.to_thread(load_model, settings)
        except Exception as error:  # reported by /health, never a crash
            state["error"] = f"{type(error).__name__}: {error}"
            return
        state.update(tokenizer=tokenizer, classifier=classifier, name=name)
        state["batcher"] = MicroBatcher(run_batch, settings.max_batch, settings.max_wait_ms)
        state["batcher"].start()
        state["ready"] = True

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load_in_background())
        yield
        loading.cancel()
        if "batcher" in state:
            await state["batcher"].stop()

    app = FastAPI(title="Behind the Pipeline: review classifier", version="1.0", lifespan=lifespan,
                  description="The course's fresh/rotten classifier, served with micro-batching (chapter 18).")
    errors = {status: {"model": ErrorResponse} for status in (400, 413, 415, 422, 503)}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return refusal(error.status_code, "http_error", str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return refusal(422, "invalid_request", str(error.errors()))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):  # a bug of ours, still answered in JSON
        return refusal(500, "internal_error", f"{type(error).__name__}: the service failed on this request")

    @app.get("/health")
    async def health():
        if state["error"]:
            return refusal(503, "model_failed_to_load", state["error"])
        if not state["ready"]:
            return refusal(503, "loading", "the model is still loading; try again in a few seconds")
        stats = state["batcher"].stats
        return {"status": "ready", "model": state["name"], "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms, "forward_passes": stats.forward_passes,
                "texts_served": stats.texts, "largest_batch": stats.largest_batch,
                "busy_seconds": round(stats.busy_seconds, 3)}

    @app.post("/predict", response_model=PredictResponse, responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return refusal(413, "body_too_large", f"the body has {declared} bytes; at most {settings.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # counted while reading: a missing or false length cannot slip past
            body += chunk
            if len(body) > settings.max_body_bytes:
                return refusal(413, "body_too_large", f"the body is over {settings.max_body_bytes} bytes")
        if not state["ready"]:
            return refusal(503, "loading", "the model is still loading; try again in a few seconds")
        classifier = state["classifier"]
        try:
            parsed = parse_request(bytes(body), request.headers.get("content-type", ""), settings,
                                   classifier.config.num_labels)
        except RequestRefused as refused:
            return refusal(refused.status, refused.error, refused.detail)
        texts = [parsed.texts] if isinstance(parsed.texts, str) else parsed.texts
        try:
            logits = await asyncio.wait_for(state["batcher"].logits(texts), settings.request_timeout_s)
        except TimeoutError:
            return refusal(503, "timeout", f"no answer within {settings.request_timeout_s:.0f} s; the service is busy")
        id2label = classifier.config.id2label
        predictions = [[LabelScore(**entry) for entry in ranked_labels(scores, id2label, parsed.top_k)]
                       for scores in scores_from_logits(logits)]
        return PredictResponse(predictions=predictions, model=state["name"])

    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory behind_pipeline.service.app:app``: settings from the environment."""
    return create_app()
