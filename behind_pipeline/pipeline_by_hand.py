"""The whole text-classification pipeline by hand: tokenizer, body, head, softmax, id2label (chapter 5).

``classify`` returns what ``pipeline("text-classification")`` returns, built only from the pieces of chapters 1-4:
the tokenizer, the model's body (``classifier.base_model``: ``.bert`` for BERT, ``.distilbert`` for DistilBERT),
the head of chapter 3 and the softmax of chapter 4.
"""

import torch

from behind_pipeline.head import logits_by_hand
from behind_pipeline.softmax import stable_softmax

FUNCTIONS_TO_APPLY = ("softmax", "sigmoid", "none")


def scores_from_logits(logits: torch.Tensor, function_to_apply: str = "softmax") -> torch.Tensor:
    """The pipeline's ``function_to_apply``: softmax (one distribution per text), sigmoid (each label alone), none."""
    if function_to_apply == "softmax":
        return stable_softmax(logits, dim=-1)
    if function_to_apply == "sigmoid":
        # Each logit on its own through 1 / (1 + e^-x): the scores of one text need not sum to 1.
        return 1 / (1 + torch.exp(-logits))
    if function_to_apply == "none":
        return logits
    raise ValueError(f"function_to_apply must be one of {FUNCTIONS_TO_APPLY}, got {function_to_apply!r}")


def ranked_labels(scores: torch.Tensor, id2label: dict[int, str], top_k: int | None) -> list[dict]:
    """One text's labels with their scores, best first, cut to ``top_k`` (``None``: every label)."""
    results = [{"label": id2label[label_id], "score": score} for label_id, score in enumerate(scores.tolist())]
    # sort is stable: on a tie the lower label id stays first, as with the pipeline's argmax.
    results.sort(key=lambda result: result["score"], reverse=True)
    return results if top_k is None else results[:top_k]


def classify(texts, tokenizer, classifier, top_k: int | None = 1, function_to_apply: str = "softmax",
             batch_size: int = 32) -> list:
    """``pipeline("text-classification")`` by hand: one ``{label, score}`` per text, or a ranked list per text.

    ``top_k=1`` gives what the pipeline gives when ``top_k`` is not passed (a dict per text); any other ``top_k``,
    or ``None`` for all labels, gives a list of dicts per text, best first.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    results = []
    for start in range(0, len(texts), batch_size):
        encoding = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            last_hidden_state = classifier.base_model(**encoding).last_hidden_state
            logits = logits_by_hand(last_hidden_state, classifier)
        for scores in scores_from_logits(logits, function_to_apply):
            ranked = ranked_labels(scores, classifier.config.id2label, top_k)
            results.append(ranked[0] if top_k == 1 else ranked)
    return results
