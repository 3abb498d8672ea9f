"""The classification head by hand: from the body's last hidden states to logits (chapter 3).

In this book "the head" means everything a ``...ForSequenceClassification`` model adds on top of its body
(``classifier.base_model``): a dense layer with an activation on the first token's vector, dropout, and one
``Linear(hidden, num_labels)``. BERT (the course classifier) calls the first dense layer its *pooler*, uses tanh,
and keeps the pooler's weights inside the body (``bert.pooler``), which is why ``AutoModel`` keeps it while
dropping ``classifier.*``. DistilBERT (the online classifier) calls it ``pre_classifier`` and uses ReLU. Dropout
is the identity in eval mode, so at inference time the head is two small matrix products.
"""

import torch

from behind_pipeline.bert_by_hand import linear_by_hand

# For each architecture: the state_dict prefix of the first dense layer, its activation, and the output layer's.
HEAD_LAYOUTS = {
    "bert": ("bert.pooler.dense", torch.tanh, "classifier"),
    "distilbert": ("pre_classifier", torch.relu, "classifier"),
}
# The names of the four head tensors of the course classifier (a BertForSequenceClassification).
POOLER_WEIGHT, POOLER_BIAS = "bert.pooler.dense.weight", "bert.pooler.dense.bias"
CLASSIFIER_WEIGHT, CLASSIFIER_BIAS = "classifier.weight", "classifier.bias"


def pooler_by_hand(last_hidden_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   activation=torch.tanh) -> torch.Tensor:
    """BERT's pooler: tanh(dense(hidden state of the first token)), (batch, seq, hidden) -> (batch, hidden)."""
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
