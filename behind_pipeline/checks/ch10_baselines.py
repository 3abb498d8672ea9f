"""Checkers for chapter 10's exercises: macro-F1 from a confusion matrix, a bigram TF-IDF model, and a paired
bootstrap interval for the difference between two models' accuracies."""

from functools import cache

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from behind_pipeline.checks._core import CheckReport

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
        result = report.call(macro_f1_from_confusion, confusion.copy(), name="macro_f1_from_confusion")
        if result is Ellipsis:
            return report
        value = report.tensor(result, f"macro_f1_from_confusion({matrix})", shape=())
        if value is None:
            return report
        gold, predicted = _labels_from_confusion(confusion)
        expected = f1_score(gold, predicted, average="macro", zero_division=0)
        if torch.isnan(value):
            report.fail(f"{matrix}: got nan. A class that is never predicted has precision 0 / 0: count its F1 as 0, "
                        "as scikit-learn does")
            return report
        if abs(float(value) - expected) > 1e-6:
            mistakes = [why for why, other in _other_averages(confusion).items() if abs(float(value) - other) < 1e-6]
            report.fail(f"{matrix}: got {float(value):.4f}, expected {expected:.4f}"
                        + (f"; {mistakes[0]}" if mistakes else ""))
            return report
        accuracy = np.trace(confusion) / confusion.sum()
        report.ok(f"{matrix}: {expected:.4f}, as f1_score(average='macro') (accuracy {accuracy:.4f})")
    return report


# Each pair has the same words in another order: a bag of words cannot tell them apart, bigrams can.
REORDERED_PAIRS = (
    ("not good, just funny", "just good, not funny"),
    ("a bad script but a great cast", "a great script but a bad cast"),
    ("it is not a masterpiece and it is boring", "it is a masterpiece and it is not boring"),
)
SINGLE_WORDS = ("masterpiece", "dull")  # one-word reviews have no bigram: only unigrams can score them
MIN_ACCURACY = 0.70  # always answering fresh scores 0.646 on the test split


@cache
def _test_split() -> tuple[list[str], list[int]]:
    from behind_pipeline.data import load_rotten_tomatoes

    test_ds = load_rotten_tomatoes()["test"]
    return list(test_ds["text"]), [int(label) for label in test_ds["label"]]


def _method(report: CheckReport, model, name: str):
    """``model.<name>``, or None and a FIX line when the model has no such method."""
    method = getattr(model, name, None)
    if not callable(method):
        report.fail(f"bigram_model has no {name}(): fit a scikit-learn pipeline ending in LogisticRegression, as the "
                    "chapter does")
        return None
    return method


def _fresh_probability(report: CheckReport, model, texts: list[str]):
    predict_proba = _method(report, model, "predict_proba")
    if predict_proba is None:
        return None
    probabilities = report.call(predict_proba, list(texts), name="bigram_model.predict_proba")
    if probabilities is Ellipsis:
        return None
    return report.tensor(probabilities, "bigram_model.predict_proba(texts)", shape=(len(texts), 2))


def _test_predictions(report: CheckReport, model) -> torch.Tensor | None:
    """``model.predict`` on the test texts as a tensor, one label per review; None (with a FIX line) when it fails."""
    texts = _test_split()[0]
    predict = _method(report, model, "predict")
    if predict is None:
        return None
    predictions = report.call(predict, list(texts), name="bigram_model.predict")
    if predictions is Ellipsis:
        return None
    return report.tensor(predictions, "bigram_model.predict(test texts)", shape=(len(texts),))


