"""Checkers for chapter 10's exercises: macro-F1 from a confusion matrix, a decision threshold tuned on validation,
and a movie-level (cluster) bootstrap interval for the difference between two models' accuracies."""

from functools import cache

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from behind_pipeline.checks._core import CheckReport, named_mistakes

MIN_ACCURACY = 0.70  # always answering fresh scores 0.646 on the test split


def paired_bootstrap_interval(labels, predictions_a, predictions_b, resamples: int = 2000, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of accuracy(a) - accuracy(b) when reviews (not movies) are resampled, both models on
    each draw: what a learner who forgets the movies computes."""
    labels, a, b = (np.asarray(values) for values in (labels, predictions_a, predictions_b))
    differences = (a == labels).astype(float) - (b == labels).astype(float)  # -1, 0 or 1 per example
    rows = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    means = differences[rows].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)

# Rows: gold label, columns: predicted label. Imbalanced on purpose, so that accuracy, micro, weighted and macro
# averages all differ; the last matrix has a class that is never predicted (its precision is 0 / 0).
CONFUSIONS = (
    [[50, 30], [10, 110]],
    [[5, 95], [0, 300]],
    [[40, 5, 5], [10, 20, 0], [3, 2, 15]],
    [[12, 3, 0], [4, 9, 0], [2, 5, 0]],
)


def _labels_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gold and predicted labels that have exactly this confusion matrix."""
    pairs = [(gold, predicted) for gold in range(len(confusion)) for predicted in range(len(confusion))
             for _ in range(int(confusion[gold, predicted]))]
    gold, predicted = zip(*pairs, strict=True)
    return np.array(gold), np.array(predicted)


def _other_averages(confusion: np.ndarray) -> dict[str, float]:
    """What a learner may compute instead of macro-F1, each with the mistake it names."""
    gold, predicted = _labels_from_confusion(confusion)
    labels = list(range(len(confusion)))
    precision = precision_score(gold, predicted, labels=labels, average="macro", zero_division=0)
    recall = recall_score(gold, predicted, labels=labels, average="macro", zero_division=0)
    wrong = {
        "that is the accuracy (also the micro-averaged F1 here): average the per-class F1 scores instead":
            float(np.trace(confusion) / confusion.sum()),
        "that is the F1 weighted by each class's support: macro-F1 gives every class the same weight":
            float(f1_score(gold, predicted, labels=labels, average="weighted", zero_division=0)),
        "that is the F1 of macro-precision and macro-recall: compute F1 per class first, then average":
            float(2 * precision * recall / (precision + recall)),
    }
    if len(confusion) == 2:
        wrong["that is the F1 of the positive class (1) alone: average it with the F1 of class 0"] = float(
            f1_score(gold, predicted, pos_label=1, zero_division=0))
    return wrong


def check_macro_f1_from_confusion(macro_f1_from_confusion) -> CheckReport:
    """``macro_f1_from_confusion(confusion) -> float`` equals ``f1_score(..., average="macro")``."""
    report = CheckReport("Macro-F1 from a confusion matrix")
    for matrix in CONFUSIONS:
        confusion = np.array(matrix)
        value = report.tensor_answer(macro_f1_from_confusion, confusion.copy(), name="macro_f1_from_confusion",
                                     what=f"macro_f1_from_confusion({matrix})", shape=())
        if value is None:
            return report
        gold, predicted = _labels_from_confusion(confusion)
        expected = f1_score(gold, predicted, average="macro", zero_division=0)
        if torch.isnan(value):
            report.fail(f"{matrix}: got nan. A class that is never predicted has precision 0 / 0: count its F1 as 0, "
                        "as scikit-learn does")
            return report
        if abs(float(value) - expected) > 1e-6:
            mistakes = named_mistakes(float(value), _other_averages(confusion),
                                      lambda answer, other: abs(answer - other) < 1e-6)
            report.fail(f"{matrix}: got {float(value):.4f}, expected {expected:.4f}"
                        + (f"; {mistakes[0]}" if mistakes else ""))
            return report
        accuracy = np.trace(confusion) / confusion.sum()
        report.ok(f"{matrix}: {expected:.4f}, as f1_score(average='macro') (accuracy {accuracy:.4f})")
    return report


# Validation-like cases for the threshold: (description, labels, fresh probabilities). Drawn so that the threshold
# of the best accuracy, the best macro-F1 and 0.5 all differ.
def _threshold_case(seed: int, size: int, fresh_share: float, shift: float):
    generator = np.random.default_rng(seed)
    labels = (generator.random(size) < fresh_share).astype(int)
    # fresh reviews score higher on average; shift pushes every probability up (a model leaning towards fresh)
    scores = generator.normal(labels * 1.2 + shift, 1.0)
    return labels, np.round(1 / (1 + np.exp(-scores)), 4)


THRESHOLD_CASES = (("400 reviews, 65% fresh, a model leaning to fresh", 0, 400, 0.65, 0.8),
                   ("300 reviews, 40% fresh", 1, 300, 0.40, -0.2),
                   ("500 reviews, 80% fresh, a model leaning to fresh", 2, 500, 0.80, 1.5))


THRESHOLD_SLACK = 1e-6  # a threshold returned as a float32 tensor may sit just above the probability it copies


def _fresh_at(probabilities, threshold: float) -> np.ndarray:
    return (np.asarray(probabilities) >= threshold - THRESHOLD_SLACK).astype(int)


def _macro_f1_at(labels, probabilities, threshold: float) -> float:
    return float(f1_score(labels, _fresh_at(probabilities, threshold), average="macro", zero_division=0))


def _scores_per_threshold(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Macro-F1 and accuracy at each distinct probability as the threshold (fresh where probability >= it), from
    counts: what ``f1_score(..., average="macro", zero_division=0)`` gives at each when ``labels`` hold both classes,
    without calling it a thousand times (tests/test_ch10_baselines.py compares the two)."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    thresholds = np.unique(probabilities)
    fresh, rotten = np.sort(probabilities[labels == 1]), np.sort(probabilities[labels == 0])
    fresh_below = np.searchsorted(fresh, thresholds, side="left")  # fresh reviews predicted rotten
    rotten_below = np.searchsorted(rotten, thresholds, side="left")  # rotten reviews predicted rotten
    true_fresh, false_fresh = len(fresh) - fresh_below, len(rotten) - rotten_below
    true_rotten, false_rotten = rotten_below, fresh_below

    def f1(true, false_positive, false_negative):
        denominator = 2 * true + false_positive + false_negative
        return np.divide(2 * true, denominator, out=np.zeros(len(thresholds)), where=denominator > 0)

    macro_f1 = (f1(true_fresh, false_fresh, fresh_below) + f1(true_rotten, false_rotten, len(rotten) - true_rotten)) / 2
    return macro_f1, (true_fresh + true_rotten) / len(labels)


def check_tune_threshold(tune_threshold) -> CheckReport:
    """``tune_threshold(val_labels, val_fresh_probabilities) -> threshold`` maximises validation macro-F1, with
    fresh predicted where probability >= threshold."""
    report = CheckReport("A decision threshold tuned on validation")
    for where, seed, size, share, shift in THRESHOLD_CASES:
        labels, probabilities = _threshold_case(seed, size, share, shift)
        given = (labels.tolist(), probabilities.tolist()) if seed == 0 else (labels.copy(), probabilities.copy())
        value = report.tensor_answer(tune_threshold, *given, name="tune_threshold",
                                     what=f"{where}: tune_threshold(...)", shape=())
        if value is None:
            return report
        threshold = value.item()
        got = _macro_f1_at(labels, probabilities, threshold)
        macro_f1s, accuracies = _scores_per_threshold(labels, probabilities)
        best = float(macro_f1s.max())
        if got < best - 1e-9:
            best_accuracy = float(accuracies.max())
            if abs(threshold - best) < 1e-9:
                why = "that is the best macro-F1 itself: return the threshold that reaches it"
            elif abs(float(np.mean(labels == _fresh_at(probabilities, threshold))) - best_accuracy) < 1e-9:
                why = "that threshold maximises accuracy: choose it by macro-F1, the score the chapter reports"
            elif abs(got - _macro_f1_at(labels, probabilities, 0.5)) < 1e-9:
                why = "that scores like 0.5, predict's own threshold: try every candidate (each distinct probability)"
            else:
                why = ("try each distinct validation probability as the threshold, predict fresh where probability "
                       ">= threshold, and keep the one with the highest macro-F1")
            report.fail(f"{where}: threshold {threshold:.4f} gives macro-F1 {got:.4f}, the best is {best:.4f}; {why}")
            return report
        report.ok(f"{where}: threshold {threshold:.4f}, validation macro-F1 {got:.4f} (0.5 gives "
                  f"{_macro_f1_at(labels, probabilities, 0.5):.4f})")
    return report


def _cluster_case(seed: int, movies: int):
    """Labels, two models' predictions and movie names, where the models' differences cluster by movie: in some
    movies a is much better, in others b, as happens when a model knows one kind of film; a is better on big ones."""
    generator = np.random.default_rng(seed)
    sizes = generator.integers(3, 45, size=movies)
    groups = np.repeat([f"movie_{i}" for i in range(movies)], sizes)
    # each movie's chance that a and b are right: shared by its reviews
    a_right_rate = np.repeat(generator.uniform(0.55, 0.98, size=movies), sizes)
    # b is worse on the big movies: pooling reviews and averaging one difference per movie disagree
    b_shift = generator.normal(0.0, 0.12, size=movies) - 0.12 * (sizes > 25)
    b_right_rate = np.clip(a_right_rate + np.repeat(b_shift, sizes), 0.3, 1.0)
    labels = generator.integers(0, 2, size=len(groups))
    a_right, b_right = generator.random(len(groups)) < a_right_rate, generator.random(len(groups)) < b_right_rate
    order = generator.permutation(len(groups))  # reviews of one movie need not be next to each other
    labels, a_right, b_right, groups = labels[order], a_right[order], b_right[order], groups[order]
    return labels, np.where(a_right, labels, 1 - labels), np.where(b_right, labels, 1 - labels), groups


CLUSTER_CASES = (("60 movies of 3-44 reviews", 0, 60), ("90 movies of 3-44 reviews", 1, 90))
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_TOLERANCE = 0.0045  # a bound drawn with 4,000 resamples of these movies moves by up to 0.0025


def _per_movie_mean_interval(labels, a, b, groups, resamples: int, seed: int, level: float = 0.95):
    """The mistake of averaging per-movie differences (every movie weighs the same) instead of pooling reviews."""
    movies, index = np.unique(groups, return_inverse=True)
    differences = (a == labels).astype(float) - (b == labels)
    per_movie = np.bincount(index, weights=differences) / np.bincount(index)
    drawn = np.random.default_rng(seed).integers(0, len(movies), size=(resamples, len(movies)))
    return tuple(float(q) for q in np.quantile(per_movie[drawn].mean(axis=1), [(1 - level) / 2, (1 + level) / 2]))


def _near(bounds, reference) -> bool:
    return all(abs(got - want) <= BOOTSTRAP_TOLERANCE for got, want in zip(bounds, reference, strict=True))


def check_cluster_bootstrap(cluster_bootstrap) -> CheckReport:
    """``cluster_bootstrap(labels, predictions_a, predictions_b, groups, resamples, seed) -> (low, high)``: the 95%
    interval of accuracy(a) - accuracy(b) when movies are resampled."""
    from behind_pipeline.metrics import cluster_bootstrap_interval

    report = CheckReport("A movie-level bootstrap interval for a difference in accuracy")
    for index, (where, seed, movies) in enumerate(CLUSTER_CASES):
        labels, predictions_a, predictions_b, groups = _cluster_case(seed, movies)
        # Lists in one case, NumPy arrays in the other: both are what a learner may be handed.
        given = [values.tolist() if index == 0 else values.copy()
                 for values in (labels, predictions_a, predictions_b, groups)]
        bounds = report.tensor_answer(cluster_bootstrap, *given, BOOTSTRAP_RESAMPLES, 0, name="cluster_bootstrap",
                                      what=f"{where}: cluster_bootstrap(...)", shape=(2,))
        if bounds is None:
            return report
        low, high = float(bounds[0]), float(bounds[1])
        difference = float(np.mean(predictions_a == labels) - np.mean(predictions_b == labels))
        expected = cluster_bootstrap_interval(labels, predictions_a, predictions_b, groups, 20_000, 123)
        if _near((low, high), expected):
            report.ok(f"{where}: ({low:+.3f}, {high:+.3f}) around the observed {difference:+.3f}")
            continue
        reviews = paired_bootstrap_interval(labels, predictions_a, predictions_b, resamples=20_000, seed=123)
        if _near((low, high), (-expected[1], -expected[0])):
            why = "that is accuracy(b) - accuracy(a): the interval is for a minus b"
        elif high - low < 1e-9:
            why = ("the interval has no width: draw as many movies as there are, with replacement (some twice, some "
                   "not at all)")
        elif _near((low, high), reviews):
            why = ("that is the interval of resampled reviews: draw movies, and keep all the reviews of each drawn "
                   "movie")
        elif _near((low, high), _per_movie_mean_interval(labels, predictions_a, predictions_b, groups, 20_000,
                                                         123)):
            why = ("you averaged one difference per movie, every movie weighing the same: pool the reviews of the "
                   "drawn movies and compute the accuracies over them")
        elif _near((low, high), cluster_bootstrap_interval(labels, predictions_a, predictions_b, groups, 20_000, 123,
                                                           level=0.90)):
            why = "that is a 90% interval: take the 2.5th and 97.5th percentiles"
        else:
            why = f"expected about ({expected[0]:+.3f}, {expected[1]:+.3f})"
        report.fail(f"{where}: got ({low:+.3f}, {high:+.3f}); {why}")
        return report
    return report


HONEST_ACCURACY = 0.86  # the fine-tuned classifier scores 0.83 on test; fitted on test texts, TF-IDF scores 0.93


@cache
def _test_split() -> tuple[list[str], list[int], list[str]]:
    from behind_pipeline.data import load_rotten_tomatoes

    test_ds = load_rotten_tomatoes()["test"]
    return list(test_ds["text"]), [int(label) for label in test_ds["label"]], list(test_ds["movie_name"])


@cache
def _unigram_model():
    """The chapter's TF-IDF + logistic regression: fitted on train, C chosen on validation."""
    from behind_pipeline.baselines import tuned_tfidf_logistic_regression
    from behind_pipeline.data import load_rotten_tomatoes

    splits = load_rotten_tomatoes()
    return tuned_tfidf_logistic_regression(splits["train"]["text"][:], splits["train"]["label"][:],
                                           splits["validation"]["text"][:], splits["validation"]["label"][:])


@cache
def _words_only_in_test() -> frozenset[str]:
    """Words of the test reviews that no train or validation review contains: a model fitted on train (and tuned on
    validation) cannot know them."""
    from behind_pipeline.baselines import tfidf_vectorizer
    from behind_pipeline.data import load_rotten_tomatoes

    splits = load_rotten_tomatoes()
    seen = set(tfidf_vectorizer().fit(splits["train"]["text"][:] + splits["validation"]["text"][:]).vocabulary_)
    return frozenset(set(tfidf_vectorizer().fit(_test_split()[0]).vocabulary_) - seen)


def _saw_the_test_texts(model) -> bool:
    """Whether a pipeline's vectorizer holds words that only test reviews contain."""
    steps = getattr(model, "steps", None) or []
    vocabulary = next((getattr(step, "vocabulary_", None) for _, step in steps if hasattr(step, "vocabulary_")),
                      None)
    return vocabulary is not None and any(word in vocabulary for word in _words_only_in_test())


def _test_predictions(report: CheckReport, model) -> torch.Tensor | None:
    """``model.predict`` on the test texts as a tensor, one label per review; None (with a FIX line) when it fails."""
    texts = _test_split()[0]
    predict = getattr(model, "predict", None)
    if not callable(predict):
        report.fail("bigram_model has no predict(): fit a scikit-learn pipeline ending in LogisticRegression, as the "
                    "chapter does")
        return None
    return report.tensor_answer(predict, list(texts), name="bigram_model.predict",
                                what="bigram_model.predict(test texts)", shape=(len(texts),))


def check_bigram_against_unigram(cluster_bootstrap, bigram_model) -> CheckReport:
    """The measurement: your movie-level interval for accuracy(bigrams) - accuracy(words only) on the test split,
    both models fitted on train with C tuned on validation."""
    report = CheckReport("Bigrams against single words, movies resampled")
    if not report.answered(bigram_model, "bigram_model") or not report.answered(cluster_bootstrap,
                                                                               "cluster_bootstrap"):
        return report
    _, labels, movies = _test_split()
    bigram = _test_predictions(report, bigram_model)
    if bigram is None:
        return report
    bigram, gold = bigram.long().numpy(), np.array(labels)
    accuracy = float(np.mean(bigram == gold))
    if _saw_the_test_texts(bigram_model):
        report.fail("bigram_model's vocabulary holds words that only the test reviews contain: it was fitted on "
                    "test texts. Fit it on train (and tune on validation) only; the test split is scored once")
        return report
    if not report.expect(accuracy <= HONEST_ACCURACY, f"bigram_model never saw the test reviews (test accuracy "
                         f"{accuracy:.4f})", f"test accuracy {accuracy:.4f} is above what any model of this book "
                         "reaches on reviews it never saw: was it fitted on test texts or labels? Fit on train only"):
        return report
    if not report.expect(accuracy >= MIN_ACCURACY, "it beats the majority class",
                         f"test accuracy {accuracy:.4f}, hardly above always answering fresh (0.646): fit it on the "
                         "train split's texts and labels"):
        return report
    unigram = np.asarray(_unigram_model().predict(_test_split()[0]))
    for name, predictions in (("words only (the chapter's model, C tuned)", unigram), ("words and pairs (yours)",
                                                                                       bigram)):
        report.ok(f"{name}: accuracy {np.mean(predictions == gold):.4f}, macro-F1 "
                  f"{f1_score(gold, predictions, average='macro'):.4f}, predicted fresh {np.mean(predictions):.1%}")
    bounds = report.tensor_answer(cluster_bootstrap, gold.tolist(), bigram.tolist(), unigram.tolist(), list(movies),
                                  BOOTSTRAP_RESAMPLES, 0, name="cluster_bootstrap", what="cluster_bootstrap(...)",
                                  shape=(2,))
    if bounds is None:
        return report
    from behind_pipeline.metrics import cluster_bootstrap_interval

    low, high = float(bounds[0]), float(bounds[1])
    expected = cluster_bootstrap_interval(gold, bigram, unigram, movies, 20_000, 123)
    if not report.expect(_near((low, high), expected),
                         f"accuracy(pairs) - accuracy(words), 95% interval, movies resampled: ({low:+.4f}, "
                         f"{high:+.4f})",
                         f"your interval ({low:+.4f}, {high:+.4f}) is far from the expected ({expected[0]:+.4f}, "
                         f"{expected[1]:+.4f}): does cluster_bootstrap pass its own check above?"):
        return report
    verdict = ("contains 0: on new movies the two cannot be told apart" if low <= 0 <= high else
               "excludes 0: the difference is larger than what the choice of test movies explains")
    report.ok(f"the interval {verdict}")
    return report
