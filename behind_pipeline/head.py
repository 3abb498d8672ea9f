"""The classification head by hand: from the body's last hidden states to logits (chapter 3).

In this book "the head" means everything a ``...ForSequenceClassification`` model adds on top of its body
(``classifier.base_model``), i.e. every step between the body's ``last_hidden_state`` and the logits: a dense
layer with an activation on the first token's vector, dropout, and one ``Linear(hidden, num_labels)``. BERT (the
course classifier) calls the first dense layer its *pooler*, uses tanh, and keeps the pooler's weights inside the
body module (``bert.pooler``), which is why ``AutoModel`` keeps it while dropping ``classifier.*``. DistilBERT (the
online classifier) calls it ``pre_classifier`` and uses ReLU. Dropout is the identity in eval mode, so at
inference time the head is two small matrix products.
"""

import logging
import re
from contextlib import contextmanager

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from behind_pipeline.bert_by_hand import linear_by_hand

# For each architecture: the state_dict prefix of the first dense layer, its activation, and the output layer's.
HEAD_LAYOUTS = {
    "bert": ("bert.pooler.dense", torch.tanh, "classifier"),
    "distilbert": ("pre_classifier", torch.relu, "classifier"),
}
# The names of the four head tensors of the course classifier (a BertForSequenceClassification).
POOLER_WEIGHT, POOLER_BIAS = "bert.pooler.dense.weight", "bert.pooler.dense.bias"
CLASSIFIER_WEIGHT, CLASSIFIER_BIAS = "classifier.weight", "classifier.bias"
# transformers 5 logs its loading report (the table of MISSING / UNEXPECTED / MISMATCH keys) on this logger.
LOADING_LOGGER = "transformers.modeling_utils"


def pooler_by_hand(last_hidden_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   activation=torch.tanh) -> torch.Tensor:
    """activation(dense(hidden state of the first token)), (batch, seq, hidden) -> (batch, hidden).

    With the default tanh this is BERT's pooler; with ``torch.relu`` DistilBERT's ``pre_classifier`` step.
    """
    # Position 0 is [CLS] for every row: the tokenizer puts it first and padding only ever goes at the end.
    cls_vectors = last_hidden_state[:, 0]  # (batch, hidden)
    return activation(linear_by_hand(cls_vectors, weight, bias))


def head_layout(classifier) -> tuple[str, object, str]:
    """(dense layer prefix, activation, output layer prefix) of a classifier's head, by its ``model_type``."""
    model_type = classifier.config.model_type
    if model_type not in HEAD_LAYOUTS:
        raise NotImplementedError(f"no hand-built head for model_type {model_type!r}; known: {sorted(HEAD_LAYOUTS)}")
    return HEAD_LAYOUTS[model_type]


def head_weights(classifier) -> dict[str, torch.Tensor]:
    """The four head tensors (dense weight and bias, output weight and bias), read from the ``state_dict``."""
    dense, _, output = head_layout(classifier)
    state = classifier.state_dict()
    return {name: state[name] for name in (f"{dense}.weight", f"{dense}.bias", f"{output}.weight", f"{output}.bias")}


def logits_by_hand(last_hidden_state: torch.Tensor, classifier) -> torch.Tensor:
    """Logits from the body's ``last_hidden_state`` with the classifier's own weights: (batch, num_labels)."""
    dense, activation, output = head_layout(classifier)
    weights = head_weights(classifier)
    pooled = pooler_by_hand(last_hidden_state, weights[f"{dense}.weight"], weights[f"{dense}.bias"], activation)
    # The model applies dropout here; in eval mode it returns its input unchanged, so we skip it.
    return linear_by_hand(pooled, weights[f"{output}.weight"], weights[f"{output}.bias"])


class HeadByHand(torch.nn.Module):
    """A classifier whose head is :func:`logits_by_hand`: the library's body, then our two matrix products.

    It answers ``model(**encoding).logits`` like the classifier it wraps, so the book's prediction path
    (``predict.predict_logits``) runs it over a whole split exactly as it runs the library's classifier.
    """

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.config = classifier.config
        # A new Module starts in train mode; take the classifier's mode instead, or predict_logits, which restores
        # the mode it found, would leave the wrapped classifier in train mode (dropout on) after its run.
        self.train(classifier.training)

    def forward(self, **encoding) -> SequenceClassifierOutput:
        last_hidden_state = self.classifier.base_model(**encoding).last_hidden_state  # (batch, seq, hidden)
        return SequenceClassifierOutput(logits=logits_by_hand(last_hidden_state, self.classifier))


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(tidy_load_report(record.getMessage()))


def tidy_load_report(message: str) -> str:
    """A loading report as a reader should see it: no colour codes, no trailing blanks, rows in sorted order.

    The library builds the table's rows from a set, whose order changes from one process to the next.
    """
    from behind_pipeline.paths import PROJECT_ROOT

    lines = [line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", message).splitlines()]
    lines = [line.replace(f"{PROJECT_ROOT}/", "") for line in lines]  # folders of this machine, made relative
    if any(line.startswith("---") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
        end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
        lines[start:end] = sorted(lines[start:end])
    return "\n".join(lines)


@contextmanager
def captured_load_reports():
    """``with captured_load_reports() as reports: from_pretrained(...)`` collects the loading report as text.

    ``setup_chapter`` sets transformers' verbosity to errors only, which hides this warning; here it is
    switched back on for the block, kept out of stderr, and handed back as a list of messages.
    """
    messages: list[str] = []
    logger = logging.getLogger(LOADING_LOGGER)
    handler = _Collect(messages)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # the library's own handler would print it to stderr
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