def check_bigram_model(bigram_model) -> CheckReport:
    """A fitted model on TF-IDF of words and word pairs: sees word order, scores single words, beats the majority."""
    report = CheckReport("A TF-IDF model with bigrams")
    if not report.answered(bigram_model, "bigram_model"):
        return report
    labels = _test_split()[1]
    predicted = _test_predictions(report, bigram_model)
    if predicted is None:
        return report
    accuracy = float((predicted == torch.tensor(labels, dtype=predicted.dtype)).double().mean())
    if not report.expect(accuracy >= MIN_ACCURACY, f"test accuracy {accuracy:.4f}, above the majority class",
                         f"test accuracy {accuracy:.4f}, hardly above always answering fresh (0.646): fit it on the "
                         "train split's texts and labels"):
        return report
    pairs = [text for pair in REORDERED_PAIRS for text in pair]
    fresh = _fresh_probability(report, bigram_model, pairs)
    if fresh is None:
        return report
    differ = sum(abs(float(fresh[2 * i, 1] - fresh[2 * i + 1, 1])) > 1e-9 for i in range(len(REORDERED_PAIRS)))
    if not report.expect(differ == len(REORDERED_PAIRS), "word order matters: reordered reviews get other scores",
                         f"{len(REORDERED_PAIRS) - differ} of {len(REORDERED_PAIRS)} reordered reviews get the "
                         "same score as the original: the model sees single words only; add word pairs "
                         "(ngram_range=(1, 2))"):
        return report
    singles = _fresh_probability(report, bigram_model, ["", *SINGLE_WORDS])
    if singles is None:
        return report
    report.expect(all(abs(float(singles[i + 1, 1] - singles[0, 1])) > 1e-9 for i in range(len(SINGLE_WORDS))),
                  "single words still count: one-word reviews are not scored like an empty one",
                  "one-word reviews get the score of an empty review: the model sees word pairs only; keep the "
                  "single words too (ngram_range=(1, 2), not (2, 2))")
    return report


