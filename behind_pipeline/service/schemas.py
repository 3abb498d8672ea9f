"""Request and response bodies of ``POST /predict``: strict types, and every limit declared in the schema.

``request_model(settings, num_labels)`` builds the request body's pydantic model with the service's own limits
(characters per text, texts per request, ``top_k`` between 1 and the number of labels, no blank text), so the
OpenAPI document at ``/openapi.json`` tells a client exactly what the service accepts. The app parses the raw
bytes with that model's ``model_validate_json``: one step that neither recurses in Python nor raises anything but
a ``ValidationError``, whatever the bytes.
"""

import re
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    create_model,
)

# Blank means made only of these characters: Python's str.isspace() set together with JSON Schema's (ECMAScript)
# \s, written out so the schema's pattern and the service's check agree on every character.
BLANK = ("\t\n\v\f\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
         "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff")
NOT_BLANK_PATTERN = "[^" + "".join(f"\\u{ord(char):04x}" for char in BLANK) + "]"
_NOT_BLANK = re.compile(NOT_BLANK_PATTERN)


def _json_integer(value):
    """JSON Schema's ``integer``: a number with no fractional part (so 2.0 is 2), never a string or a boolean."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # anything else goes on to StrictInt, which refuses it


JsonInt = Annotated[StrictInt, BeforeValidator(_json_integer)]


def is_blank(text: str) -> bool:
    """True when ``text`` has no character outside :data:`BLANK` (the schema's ``pattern`` says the same)."""
    return _NOT_BLANK.search(text) is None


class PredictRequest(BaseModel):
    """The body's shape and types only: what ``parse_request`` reads the bytes into before checking each limit
    with its own status and message (the documented schema, :func:`request_model`, adds the limits)."""

    model_config = ConfigDict(extra="forbid")

    texts: StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
    top_k: JsonInt | None = 1


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="the label's probability (softmax over the labels; over the logits divided "
                                     "by the model's temperature when it has one, see ``model.routing``)")


class Route(BaseModel):
    """A router's decision for one text (only for a model saved with triage settings, e.g. chapter 19's)."""

    queue: str = Field(description="the predicted queue, or 'to a person' when the confidence is below the "
                                   "threshold")
    confidence: float = Field(description="the calibrated top probability (softmax of logits / temperature)")


class Routing(BaseModel):
    """The triage settings saved beside a router's weights (``triage.json``), read when the model loads."""

    temperature: float = Field(description="the logits are divided by it before the softmax")
    threshold: float = Field(description="a text whose confidence is below it goes to a person")
    max_length: int = Field(description="tokens read per text: longer texts are truncated, not refused")
    target_precision: float = Field(description="the precision the threshold was chosen for, on validation")


class ServedModel(BaseModel):
    """Which model answered: its name, a fingerprint of its weights, and whether scores depend on batch-mates."""

    name: str = Field(description="the model's id, e.g. local:.cache/models/minilm-fresh-rotten (dynamic int8)")
    fingerprint: str = Field(description="sha256 of the weights (first 16 hex digits), '+int8' when quantized")
    batch_invariant: bool = Field(description="false for dynamic int8: a text's score moves slightly with the "
                                              "other texts of its forward pass")
    routing: Routing | None = Field(default=None, description="present for a router: its triage settings")


class PredictResponse(BaseModel):
    """One entry per text, in the order sent; each entry is that text's ``top_k`` labels, best first."""

    predictions: list[list[LabelScore]]
    routes: list[Route] | None = Field(default=None, description="present for a router: one route per text")
    model: ServedModel


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of this app has this shape, so a client can show ``detail`` as it is. (The server
    under it answers some requests before they reach the app, in plain text: uvicorn's 503 past
    ``--limit-concurrency``, h11's 400 for a malformed HTTP request line.)"""

    error: str = Field(description="a short machine-readable name, e.g. text_too_long")
    detail: str = Field(description="what was wrong and how to fix it")


def request_model(max_chars: int | None, max_texts: int, num_labels: int) -> type[BaseModel]:
    """The ``POST /predict`` body with these limits: ``texts`` (a text or a list) and ``top_k``; ``max_chars``
    None: no limit per text (a router truncates long texts to its token window instead)."""
    text = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=max_chars,
                                            pattern=NOT_BLANK_PATTERN)]
    texts = Annotated[list[text], Field(min_length=1, max_length=max_texts)]
    top_k = Annotated[int, Field(strict=True, ge=1, le=num_labels), BeforeValidator(_json_integer)]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),  # a misspelt "top-k" must not silently fall back to 1
        __doc__="One text or a list of texts; ``top_k`` labels per text (default 1; null for every label).",
        texts=(text | texts, Field(description=f"a review, or a list of 1 to {max_texts} reviews; each "
                                               + (f"1 to {max_chars} characters" if max_chars else
                                                  "at least 1 character (long texts are truncated)")
                                               + ", not only whitespace",
                                   examples=["A gorgeous, moving film."])),
        top_k=(top_k | None, Field(default=1, description=f"labels per text, best first, 1 to {num_labels}; "
                                                          "null for all")),
    )
