"""What the service serves and the limits it enforces, read from environment variables once at start-up."""

import os
from dataclasses import dataclass


def _number(name: str, default, kind=int):
    return kind(os.environ.get(name, default))


@dataclass(frozen=True)
class ServiceSettings:
    """Every knob of the service; each field's environment variable is ``BTP_SERVICE_<FIELD>`` in capitals."""

    model: str = ""  # a folder or Hub id; empty: the course classifier (classifier_id())
    int8: bool = False  # serve the dynamic-int8 copy of the model (chapter 15): smaller and faster on CPU
    max_chars: int = 2000  # characters per text, checked before tokenization (the longest review has ~400)
    max_texts: int = 64  # texts per request
    max_body_bytes: int = 256 * 1024  # the request body, checked before JSON parsing
    max_batch: int = 32  # texts per forward pass that the micro-batcher may group
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others (only under concurrent load)
    request_timeout_s: float = 30.0  # a request still unanswered after this gets a 503
    threads: int = 2  # torch threads for the forward pass

    @classmethod
    def from_environment(cls) -> "ServiceSettings":
        return cls(
            model=os.environ.get("BTP_SERVICE_MODEL", ""),
            int8=os.environ.get("BTP_SERVICE_INT8", "0").lower() in {"1", "true", "yes"},
            max_chars=_number("BTP_SERVICE_MAX_CHARS", cls.max_chars),
            max_texts=_number("BTP_SERVICE_MAX_TEXTS", cls.max_texts),
            max_body_bytes=_number("BTP_SERVICE_MAX_BODY_BYTES", cls.max_body_bytes),
            max_batch=_number("BTP_SERVICE_MAX_BATCH", cls.max_batch),
            max_wait_ms=_number("BTP_SERVICE_MAX_WAIT_MS", cls.max_wait_ms, float),
            request_timeout_s=_number("BTP_SERVICE_REQUEST_TIMEOUT_S", cls.request_timeout_s, float),
            threads=_number("BTP_SERVICE_THREADS", cls.threads),
        )