def paired_bootstrap_interval(labels, predictions_a, predictions_b, resamples: int = 2000, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of accuracy(a) - accuracy(b): resample the test examples with replacement, both models'
    answers together (paired), ``resamples`` times."""
    labels, a, b = (np.asarray(values) for values in (labels, predictions_a, predictions_b))
    differences = (a == labels).astype(float) - (b == labels).astype(float)  # -1, 0 or 1 per example
    rows = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    means = differences[rows].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _bootstrap_case(both_right: int, only_a: int, only_b: int, both_wrong: int, seed: int):
    """Labels and two models' predictions with these counts of agreement, in a shuffled order."""
    labels = np.random.default_rng(seed).integers(0, 2, size=both_right + only_a + only_b + both_wrong)
    a_right = np.array([True] * both_right + [True] * only_a + [False] * only_b + [False] * both_wrong)
    b_right = np.array([True] * both_right + [False] * only_a + [True] * only_b + [False] * both_wrong)
    order = np.random.default_rng(seed + 1).permutation(len(labels))
    a_right, b_right = a_right[order], b_right[order]
    return labels, np.where(a_right, labels, 1 - labels), np.where(b_right, labels, 1 - labels)


# (description, counts both right / only a / only b / both wrong). The first: two models that mostly agree, where
# pairing matters; the second: many disagreements and b better, where the level (95%) and the sign show.
BOOTSTRAP_CASES = (
    ("600 reviews, the models disagree on 45, a better", (480, 35, 10, 75)),
    ("600 reviews, the models disagree on 240, b better", (300, 90, 150, 60)),
)
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_TOLERANCE = 0.004  # resampling noise of a bound with 4,000 resamples is about 0.001


def check_paired_bootstrap(paired_bootstrap) -> CheckReport:
    """``paired_bootstrap(labels, predictions_a, predictions_b, resamples, seed) -> (low, high)``: 95% interval."""
    report = CheckReport("A paired bootstrap interval for a difference in accuracy")
    for index, (where, counts) in enumerate(BOOTSTRAP_CASES):
        labels, predictions_a, predictions_b = _bootstrap_case(*counts, seed=index)
        # Lists in one case, NumPy arrays in the other: both are what a learner may be handed.
        given = [values.tolist() if index == 0 else values.copy() for values in (labels, predictions_a, predictions_b)]
        result = report.call(paired_bootstrap, *given, BOOTSTRAP_RESAMPLES, 0, name="paired_bootstrap")
        if result is Ellipsis:
            return report
        bounds = report.tensor(result, f"{where}: paired_bootstrap(...)", shape=(2,))
        if bounds is None:
            return report
        low, high = float(bounds[0]), float(bounds[1])
        difference = (counts[1] - counts[2]) / sum(counts)
        expected = paired_bootstrap_interval(labels, predictions_a, predictions_b, resamples=20_000, seed=123)
        if abs(low - expected[0]) <= BOOTSTRAP_TOLERANCE and abs(high - expected[1]) <= BOOTSTRAP_TOLERANCE:
            report.ok(f"{where}: ({low:+.3f}, {high:+.3f}) around the observed {difference:+.3f}")
            continue
        mirrored = (-expected[1], -expected[0])
        unpaired_half_width = 1.96 * np.sqrt(sum(np.mean(p == labels) * np.mean(p != labels)
                                                 for p in (predictions_a, predictions_b)) / len(labels))
        ninety = paired_bootstrap_interval(labels, predictions_a, predictions_b, resamples=20_000, seed=123,
                                           level=0.90)
        if abs(low - mirrored[0]) <= BOOTSTRAP_TOLERANCE and abs(high - mirrored[1]) <= BOOTSTRAP_TOLERANCE:
            why = "that is accuracy(b) - accuracy(a): the interval is for a minus b"
        elif high - low < 1e-9:
            why = ("the interval has no width: resample with replacement (each resample draws len(labels) indices, "
                   "some twice)")
        elif abs((high - low) / 2 - unpaired_half_width) < abs((high - low) / 2 - (expected[1] - expected[0]) / 2):
            why = ("it is as wide as if the two models were resampled independently: draw one set of indices per "
                   "resample and score both models on it (paired)")
        elif abs(low - ninety[0]) <= BOOTSTRAP_TOLERANCE and abs(high - ninety[1]) <= BOOTSTRAP_TOLERANCE:
            why = "that is a 90% interval: take the 2.5th and 97.5th percentiles"
        else:
            why = f"expected about ({expected[0]:+.3f}, {expected[1]:+.3f})"
        report.fail(f"{where}: got ({low:+.3f}, {high:+.3f}); {why}")
        return report
    return report


@cache
def _unigram_predictions() -> tuple[int, ...]:
    """The chapter's TF-IDF + logistic regression, fitted on train, on the test split."""
    from behind_pipeline.baselines import tfidf_logistic_regression
    from behind_pipeline.data import load_rotten_tomatoes

    train_ds = load_rotten_tomatoes()["train"]
    model = tfidf_logistic_regression().fit(train_ds["text"][:], train_ds["label"][:])
    return tuple(int(label) for label in model.predict(_test_split()[0]))


def check_bigram_against_unigram(paired_bootstrap, bigram_model) -> CheckReport:
    """The measurement: your interval for accuracy(bigrams) - accuracy(words only) on the test split."""
    report = CheckReport("Bigrams against single words, with a 95% interval")
    if not report.answered(bigram_model, "bigram_model") or not report.answered(paired_bootstrap, "paired_bootstrap"):
        return report
    labels = _test_split()[1]
    bigram = _test_predictions(report, bigram_model)
    if bigram is None:
        return report
    bigram, unigram, gold = bigram.long().numpy(), np.array(_unigram_predictions()), np.array(labels)
    for name, predictions in (("words only (the chapter's model)", unigram), ("words and pairs (yours)", bigram)):
        report.ok(f"{name}: accuracy {np.mean(predictions == gold):.4f}, macro-F1 "
                  f"{f1_score(gold, predictions, average='macro'):.4f}")
    result = report.call(paired_bootstrap, gold.tolist(), bigram.tolist(), unigram.tolist(), BOOTSTRAP_RESAMPLES, 0,
                         name="paired_bootstrap")
    if result is Ellipsis:
        return report
    bounds = report.tensor(result, "paired_bootstrap(...)", shape=(2,))
    if bounds is None:
        return report
    low, high = float(bounds[0]), float(bounds[1])
    expected = paired_bootstrap_interval(gold, bigram, unigram, resamples=20_000, seed=123)
    if not report.expect(abs(low - expected[0]) <= BOOTSTRAP_TOLERANCE and abs(high - expected[1])
                         <= BOOTSTRAP_TOLERANCE,
                         f"accuracy(pairs) - accuracy(words), 95% interval: ({low:+.4f}, {high:+.4f})",
                         f"your interval ({low:+.4f}, {high:+.4f}) is far from the expected ({expected[0]:+.4f}, "
                         f"{expected[1]:+.4f}): does paired_bootstrap pass its own check above?"):
        return report
    verdict = ("contains 0: on 1,445 reviews the two cannot be told apart" if low <= 0 <= high else
               "excludes 0: the difference is larger than what the choice of test reviews explains")
    report.ok(f"the interval {verdict}")
    return report
