"""Checkers for the exercises of chapter 11 (Trainer): metrics with per-label recall, early stopping, a weighted loss.

Each checker compares the learner's function with a reference on cases chosen to expose one mistake each (a
metric computed as accuracy, an argmax over the wrong axis, a tie counted as an improvement, a weighted loss
averaged over the batch size...). The early-stopping reference is proven equal to a real ``Trainer`` run in
``tests/test_ch11_trainer.py``.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, precision_score, recall_score

from behind_pipeline.checks._core import CheckReport

COURSE_ID2LABEL = {0: "rotten", 1: "fresh"}
THREE_LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _as_number(value) -> float | None:
    """A learner's score as a float, or None when it is not one number (a list, an array of several, a string)."""
    if isinstance(value, bool | str) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


# --- Exercise 1: compute_metrics with per-label recall ---------------------------------------------------------


class EvalPrediction(NamedTuple):
    """What Trainer passes to ``compute_metrics``: unpacks into (predictions, label_ids), or read the fields.

    It behaves like ``transformers.EvalPrediction`` (the tests run the solution inside a real Trainer) without
    importing transformers' trainer module, which takes seconds.
    """

    predictions: np.ndarray
    label_ids: np.ndarray


def _metric_cases() -> list[tuple[str, dict, np.ndarray, np.ndarray]]:
    """(description, id2label, logits, labels): logits as Trainer passes them, float32 NumPy, several units wide."""
    generator = np.random.default_rng(11)
    # 2 labels, 11 reviews, mostly fresh: accuracy, macro-F1, weighted F1 and label 1's F1 all differ.
    two_labels = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1])
    two_logits = np.array([[-1.5, 2.0], [0.3, 1.1], [2.2, -0.4], [-3.0, 1.0], [0.1, 0.2], [1.6, 0.5], [-0.2, 2.9],
                           [2.5, -1.0], [-0.5, 0.8], [1.2, 1.0], [-2.2, -0.1]], dtype=np.float32)
    # 3 labels, 13 reviews, "neutral" never predicted: its recall and F1 are 0.
    three_labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0])
    three_logits = generator.normal(scale=2.0, size=(13, 3)).astype(np.float32)
    three_logits[:, 1] -= 10.0
    # As many reviews as labels (3): argmax over axis 0 then gives an answer of the right length, with wrong values.
    square_labels = np.array([2, 0, 0])
    square_logits = np.array([[0.5, -1.0, 3.0], [2.0, 0.0, -1.0], [1.5, 4.0, 0.5]], dtype=np.float32)
    return [("2 labels, 11 reviews", COURSE_ID2LABEL, two_logits, two_labels),
            ("3 labels, 13 reviews, one label never predicted", THREE_LABELS, three_logits, three_labels),
            ("3 labels, 3 reviews", THREE_LABELS, square_logits, square_labels)]


def expected_metrics(id2label: dict, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The reference: macro-F1 and each label's recall, by scikit-learn, on the argmax of each row."""
    predictions = logits.argmax(axis=-1)
    ids = sorted(id2label)
    recalls = recall_score(labels, predictions, labels=ids, average=None, zero_division=0)
    return {"macro_f1": float(f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)),
            **{f"recall_{id2label[i]}": float(recall) for i, recall in zip(ids, recalls, strict=True)}}


