"""What the service serves and the limits it enforces, read from environment variables once at start-up.

Every value is checked when the settings are made (:meth:`ServiceSettings.validate`): a service started with
``BTP_SERVICE_MAX_BATCH=0`` stops at start-up with a message naming the variable, instead of reporting itself
ready and failing every request.
"""

import os
from dataclasses import dataclass, fields


class SettingsError(ValueError):
    """A setting the service cannot run with; the message names the environment variable and the rule."""


def variable(name: str) -> str:
    """The environment variable of a settings field: ``BTP_SERVICE_<FIELD>`` in capitals."""
    return f"BTP_SERVICE_{name.upper()}"


@dataclass(frozen=True)
class ServiceSettings:
    """Every knob of the service; each field's environment variable is ``BTP_SERVICE_<FIELD>`` in capitals."""

    model: str = ""  # a folder or Hub id; empty: the course classifier (classifier_id())
    int8: bool = False  # serve the dynamic-int8 copy of the model (chapter 15): smaller and faster on CPU
    max_chars: int = 2000  # characters per text, checked before tokenization (the longest review has ~400)
    max_texts: int = 64  # texts per request
    # The request body, checked before JSON parsing; the default holds the largest body the schema accepts
    # (max_texts texts of max_chars characters, each escaped as \uXXXX\uXXXX: 12 bytes), so no schema-valid
    # request gets a 413 (tests/test_service.py checks it)
    max_body_bytes: int = 2 * 1024 * 1024
    max_batch: int = 32  # texts per forward pass: a pass never holds more
    max_batch_tokens: int = 4096  # padded tokens per pass (texts x the longest): long texts make smaller passes
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others (only under concurrent load)
    max_queue: int = 512  # texts waiting for a pass; a request that would exceed it gets 503 at once
    retry_after_s: int = 1  # the Retry-After a refused (overloaded) client is told
    request_timeout_s: float = 30.0  # a request still unanswered after this gets a 503
    threads: int = 2  # torch threads for the forward pass

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError naming every setting out of its range."""
        problems = []
        for name in ("max_chars", "max_texts", "max_body_bytes", "max_batch", "max_queue", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{variable(name)}={value!r}: a whole number of at least 1")
        if self.max_batch_tokens < 1:
            problems.append(f"{variable('max_batch_tokens')}={self.max_batch_tokens!r}: at least 1")
        if self.retry_after_s < 0:
            problems.append(f"{variable('retry_after_s')}={self.retry_after_s!r}: 0 or more")
        if not 0 <= self.max_wait_ms <= 1000:
            problems.append(f"{variable('max_wait_ms')}={self.max_wait_ms!r}: between 0 and 1000")
        if not self.request_timeout_s > 0:
            problems.append(f"{variable('request_timeout_s')}={self.request_timeout_s!r}: more than 0")
        if not problems and self.max_queue < self.max_texts:
            problems.append(f"{variable('max_queue')}={self.max_queue} is below {variable('max_texts')}="
                            f"{self.max_texts}: one full request could never be queued")
        if problems:
            raise SettingsError("invalid service settings: " + "; ".join(problems))

    @classmethod
    def from_environment(cls, environ=None) -> "ServiceSettings":
        """The settings from ``BTP_SERVICE_*`` variables (defaults for those unset); SettingsError if invalid."""
        environ = os.environ if environ is None else environ
        values, problems = {}, []
        for spec in fields(cls):
            raw = environ.get(variable(spec.name))
            if raw is None:
                continue
            kind = type(spec.default)
            if kind is bool:
                values[spec.name] = raw.strip().lower() in {"1", "true", "yes"}
            elif kind is str:
                values[spec.name] = raw
            else:
                try:
                    values[spec.name] = kind(raw)
                except ValueError:
                    problems.append(f"{variable(spec.name)}={raw!r}: not a {'whole ' if kind is int else ''}number")
        if problems:
            raise SettingsError("invalid service settings: " + "; ".join(problems))
        return cls(**values)
