"""Chapter 4: the hand-built softmax family and calibration helpers equal the libraries; checkers grade fairly."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve

from behind_pipeline.calibration import (
    apply_temperature,
    bin_index,
    bootstrap_interval,
    confidences_and_correct,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    nll_per_example,
    reliability_table,
)
from behind_pipeline.checks.ch04_softmax import (
    _calibration_cases,
    check_calibration_error,
    check_fold_temperature,
    check_masked_softmax,
    reference_bin_ids,
    reference_calibration_error,
    reference_masked_softmax,
    watching_library_softmax,
)
from behind_pipeline.head import head_layout
from behind_pipeline.predict import cached_predict_logits
from behind_pipeline.softmax import exp_limits, log_softmax, log_sum_exp, naive_softmax, stable_softmax

from checker_asserts import assert_accepted, assert_rejected


@pytest.fixture(scope="module")
def test_logits(splits, tokenizer, classifier):
    """The classifier's logits on the whole test split, through the cache that chapter 4 and later chapters read."""
    return cached_predict_logits(classifier, tokenizer, splits["test"]["text"]), torch.tensor(splits["test"]["label"])


# --- the softmax family ---------------------------------------------------------------------------------------

def test_softmax_family_matches_torch_on_the_test_split(test_logits):
    logits, _ = test_logits
    assert logits.shape == (1445, 2)
    assert (stable_softmax(logits) - torch.softmax(logits, dim=-1)).abs().max() < 1e-4
    assert (log_sum_exp(logits) - torch.logsumexp(logits, dim=-1)).abs().max() < 1e-4
    assert (log_softmax(logits) - torch.log_softmax(logits, dim=-1)).abs().max() < 1e-4
    assert torch.equal(stable_softmax(logits).argmax(-1), torch.softmax(logits, dim=-1).argmax(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_limits_are_where_exp_leaves_the_format(dtype):
    limits = exp_limits(dtype)
    exp = lambda x: torch.exp(torch.tensor(x, dtype=dtype)).item()  # noqa: E731
    assert math.isinf(exp(limits["overflow"] + 0.01)) and math.isfinite(exp(limits["overflow"] - 0.01))
    tiny = torch.finfo(dtype).tiny
    assert exp(limits["subnormal"] - 0.01) < tiny <= exp(limits["subnormal"] + 0.01)
    assert exp(limits["zero"] - 0.01) == 0.0 and exp(limits["zero"] + 0.01) > 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_largest_logit_decides_when_the_naive_softmax_breaks(dtype):
    """The chapter's claim, at each limit: nan above overflow, digits lost below subnormal, nan below zero."""
    limits = exp_limits(dtype)
    exact = torch.tensor([1 / (1 + math.exp(-1)), 1 / (1 + math.e)], dtype=torch.float64)

    def naive(largest):  # two logits one apart, the largest at `largest`
        return naive_softmax(torch.tensor([largest, largest - 1.0], dtype=dtype)).double()

    # At the top, the sum of the exps overflows first: finite / inf = 0, inf / inf = nan. No error either way.
    assert torch.allclose(naive(limits["overflow"] - 1.0), exact, atol=1e-6)
    assert naive(limits["overflow"] - 0.2).tolist() == [0.0, 0.0]
    assert torch.isnan(naive(limits["overflow"] + 0.01)).tolist() == [True, False]
    assert torch.isnan(naive(limits["overflow"] + 1.01)).all()
    # At the bottom, the largest logit decides: subnormal exps lose digits, exps of 0 give 0 / 0.
    assert torch.allclose(naive(limits["subnormal"] + 0.5), exact, atol=1e-6)
    assert naive(limits["zero"] + 0.5).tolist() == [1.0, 0.0]  # the smaller exp is 0 already, the larger not yet
    assert not torch.allclose(naive(limits["zero"] + 3.0), exact, atol=1e-3)  # subnormal: digits lost, no nan
    assert torch.isfinite(naive(limits["zero"] + 3.0)).all()
    assert torch.isnan(naive(limits["zero"] - 0.01)).all()
    # One very negative logit beside a normal one is harmless; the stable version is right everywhere.
    assert naive_softmax(torch.tensor([0.0, -1000.0], dtype=dtype)).tolist() == [1.0, 0.0]
    for largest in (limits["overflow"] + 1, limits["zero"] - 1, -1e4):
        assert torch.allclose(stable_softmax(torch.tensor([largest, largest - 1.0], dtype=dtype)).double(), exact)


def test_the_chapter_rows_fail_as_the_prose_says():
    assert naive_softmax(torch.tensor([-103.0, -104.0])).tolist() == [1.0, 0.0]
    assert round(naive_softmax(torch.tensor([-100.0, -101.0]))[0].item(), 4) == 0.7297
    assert naive_softmax(torch.tensor([88.5, 87.5])).tolist() == [0.0, 0.0]
    assert torch.isnan(naive_softmax(torch.tensor([89.0, 88.0]))).tolist() == [True, False]
    assert not torch.isnan(naive_softmax(torch.tensor([89.0, 88.0], dtype=torch.float64))).any()
    assert torch.isnan(naive_softmax(torch.tensor([1000.0, 1001.0], dtype=torch.float64))).all()
    assert torch.allclose(log_softmax(torch.tensor([0.0, 200.0])), torch.tensor([-200.0, 0.0]))


# --- calibration --------------------------------------------------------------------------------------------

def test_nll_equals_cross_entropy(test_logits):
    logits, labels = test_logits
    for temperature in (1.0, 0.5, 3.0):
        expected = F.cross_entropy(logits.double() / temperature, labels).item()
        assert abs(negative_log_likelihood(logits.double() / temperature, labels) - expected) < 1e-12
    per_example = F.cross_entropy(logits.double(), labels, reduction="none")
    assert torch.allclose(nll_per_example(logits, labels), per_example)


def test_temperature_fit_matches_scipy_and_keeps_predictions(test_logits):
    logits, labels = test_logits
    temperature = fit_temperature(logits, labels)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits.double() / math.exp(log_t), labels),
                             bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-8})
    assert abs(math.exp(result.x) - temperature) < 1e-4
    scaled = apply_temperature(logits, temperature)
    assert torch.equal(scaled.argmax(-1), logits.argmax(-1))
    assert negative_log_likelihood(scaled, labels) <= negative_log_likelihood(logits, labels)


