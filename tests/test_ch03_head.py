"""Chapter 3: the head by hand equals the model's head, and each exercise checker tells right from wrong."""

import pytest
import torch

from behind_pipeline.checks.ch03_head import (
    check_count_head_parameters,
    check_logits_from_pooled,
    check_pooler,
    check_predicted_ids,
)
from behind_pipeline.head import (
    POOLER_BIAS,
    POOLER_WEIGHT,
    head_weights,
    linear_by_hand,
    logits_by_hand,
    pooler_by_hand,
)

SAMPLE_EVERY = 4  # every 4th test review: 362 reviews of all lengths, a quarter of the cost of the whole split
BATCH_SIZE = 64


def test_logits_by_hand_equal_the_model_on_test_reviews(splits, tokenizer, classifier):
    texts = list(splits["test"]["text"])[::SAMPLE_EVERY]
    max_diff, mismatches = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH_SIZE):
            encoding = tokenizer(texts[start : start + BATCH_SIZE], padding=True, return_tensors="pt")
            output = classifier(**encoding, output_hidden_states=True)
            by_hand = logits_by_hand(output.hidden_states[-1], classifier)
            max_diff = max(max_diff, (by_hand - output.logits).abs().max().item())
            mismatches += (by_hand.argmax(-1) != output.logits.argmax(-1)).sum().item()
    assert len(texts) > 300
    assert mismatches == 0 and max_diff < 1e-4


def test_pooler_by_hand_equals_the_body_pooler_output(tokenizer, classifier):
    encoding = tokenizer(["A gorgeous film.", "Dull, and far too long."], padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = classifier.bert(**encoding)
    weights = head_weights(classifier)
    pooled = pooler_by_hand(output.last_hidden_state, weights[POOLER_WEIGHT], weights[POOLER_BIAS])
    assert torch.allclose(pooled, output.pooler_output, atol=1e-5)


def test_train_mode_changes_the_logits_and_eval_mode_restores_them(tokenizer, classifier):
    encoding = tokenizer(["A gorgeous film."], return_tensors="pt")
    with torch.inference_mode():
        reference = classifier(**encoding).logits
        torch.manual_seed(0)
        classifier.train()
        try:
            noisy = classifier(**encoding).logits
        finally:
            classifier.eval()
        again = classifier(**encoding).logits
    assert not torch.allclose(noisy, reference) and torch.equal(again, reference)


# --- checkers: right answers pass, typical mistakes fail, blanks are reported ----------------------------------


def test_check_pooler():
    assert check_pooler(pooler_by_hand).passed
    no_tanh = check_pooler(lambda hidden, weight, bias: linear_by_hand(hidden[:, 0], weight, bias))
    assert not no_tanh.passed and "tanh" in repr(no_tanh)
    mean = check_pooler(lambda hidden, weight, bias: torch.tanh(linear_by_hand(hidden.mean(dim=1), weight, bias)))
    assert not mean.passed and "[CLS]" in repr(mean)
    untransposed = check_pooler(lambda hidden, weight, bias: torch.tanh(hidden[:, 0] @ weight + bias))
    assert not untransposed.passed and "weight.T" in repr(untransposed)
    assert not check_pooler(lambda hidden, weight, bias: torch.tanh(linear_by_hand(hidden, weight, bias))).passed


def test_check_logits_from_pooled():
    assert check_logits_from_pooled(linear_by_hand).passed
    no_bias = check_logits_from_pooled(lambda pooled, weight, bias: pooled @ weight.T)
    assert not no_bias.passed and "bias" in repr(no_bias)
    transposed = check_logits_from_pooled(lambda pooled, weight, bias: pooled @ weight + bias)
    assert not transposed.passed and "RuntimeError" in repr(transposed)


def test_check_predicted_ids():
    assert check_predicted_ids(lambda logits: logits.argmax(dim=-1)).passed
    assert check_predicted_ids(lambda logits: logits.argmax(dim=-1).tolist()).passed
    assert not check_predicted_ids(lambda logits: logits.argmax(dim=0)).passed
    assert not check_predicted_ids(lambda logits: logits.argmax()).passed
    assert not check_predicted_ids(lambda logits: logits.argmin(dim=-1)).passed


def test_check_count_head_parameters():
    def right(classifier):
        head = (classifier.bert.pooler, classifier.classifier)
        return sum(p.numel() for module in head for p in module.parameters())

    assert check_count_head_parameters(right).passed
    only_classifier = check_count_head_parameters(lambda model: sum(p.numel() for p in model.classifier.parameters()))
    assert not only_classifier.passed and "pooler" in repr(only_classifier)
    assert not check_count_head_parameters(lambda model: model.num_parameters()).passed


def test_right_count_on_the_course_classifier(classifier):
    assert sum(p.numel() for m in (classifier.bert.pooler, classifier.classifier) for p in m.parameters()) == 148_610


@pytest.mark.parametrize("check", [check_pooler, check_logits_from_pooled, check_predicted_ids,
                                   check_count_head_parameters])
def test_blank_answers_are_reported_not_raised(check):
    def blank(*args):
        ...

    for answer in (Ellipsis, blank):
        report = check(answer)
        assert not report.passed and ("still `...`" in repr(report) or "returned None" in repr(report))
