"""Checkers for the exercises of chapter 13 (error analysis): McNemar's exact test, clustering by movie, abstaining.

Each one compares the learner's function with a reference computed here, on small hand-made cases chosen to expose
one mistake each: a tie between the two models (the p-value must stop at 1), reviews both models get wrong (they
are not disagreements), movies with very different numbers of reviews and errors piled on a few movies,
probabilities exactly at the threshold, and three classes (the confidence is the largest probability, not the
second column).
"""

import math

import numpy as np
import torch

from behind_pipeline.checks._core import CheckReport, named_mistakes

# --- Exercise 1: McNemar's exact test --------------------------------------------------------------------------------


def exact_mcnemar(only_a_right: int, only_b_right: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``min(b, c)`` in ``b + c`` fair coin tosses."""
    n, k = only_a_right + only_b_right, min(only_a_right, only_b_right)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_predictions(both_right: int, only_a_right: int, only_b_right: int, both_wrong: int, seed: int):
    """Labels and two models' predictions with the given counts, shuffled (binary labels, both classes present)."""
    rng = np.random.default_rng(seed)
    total = both_right + only_a_right + only_b_right + both_wrong
    labels = rng.integers(0, 2, total)
    a_right = np.array([True] * both_right + [True] * only_a_right + [False] * only_b_right + [False] * both_wrong)
    b_right = np.array([True] * both_right + [False] * only_a_right + [True] * only_b_right + [False] * both_wrong)
    order = rng.permutation(total)
    a_right, b_right = a_right[order], b_right[order]
    return labels, np.where(a_right, labels, 1 - labels), np.where(b_right, labels, 1 - labels)


# (both right, only a right, only b right, both wrong, input type, what the case exposes)
MCNEMAR_CASES = [
    (80, 10, 3, 7, "list", "a right 10 times where b is wrong, b right 3 times where a is wrong"),
    (60, 5, 5, 30, "numpy", "a tie (5 and 5): the two-sided p-value is capped at 1"),
    (90, 0, 0, 10, "tensor", "the models never disagree: nothing to test, p = 1"),
    (20, 2, 12, 6, "list", "b better than a: the test is symmetric"),
    (900, 40, 25, 35, "numpy", "a larger sample: 1,000 reviews, 65 disagreements"),
]


def _as(values, kind):
    return values.tolist() if kind == "list" else (torch.as_tensor(values) if kind == "tensor" else values)


def _mcnemar_mistakes(both_right, only_a, only_b, both_wrong) -> dict[str, float]:
    n, k = only_a + only_b, min(only_a, only_b)
    one_sided = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    with_both_wrong = exact_mcnemar(only_a + both_wrong, only_b + both_wrong)
    chi2 = ((abs(only_a - only_b) - 1) ** 2 / n) if n else 0.0
    return {
        "that is the one-sided p-value: the exact two-sided test doubles the tail (and caps it at 1)": one_sided,
        "the p-value is above 1: the two-sided test doubles the tail, then caps it at 1": 2 * one_sided,
        "reviews both models get wrong are counted as disagreements: only the reviews where exactly one model is "
        "right count": with_both_wrong,
        "that is the chi-squared approximation: the exercise asks for the exact binomial test":
            math.erfc(math.sqrt(chi2 / 2)),
    }


def check_mcnemar_p_value(mcnemar_p_value) -> CheckReport:
    """``mcnemar_p_value(labels, predictions_a, predictions_b)`` is the two-sided exact McNemar p-value."""
    report = CheckReport("McNemar's exact test")
    for seed, (both_right, only_a, only_b, both_wrong, kind, description) in enumerate(MCNEMAR_CASES):
        labels, predictions_a, predictions_b = paired_predictions(both_right, only_a, only_b, both_wrong, seed)
        expected = exact_mcnemar(only_a, only_b)
        answer = report.tensor_answer(mcnemar_p_value, _as(labels, kind), _as(predictions_a, kind),
                                      _as(predictions_b, kind), name="mcnemar_p_value", what="the p-value", shape=())
        if answer is None:
            return report
        value = answer.item()
        if math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-12):
            report.ok(f"{description}: p = {expected:.4g}")
            continue
        named = named_mistakes(value, _mcnemar_mistakes(both_right, only_a, only_b, both_wrong),
                               lambda p, wrong: math.isclose(p, wrong, rel_tol=1e-6), expected)
        if named:
            report.fail(f"{description}: {named[0]}")
        else:
            report.fail(f"{description}: got p = {value:.6g}, expected {expected:.6g} (b = {only_a}, "
                        f"c = {only_b} disagreements)")
        return report
    return report


