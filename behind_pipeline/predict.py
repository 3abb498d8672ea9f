"""The book's one prediction path: a classifier's logits (and labels) for a list of texts, in batches.

Every chapter, ``make prepare``, the tests, the benchmark and the service call :func:`predict_logits` rather
than a loop of their own. It tokenizes all texts once, groups texts of similar token length into the same batch
(chapter 6: little padding, so little wasted compute), pads each batch to its own longest text, runs the model
without gradients and writes each row back at its text's index. For an fp32 (or fp16) model, because of the
attention mask, the result does not depend on which batch a text lands in (up to float rounding, below 1e-5), so
the grouping changes only the speed. Not so for a dynamic-int8 model (chapter 15): it quantizes each layer's
input with one scale computed over the whole batch, so a text's logits move with the other texts of its batch
(``tests/test_service.py`` measures it; chapter 18 says what it means for a service).
"""

from collections.abc import Sequence

import torch

from behind_pipeline.batching import length_sorted_batches

# 64 texts of at most ~80 tokens keep a forward pass to a few MB of activations and keep both cores busy.
BATCH_SIZE = 64


def predict_logits(classifier, tokenizer, texts: Sequence[str], batch_size: int = BATCH_SIZE,
                   batches: Sequence[Sequence[int]] | None = None, max_length: int | None = None) -> torch.Tensor:
    """Logits of ``classifier`` for every text, shape (len(texts), num_labels), row i for ``texts[i]``.

    ``batches`` (lists of indices) overrides the grouping, e.g. to show what in-order batches cost. Texts longer
    than ``max_length`` (default: the model's limit) are truncated, as ``pipeline(..., truncation=True)`` does.
    """
    texts = list(texts)  # a datasets Column or a tuple both work
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    if batches is None:
        batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    was_training = classifier.training
    classifier.eval()  # dropout off: the same text always gets the same logits
    logits = torch.empty(len(texts), classifier.config.num_labels)
    with torch.inference_mode():
        for batch in batches:
            padded = tokenizer.pad({"input_ids": [encoded[index] for index in batch]}, return_tensors="pt")
            logits[list(batch)] = classifier(**padded).logits.float()  # back at each text's own index
    classifier.train(was_training)
    return logits


def predict_labels(classifier, tokenizer, texts: Sequence[str], **options) -> list[str]:
    """The predicted label name of each text (``id2label`` of the largest logit)."""
    predicted_ids = predict_logits(classifier, tokenizer, texts, **options).argmax(dim=-1)
    return [classifier.config.id2label[int(index)] for index in predicted_ids]


def split_accuracy(classifier, tokenizer, split, **options) -> float:
    """:func:`metrics.accuracy` of the classifier on ``split`` (a dataset with ``text`` and ``label``): the share of
    texts whose largest logit is the gold label."""
    from behind_pipeline.metrics import accuracy  # here, not at the top: scikit-learn loads only when asked

    predictions = predict_logits(classifier, tokenizer, split["text"], **options).argmax(dim=-1)
    return accuracy(split["label"], predictions)
