"""Chapter 13: the error-analysis helpers, and the checkers accept the solutions and reject typical wrong answers."""

import math

import numpy as np
import pytest
import torch

from behind_pipeline.checks.ch13_error_analysis import (
    check_coverage_and_accuracy,
    check_mcnemar_p_value,
    check_movie_error_rate,
    exact_mcnemar,
)
from behind_pipeline.error_analysis import agreement_table, binned_error_rates, most_confident_mistakes

from checker_asserts import assert_rejected

# --- the chapter's helpers -----------------------------------------------------------------------------------------


def test_most_confident_mistakes_ranks_wrong_predictions_by_their_probability():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.05, 0.95], [0.6, 0.4], [0.2, 0.8], [0.99, 0.01]])
    labels = [0, 0, 0, 1, 1, 1]  # wrong: 1 (0.7), 2 (0.95), 3 (0.6), 5 (0.99)
    assert most_confident_mistakes(probs, labels, k=3) == [5, 2, 1]
    assert most_confident_mistakes(probs.numpy(), labels, k=10) == [5, 2, 1, 3]
    ties = np.array([[0.2, 0.8], [0.2, 0.8]])
    assert most_confident_mistakes(ties, [0, 0]) == [0, 1]


def test_binned_error_rates_counts_each_example_once_and_leaves_empty_bins_undefined():
    rows = binned_error_rates([3, 9, 10, 10, 19, 40], [True, False, True, True, False, False], (0, 10, 20, 30, 50))
    assert [row["count"] for row in rows] == [2, 3, 0, 1]  # 10 goes to [10, 20): left edge included
    assert [row["errors"] for row in rows] == [1, 2, 0, 0]
    assert rows[0]["rate"] == 0.5 and rows[1]["rate"] == pytest.approx(2 / 3) and math.isnan(rows[2]["rate"])


def test_agreement_table_splits_every_example_into_one_cell():
    labels = [0, 1, 1, 0, 1]
    table = agreement_table(labels, [0, 0, 1, 1, 1], [0, 1, 0, 1, 1])
    assert table["both right"].tolist() == [0, 4]
    assert table["only a wrong"].tolist() == [1]
    assert table["only b wrong"].tolist() == [2]
    assert table["both wrong"].tolist() == [3]


# --- Exercise 1: McNemar -------------------------------------------------------------------------------------------


def mcnemar(labels, a, b, mistake=None):
    labels = np.asarray(labels).reshape(-1)
    a_right, b_right = np.asarray(a).reshape(-1) == labels, np.asarray(b).reshape(-1) == labels
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    if mistake == "both_wrong_counted":
        both_wrong = int((~a_right & ~b_right).sum())
        only_a, only_b = only_a + both_wrong, only_b + both_wrong
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    if mistake == "one_sided":
        return tail
    if mistake == "no_cap":
        return 2 * tail
    if mistake == "chi_squared":
        return math.erfc(math.sqrt((abs(only_a - only_b) - 1) ** 2 / n / 2))
    return min(1.0, 2 * tail)


def test_exact_mcnemar_matches_scipy():
    from scipy.stats import binomtest

    for b, c in [(10, 3), (5, 5), (2, 12), (40, 25), (1, 0)]:
        assert exact_mcnemar(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_checker_accepts_the_solution():
    assert check_mcnemar_p_value(mcnemar).passed


@pytest.mark.parametrize("mistake, words", [
    ("one_sided", ["one-sided"]),
    ("no_cap", ["above 1"]),
    ("both_wrong_counted", ["both models get wrong"]),
    ("chi_squared", ["chi-squared"]),
])
def test_mcnemar_checker_names_the_mistake(mistake, words):
    assert_rejected(check_mcnemar_p_value(lambda *args: mcnemar(*args, mistake=mistake)), *words)


@pytest.mark.parametrize("answer", [None, ..., lambda *args: "0.05", lambda *args: [0.1, 0.2], lambda *args: 1 / 0])
def test_mcnemar_checker_reports_instead_of_raising(answer):
    assert not check_mcnemar_p_value(answer).passed


# --- Exercise 2: per movie -----------------------------------------------------------------------------------------


def movie_rate(movies, errors):
    errors, movies = np.asarray(errors, dtype=float).reshape(-1), np.asarray(movies)
    return float(np.mean([errors[movies == movie].mean() for movie in np.unique(movies)]))


def test_movie_checker_accepts_the_solution():
    assert check_movie_error_rate(movie_rate).passed


@pytest.mark.parametrize("mistake, answer, words", [
    ("per_review", lambda movies, errors: float(np.asarray(errors, dtype=float).mean()), ["per review"]),
    ("mean_error_count", lambda movies, errors: float(np.asarray(errors, dtype=float).sum()) / len(set(movies)),
     ["number of errors"]),
    ("median", lambda movies, errors: float(np.median([np.asarray(errors, dtype=float)[np.asarray(movies) == m].mean()
                                                      for m in set(movies)])), ["median"]),
    ("only_movies_with_errors", lambda movies, errors: float(np.mean([
        r for r in (np.asarray(errors, dtype=float)[np.asarray(movies) == m].mean() for m in set(movies)) if r]))
     if np.asarray(errors, dtype=float).sum() else 0.0, ["only movies with an error"]),
])
def test_movie_checker_names_the_mistake(mistake, answer, words):
    assert_rejected(check_movie_error_rate(answer), *words)


@pytest.mark.parametrize("answer", [None, ..., lambda movies, errors: {"a": 1.0}, lambda movies, errors: 1 / 0])
def test_movie_checker_reports_instead_of_raising(answer):
    assert not check_movie_error_rate(answer).passed


# --- Exercise 3: abstain ---------------------------------------------------------------------------------------------


def abstain(probs, labels, threshold, mistake=None):
    probs, labels = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels)
    confidence, predicted = probs.max(dim=1)
    if mistake == "column_one":
        confidence = probs[:, 1]
    answered = confidence > threshold if mistake == "strict" else confidence >= threshold
    coverage = answered.double().mean().item()
    if mistake == "count":
        coverage = float(answered.sum())
    if not answered.any():
        return coverage, (0.0 if mistake == "zero_when_empty" else float("nan"))
    if mistake == "over_all":
        return coverage, (predicted[answered] == labels[answered]).double().sum().item() / len(labels)
    return coverage, (predicted[answered] == labels[answered]).double().mean().item()


def test_abstain_checker_accepts_the_solution():
    assert check_coverage_and_accuracy(abstain).passed


@pytest.mark.parametrize("mistake, words", [
    ("strict", [">=, not >"]),
    ("column_one", ["largest probability"]),
    ("count", ["share"]),
    ("over_all", ["answered reviews only"]),
    ("zero_when_empty", ["nan"]),
])
def test_abstain_checker_names_the_mistake(mistake, words):
    assert_rejected(check_coverage_and_accuracy(lambda *args: abstain(*args, mistake=mistake)), *words)


def test_abstain_checker_reports_a_division_by_zero_when_nothing_is_answered():
    def divides(probs, labels, threshold):
        coverage, _ = abstain(probs, labels, threshold)
        probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
        answered = probs.max(axis=1) >= threshold
        return coverage, int((probs.argmax(axis=1)[answered] == labels[answered]).sum()) / int(answered.sum())
    assert_rejected(check_coverage_and_accuracy(divides), "nan")


@pytest.mark.parametrize("answer", [None, ..., lambda *args: 0.5, lambda *args: (1, 2, 3), lambda *args: 1 / 0])
def test_abstain_checker_reports_instead_of_raising(answer):
    assert not check_coverage_and_accuracy(answer).passed
