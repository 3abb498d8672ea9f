"""The classification head by hand: from the body's last hidden states to logits (chapter 3).

``BertForSequenceClassification`` ends with three steps on top of the body: the pooler (a dense layer and tanh
on the ``[CLS]`` vector), dropout, and one ``Linear(hidden, num_labels)``. Dropout is the identity in eval mode,
so the head at inference time is two small matrix products, written here with the model's own weights.
"""

import torch

# Names of the four head tensors in a BertForSequenceClassification state_dict. The pooler sits inside the body
# (``bert.pooler``), which is why ``AutoModel`` keeps it while dropping ``classifier.*``.
POOLER_WEIGHT, POOLER_BIAS = "bert.pooler.dense.weight", "bert.pooler.dense.bias"
CLASSIFIER_WEIGHT, CLASSIFIER_BIAS = "classifier.weight", "classifier.bias"


def linear_by_hand(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` by hand: PyTorch stores the weight as (out_features, in_features), hence the transpose."""
    return inputs @ weight.T + bias


def pooler_by_hand(last_hidden_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """BERT's pooler: tanh(dense(hidden state of the first token)), shape (batch, hidden)."""
    # Position 0 is [CLS] for every row: the tokenizer puts it first and padding only ever goes at the end.
    cls_vectors = last_hidden_state[:, 0]
    return torch.tanh(linear_by_hand(cls_vectors, weight, bias))


def head_weights(classifier) -> dict[str, torch.Tensor]:
    """The four head tensors of a BertForSequenceClassification, read from its ``state_dict`` (no gradients)."""
    state = classifier.state_dict()
    return {name: state[name] for name in (POOLER_WEIGHT, POOLER_BIAS, CLASSIFIER_WEIGHT, CLASSIFIER_BIAS)}


def logits_by_hand(last_hidden_state: torch.Tensor, classifier) -> torch.Tensor:
    """Logits from the body's ``last_hidden_state`` with the classifier's weights: pooler, then the linear layer."""
    weights = head_weights(classifier)
    pooled = pooler_by_hand(last_hidden_state, weights[POOLER_WEIGHT], weights[POOLER_BIAS])
    # The model applies dropout here; in eval mode it returns its input unchanged, so we skip it.
    return linear_by_hand(pooled, weights[CLASSIFIER_WEIGHT], weights[CLASSIFIER_BIAS])