def test_fit_temperature_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 2, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / 2.0, dim=-1), 1, generator=generator).squeeze(1)
    assert abs(fit_temperature(logits, labels) - 2.0) < 0.1


def test_fit_temperature_stops_at_a_bound_without_error():
    """Logits that carry no information (a model with random weights): the NLL falls as T grows, up to the bound."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 2, generator=generator)
    labels = torch.randint(2, (500,), generator=generator)
    assert fit_temperature(logits, labels, high=20.0) == pytest.approx(20.0, rel=1e-5)
    assert fit_temperature(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)) > 0  # flat NLL: any T, no error


def test_bins_and_reliability_table_equal_scikit_learn(test_logits):
    confidences, correct = confidences_and_correct(*test_logits)
    for n_bins in (10, 7, 20):
        rows = reliability_table(confidences, correct, n_bins)
        prob_true, prob_pred = calibration_curve(correct.numpy(), confidences.numpy(), n_bins=n_bins)
        assert np.allclose([row["accuracy"] for row in rows], prob_true, atol=1e-12)
        assert np.allclose([row["confidence"] for row in rows], prob_pred, atol=1e-12)
        assert sum(row["count"] for row in rows) == 1445 and all(row["upper"] > 0.5 for row in rows)
    edges = torch.tensor([0.0, 0.1, 0.1001, 0.3, 0.35000000000000003, 0.95, 1.0], dtype=torch.float64)
    for n_bins in (10, 20):
        assert bin_index(edges, n_bins).tolist() == reference_bin_ids(edges.numpy(), n_bins, "uniform").tolist()
    assert bin_index(edges, 10).tolist() == [0, 0, 1, 2, 3, 9, 9]


def test_ece_equals_the_reference_and_the_plain_loop(test_logits):
    confidences, correct = confidences_and_correct(*test_logits)
    ece = expected_calibration_error(confidences, correct, 10)
    assert abs(ece - reference_calibration_error(confidences.numpy(), correct.numpy(), 10)) < 1e-12
    loop = sum(row["count"] / 1445 * abs(row["accuracy"] - row["confidence"])
               for row in reliability_table(confidences, correct, 10))
    assert abs(ece - loop) < 1e-12


def test_reference_quantile_bins_equal_scikit_learn():
    for case in _calibration_cases():
        confidences, correct = case["data"]
        prob_true, prob_pred = calibration_curve(correct, confidences, n_bins=case["n_bins"], strategy=case["strategy"])
        bins = reference_bin_ids(confidences, case["n_bins"], case["strategy"])
        used = np.unique(bins)
        assert np.allclose([correct[bins == b].mean() for b in used], prob_true)
        assert np.allclose([confidences[bins == b].mean() for b in used], prob_pred)


def test_bootstrap_interval_is_seeded_and_sized_like_the_standard_error():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def mean(indices):
        return values[indices].mean().item()

    low, high, resampled = bootstrap_interval(mean, len(values), n_resamples=2000, seed=3)
    assert (low, high) == bootstrap_interval(mean, len(values), n_resamples=2000, seed=3)[:2]
    assert low < values.mean().item() < high and len(resampled) == 2000
    standard_error = values.std().item() / math.sqrt(len(values))
    assert (high - low) / (2 * 1.96 * standard_error) == pytest.approx(1.0, abs=0.1)


# --- checker of exercise 1: masked softmax -------------------------------------------------------------------

def masked_softmax_solution(scores, mask, dim=-1):
    kept = scores.masked_fill(~mask, float("-inf"))
    largest = kept.max(dim=dim, keepdim=True).values
    largest = largest.masked_fill(largest == float("-inf"), 0.0)
    exponentials = (kept - largest).exp()
    total = exponentials.sum(dim=dim, keepdim=True)
    return exponentials / total.masked_fill(total == 0, 1.0)


def test_reference_masked_softmax_keeps_its_promises():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1000.0, -5.0]])
    mask = torch.tensor([[False, False, False], [True, False, True]])
    probs = reference_masked_softmax(scores, mask)
    assert probs[0].tolist() == [0.0, 0.0, 0.0] and probs[1, 1] == 0 and abs(probs[1].sum() - 1) < 1e-12


def test_check_masked_softmax_accepts_right_answers():
    def reusing_stable_softmax(scores, mask, dim=-1):  # the chapter's function is allowed
        probs = stable_softmax(scores.masked_fill(~mask, float("-inf")), dim=dim)
        return probs.nan_to_num(0.0)

    def returns_a_list(scores, mask, dim=-1):
        return masked_softmax_solution(scores, mask, dim).tolist()

    def via_log_softmax(scores, mask, dim=-1):  # right, but float32 near -1000 is off by a few 1e-5
        return log_softmax(scores.masked_fill(~mask, float("-inf")), dim).exp().nan_to_num(0.0)

    class MaskedSoftmax(torch.autograd.Function):  # its own backward: autograd names the step after the class
        @staticmethod
        def forward(context, scores, mask, dim):
            probs = masked_softmax_solution(scores, mask, dim)
            context.save_for_backward(probs)
            context.dim = dim
            return probs

        @staticmethod
        def backward(context, grad):
            (probs,) = context.saved_tensors
            return probs * (grad - (grad * probs).sum(context.dim, keepdim=True)), None, None

    def own_autograd_function(scores, mask, dim=-1):
        return MaskedSoftmax.apply(scores, mask, dim)

    def returns_a_sparse_tensor(scores, mask, dim=-1):
        return masked_softmax_solution(scores, mask, dim).to_sparse()

    assert_accepted(check_masked_softmax, masked_softmax_solution, reusing_stable_softmax, returns_a_list,
                    via_log_softmax, own_autograd_function, returns_a_sparse_tensor)


NEG_INF = float("-inf")
BOUND_SOFTMAX = torch.softmax  # bound before any check runs, as a learner's `from torch import softmax` is


def _normalise(exponentials, dim):
    return exponentials / exponentials.sum(dim, keepdim=True)


def unstable_softmax(scores, mask, dim=-1):
    return _normalise(scores.exp() * mask, dim)


def shift_by_max_including_masked(scores, mask, dim=-1):
    return _normalise((scores - scores.amax(dim, keepdim=True)).exp() * mask, dim).nan_to_num(0.0)


def shift_by_min(scores, mask, dim=-1):  # fine while every row spans less than about 88
    return _normalise((scores - scores.amin(dim, keepdim=True)).exp() * mask, dim)


def shift_by_global_max(scores, mask, dim=-1):
    kept = scores.masked_fill(~mask, NEG_INF)
    return _normalise((kept - kept.max()).exp(), dim).nan_to_num(0.0)


def finite_fill_value(scores, mask, dim=-1):
    return stable_softmax(scores.masked_fill(~mask, -1e9), dim)


def nan_on_fully_masked_rows(scores, mask, dim=-1):
    return stable_softmax(scores.masked_fill(~mask, NEG_INF), dim)


def ignores_dim(scores, mask, dim=-1):
    return masked_softmax_solution(scores, mask)


def uses_torch_softmax(scores, mask, dim=-1):
    return torch.softmax(scores.masked_fill(~mask, NEG_INF), dim).nan_to_num(0.0)


def uses_nn_softmax(scores, mask, dim=-1):
    return torch.nn.Softmax(dim)(scores.masked_fill(~mask, NEG_INF)).nan_to_num(0.0)


def uses_tensor_log_softmax(scores, mask, dim=-1):
    return scores.masked_fill(~mask, NEG_INF).log_softmax(dim).exp().nan_to_num(0.0)


def mask_not_broadcast(scores, mask, dim=-1):
    return masked_softmax_solution(scores, mask.reshape(scores.shape), dim)


def only_last_or_first_dim(scores, mask, dim=-1):  # right for dim=-1 and dim=0 on a matrix, wrong elsewhere
    if dim == 0:
        return only_last_or_first_dim(scores.T, mask.T, -1).T
    return torch.where(mask, stable_softmax(scores.masked_fill(~mask, NEG_INF), -1), 0.0)


def softmax_bound_by_name(scores, mask, dim=-1):  # `from torch import softmax` before the checker's spy starts
    return BOUND_SOFTMAX(scores.masked_fill(~mask, NEG_INF), dim).nan_to_num(0.0)


def float32_for_float64(scores, mask, dim=-1):
    return masked_softmax_solution(scores.float(), mask, dim)


def clamped_away_from_zero(scores, mask, dim=-1):  # within a float32 tolerance, but masked positions get 1e-5
    return masked_softmax_solution(scores, mask, dim).clamp(min=1e-5)


def epsilon_in_the_denominator(scores, mask, dim=-1):
    kept = scores.masked_fill(~mask, NEG_INF)
    exponentials = (kept - kept.amax(dim, keepdim=True).nan_to_num(0.0)).exp().nan_to_num(0.0)
    return exponentials / (exponentials.sum(dim, keepdim=True) + 1e-5)


def uses_scipy_softmax(scores, mask, dim=-1):
    import scipy.special

    kept = np.where(np.asarray(mask), scores.numpy(), -np.inf)
    return torch.from_numpy(np.nan_to_num(scipy.special.softmax(kept, axis=dim), nan=0.0))


def computed_in_float32(scores, mask, dim=-1):  # the float64 dtype is kept, the digits are not
    return masked_softmax_solution(scores.float(), mask, dim).to(scores.dtype)


def empty_rows_along_the_last_dim_only(scores, mask, dim=-1):  # nan for a column with nothing kept at dim=0
    return torch.where(mask.any(-1, keepdim=True), stable_softmax(scores.masked_fill(~mask, NEG_INF), dim), 0.0)


def returns_a_masked_tensor(scores, mask, dim=-1):
    return torch.masked.masked_tensor(masked_softmax_solution(scores, mask, dim), mask.expand_as(scores))


@pytest.mark.parametrize("wrong, hint", [
    (unstable_softmax, "nan"),
    (shift_by_max_including_masked, "over the kept positions only"),
    (shift_by_min, "overflows"),
    (shift_by_global_max, "not of the whole tensor"),
    (finite_fill_value, "must be all 0"),
    (nan_on_fully_masked_rows, "nothing kept"),
    (ignores_dim, "along `dim`"),
    (uses_torch_softmax, "calls torch.softmax"),
    (uses_nn_softmax, "F.softmax"),
    (uses_tensor_log_softmax, "tensor.log_softmax"),
    (mask_not_broadcast, "raised RuntimeError"),
    (only_last_or_first_dim, "dim=1"),
    (softmax_bound_by_name, "autograd recorded SoftmaxBackward0"),
    (float32_for_float64, "returned torch.float32 for float64 scores"),
    (clamped_away_from_zero, "a clamp or an epsilon"),
    (epsilon_in_the_denominator, "epsilon"),
    (returns_a_masked_tensor, "should be a tensor"),
    (uses_scipy_softmax, "scipy.special.softmax"),
    (computed_in_float32, "float32, 1000 and 1000.00001"),
    (empty_rows_along_the_last_dim_only, "column with nothing kept"),
])
@pytest.mark.filterwarnings("ignore:The PyTorch API of MaskedTensors")  # a prototype; the warning is not ours
def test_check_masked_softmax_rejects_typical_mistakes(wrong, hint):
    assert_rejected(check_masked_softmax(wrong), hint)


def test_check_masked_softmax_notices_in_place_changes():
    def in_place(scores, mask, dim=-1):
        scores.masked_fill_(~mask, float("-inf"))
        return masked_softmax_solution(scores, mask, dim)

    assert_rejected(check_masked_softmax(in_place), "in-place")


def test_check_masked_softmax_restores_the_library():
    original = (torch.softmax, F.softmax, torch.Tensor.softmax, torch.log_softmax)
    with watching_library_softmax() as used:
        torch.tensor([1.0, 2.0]).softmax(-1)
    assert used == ["tensor.softmax"]
    assert (torch.softmax, F.softmax, torch.Tensor.softmax, torch.log_softmax) == original
    assert "softmax" not in vars(torch.Tensor)


@pytest.mark.parametrize("answer", [..., None, lambda s, m, dim=-1: None, lambda s, m, dim=-1: 1 / 0,
                                    lambda s, m, dim=-1: "probabilities", lambda s, m, dim=-1: torch.ones(7),
                                    lambda s, m, dim=-1: np.zeros((3, 4)), lambda s, m, dim=-1: s.double()])
def test_check_masked_softmax_never_raises(answer):
    assert not check_masked_softmax(answer).passed


# --- checker of exercise 2: calibration error with two binnings ----------------------------------------------

def calibration_error_solution(confidences, correct, n_bins=10, strategy="uniform"):
    confidences, correct = confidences.double(), correct.double()
    levels = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    edges = levels if strategy == "uniform" else torch.quantile(confidences, levels)
    bins = torch.searchsorted(edges[1:-1].contiguous(), confidences)
    gaps = torch.bincount(bins, weights=correct - confidences, minlength=n_bins)
    return gaps.abs().sum().item() / len(confidences)


def _by_bins(confidences, correct, bins, weight=None):
    """The ECE for given bin ids, looping over non-empty bins (each wrong answer below changes one thing)."""
    confidences, correct = confidences.double(), correct.double()
    total = 0.0
    for b in bins.unique():
        in_bin = bins == b
        share = in_bin.double().mean().item() if weight is None else weight
        total += share * abs((correct[in_bin].mean() - confidences[in_bin].mean()).item())
    return total


def drops_confidence_one(confidences, correct, n_bins=10, strategy="uniform"):
    if strategy == "quantile":
        return calibration_error_solution(confidences, correct, n_bins, strategy)
    bins = (confidences.double() * n_bins).floor().long()
    total = 0.0
    for b in range(n_bins):  # bin n_bins (confidence exactly 1.0) is never visited
        in_bin = bins == b
        if in_bin.any():
            gap = correct[in_bin].double().mean() - confidences[in_bin].double().mean()
            total += in_bin.sum().item() / len(bins) * abs(gap.item())
    return total


def edges_join_the_bin_above(confidences, correct, n_bins=10, strategy="uniform"):
    if strategy == "quantile":
        return calibration_error_solution(confidences, correct, n_bins, strategy)
    return _by_bins(confidences, correct, (confidences.double() * n_bins).floor().long().clamp(max=n_bins - 1))


def unweighted_mean_of_gaps(confidences, correct, n_bins=10, strategy="uniform"):
    bins = torch.as_tensor(reference_bin_ids(confidences.double().numpy(), n_bins, strategy))
    return _by_bins(confidences, correct, bins, weight=1 / len(bins.unique()))


def signed_gaps(confidences, correct, n_bins=10, strategy="uniform"):
    return abs((correct.double() - confidences.double()).mean().item())


def quantile_by_rank(confidences, correct, n_bins=10, strategy="uniform"):
    if strategy == "uniform":
        return calibration_error_solution(confidences, correct, n_bins, strategy)
    bins = torch.empty(len(confidences), dtype=torch.long)
    for b, chunk in enumerate(torch.tensor_split(confidences.argsort(stable=True), n_bins)):
        bins[chunk] = b
    return _by_bins(confidences, correct, bins)


def quantile_equal_weights(confidences, correct, n_bins=10, strategy="uniform"):
    if strategy == "uniform":
        return calibration_error_solution(confidences, correct, n_bins, strategy)
    edges = torch.quantile(confidences.double(), torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
    return _by_bins(confidences, correct, torch.searchsorted(edges[1:-1].contiguous(), confidences.double()),
                    weight=1 / n_bins)


def quantile_right_closed(confidences, correct, n_bins=10, strategy="uniform"):
    if strategy == "uniform":
        return calibration_error_solution(confidences, correct, n_bins, strategy)
    edges = torch.quantile(confidences.double(), torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
    bins = torch.searchsorted(edges[1:-1].contiguous(), confidences.double(), right=True)
    return _by_bins(confidences, correct, bins)


def ignores_strategy(confidences, correct, n_bins=10, strategy="uniform"):
    return calibration_error_solution(confidences, correct, n_bins, "uniform")


def ten_bins_always(confidences, correct, n_bins=10, strategy="uniform"):
    return calibration_error_solution(confidences, correct, 10, strategy)


def float32_edges(confidences, correct, n_bins=10, strategy="uniform"):
    """torch.linspace's default dtype is float32: its edges are not the float64 ones."""
    edges = torch.linspace(0, 1, n_bins + 1) if strategy == "uniform" else torch.quantile(
        confidences.float(), torch.linspace(0, 1, n_bins + 1))
    bins = torch.searchsorted(edges[1:-1].contiguous(), confidences.float())
    return _by_bins(confidences, correct, bins)