def _metric_mistakes(id2label: dict, logits: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """What typical wrong answers return, keyed by the message that names the mistake."""
    ids = sorted(id2label)
    predictions = logits.argmax(axis=-1)
    mistakes = {}
    if len(logits) == len(id2label):
        mistakes["argmax over axis 0 picks, for each label, the review with the largest logit; use axis=-1"] = (
            expected_metrics(id2label, logits.T, labels))
    accuracy = float((predictions == labels).mean())
    weighted = float(f1_score(labels, predictions, labels=ids, average="weighted", zero_division=0))
    macro = {"macro_f1": accuracy}
    mistakes["this macro_f1 is the accuracy (or micro-F1, the same for one label per review): average the F1 of "
             "each label"] = macro
    mistakes["this macro_f1 is weighted by each label's count (average='weighted'): macro gives each label the same "
             "weight"] = {"macro_f1": weighted}
    if len(ids) == 2:
        binary = float(f1_score(labels, predictions, zero_division=0))
        mistakes["this macro_f1 is the F1 of label 1 alone (f1_score's default average='binary')"] = {
            "macro_f1": binary}
    precisions = precision_score(labels, predictions, labels=ids, average=None, zero_division=0)
    mistakes["these recalls are precisions: recall = right predictions of a label / reviews that have it"] = {
        f"recall_{id2label[i]}": float(p) for i, p in zip(ids, precisions, strict=True)}
    return mistakes


def check_make_compute_metrics(make_compute_metrics) -> CheckReport:
    """``make_compute_metrics(id2label)`` returns Trainer's hook: macro-F1 and ``recall_<label>`` for each label."""
    report = CheckReport("compute_metrics with per-label recall")
    for description, id2label, logits, labels in _metric_cases():
        compute_metrics = report.call(make_compute_metrics, dict(id2label), name="make_compute_metrics")
        if compute_metrics is Ellipsis:
            return report
        if not callable(compute_metrics):
            report.fail(f"make_compute_metrics(id2label) should return a function, got "
                        f"{type(compute_metrics).__name__}")
            return report
        eval_pred = EvalPrediction(predictions=logits.copy(), label_ids=labels.copy())
        result = report.call(compute_metrics, eval_pred, name="compute_metrics")
        if result is Ellipsis:
            if any("inconsistent numbers of samples" in line for line in report.lines):
                report.fail("the predictions have one entry per label, not per review: argmax over axis=-1")
            return report
        if not isinstance(result, dict):
            report.fail(f"{description}: compute_metrics should return a dict of named scores, got "
                        f"{type(result).__name__}")
            return report
        expected = expected_metrics(id2label, logits, labels)
        missing = sorted(set(expected) - set(result))
        if missing:
            report.fail(f"{description}: keys {missing} are missing (got {sorted(result)}); one recall per label, "
                        "named after id2label")
            return report
        numbers = {key: _as_number(result[key]) for key in expected}
        not_numbers = [key for key, number in numbers.items() if number is None]
        if not_numbers:
            report.fail(f"{description}: {not_numbers} should each be one number (Trainer logs them), got "
                        f"{[type(result[key]).__name__ for key in not_numbers]}")
            return report
        wrong = [key for key in expected if not math.isclose(numbers[key], expected[key], abs_tol=1e-6)]
        if not wrong:
            report.ok(f"{description}: " + ", ".join(f"{key} {value:.4f}" for key, value in expected.items()))
            continue
        for message, values in _metric_mistakes(id2label, logits, labels).items():
            if all(math.isclose(numbers[key], value, abs_tol=1e-6) for key, value in values.items()) and any(
                    not math.isclose(value, expected[key], abs_tol=1e-6) for key, value in values.items()):
                report.fail(f"{description}: {message}")
                break
        else:
            report.fail(f"{description}: " + ", ".join(f"{key} {numbers[key]:.4f} (expected {expected[key]:.4f})"
                                                       for key in wrong))
    return report


# --- Exercise 2: Trainer's early-stopping rule by hand ---------------------------------------------------------


def early_stopping_reference(values, patience: int, threshold: float, greater_is_better: bool):
    """What ``EarlyStoppingCallback`` + ``load_best_model_at_end`` do with one metric value per evaluation.

    Returns ``(stopped_at, best_at)``: the index of the evaluation after which training stops (None if it never
    does) and the index whose checkpoint is reloaded. At each evaluation the callback compares with the best so far
    (``better`` by more than ``threshold``: the counter restarts; otherwise it grows, and training stops when it
    reaches ``patience``); then Trainer records a new best whenever the value is better at all, threshold or not.
    """
    best, best_at, waited = None, None, 0
    for index, value in enumerate(values):
        better = best is None or (value > best if greater_is_better else value < best)
        if best is None or (better and abs(value - best) > threshold):
            waited = 0
        else:
            waited += 1
        if better:
            best, best_at = value, index
        if waited >= patience:
            return index, best_at
    return None, best_at


# (values, patience, threshold, greater_is_better, what the case exposes)
EARLY_STOPPING_CASES = [
    ([0.6928, 0.6934, 0.6038, 0.6926, 0.7587], 2, 0.0, False, "the chapter's validation losses"),
    ([0.5, 0.5, 0.5, 0.4], 2, 0.0, False, "a tie is not an improvement"),
    ([0.7, 0.8, 0.6, 0.9, 0.85, 0.95, 0.9, 0.8], 2, 0.0, True, "an improvement restarts the count"),
    ([0.7, 0.8, 0.6, 0.9, 0.85, 0.95, 0.9, 0.8], 2, 0.0, False, "lower is better for a loss"),
    ([0.5, 0.75, 0.875, 0.9, 0.95], 2, 0.25, True,
     "an improvement of exactly the threshold does not count, yet the best checkpoint moves"),
    ([0.9, 0.8, 0.85, 0.7, 0.6], 1, 0.0, False, "patience 1 stops at the first evaluation without improvement"),
    ([0.6, 0.5, 0.55, 0.65, 0.45, 0.59, 0.7, 0.6, 0.5, 0.4], 3, 0.0, True,
     "patience 3: three in a row, not three in all"),
    ([0.5, 0.6, 0.7, 0.8], 2, 0.0, True, "a run that keeps improving never stops"),
    ([1.2, 1.5, 1.4], 2, 0.0, False, "the first evaluation is the first best, however bad"),
]


def _early_stopping_mistakes(values, patience, threshold, greater_is_better) -> dict[str, tuple]:
    """Outcomes of typical wrong rules on one case, keyed by the message that names the mistake."""
    def rule(counts_ties=False, ignores_threshold=False, best_needs_threshold=False, never_resets=False,
             extra_wait=0, flipped=False):
        best, best_at, waited = None, None, 0
        for index, value in enumerate(values):
            greater = greater_is_better != flipped
            if best is None:
                better = True
            elif greater:
                better = value >= best if counts_ties else value > best
            else:
                better = value <= best if counts_ties else value < best
            enough = best is None or ignores_threshold or abs(value - best) > threshold
            if better and enough:
                waited = 0 if not never_resets else waited
            else:
                waited += 1
            if better and (enough or not best_needs_threshold):
                best, best_at = value, index
            if waited >= patience + extra_wait:
                return index, best_at
        return None, best_at

    return {
        "a value equal to the best is not an improvement (compare with > or <, not >= or <=)": rule(counts_ties=True),
        "an improvement must beat the best by more than the threshold to reset the count": rule(ignores_threshold=True),
        "Trainer moves the best checkpoint on any improvement, even one below the threshold": rule(
            best_needs_threshold=True),
        "an improvement restarts the count of evaluations without one": rule(never_resets=True),
        "off by one: training stops when the count reaches patience, not patience + 1": rule(extra_wait=1),
        "greater_is_better is reversed": rule(flipped=True),
    }


def _outcome(result) -> tuple | None:
    """The learner's (stopped_at, best_at) as a pair of int-or-None, or None when it is not such a pair."""
    try:
        stopped_at, best_at = result
    except (TypeError, ValueError):
        return None
    pair = []
    for value in (stopped_at, best_at):
        if value is None:
            pair.append(None)
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            pair.append(int(value))
        elif isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            pair.append(int(value))
        else:
            return None
    return tuple(pair)


def check_early_stopping_outcome(early_stopping_outcome) -> CheckReport:
    """``early_stopping_outcome(values, patience, threshold, greater_is_better)`` -> ``(stopped_at, best_at)``."""
    report = CheckReport("Early stopping by hand")
    for values, patience, threshold, greater_is_better, description in EARLY_STOPPING_CASES:
        result = report.call(early_stopping_outcome, list(values), patience, threshold, greater_is_better,
                             name="early_stopping_outcome")
        if result is Ellipsis:
            return report
        outcome = _outcome(result)
        if outcome is None:
            report.fail(f"{description}: expected a pair (stopped_at, best_at) of evaluation indices (or None), "
                        f"got {result!r}")
            return report
        expected = early_stopping_reference(values, patience, threshold, greater_is_better)
        if outcome == expected:
            report.ok(f"{description}: {outcome}")
            continue
        for message, mistaken in _early_stopping_mistakes(values, patience, threshold, greater_is_better).items():
            if outcome == mistaken != expected:
                report.fail(f"{description}: got {outcome}, expected {expected}: {message}")
                break
        else:
            report.fail(f"{description}: got {outcome}, expected {expected} (values {values}, patience {patience}, "
                        f"threshold {threshold}, greater_is_better {greater_is_better})")
    return report


# --- Exercise 3: a class-weighted loss for Trainer's compute_loss_func ------------------------------------------


def balanced_weights(train_labels, num_labels: int) -> torch.Tensor:
    """scikit-learn's "balanced" class weights: examples / (labels x examples of the label)."""
    counts = torch.bincount(torch.as_tensor(list(train_labels)), minlength=num_labels).double()
    return counts.sum() / (num_labels * counts)


def _loss_cases():
    """(description, train labels, num_labels, batch logits, batch labels)."""
    generator = torch.Generator().manual_seed(12)
    two_train = [1] * 14 + [0] * 6
    two_logits = torch.randn(8, 2, generator=generator) * 3
    two_batch = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1])
    three_train = [0] * 5 + [1] * 3 + [2] * 12
    three_logits = torch.randn(6, 3, generator=generator) * 3
    three_batch = torch.tensor([2, 2, 0, 2, 2, 2])  # label 1 absent from this batch
    return [("2 labels, 14 fresh / 6 rotten", two_train, 2, two_logits, two_batch),
            ("3 labels, counts 5 / 3 / 12, a batch without label 1", three_train, 3, three_logits, three_batch)]


