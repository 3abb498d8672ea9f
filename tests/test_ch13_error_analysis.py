"""Chapter 13: the error-analysis helpers, and the checkers accept the solutions and reject typical wrong answers."""

import math

import numpy as np
import pytest
import torch

from behind_pipeline.checks.ch13_error_analysis import (
    check_coverage_and_accuracy,
    check_dispersion_test,
    check_mcnemar_p_value,
    exact_mcnemar,
)
from behind_pipeline.error_analysis import agreement_table, binned_error_rates, most_confident_mistakes

from checker_asserts import assert_rejected
from tiny_models import tiny_bert_classifier

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


# --- Exercise 2: clustering by movie, a dispersion test ---------------------------------------------------------


def dispersion(movies, errors, mistake=None):
    from scipy.stats import chi2

    errors, movies = np.asarray(errors, dtype=float).reshape(-1), np.asarray(movies)
    names = np.unique(movies)
    sizes = np.array([(movies == name).sum() for name in names], dtype=float)
    counts = np.array([errors[movies == name].sum() for name in names])
    rate = (counts / sizes).mean() if mistake == "movie_mean_rate" else counts.sum() / sizes.sum()
    if mistake == "rates_not_counts":
        statistic = (((counts / sizes - rate) ** 2) / (rate * (1 - rate))).sum()
    else:
        statistic = (((counts - sizes * rate) ** 2) / (sizes * rate * (1 - rate))).sum()
    degrees = len(names) if mistake == "degrees_m" else len(names) - 1
    p_value = chi2.cdf(statistic, degrees) if mistake == "lower_tail" else chi2.sf(statistic, degrees)
    return float(statistic), float(p_value)


def test_dispersion_checker_accepts_the_solution():
    assert check_dispersion_test(dispersion).passed


def test_the_checkers_dispersion_p_value_is_scipys_chi2_contingency_on_the_movies_by_outcome_table():
    """Pearson's dispersion statistic is the chi-squared test of independence of movie and outcome (no correction)."""
    from scipy.stats import chi2_contingency

    from behind_pipeline.checks.ch13_error_analysis import MOVIE_CASES, _dispersion

    for sizes, wrong, _ in MOVIE_CASES:
        table = np.array([[w, s - w] for s, w in zip(sizes, wrong, strict=True)])
        result = chi2_contingency(table, correction=False)
        assert _dispersion(sizes, wrong) == pytest.approx((result.statistic, result.pvalue), rel=1e-9)


def test_the_dispersion_cases_include_a_clustered_and_an_unclustered_one():
    from behind_pipeline.checks.ch13_error_analysis import MOVIE_CASES, _dispersion

    p_values = [_dispersion(sizes, wrong)[1] for sizes, wrong, _ in MOVIE_CASES]
    assert min(p_values) < 0.001 and max(p_values) > 0.5


@pytest.mark.parametrize("mistake, words", [
    ("degrees_m", ["minus 1"]),
    ("rates_not_counts", ["binomial variance"]),
    ("movie_mean_rate", ["mean of the movies' rates"]),
    ("lower_tail", ["upper tail"]),
])
def test_dispersion_checker_names_the_mistake(mistake, words):
    assert_rejected(check_dispersion_test(lambda movies, errors: dispersion(movies, errors, mistake)), *words)


@pytest.mark.parametrize("answer", [None, ..., lambda movies, errors: {"a": 1.0}, lambda movies, errors: 1 / 0,
                                    lambda movies, errors: 0.5])
def test_dispersion_checker_reports_instead_of_raising(answer):
    assert not check_dispersion_test(answer).passed


# --- shared helpers the chapter uses: the cluster bootstrap, the word count, occlusion -----------------------------


def test_cluster_bootstrap_resamples_whole_movies():
    from behind_pipeline.metrics import cluster_bootstrap

    # two movies, all reviews of one wrong, none of the other: every resample draws whole movies, so the
    # error rate can only be 0, 1/2 or 1; resampling reviews would give rates in between.
    errors = np.array([1] * 10 + [0] * 10, dtype=float)
    movies = ["a"] * 10 + ["b"] * 10
    seen = []
    cluster_bootstrap(lambda indices: seen.append(errors[indices].mean()) or 0.0, movies, samples=200)
    assert set(seen) <= {0.0, 0.5, 1.0} and len(set(seen)) == 3
    seen.clear()
    cluster_bootstrap(lambda indices: seen.append(errors[indices].mean()) or 0.0, range(20), samples=200)
    assert len(set(seen)) > 3


def test_cluster_bootstrap_interval_is_wider_when_errors_cluster_and_skips_nan():
    from behind_pipeline.metrics import cluster_bootstrap, mean_and_sd

    rng = np.random.default_rng(0)
    movies = np.repeat(np.arange(30), 20)
    clustered = np.repeat(rng.random(30) < 0.2, 20).astype(float)  # each movie all right or all wrong
    spread = rng.permutation(clustered)  # the same errors, scattered over the movies
    width = [np.subtract(*cluster_bootstrap(lambda i, e=e: e[i].mean(), movies)[::-1]) for e in (clustered, spread)]
    assert width[0] > 2 * width[1]
    low, high = cluster_bootstrap(lambda i: float("nan") if 0 in i else 1.0, movies, samples=100)
    assert low == high == 1.0
    assert all(np.isnan(cluster_bootstrap(lambda i: float("nan"), movies, samples=10)))  # a band never filled
    assert mean_and_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)


def test_contains_word_matches_whole_words_in_any_case():
    from behind_pipeline.error_analysis import contains_word

    found = contains_word(["But it works", "a button", "good, but slow", "BUT", "butter"], "but")
    assert found.tolist() == [True, False, True, True, False]


def test_leave_one_word_out_is_the_probability_drop_through_predict_logits(tmp_path):
    from transformers import BertTokenizerFast

    from behind_pipeline.error_analysis import leave_one_word_out
    from behind_pipeline.predict import predict_logits

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "but", "film", "slow"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    classifier = tiny_bert_classifier(len(vocab))
    text = "good film but slow"
    pushes = leave_one_word_out(classifier, tokenizer, text)
    assert [word for word, _ in pushes] == text.split()
    full = predict_logits(classifier, tokenizer, [text]).softmax(dim=-1)[0, 1].item()
    without_but = predict_logits(classifier, tokenizer, ["good film slow"]).softmax(dim=-1)[0, 1].item()
    assert pushes[2][1] == pytest.approx(full - without_but, abs=1e-6) and abs(pushes[2][1]) > 0


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