# --- Exercise 2: errors cluster by movie (overdispersion against the binomial) ---------------------------------------

# (reviews per movie, wrong reviews per movie, what the case exposes)
MOVIE_CASES = [
    ([20, 20, 20, 20, 20], [0, 1, 9, 10, 0], "errors piled on two of five movies: strongly clustered"),
    ([10, 40, 25, 5, 20], [2, 7, 5, 1, 4], "errors spread as a binomial would: no clustering"),
    ([3, 30, 12, 8], [2, 3, 6, 1], "movies of very different sizes"),
    ([15, 15, 15, 15, 15, 15], [1, 5, 2, 8, 3, 6], "six movies of equal size"),
]


def movie_reviews(sizes, wrong, seed):
    """Movie names and error flags, the reviews of the movies interleaved (not sorted by movie)."""
    rng = np.random.default_rng(seed)
    movies, errors = [], []
    for number, (size, mistakes) in enumerate(zip(sizes, wrong, strict=True)):
        movies += [f"movie_{number}"] * size
        errors += [True] * mistakes + [False] * (size - mistakes)
    order = rng.permutation(len(movies))
    return [movies[i] for i in order], np.array(errors)[order]


def _dispersion(sizes, wrong, degrees=None, weigh_by_size=True, movie_mean=False, lower_tail=False):
    """Pearson's statistic of the movies' error counts against one shared binomial rate, and its p-value."""
    from scipy.stats import chi2

    sizes, wrong = np.asarray(sizes, dtype=float), np.asarray(wrong, dtype=float)
    rate = (wrong / sizes).mean() if movie_mean else wrong.sum() / sizes.sum()
    if weigh_by_size:
        statistic = float((((wrong - sizes * rate) ** 2) / (sizes * rate * (1 - rate))).sum())
    else:
        statistic = float((((wrong / sizes - rate) ** 2) / (rate * (1 - rate))).sum())
    degrees = len(sizes) - 1 if degrees is None else degrees
    p_value = float(chi2.cdf(statistic, degrees) if lower_tail else chi2.sf(statistic, degrees))
    return statistic, p_value


def _dispersion_mistakes(sizes, wrong) -> dict[str, tuple[float, float]]:
    return {
        "the degrees of freedom are the number of movies minus 1: one is spent estimating the shared rate":
            _dispersion(sizes, wrong, degrees=len(sizes)),
        "each movie's squared deviation is divided by its binomial variance n p (1 - p): the counts, not the rates, "
        "or weigh each movie's squared rate deviation by its number of reviews": _dispersion(
            sizes, wrong, weigh_by_size=False),
        "the shared rate is all errors over all reviews, not the mean of the movies' rates": _dispersion(
            sizes, wrong, movie_mean=True),
        "that is the lower tail: overdispersion makes the statistic large, so the p-value is the upper tail, "
        "P(chi2 >= statistic)": _dispersion(sizes, wrong, lower_tail=True),
    }


def _same_test(result: tuple[float, float], other: tuple[float, float]) -> bool:
    """Whether two (statistic, p-value) pairs agree: the statistic to 1e-6, the p-value to 1e-5 (relative)."""
    return math.isclose(result[0], other[0], rel_tol=1e-6) and math.isclose(result[1], other[1], rel_tol=1e-5,
                                                                            abs_tol=1e-12)


def check_dispersion_test(dispersion_test) -> CheckReport:
    """``dispersion_test(movies, errors)`` -> (Pearson's statistic, p-value) against one shared binomial rate."""
    report = CheckReport("Errors clustered by movie: a dispersion test")
    for seed, (sizes, wrong, description) in enumerate(MOVIE_CASES):
        movies, errors = movie_reviews(sizes, wrong, seed)
        expected = _dispersion(sizes, wrong)
        given_errors = [errors, errors.astype(int).tolist(), torch.as_tensor(errors), errors.tolist()][seed % 4]
        pair = report.tensor_answer(dispersion_test, movies, given_errors, name="dispersion_test",
                                    what="the (statistic, p-value) pair", shape=(2,))
        if pair is None:
            return report
        statistic, p_value = float(pair[0]), float(pair[1])
        if _same_test((statistic, p_value), expected):
            report.ok(f"{description}: statistic {expected[0]:.2f} on {len(sizes) - 1} degrees of freedom, "
                      f"p = {expected[1]:.3g}")
            continue
        named = named_mistakes((statistic, p_value), _dispersion_mistakes(sizes, wrong), _same_test)
        if named:
            report.fail(f"{description}: {named[0]}")
        elif not 0 <= p_value <= 1:
            report.fail(f"{description}: the p-value {p_value:.4g} is not a probability")
        elif math.isclose(statistic, expected[0], rel_tol=1e-6):
            report.fail(f"{description}: right statistic, wrong p-value: got {p_value:.6g}, expected "
                        f"{expected[1]:.6g} (chi-squared with {len(sizes) - 1} degrees of freedom, upper tail)")
        else:
            report.fail(f"{description}: got statistic {statistic:.6g}, expected {expected[0]:.6g}")
        return report
    return report


