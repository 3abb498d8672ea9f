"""Checkers for the exercises of chapter 3 (the classification head), graded on small random tensors."""

import torch

from behind_pipeline.checks._core import CheckReport, allclose, tensor_of_shape
from behind_pipeline.head import linear_by_hand, pooler_by_hand

BATCH, SEQ_LEN, HIDDEN, NUM_LABELS = 3, 5, 8, 2


def _tensors(*shapes, seed: int = 0) -> list[torch.Tensor]:
    """Random tensors from a private generator, so checking never moves the notebook's global seed."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


def check_pooler(pooler) -> CheckReport:
    """``pooler(last_hidden_state, weight, bias)`` must equal tanh(dense(hidden state of [CLS]))."""
    report = CheckReport("Pooler by hand")
    hidden, weight, bias = _tensors((BATCH, SEQ_LEN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN,))
    result = report.call(pooler, hidden, weight, bias, name="pooler")
    if result is Ellipsis or not tensor_of_shape(report, result, (BATCH, HIDDEN), "the pooled output"):
        return report
    expected = pooler_by_hand(hidden, weight, bias)
    if allclose(result, expected):
        report.ok("equals tanh(dense(last_hidden_state[:, 0])), as BertPooler computes it")
    elif allclose(result, linear_by_hand(hidden[:, 0], weight, bias)):
        report.fail("the values miss the tanh: BertPooler applies tanh after the dense layer")
    elif allclose(result, torch.tanh(linear_by_hand(hidden.mean(dim=1), weight, bias))):
        report.fail("you pooled the mean of all tokens; BertPooler takes the first token, [CLS]: [:, 0]")
    elif allclose(result, torch.tanh(hidden[:, 0] @ weight + bias)):
        report.fail("the weight is used untransposed: nn.Linear computes x @ weight.T + bias")
    else:
        report.fail("the values differ from tanh(last_hidden_state[:, 0] @ weight.T + bias)")
    return report


def check_logits_from_pooled(logits_from_pooled) -> CheckReport:
    """``logits_from_pooled(pooled, weight, bias)`` must be the classifier's ``nn.Linear`` on the pooled output."""
    report = CheckReport("Logits from the pooled output")
    pooled, weight, bias = _tensors((BATCH, HIDDEN), (NUM_LABELS, HIDDEN), (NUM_LABELS,), seed=1)
    result = report.call(logits_from_pooled, pooled, weight, bias, name="logits_from_pooled")
    if result is Ellipsis or not tensor_of_shape(report, result, (BATCH, NUM_LABELS), "the logits tensor"):
        return report
    expected = linear_by_hand(pooled, weight, bias)
    if allclose(result, expected):
        report.ok("equals pooled @ weight.T + bias, as nn.Linear computes it")
    elif allclose(result, pooled @ weight.T):
        report.fail("the bias is missing: nn.Linear adds it after the matrix product")
    elif allclose(result, torch.tanh(expected)):
        report.fail("no tanh here: the classifier layer returns raw logits")
    else:
        report.fail("the values differ from pooled @ weight.T + bias")
    return report


def check_predicted_ids(predicted_ids) -> CheckReport:
    """``predicted_ids(logits)`` must give one label id per row: the index of the largest logit."""
    report = CheckReport("Predicted label ids")
    (logits,) = _tensors((6, 3), seed=2)
    result = report.call(predicted_ids, logits, name="predicted_ids")
    if result is Ellipsis:
        return report
    try:  # a tensor, a NumPy array or a list of ints are all fine
        ids = torch.as_tensor(result).flatten().tolist()
    except (TypeError, ValueError, RuntimeError):
        ids = None
    if not report.expect(
        ids is not None and len(ids) == len(logits),
        f"one id per row ({len(logits)} rows)",
        f"expected {len(logits)} ids (one per row of logits), got {result!r}: take the max over the last dim",
    ):
        return report
    expected = logits.argmax(dim=-1).tolist()
    if ids == logits.argmin(dim=-1).tolist():
        report.fail("these are the smallest logits: the prediction is the largest")
    else:
        report.expect(ids == expected, "each id is the position of the row's largest logit",
                      f"got {ids}, expected {expected}")
    return report


def _tiny_classifier(hidden_size: int, num_labels: int):
    """A randomly initialised BERT classifier small enough to build in a checker (no files needed)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden_size, max_position_embeddings=16, num_labels=num_labels)
    return BertForSequenceClassification(config)


def check_count_head_parameters(count_head_parameters) -> CheckReport:
    """``count_head_parameters(classifier)``: parameters of the pooler's dense layer plus the classifier layer."""
    report = CheckReport("Count the head's parameters")
    if not report.answered(count_head_parameters, "count_head_parameters"):
        return report
    for hidden_size, num_labels in ((8, 2), (16, 5)):
        model = _tiny_classifier(hidden_size, num_labels)
        pooler = hidden_size * hidden_size + hidden_size
        linear = hidden_size * num_labels + num_labels
        result = report.call(count_head_parameters, model, name="count_head_parameters")
        if result is Ellipsis:
            return report
        where = f"hidden {hidden_size}, {num_labels} labels"
        if result == pooler + linear:
            report.ok(f"{where}: {pooler + linear} = pooler {pooler} + classifier {linear}")
        elif result == linear:
            report.fail(f"{where}: {result} counts only the classifier layer; add the pooler's dense layer")
        elif result == pooler:
            report.fail(f"{where}: {result} counts only the pooler; add the classifier layer")
        elif result in (hidden_size * hidden_size + hidden_size * num_labels, 0):
            report.fail(f"{where}: {result} leaves out the biases; count every parameter tensor")
        else:
            report.fail(f"{where}: got {result!r}, expected {pooler + linear} (pooler dense + classifier)")
    return report
