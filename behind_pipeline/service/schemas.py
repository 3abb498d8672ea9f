"""Request and response bodies of ``POST /predict``: strict types, limits checked before any tokenization."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="the label's probability (softmax over the labels)")


class PredictRequest(BaseModel):
    """One text or a list of texts; ``top_k`` labels per text (default 1; null for every label)."""

    # Unknown fields are refused rather than ignored: a misspelt "top-k" must not silently fall back to 1.
    model_config = ConfigDict(extra="forbid")

    texts: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] = Field(
        description="a review, or a list of reviews", examples=["A gorgeous, moving film."])
    top_k: StrictInt | None = Field(default=1, description="how many labels per text, best first; null for all")


class PredictResponse(BaseModel):
    """One entry per text, in the order sent; each entry is that text's ``top_k`` labels, best first."""

    predictions: list[list[LabelScore]]
    model: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer has this shape, so a client can show ``detail`` as it is."""

    error: str = Field(description="a short machine-readable name, e.g. text_too_long")
    detail: str = Field(description="what was wrong and how to fix it")
