"""Chapter 4: the hand-built softmax family equals PyTorch's, calibration helpers behave, checkers grade fairly."""

import math

import pytest
import torch
from scipy.optimize import minimize_scalar

from behind_pipeline.calibration import (
    apply_temperature,
    bin_index,
    confidences_and_correct,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_table,
)
from behind_pipeline.checks.ch04_softmax import (
    check_ece,
    check_log_sum_exp,
    check_softmax_with_temperature,
    check_stable_softmax,
    reference_ece_from_bins,
)
from behind_pipeline.softmax import log_softmax, log_sum_exp, naive_softmax, stable_softmax


@pytest.fixture(scope="module")
def test_logits(splits, tokenizer, classifier):
    """The classifier's logits on the whole test split, in batches of 64 as in the chapter."""
    texts = list(splits["test"]["text"])
    with torch.no_grad():
        batches = [classifier(**tokenizer(texts[i:i + 64], padding=True, return_tensors="pt")).logits
                   for i in range(0, len(texts), 64)]
    return torch.cat(batches), torch.tensor(splits["test"]["label"])


def test_softmax_family_matches_torch_on_the_test_split(test_logits):
    logits, _ = test_logits
    assert logits.shape == (1445, 2)
    assert (stable_softmax(logits) - torch.softmax(logits, dim=-1)).abs().max() < 1e-4
    assert (log_sum_exp(logits) - torch.logsumexp(logits, dim=-1)).abs().max() < 1e-4
    assert (log_softmax(logits) - torch.log_softmax(logits, dim=-1)).abs().max() < 1e-4
    assert torch.equal(stable_softmax(logits).argmax(-1), torch.softmax(logits, dim=-1).argmax(-1))


def test_naive_softmax_overflows_where_the_stable_one_does_not():
    large = torch.tensor([1000.0, 1001.0])
    assert torch.isnan(naive_softmax(large)).all()
    assert torch.allclose(stable_softmax(large), torch.softmax(large, dim=-1))
    assert torch.allclose(log_softmax(torch.tensor([0.0, 200.0])), torch.tensor([-200.0, 0.0]))


def test_temperature_fit_matches_scipy_and_keeps_predictions(test_logits):
    logits, labels = test_logits
    temperature = fit_temperature(logits, labels)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits.double() / math.exp(log_t), labels),
                             bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-8})
    assert abs(math.exp(result.x) - temperature) < 1e-4
    scaled = apply_temperature(logits, temperature)
    assert torch.equal(scaled.argmax(-1), logits.argmax(-1))
    assert negative_log_likelihood(scaled, labels) <= negative_log_likelihood(logits, labels)
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(negative_log_likelihood(logits, labels) - cross_entropy) < 1e-5


def test_fit_temperature_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 2, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / 2.0, dim=-1), 1, generator=generator).squeeze(1)
    assert abs(fit_temperature(logits, labels) - 2.0) < 0.1


def test_ece_equals_the_bin_weighted_reference(test_logits):
    confidences, correct = confidences_and_correct(*test_logits)
    ece = expected_calibration_error(confidences, correct, 10)
    assert abs(ece - reference_ece_from_bins(confidences, correct, bin_index(confidences, 10))) < 1e-12
    rows = reliability_table(confidences, correct, 10)
    assert sum(row["count"] for row in rows) == 1445 and all(row["lower"] >= 0.5 for row in rows)


def test_bin_index_puts_edges_in_the_lower_bin():
    assert bin_index(torch.tensor([0.0, 0.1, 0.1001, 0.95, 1.0]), 10).tolist() == [0, 0, 1, 9, 9]


def test_check_stable_softmax():
    assert check_stable_softmax(stable_softmax).passed
    assert check_stable_softmax(lambda logits, dim=-1: torch.softmax(logits, dim=dim)).passed
    assert not check_stable_softmax(naive_softmax).passed
    assert not check_stable_softmax(lambda logits, dim=-1: stable_softmax(logits)).passed  # ignores dim

    def in_place(logits, dim=-1):
        logits -= logits.max(dim=dim, keepdim=True).values
        return logits.exp() / logits.exp().sum(dim=dim, keepdim=True)

    assert not check_stable_softmax(in_place).passed
    assert "still `...`" in repr(check_stable_softmax(...))


def test_check_log_sum_exp():
    assert check_log_sum_exp(log_sum_exp).passed
    assert not check_log_sum_exp(lambda logits, dim=-1: logits.exp().sum(dim=dim).log()).passed
    assert not check_log_sum_exp(lambda logits, dim=-1: log_sum_exp(logits, dim=dim, keepdim=True)).passed
    assert "still `...`" in repr(check_log_sum_exp(...))


def test_check_ece():
    assert check_ece(reference_ece_from_bins).passed

    def unweighted(confidences, correct, bin_ids):
        gaps = [(correct[bin_ids == b].mean() - confidences[bin_ids == b].mean()).abs() for b in bin_ids.unique()]
        return torch.stack(gaps).mean().item()

    report = check_ece(unweighted)
    assert not report.passed and "weight each gap" in repr(report)
    assert not check_ece(lambda confidences, correct, bin_ids: (correct.mean() - confidences.mean()).abs()).passed
    assert "still `...`" in repr(check_ece(...))


def test_check_softmax_with_temperature():
    assert check_softmax_with_temperature(lambda logits, t: stable_softmax(logits / t)).passed
    report = check_softmax_with_temperature(lambda logits, t: stable_softmax(logits * t))
    assert not report.passed and "divide" in repr(report)
    assert not check_softmax_with_temperature(lambda logits, t: naive_softmax(logits / t)).passed

    def blank(logits, temperature):
        ...

    assert not check_softmax_with_temperature(blank).passed