# --- Exercise 3: abstain below a confidence threshold ----------------------------------------------------------------

# (probabilities, gold labels, threshold, what the case exposes)
ABSTAIN_CASES = [
    ([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55], [0.05, 0.95], [0.7, 0.3]], [0, 0, 1, 1, 1, 0], 0.75,
     "two classes, threshold 0.75"),
    ([[0.75, 0.25], [0.25, 0.75], [0.7, 0.3], [0.5, 0.5]], [0, 0, 0, 1], 0.75,
     "probabilities exactly at the threshold are answered"),
    ([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]], [1, 0, 1, 0, 2],
     0.6, "three classes: the confidence is the largest probability"),
    ([[0.6, 0.4], [0.45, 0.55], [0.3, 0.7]], [0, 0, 1], 0.5, "threshold 0.5 with two classes: every review answered"),
    ([[0.6, 0.4], [0.45, 0.55]], [0, 1], 0.99, "a threshold nobody reaches: coverage 0, accuracy NaN"),
]


def _abstain(probs, labels, threshold, strict=False, column_one=False):
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs[:, 1] if column_one else probs.max(axis=1)
    answered = confidence > threshold if strict else confidence >= threshold
    predictions = probs.argmax(axis=1)
    coverage = answered.mean()
    accuracy = (predictions[answered] == labels[answered]).mean() if answered.any() else float("nan")
    return float(coverage), float(accuracy), answered, predictions


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or (not math.isnan(a) and not math.isnan(b)
                                                  and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))


def check_coverage_and_accuracy(coverage_and_accuracy) -> CheckReport:
    """``coverage_and_accuracy(probs, labels, threshold)`` -> (share answered, accuracy on the answered ones)."""
    report = CheckReport("Abstain below a confidence threshold")
    for number, (probs, labels, threshold, description) in enumerate(ABSTAIN_CASES):
        coverage, accuracy, answered, predictions = _abstain(probs, labels, threshold)
        given = [np.array(probs), torch.tensor(probs), probs, torch.tensor(probs, dtype=torch.float64),
                 np.array(probs)][number]
        got = report.call(coverage_and_accuracy, given, list(labels), threshold, name="coverage_and_accuracy")
        if got is Ellipsis:
            if any("ZeroDivisionError" in line or "division" in line for line in report.lines):
                report.fail(f"{description}: when nothing is answered, return NaN for the accuracy")
            return report
        pair = report.tensor(got, "the (coverage, accuracy) pair", shape=(2,))
        if pair is None:
            return report
        got_coverage, got_accuracy = pair[0].item(), pair[1].item()
        if _same(got_coverage, coverage) and _same(got_accuracy, accuracy):
            report.ok(f"{description}: coverage {coverage:.3f}, accuracy "
                      f"{'NaN' if math.isnan(accuracy) else f'{accuracy:.3f}'}")
            continue
        strict = _abstain(probs, labels, threshold, strict=True)
        column = _abstain(probs, labels, threshold, column_one=True)
        over_all = (predictions[answered] == np.asarray(labels)[answered]).sum() / len(labels)
        if _same(got_coverage, answered.sum()) and not _same(coverage, answered.sum()):
            report.fail(f"{description}: the coverage is a share of the reviews (answered / all), not a count")
        elif _same(got_coverage, strict[0]) and _same(got_accuracy, strict[1]) and not _same(strict[0], coverage):
            report.fail(f"{description}: a probability equal to the threshold must be answered (>=, not >)")
        elif _same(got_coverage, column[0]) and _same(got_accuracy, column[1]):
            report.fail(f"{description}: the confidence is the largest probability of each row, not the "
                        "probability of one class")
        elif _same(got_accuracy, over_all) and not _same(over_all, accuracy):
            report.fail(f"{description}: the accuracy is over the answered reviews only; abstentions are not errors")
        elif math.isnan(accuracy) and not math.isnan(got_accuracy):
            report.fail(f"{description}: nothing is answered, so the accuracy is undefined: return NaN, not "
                        f"{got_accuracy:g}")
        else:
            report.fail(f"{description}: got ({got_coverage:.4g}, {got_accuracy:.4g}), expected "
                        f"({coverage:.4g}, {accuracy:.4g})")
        return report
    return report
