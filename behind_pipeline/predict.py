"""The book's one prediction path: a classifier's logits (and labels) for a list of texts, in batches.

Every chapter, ``make prepare``, the tests, the benchmark and the service call :func:`predict_logits` rather
than a loop of their own. It tokenizes all texts once, groups texts of similar token length into the same batch
(chapter 6: little padding, so little wasted compute), pads each batch to its own longest text, runs the model
without gradients and writes each row back at its text's index. For an fp32 (or fp16) model, because of the
attention mask, the result does not depend on which batch a text lands in (up to float rounding, below 1e-5), so
the grouping changes only the speed. Not so for a dynamic-int8 model (chapter 15): it quantizes each layer's
input with one scale computed over the whole batch, so a text's logits move with the other texts of its batch
(``tests/test_service.py`` measures it; chapter 18 says what it means for a service).

:func:`cached_predict_logits` is the same path with a memory: chapters after the one that teaches a computation
read the course models' logits on a whole split from ``.cache/logits`` instead of computing them again
(``make test`` empties that folder first, so each run computes them once).
"""

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Sequence

import torch

from behind_pipeline import paths
from behind_pipeline.batching import length_sorted_batches

LOGITS_DIR = paths.LOGITS_DIR  # defined with the other folders in paths.py

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

    predictions = cached_predict_logits(classifier, tokenizer, split["text"], **options).argmax(dim=-1)
    return accuracy(split["label"], predictions)


# The code of the prediction path, read once at import: an edit to it changes every key.
_PREDICTION_CODE = inspect.getsource(predict_logits) + inspect.getsource(length_sorted_batches)


def _only_records(hook) -> bool:
    """True for transformers' own output-capturing hook: installed on the layers the first time a model is asked
    for its hidden states or attentions, and left there, it only records a layer's output, never changes it
    (``transformers.utils.output_capturing``)."""
    return (getattr(hook, "__module__", "") == "transformers.utils.output_capturing"
            and getattr(hook, "__qualname__", "").endswith("output_capturing_hook"))


def _computed_from_weights_alone(classifier) -> bool:
    """True for a plain transformers model on the CPU, every layer of a class from transformers or torch.nn, with
    no hook and no replaced ``forward``: what it computes follows from its class, config and weights. A wrapper (an
    ONNX session dressed as a classifier, a head rebuilt by hand, a peft or hand-made LoRA model, whose scaling is
    a plain number) or a hook may compute something else."""
    from torch.nn.modules import module as torch_module
    from transformers import PreTrainedModel

    if not isinstance(classifier, PreTrainedModel):
        return False
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    for layer in classifier.modules():
        if not type(layer).__module__.startswith(("transformers.", "torch.nn.")):
            return False
        hooks = [hook for hook in layer._forward_hooks.values() if not _only_records(hook)]
        if hooks or layer._forward_pre_hooks or "forward" in vars(layer):
            return False
    return all(parameter.device.type == "cpu" for parameter in classifier.parameters())


def _logits_key(classifier, tokenizer, texts: list[str], batch_size: int, max_length: int | None) -> str | None:
    """A hash of everything that shapes :func:`predict_logits`' result, or None (not cached): see
    :func:`_computed_from_weights_alone`; also a model with packed weights (dynamic int8), a slow tokenizer (no
    single definition to hash) and a call under autocast.

    Covered: every weight and buffer (a fine-tuned or edited model is another key), the class, config and attention
    implementation, the tokenizer's definition (vocabulary, normalizer, ...) and the settings ``predict_logits``
    reads from it (padding and truncation side, pad id, input names, length limit), the texts, the batch size and
    length limit, the code of the prediction path, the library versions, the torch thread count and the kind of CPU
    (both can move the last bits).
    """
    from behind_pipeline.runtime import cpu_kind
    from behind_pipeline.trained_once import library_versions

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not _computed_from_weights_alone(classifier) or torch.is_autocast_enabled("cpu"):
        return None
    digest = hashlib.sha256()
    for name, value in classifier.state_dict().items():
        if not isinstance(value, torch.Tensor) or value.is_quantized:
            return None
        digest.update(name.encode())
        digest.update(str(value.dtype).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    # Its truncation and padding entries are the state the last call left (each call sets them): not part of the key.
    tokenizer_definition = {key: value for key, value in json.loads(backend.to_str()).items()
                            if key not in ("truncation", "padding")}
    parts = {
        "model": f"{type(classifier).__module__}.{type(classifier).__name__}",
        "config": classifier.config.to_json_string(),
        "attention": getattr(classifier.config, "_attn_implementation", None),
        "tokenizer": tokenizer_definition,
        "tokenizer_settings": [tokenizer.model_max_length, tokenizer.padding_side, tokenizer.truncation_side,
                               tokenizer.pad_token_id, list(tokenizer.model_input_names)],
        "texts": texts,
        "batch_size": batch_size,
        "max_length": max_length,
        "code": _PREDICTION_CODE,
        "versions": library_versions(),  # torch, transformers, tokenizers: those that shape a model's numbers
        "threads": torch.get_num_threads(),
        "cpu": cpu_kind(),
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def cached_predict_logits(classifier, tokenizer, texts: Sequence[str], batch_size: int = BATCH_SIZE,
                          max_length: int | None = None) -> torch.Tensor:
    """:func:`predict_logits`, computed once for a model, texts and settings and then read from ``.cache/logits``.

    Returns exactly what :func:`predict_logits` returns (a float32 tensor saved and loaded bit for bit). For the
    whole-split logits that several chapters, solutions and tests need: the 1,445 test reviews take about 14 s on
    2 cores each time they are computed.
    """
    texts = list(texts)
    key = _logits_key(classifier, tokenizer, texts, batch_size, max_length)
    if key is None:
        return predict_logits(classifier, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    path = LOGITS_DIR / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged file (whatever torch.load raises for it): compute again, below
            pass
    logits = predict_logits(classifier, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    # The cache only saves time: a save that fails (the folder emptied meanwhile by `make test`) loses nothing. A
    # temporary name of this process's own: an interrupted save never looks finished, and two processes saving
    # the same key at once do not collide.
    with contextlib.suppress(OSError, RuntimeError):
        LOGITS_DIR.mkdir(parents=True, exist_ok=True)
        partial = LOGITS_DIR / f"{key}.{os.getpid()}.partial"
        torch.save(logits, partial)
        partial.replace(path)
    return logits