def test_check_calibration_error_accepts_right_answers():
    assert_accepted(check_calibration_error, calibration_error_solution,
                    lambda c, k, n_bins=10, strategy="uniform": np.float64(
                        reference_calibration_error(c.double().numpy(), k.double().numpy(), n_bins, strategy)),
                    lambda c, k, n_bins=10, strategy="uniform": torch.tensor(
                        calibration_error_solution(c, k, n_bins, strategy), dtype=torch.float32))


@pytest.mark.parametrize("wrong, hint", [
    (drops_confidence_one, "exactly 1.0 was dropped"),
    (edges_join_the_bin_above, "joined the bin above"),
    (unweighted_mean_of_gaps, "plain mean of the bins' gaps"),
    (signed_gaps, "absolute gap of each bin"),
    (quantile_by_rank, "cut by rank"),
    (quantile_equal_weights, "1 / n_bins"),
    (quantile_right_closed, "side='left'"),
    (ignores_strategy, "equal-width result"),
    (ten_bins_always, "7 equal-width bins"),
])
def test_check_calibration_error_rejects_typical_mistakes(wrong, hint):
    assert_rejected(check_calibration_error(wrong), hint)


def test_check_calibration_error_grades_the_confidences_it_gave_not_what_an_in_place_sort_left():
    """Sorted in place, the checker's own tensors would change under it: it would grade the wrong data, here
    rejecting a right value as 'expected' something else (adversary's find)."""

    def sorts_in_place(confidences, correct, n_bins=10, strategy="uniform"):
        confidences, correct = confidences.double(), correct.double()  # no copy for float64 tensors
        order = confidences.argsort()
        confidences[:], correct[:] = confidences[order], correct[order]
        return calibration_error_solution(confidences, correct, n_bins, strategy)

    def clamps_in_place(confidences, correct, n_bins=10, strategy="uniform"):
        confidences.clamp_(max=1 - 1e-12)
        return calibration_error_solution(confidences, correct, n_bins, strategy)

    for changes_its_input in (sorts_in_place, clamps_in_place):
        assert_rejected(check_calibration_error(changes_its_input), "changed the confidences")