def _loss_mistakes(train_labels, num_labels, logits, labels) -> dict[str, torch.Tensor]:
    weights = balanced_weights(train_labels, num_labels).to(logits.dtype)
    per_review = F.cross_entropy(logits, labels, reduction="none")
    counts = torch.bincount(torch.as_tensor(list(train_labels)), minlength=num_labels).to(logits.dtype)
    return {
        "no class weights: this is the plain mean cross-entropy": per_review.mean(),
        "the weights grow with the label's count: weigh each label by 1 / its count": F.cross_entropy(
            logits, labels, weight=counts),
        "the weighted losses are divided by the batch size; a weighted mean divides by the sum of the weights of the "
        "batch's labels, as F.cross_entropy(..., weight=...) does": (weights[labels] * per_review).mean(),
    }


def check_make_weighted_loss(make_weighted_loss) -> CheckReport:
    """``make_weighted_loss(train_labels, num_labels)`` returns ``loss_func(outputs, labels, num_items_in_batch)``."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    report = CheckReport("Class-weighted loss for compute_loss_func")
    for description, train_labels, num_labels, logits, labels in _loss_cases():
        loss_func = report.call(make_weighted_loss, list(train_labels), num_labels, name="make_weighted_loss")
        if loss_func is Ellipsis:
            return report
        if not callable(loss_func):
            report.fail(f"make_weighted_loss(...) should return a function, got {type(loss_func).__name__}")
            return report
        mine = logits.clone().requires_grad_(True)
        outputs = SequenceClassifierOutput(logits=mine)  # what the model returns inside Trainer
        loss = report.call(loss_func, outputs, labels.clone(), num_items_in_batch=torch.tensor(len(labels)),
                           name="loss_func")
        if loss is Ellipsis:
            return report
        reference_logits = logits.clone().requires_grad_(True)
        weights = balanced_weights(train_labels, num_labels).float()
        expected = F.cross_entropy(reference_logits, labels, weight=weights)
        expected.backward()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            report.fail(f"{description}: the loss should be a one-number tensor, got "
                        f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
            return report
        if not loss.requires_grad:
            report.fail(f"{description}: the loss is cut from the graph (.item(), NumPy or .detach()): "
                        "Trainer calls backward on it")
            return report
        value = loss.detach().double().reshape(()).item()
        if math.isclose(value, expected.item(), abs_tol=1e-5):
            loss.reshape(()).backward()
            same_gradient = mine.grad is not None and torch.allclose(mine.grad, reference_logits.grad, atol=1e-6)
            report.expect(same_gradient, f"{description}: loss {value:.4f} and its gradient equal "
                                         "cross_entropy(weight=balanced weights)",
                          f"{description}: the loss value is right but its gradient differs")
            continue
        for message, wrong in _loss_mistakes(train_labels, num_labels, logits, labels).items():
            if math.isclose(value, wrong.item(), abs_tol=1e-5):
                report.fail(f"{description}: {message}")
                break
        else:
            report.fail(f"{description}: loss {value:.4f}, expected {expected.item():.4f}")
    return report
