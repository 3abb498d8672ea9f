"""The two scores every model of the book is reported with: accuracy and macro-F1, computed by scikit-learn.

Chapter 10 introduces them; every Part II chapter scores its models with :func:`classification_scores`, so the
results table compares like with like. (``evaluate.load("f1")`` computes the same but needs the network.)

Labels and predictions are label ids (0 rotten, 1 fresh) in any sequence: a list, a NumPy array, a tensor or a
``datasets`` column. Macro-F1 is the unweighted mean of each class's F1, so the minority class counts as much as
the majority; a model that always answers *fresh* gets a high accuracy on this corpus but a low macro-F1:

    classification_scores([1, 1, 0, 1], [1, 0, 0, 1]) -> {"accuracy": 0.75, "macro_f1": 0.7333...}
"""

from collections.abc import Iterable

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def label_array(values: Iterable) -> np.ndarray:
    """Label ids as a 1-D NumPy integer array, whatever sequence they came in."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    return np.asarray(values, dtype=np.int64).reshape(-1)


def accuracy(labels: Iterable, predictions: Iterable) -> float:
    """Share of predictions equal to the gold label."""
    return float(accuracy_score(label_array(labels), label_array(predictions)))


def macro_f1(labels: Iterable, predictions: Iterable) -> float:
    """Unweighted mean over classes of F1 = 2PR / (P + R); a class never predicted counts with F1 = 0."""
    return float(f1_score(label_array(labels), label_array(predictions), average="macro", zero_division=0))


def classification_scores(labels: Iterable, predictions: Iterable) -> dict[str, float]:
    """``{"accuracy": ..., "macro_f1": ...}``: the two numbers a model gets in the results table."""
    return {"accuracy": accuracy(labels, predictions), "macro_f1": macro_f1(labels, predictions)}


def confusion(labels: Iterable, predictions: Iterable, num_labels: int = 2) -> np.ndarray:
    """Counts, shape (num_labels, num_labels): row = gold label, column = predicted label."""
    return confusion_matrix(label_array(labels), label_array(predictions), labels=list(range(num_labels)))


def mean_sd(values: Iterable[float], digits: int = 4) -> str:
    """``"0.7510 ± 0.0123"``: the mean and the sample standard deviation (ddof=1) of a score over seeds or subsets."""
    values = np.asarray(list(values), dtype=float)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {spread:.{digits}f}"


def cluster_bootstrap_interval(labels: Iterable, predictions_a: Iterable, predictions_b: Iterable,
                               groups: Iterable, resamples: int = 2000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of accuracy(a) - accuracy(b) when whole groups (movies) are resampled, not examples.

    Each resample draws as many groups as there are, with replacement, and keeps all the examples of each drawn
    group (a group drawn twice counts twice); the difference is computed over the examples drawn, both models on
    the same draw (paired). Reviews of one movie are not independent: this is the interval for *new movies*.
    ``cluster_bootstrap_interval([1, 0, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1], ["a", "a", "b", "b"])``
    """
    labels, a, b = (label_array(values) for values in (labels, predictions_a, predictions_b))
    _, group_index = np.unique(np.asarray(list(groups), dtype=object).astype(str), return_inverse=True)
    differences = (a == labels).astype(float) - (b == labels).astype(float)  # -1, 0 or 1 per example
    per_group = np.bincount(group_index, weights=differences)  # (groups,) summed differences
    sizes = np.bincount(group_index).astype(float)  # (groups,) examples per group
    drawn = np.random.default_rng(seed).integers(0, len(sizes), size=(resamples, len(sizes)))
    means = per_group[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)  # (resamples,)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def mean_and_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of a few runs' scores, e.g. one per seed."""
    values = np.asarray(list(values), dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1))


def cluster_bootstrap(statistic, groups: Iterable, samples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` when whole groups (movies) are resampled, not examples.

    Reviews of one movie share a verdict and words, so they are not independent draws; for a question about new
    movies, draw as many movies as there are, with replacement, and keep all reviews of each drawn movie.
    ``statistic`` gets the (repeated) example indices of one resample and returns a number; resamples where it
    returns NaN (e.g. an empty length bin) are left out; when every resample does (e.g. a model that never gives
    a score in one of the two bands compared), the interval is (NaN, NaN). ``groups`` holds each example's movie
    name.
    """
    groups = np.asarray(list(groups))
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == number) for number in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        drawn = rng.integers(0, len(members), len(members))
        values.append(statistic(np.concatenate([members[number] for number in drawn])))
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:  # no resample had the statistic: no interval, rather than an IndexError in a chapter
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
