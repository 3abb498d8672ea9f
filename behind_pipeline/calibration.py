"""Calibration by hand: reliability bins, expected calibration error, temperature scaling, bootstrap (chapter 4)."""

import math
from collections.abc import Callable

import numpy as np
import torch

from behind_pipeline.softmax import log_softmax, stable_softmax

GOLDEN = (math.sqrt(5) - 1) / 2  # 0.618...: the shrink factor that lets each step reuse one evaluation


def confidences_and_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability of the predicted label, and whether that prediction is right (1.0) or wrong (0.0)."""
    probs = stable_softmax(logits.double())
    confidences, predictions = probs.max(dim=-1)
    return confidences, (predictions == labels).double()


def bin_index(confidences: torch.Tensor, n_bins: int = 10) -> torch.Tensor:
    """Bin b holds confidences in (b/n, (b+1)/n]; 0 joins bin 0 and 1.0 the last bin, as in scikit-learn.

    The edges are NumPy's ``linspace`` and the rule is ``searchsorted`` on the inner edges, exactly as
    ``sklearn.calibration.calibration_curve(strategy="uniform")`` bins, so the two agree even on a confidence that
    lands on an edge (0.3 and 0.30000000000000004 are different floats).
    """
    inner_edges = torch.as_tensor(np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    return torch.searchsorted(inner_edges, confidences.double().contiguous())


def reliability_table(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> list[dict]:
    """One row per non-empty bin: its edges, how many predictions fall in it, their mean confidence and accuracy."""
    bins = bin_index(confidences, n_bins)
    rows = []
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        if count == 0:
            continue  # an empty bin has no accuracy; it also weighs nothing in the ECE
        rows.append({
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "count": count,
            "confidence": float(confidences[in_bin].mean()),
            "accuracy": float(correct[in_bin].mean()),
        })
    return rows


def expected_calibration_error(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> float:
    """sum over bins of (bin size / total) * |accuracy - confidence| with equal-width bins."""
    # (n_b / N) * |acc_b - conf_b| = |sum over the bin of (correct - confidence)| / N: one bincount, no loop, so the
    # bootstrap below can afford a thousand of them.
    gaps = torch.bincount(bin_index(confidences, n_bins), weights=correct.double() - confidences.double(),
                          minlength=n_bins)
    return float(gaps.abs().sum() / len(confidences))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by T: T > 1 flattens the probabilities, T < 1 sharpens them, the argmax never moves."""
    return logits / temperature


def nll_per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(true label) of each row, in float64: what cross-entropy averages."""
    return -log_softmax(logits.double()).gather(-1, labels.view(-1, 1)).squeeze(-1)


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of -log p(true label): the loss the temperature is fitted to (the same as cross-entropy)."""
    return float(nll_per_example(logits, labels).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0,
                    tolerance: float = 1e-6) -> float:
    """The T in [low, high] that minimises the NLL of softmax(logits / T), by golden-section search on log T.

    The NLL is convex in 1/T, hence has a single minimum along log T, which golden-section search brackets
    deterministically (no learning rate, no random start). If the minimum lies outside [low, high] (logits of a
    model with random weights are nearly all 0, and the NLL keeps falling as T grows), the search ends at that
    bound: no error. Fit it on validation logits, never on the test set.
    """
    logits = logits.double()  # in float32 the NLL is too noisy to locate a flat minimum to 1e-6

    def loss(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(logits, math.exp(log_t)), labels)

    a, b = math.log(low), math.log(high)
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    while b - a > tolerance:
        if loss_c < loss_d:  # the minimum lies left of d
            b, d, loss_d = d, c, loss_c
            c = b - GOLDEN * (b - a)
            loss_c = loss(c)
        else:  # the minimum lies right of c
            a, c, loss_c = c, d, loss_d
            d = a + GOLDEN * (b - a)
            loss_d = loss(d)
    return math.exp((a + b) / 2)


def bootstrap_interval(statistic: Callable[[torch.Tensor], float], n: int, n_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, torch.Tensor]:
    """Percentile bootstrap: ``statistic(indices)`` on resamples of ``range(n)`` drawn with replacement.

    Returns the interval holding the middle ``level`` of the values, and the values themselves. The seed fixes
    the resamples, so the printed interval repeats from run to run.
    """
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([float(statistic(torch.randint(n, (n,), generator=generator)))
                           for _ in range(n_resamples)], dtype=torch.float64)
    tail = (1 - level) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high, values