@pytest.mark.parametrize("answer", [..., None, lambda *a: None, lambda *a: 1 / 0, lambda *a: "0.1",
                                    lambda *a: [0.1, 0.2], lambda *a: torch.tensor([0.1]), lambda *a: {"ece": 0.1}])
def test_check_calibration_error_never_raises(answer):
    assert not check_calibration_error(answer).passed


def test_float32_edges_are_graded_not_crashed():
    check_calibration_error(float32_edges)  # right or wrong depending on rounding, but it must report


# --- checker of exercise 3: fold the temperature into the weights --------------------------------------------

def fold_temperature_solution(classifier, temperature):
    folded = copy.deepcopy(classifier)
    output = folded.get_submodule(head_layout(folded)[2])
    with torch.no_grad():
        output.weight /= temperature
        output.bias /= temperature
    return folded


def _scaled(classifier, temperature, names, weight_too=True, bias_too=True, copy_first=True):
    folded = copy.deepcopy(classifier) if copy_first else classifier
    with torch.no_grad():
        for name in names(folded):
            layer = folded.get_submodule(name)
            if weight_too:
                layer.weight *= temperature
            if bias_too:
                layer.bias *= temperature
    return folded


def output_layer(model):
    return [head_layout(model)[2]]


class _DivideBy(torch.nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature

    def forward(self, x):
        return x / self.temperature


def _wrapped(classifier, temperature):  # right logits, but its weights load back without the temperature
    folded = copy.deepcopy(classifier)
    name = head_layout(folded)[2]
    parent, _, attribute = name.rpartition(".")
    owner = folded.get_submodule(parent) if parent else folded
    setattr(owner, attribute, torch.nn.Sequential(getattr(owner, attribute), _DivideBy(temperature)))
    return folded


def _rebuilt(classifier, temperature):  # a model built anew starts in training mode: dropout on
    folded = type(classifier)(classifier.config)
    folded.load_state_dict(classifier.state_dict())
    return _scaled(folded, 1 / temperature, output_layer, copy_first=False)


def _hooked(classifier, temperature):  # right logits, from a hook that save_pretrained does not keep
    folded = copy.deepcopy(classifier)
    layer = folded.get_submodule(head_layout(folded)[2])
    layer.register_forward_hook(lambda module, inputs, output: output / temperature)
    return folded


def test_check_fold_temperature_accepts_a_saved_and_reloaded_copy(tmp_path):
    """save_pretrained fills in the config's class name and dtype: not a change to the classifier given."""

    def through_save_pretrained(classifier, temperature):
        folder = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        classifier.save_pretrained(folder)
        folded = type(classifier).from_pretrained(folder).eval()
        return fold_temperature_solution(folded, temperature)

    assert_accepted(check_fold_temperature, through_save_pretrained)


def _changes_original_config(classifier, temperature):
    classifier.config.problem_type = "multi_label_classification"  # pipeline() would then use a sigmoid
    return fold_temperature_solution(classifier, temperature)


def test_check_fold_temperature_accepts_the_solution():
    report = check_fold_temperature(fold_temperature_solution)
    assert report.passed, repr(report)
    assert "pipeline() on the folded classifier" in repr(report) and "3-label DistilBERT" in repr(report)


@pytest.mark.parametrize("name, wrong, hint", [
    ("multiplies_by_temperature", lambda c, t: _scaled(c, t, output_layer), "multiplied by T"),
    ("weight_only", lambda c, t: _scaled(c, 1 / t, output_layer, bias_too=False), "weight and the bias"),
    ("bias_only", lambda c, t: _scaled(c, 1 / t, output_layer, weight_too=False), "weight and the bias"),
    ("in_place", lambda c, t: _scaled(c, 1 / t, output_layer, copy_first=False), "copy it first"),
    ("scales_the_dense_layer", lambda c, t: _scaled(c, 1 / t, lambda m: [head_layout(m)[0]]), "not linear"),
    ("only_sets_a_config_field", lambda c, t: copy.deepcopy(c), "did not change"),
    ("bert_only", lambda c, t: _scaled(c, 1 / t, lambda m: [m.bert and "classifier"]), "DistilBERT"),
    # int(0.5) is 0: the T=0.5 case gets inf weights and nan logits, whose diff (nan) is not below any tolerance
    ("wraps_instead_of_folding", lambda c, t: _wrapped(c, t), "not the original's names"),
    ("rebuilt_in_training_mode", lambda c, t: _rebuilt(c, t), "training mode"),
    ("changes_the_original_config", lambda c, t: _changes_original_config(c, t), "config of the classifier"),
    ("hook_divides_the_output", lambda c, t: _hooked(c, t), "not in the weights"),
    ("divides_by_int_t", lambda c, t: _scaled(c, 1 / int(t) if int(t) else math.inf, output_layer), "T=0.5"),
])
def test_check_fold_temperature_rejects_typical_mistakes(name, wrong, hint):
    assert_rejected(check_fold_temperature(wrong), hint)


@pytest.mark.parametrize("answer", [..., None, lambda c, t: None, lambda c, t: 1 / 0, lambda c, t: 2.0,
                                    lambda c, t: torch.nn.Linear(2, 2)])
def test_check_fold_temperature_never_raises(answer):
    assert not check_fold_temperature(answer).passed
