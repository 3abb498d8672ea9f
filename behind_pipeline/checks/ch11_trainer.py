"""Checkers for the exercises of chapter 11 (Trainer): metrics with per-label recall, early stopping, a weighted loss.

Each checker compares the learner's function with a reference on cases chosen to expose one mistake each (a
metric computed as accuracy, an argmax over the wrong axis, a tie counted as an improvement, a weighted loss
that ignores ``num_items_in_batch``...), then runs the learner's rule or loss in a real ``Trainer`` of a tiny model
(a linear layer: a fraction of a second). The early-stopping reference is proven equal to a real ``Trainer`` run on
every case in ``tests/test_ch11_trainer.py``.
"""

import math
import operator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, precision_score, recall_score

from behind_pipeline.checks._core import CheckReport, named_mistakes

COURSE_ID2LABEL = {0: "rotten", 1: "fresh"}
THREE_LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _as_number(value) -> float | None:
    """A learner's score as a float (NaN kept: the checker names it), or None when it is not one number (a list, an
    array of several, a string)."""
    if isinstance(value, bool | str) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if not math.isinf(number) else None


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
    # 3 labels, 6 reviews, none of them neutral nor predicted neutral: only labels=... gives "neutral" its 0.
    absent_labels = np.array([0, 0, 2, 2, 2, 2])
    absent_logits = np.array([[2.0, -9.0, 0.5], [0.2, -9.0, 1.0], [-1.0, -9.0, 2.0], [0.1, -9.0, 0.3],
                              [-0.5, -9.0, 1.5], [1.0, -9.0, -1.0]], dtype=np.float32)
    return [("2 labels, 11 reviews", COURSE_ID2LABEL, two_logits, two_labels),
            ("3 labels, 13 reviews, one label never predicted", THREE_LABELS, three_logits, three_labels),
            ("3 labels, 3 reviews", THREE_LABELS, square_logits, square_labels),
            (ABSENT_CASE, THREE_LABELS, absent_logits, absent_labels)]


ABSENT_CASE = "3 labels, 6 reviews, no review has label 1 or is predicted as it"
LABELS_HINT = ("a label of id2label that no review has and none is predicted as must still count: pass "
               "labels=sorted(id2label) to f1_score and recall_score (its F1 and recall are then 0)")


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
    present = float(f1_score(labels, predictions, average="macro", zero_division=0))
    mistakes[f"this macro_f1 averages only the labels present in the batch: {LABELS_HINT}"] = {"macro_f1": present}
    if len(ids) == 2:
        binary = float(f1_score(labels, predictions, zero_division=0))
        mistakes["this macro_f1 is the F1 of label 1 alone (f1_score's default average='binary')"] = {
            "macro_f1": binary}
    precisions = precision_score(labels, predictions, labels=ids, average=None, zero_division=0)
    mistakes["these recalls are precisions: recall = right predictions of a label / reviews that have it"] = {
        f"recall_{id2label[i]}": float(p) for i, p in zip(ids, precisions, strict=True)}
    return mistakes


def _same_scores(scores: dict, some: dict) -> bool:
    """Whether ``scores`` hold each of the scores in ``some`` (to 1e-6)."""
    return all(math.isclose(scores[key], value, abs_tol=1e-6) for key, value in some.items())


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
            elif description == ABSENT_CASE:
                report.fail(f"{description}: {LABELS_HINT}")
            return report
        if not isinstance(result, dict):
            report.fail(f"{description}: compute_metrics should return a dict of named scores, got "
                        f"{type(result).__name__}")
            return report
        expected = expected_metrics(id2label, logits, labels)
        missing = sorted(set(expected) - set(result))  # extra keys (accuracy, say) are allowed
        if missing:
            hint = f"; {LABELS_HINT}" if description == ABSENT_CASE else ""
            report.fail(f"{description}: keys {missing} are missing (got {sorted(result)}); one recall per label, "
                        f"named after id2label{hint}")
            return report
        numbers = {key: _as_number(result[key]) for key in expected}
        not_numbers = [key for key, number in numbers.items() if number is None]
        if not_numbers:
            report.fail(f"{description}: {not_numbers} should each be one number (Trainer logs them), got "
                        f"{[type(result[key]).__name__ for key in not_numbers]}")
            return report
        not_a_number = [key for key in expected if math.isnan(numbers[key])]
        if not_a_number:
            # A recall counted by hand divides by the reviews that have the label: 0 / 0 for an absent one.
            report.fail(f"{description}: {not_a_number} {'is' if len(not_a_number) == 1 else 'are'} NaN: a label "
                        f"no review has divides 0 by 0; its recall counts as 0 (recall_score(..., "
                        f"zero_division=0), or guard the division)")
            return report
        wrong = [key for key in expected if not math.isclose(numbers[key], expected[key], abs_tol=1e-6)]
        if not wrong:
            report.ok(f"{description}: " + ", ".join(f"{key} {value:.4f}" for key, value in expected.items()))
            continue
        # A mistake is named by the scores it changes; one that leaves them right in this case is no mistake here.
        named = named_mistakes(numbers, _metric_mistakes(id2label, logits, labels),
                               lambda scores, some, expected=expected: _same_scores(scores, some)
                               and not _same_scores(expected, some))
        if named:
            report.fail(f"{description}: {named[0]}")
        else:
            report.fail(f"{description}: " + ", ".join(f"{key} {numbers[key]:.4f} (expected {expected[key]:.4f})"
                                                       for key in wrong))
    return report


# --- Tiny real Trainer runs: what the checkers compare a learner's rule and loss with ------------------------------


class TinyClassifier(torch.nn.Module):
    """Two numbers in, two logits out, returned as a transformers model returns them (a ``SequenceClassifierOutput``,
    with the loss when given labels): a model for Trainer runs that take a fraction of a second."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(2, 2, generator=generator))
            self.linear.bias.copy_(torch.randn(2, generator=generator))

    def forward(self, x, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.linear(x)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# The labels of the tiny runs: 3 of 8 fresh, so that balanced weights differ from 1.
TINY_LABELS = (1, 0, 0, 1, 0, 0, 1, 0)


def tiny_dataset(size: int = 8, seed: int = 0) -> list[dict]:
    """``size`` rows ``{"x": 2 numbers, "labels": 0 or 1}`` (labels cycle through ``TINY_LABELS``)."""
    generator = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(2, generator=generator), "labels": TINY_LABELS[index % len(TINY_LABELS)]}
            for index in range(size)]


def tiny_trainer(output_dir, model=None, train_dataset=None, **arguments):
    """A quiet CPU ``Trainer`` on :class:`TinyClassifier` and :func:`tiny_dataset`; ``arguments`` go to
    ``TrainingArguments`` except ``compute_metrics``, ``callbacks``, ``compute_loss_func``, ``eval_dataset`` and
    ``processing_class`` (with which Trainer pads each batch with ``DataCollatorWithPadding``)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    options = {"output_dir": str(output_dir), "report_to": "none", "disable_tqdm": True, "use_cpu": True,
               "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "seed": 0}
    trainer_options = {key: arguments.pop(key) for key in ("compute_metrics", "callbacks", "compute_loss_func",
                                                           "eval_dataset", "processing_class") if key in arguments}
    trainer = Trainer(model=model if model is not None else TinyClassifier(),
                      args=TrainingArguments(**options | arguments),
                      train_dataset=train_dataset if train_dataset is not None else tiny_dataset(),
                      **trainer_options)
    trainer.remove_callback(PrinterCallback)
    return trainer


def trainer_early_stopping_outcome(values, patience: int, threshold: float, greater_is_better: bool,
                                   eval_on_start: bool) -> tuple:
    """What a real Trainer decides when its evaluation i reports ``values[i]``: ``(stopped_at, best_at)``.

    One training step between evaluations, a checkpoint at each, ``EarlyStoppingCallback`` and
    ``load_best_model_at_end``; with ``eval_on_start``, ``values[0]`` is the evaluation before the first step.
    """
    import tempfile

    from transformers import EarlyStoppingCallback

    scripted = iter(values)
    callback = EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = tiny_trainer(
            output_dir, max_steps=len(values) - int(eval_on_start), learning_rate=1e-3, eval_strategy="steps",
            eval_steps=1, eval_on_start=eval_on_start, save_strategy="steps", save_steps=1, save_only_model=True,
            load_best_model_at_end=True, metric_for_best_model="score", greater_is_better=greater_is_better,
            eval_dataset=tiny_dataset(4), compute_metrics=lambda _: {"score": next(scripted)}, callbacks=[callback])
        trainer.train()
    state = trainer.state
    offset = int(eval_on_start)  # evaluation index = step - 1, or = step when the evaluation at step 0 came first
    stopped = callback.early_stopping_patience_counter >= patience  # also when it stops at the last evaluation
    best_at = None if state.best_global_step is None else state.best_global_step - 1 + offset
    return (state.global_step - 1 + offset if stopped else None), best_at


# --- Exercise 2: Trainer's early-stopping rule by hand ---------------------------------------------------------


def early_stopping_reference(values, patience: int, threshold: float, greater_is_better: bool,
                             eval_on_start: bool = False):
    """What ``EarlyStoppingCallback`` + ``load_best_model_at_end`` do with one metric value per evaluation.

    Returns ``(stopped_at, best_at)``: the index of the evaluation after which training stops (None if it never
    does) and the index whose checkpoint is reloaded (None if none became the best). At each evaluation the callback
    compares with Trainer's best so far, ``state.best_metric`` (none yet, or ``better`` by more than ``threshold``:
    the counter restarts; otherwise it grows, and training stops when it reaches ``patience``); then
    ``Trainer._determine_best_metric`` records a new best whenever the value is better at all, threshold or not.
    The evaluation that ``eval_on_start`` runs before the first step goes to the callback but not through
    ``_determine_best_metric``: it never becomes the best, so the next evaluation still finds no best.
    """
    best, best_at, waited = None, None, 0
    for index, value in enumerate(values):
        better = best is None or (value > best if greater_is_better else value < best)
        if best is None or (better and abs(value - best) > threshold):
            waited = 0
        else:
            waited += 1
        if better and not (eval_on_start and index == 0):
            best, best_at = value, index
        if waited >= patience:
            return index, best_at
    return None, best_at


# (values, patience, threshold, greater_is_better, eval_on_start, what the case exposes)
EARLY_STOPPING_CASES = [
    ([0.6928, 0.6934, 0.6038, 0.6926, 0.7587], 2, 0.0, False, True, "the chapter's validation losses"),
    ([0.40, 0.70, 0.65, 0.68, 0.69], 2, 0.0, False, True,
     "eval_on_start: the evaluation before the first step never becomes the best"),
    ([1.2, 1.5, 1.4], 2, 0.0, False, False, "without eval_on_start the first evaluation is the first best"),
    ([0.5, 0.5, 0.5, 0.4], 2, 0.0, False, False, "a tie is not an improvement"),
    ([0.7, 0.8, 0.6, 0.9, 0.85, 0.95, 0.9, 0.8], 2, 0.0, True, False, "an improvement restarts the count"),
    ([0.7, 0.8, 0.6, 0.9, 0.85, 0.95, 0.9, 0.8], 2, 0.0, False, False, "lower is better for a loss"),
    ([2.0, 2.25, 2.2, 2.8, 2.7, 2.6, 2.5], 2, 0.25, True, False,
     "an improvement of exactly the threshold does not count, yet the best checkpoint moves"),
    ([2.0, 2.25, 2.6, 2.75], 1, 0.25, True, False, "an improvement of exactly the threshold stops a patience-1 run"),
    ([2.0, 2.3, 2.5, 2.6, 2.65], 1, 0.2, True, False, "the threshold is absolute, not a share of the best"),
    ([0.9, 0.8, 0.85, 0.7, 0.6], 1, 0.0, False, False, "patience 1 stops at the first evaluation without improvement"),
    ([0.6, 0.5, 0.55, 0.65, 0.45, 0.59, 0.7, 0.6, 0.5, 0.4], 3, 0.0, True, False,
     "patience 3: three in a row, not three in all"),
    ([0.5, 0.6, 0.7, 0.8], 2, 0.0, True, True, "a run that keeps improving never stops"),
]
# The case a real Trainer also runs inside the checker.
TRAINER_CASE = EARLY_STOPPING_CASES[1]


def _early_stopping_mistakes(values, patience, threshold, greater_is_better, eval_on_start) -> dict[str, tuple]:
    """Outcomes of typical wrong rules on one case, keyed by the message that names the mistake."""
    def rule(counts_ties=False, ignores_threshold=False, inclusive=False, relative=False, best_needs_threshold=False,
             never_resets=False, extra_wait=0, flipped=False, start_is_best=False):
        best, best_at, waited = None, None, 0
        for index, value in enumerate(values):
            greater = greater_is_better != flipped
            if best is None:
                better = True
            elif greater:
                better = value >= best if counts_ties else value > best
            else:
                better = value <= best if counts_ties else value < best
            limit = threshold * abs(best) if relative and best is not None else threshold
            gap = None if best is None else abs(value - best)
            enough = best is None or ignores_threshold or (gap >= limit if inclusive else gap > limit)
            if better and enough:
                waited = 0 if not never_resets else waited
            else:
                waited += 1
            counts_as_best = start_is_best or not (eval_on_start and index == 0)
            if better and (enough or not best_needs_threshold) and counts_as_best:
                best, best_at = value, index
            if waited >= patience + extra_wait:
                return index, best_at
        return None, best_at

    mistakes = {
        "a value equal to the best is not an improvement (compare with > or <, not >= or <=)": rule(counts_ties=True),
        "an improvement must beat the best by more than the threshold to reset the count": rule(ignores_threshold=True),
        "an improvement of exactly the threshold does not reset the count: the difference must be larger than the "
        "threshold (>, not >=)": rule(inclusive=True),
        "the threshold is an absolute difference (abs(value - best) > threshold), not a share of the best":
            rule(relative=True),
        "Trainer moves the best checkpoint on any improvement, even one below the threshold": rule(
            best_needs_threshold=True),
        "an improvement restarts the count of evaluations without one": rule(never_resets=True),
        "training stops as soon as the count of evaluations without improvement reaches patience (the count was "
        "allowed to reach patience + 1)": rule(extra_wait=1),
        "greater_is_better is reversed": rule(flipped=True),
        "with eval_on_start, the evaluation before the first step never becomes the best: Trainer records the best "
        "only from evaluations after training steps (its checkpoint does not exist)": rule(start_is_best=True),
    }
    if eval_on_start and len(values) > 1:
        shifted = early_stopping_reference(values[1:], patience, threshold, greater_is_better, False)
        mistakes["the indices count every evaluation, the one before the first step included: values[0] is "
                 "evaluation 0"] = shifted
    return mistakes


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


def _case_text(values, patience, threshold, greater_is_better, eval_on_start) -> str:
    return (f"values {values}, patience {patience}, threshold {threshold}, greater_is_better {greater_is_better}, "
            f"eval_on_start {eval_on_start}")


def _agrees_where_passed(message: str, passed: list[tuple]) -> bool:
    """Whether the mistake named ``message`` gives the right outcome on every case the learner passed: only such a
    mistake is named for a failing case (one that would have failed earlier is not what the learner wrote). A
    mistake that does not apply to a case (no evaluation at start to miscount) agrees with it."""
    return all(_early_stopping_mistakes(*case).get(message, early_stopping_reference(*case))
               == early_stopping_reference(*case) for case in passed)


def check_early_stopping_outcome(early_stopping_outcome, real_trainer: bool = True) -> CheckReport:
    """``early_stopping_outcome(values, patience, threshold, greater_is_better, eval_on_start)`` ->
    ``(stopped_at, best_at)``; then (``real_trainer``) one case against a real Trainer run of a tiny model."""
    report = CheckReport("Early stopping by hand")
    passed = []  # the inputs of the cases the learner got right
    for values, patience, threshold, greater_is_better, eval_on_start, description in EARLY_STOPPING_CASES:
        inputs = (values, patience, threshold, greater_is_better, eval_on_start)
        result = report.call(early_stopping_outcome, list(values), patience, threshold, greater_is_better,
                             eval_on_start, name="early_stopping_outcome")
        if result is Ellipsis:
            return report
        outcome = _outcome(result)
        if outcome is None:
            report.fail(f"{description}: expected a pair (stopped_at, best_at) of evaluation indices (or None), "
                        f"got {result!r}")
            return report
        expected = early_stopping_reference(*inputs)
        if outcome == expected:
            report.ok(f"{description}: {outcome}")
            passed.append(inputs)
            continue
        fits = [message for message in named_mistakes(outcome, _early_stopping_mistakes(*inputs), operator.eq)
                if _agrees_where_passed(message, passed)]
        if len(fits) == 1:
            report.fail(f"{description}: got {outcome}, expected {expected}: {fits[0]}")
        elif fits:  # two mistakes give the same outcome here: name neither, show the case
            report.fail(f"{description}: got {outcome}, expected {expected} ({_case_text(*inputs)}); this outcome "
                        "fits several mistakes: " + "; or ".join(fits))
        else:
            report.fail(f"{description}: got {outcome}, expected {expected} ({_case_text(*inputs)})")
    if real_trainer and report.passed:
        *inputs, description = TRAINER_CASE
        trainer_result = trainer_early_stopping_outcome(*inputs)
        result = report.call(early_stopping_outcome, list(inputs[0]), *inputs[1:], name="early_stopping_outcome")
        if result is not Ellipsis:
            report.expect(_outcome(result) == trainer_result,
                          f"a real Trainer (tiny model, {_case_text(*inputs)}) gives {trainer_result}, as yours does",
                          f"a real Trainer ({_case_text(*inputs)}) gives {trainer_result}, yours {result!r}")
    return report


# --- Exercise 3: a class-weighted loss for Trainer's compute_loss_func ------------------------------------------


def balanced_weights(train_labels, num_labels: int) -> torch.Tensor:
    """scikit-learn's "balanced" class weights: examples / (labels x examples of the label)."""
    counts = torch.bincount(torch.as_tensor(list(train_labels)), minlength=num_labels).double()
    return counts.sum() / (num_labels * counts)


def weighted_loss_reference(logits, labels, weights, num_items_in_batch) -> torch.Tensor:
    """The loss Trainer expects from ``compute_loss_func``: the weighted sum of the reviews' cross-entropies divided
    by ``num_items_in_batch``, the labels of the whole accumulated batch (every micro-batch of one optimizer step)."""
    per_review = F.cross_entropy(logits, labels, reduction="none")
    return (weights.to(logits.dtype)[labels] * per_review).sum() / num_items_in_batch


def _loss_cases():
    """(description, train labels, num_labels, batch logits, batch labels, num_items_in_batch)."""
    generator = torch.Generator().manual_seed(12)
    two_train = [1] * 14 + [0] * 6
    two_logits = torch.randn(8, 2, generator=generator) * 3
    two_batch = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1])
    three_train = [0] * 5 + [1] * 3 + [2] * 12
    three_logits = torch.randn(6, 3, generator=generator) * 3
    three_batch = torch.tensor([2, 2, 0, 2, 2, 2])  # label 1 absent from this batch
    return [("2 labels, 14 fresh / 6 rotten, one micro-batch of 8 (num_items_in_batch 8)", two_train, 2, two_logits,
             two_batch, 8),
            ("3 labels, counts 5 / 3 / 12, a micro-batch of 6 without label 1, the first of 2 accumulated "
             "(num_items_in_batch 12)", three_train, 3, three_logits, three_batch, 12)]


def _loss_mistakes(train_labels, num_labels, logits, labels, num_items) -> dict[str, torch.Tensor]:
    weights = balanced_weights(train_labels, num_labels).to(logits.dtype)
    per_review = F.cross_entropy(logits, labels, reduction="none")
    counts = torch.bincount(torch.as_tensor(list(train_labels)), minlength=num_labels).to(logits.dtype)
    return {
        "no class weights: this is the plain cross-entropy": per_review.sum() / num_items,
        "no class weights, and divided by this micro-batch's size rather than num_items_in_batch": per_review.mean(),
        "the weights grow with the label's count: weigh each label by 1 / its count": weighted_loss_reference(
            logits, labels, counts, num_items),
        "this is the weighted mean of this micro-batch alone (F.cross_entropy(..., weight=...) divides by the sum "
        "of the batch's weights): Trainer adds the micro-batches' losses without dividing, so divide the weighted sum "
        "by num_items_in_batch": F.cross_entropy(logits, labels, weight=weights),
        "divided by this micro-batch's size: divide by num_items_in_batch, the reviews of every micro-batch of the "
        "optimizer step": (weights[labels] * per_review).mean(),
        "the weighted sum is not divided at all: divide it by num_items_in_batch": (weights[labels] * per_review).sum(),
    }


def _tiny_loss_run(loss_func, accumulation_steps: int = 2):
    """One optimizer step of a real Trainer with ``loss_func``: 8 reviews in micro-batches of 8 / accumulation_steps.

    Returns (the loss Trainer logged, the gradient of each weight before the optimizer step), or the error message.
    """
    import tempfile

    from transformers import TrainerCallback

    gradients = {}

    class KeepGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            gradients.update({name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()})

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = tiny_trainer(output_dir, max_steps=1, per_device_train_batch_size=8 // accumulation_steps,
                               gradient_accumulation_steps=accumulation_steps, learning_rate=1e-3, max_grad_norm=0.0,
                               train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
                               compute_loss_func=loss_func, callbacks=[KeepGradients()])
        trainer.train()
    return trainer.state.log_history[0]["loss"], gradients


def tiny_weighted_loss_expected():
    """The loss and gradients of :func:`weighted_loss_reference` over the 8 reviews of :func:`_tiny_loss_run`."""
    model = TinyClassifier()
    data = tiny_dataset()
    labels = torch.tensor([row["labels"] for row in data])
    logits = model(torch.stack([row["x"] for row in data])).logits
    loss = weighted_loss_reference(logits, labels, balanced_weights(labels.tolist(), 2).float(), len(labels))
    loss.backward()
    return loss.item(), {name: parameter.grad for name, parameter in model.named_parameters()}


def check_make_weighted_loss(make_weighted_loss, real_trainer: bool = True) -> CheckReport:
    """``make_weighted_loss(train_labels, num_labels)`` returns ``loss_func(outputs, labels, num_items_in_batch)``;
    then (``real_trainer``) one optimizer step of a real Trainer with ``gradient_accumulation_steps=2``."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    report = CheckReport("Class-weighted loss for compute_loss_func")
    for description, train_labels, num_labels, logits, labels, num_items in _loss_cases():
        loss_func = report.call(make_weighted_loss, list(train_labels), num_labels, name="make_weighted_loss")
        if loss_func is Ellipsis:
            return report
        if not callable(loss_func):
            report.fail(f"make_weighted_loss(...) should return a function, got {type(loss_func).__name__}")
            return report
        mine = logits.clone().requires_grad_(True)
        outputs = SequenceClassifierOutput(logits=mine)  # what the model returns inside Trainer
        loss = report.call(loss_func, outputs, labels.clone(), num_items_in_batch=torch.tensor(num_items),
                           name="loss_func")
        if loss is Ellipsis:
            return report
        reference_logits = logits.clone().requires_grad_(True)
        weights = balanced_weights(train_labels, num_labels).float()
        expected = weighted_loss_reference(reference_logits, labels, weights, num_items)
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
            report.expect(same_gradient, f"{description}: loss {value:.4f} and its gradient as expected",
                          f"{description}: the loss value is right but its gradient differs")
            continue
        fits = named_mistakes(value, _loss_mistakes(train_labels, num_labels, logits, labels, num_items),
                              lambda answer, wrong: math.isclose(answer, wrong.item(), abs_tol=1e-5))
        report.fail(f"{description}: loss {value:.4f}, expected {expected.item():.4f}"
                    + (f": {fits[0]}" if len(fits) == 1 else ""))
    if real_trainer and report.passed:
        loss_func = report.call(make_weighted_loss, list(TINY_LABELS), 2, name="make_weighted_loss")
        try:
            logged, gradients = _tiny_loss_run(loss_func)
        except Exception as error:  # noqa: BLE001 (the learner's loss raised inside Trainer: a message, not a crash)
            from behind_pipeline.checks._core import describe_error

            report.fail(f"inside a real Trainer, loss_func raised {describe_error(error)}")
            return report
        expected_loss, expected_gradients = tiny_weighted_loss_expected()
        ratio = gradients["linear.weight"].norm().item() / expected_gradients["linear.weight"].norm().item()
        same = math.isclose(logged, expected_loss, abs_tol=1e-5) and all(
            torch.allclose(gradients[name], expected_gradients[name], atol=1e-6) for name in expected_gradients)
        report.expect(same, f"a real Trainer, 8 reviews in 2 accumulated micro-batches of 4: logged loss "
                            f"{logged:.4f} and the step's gradient equal those of the weighted loss of the 8 reviews",
                      f"a real Trainer, 8 reviews in 2 accumulated micro-batches of 4: logged loss {logged:.4f} "
                      f"(expected {expected_loss:.4f}), gradient {ratio:.2f} times the expected one")
    return report


# --- Optional: the learner's compute_metrics and loss inside a few real Trainer steps -------------------------------


def short_trainer_run(compute_metrics, compute_loss_func=None, train_examples: int = 16, eval_examples: int = 32,
                      seed: int = 0) -> list[dict]:
    """Two optimizer steps of chapter 11's small BERT on real reviews, then one evaluation; the log, timings left out.

    ``train_examples`` training reviews in micro-batches of 4 with ``gradient_accumulation_steps=2``, evaluated on
    ``eval_examples`` validation reviews with ``compute_metrics``; ``compute_loss_func=None`` keeps the model's own
    loss, divided by the accumulation steps (``accepts_loss_kwargs = False``: without it Trainer would not divide,
    chapter 11). The same seed gives the same weights and batches, so two runs differ only by the loss. The model
    (:func:`behind_pipeline.trainer_setup.tiny_bert_classifier`) is a ``BertForSequenceClassification`` of width 32:
    it returns what the course's classifier returns and trains in milliseconds.
    """
    import tempfile

    from transformers import AutoTokenizer

    from behind_pipeline.data import load_rotten_tomatoes
    from behind_pipeline.models import encoder_id
    from behind_pipeline.trainer_setup import tiny_bert_classifier, tokenize_split, without_machine_keys

    splits = load_rotten_tomatoes()
    tokenizer = AutoTokenizer.from_pretrained(encoder_id())
    train = tokenize_split(splits["train"].shuffle(seed=seed).select(range(train_examples)), tokenizer)
    validation = tokenize_split(splits["validation"].shuffle(seed=seed).select(range(eval_examples)), tokenizer)
    model = tiny_bert_classifier(tokenizer, seed=seed)
    if compute_loss_func is None:
        model.accepts_loss_kwargs = False
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = tiny_trainer(
            output_dir, model=model, train_dataset=train, per_device_train_batch_size=4,
            gradient_accumulation_steps=2, per_device_eval_batch_size=64, learning_rate=1e-3, num_train_epochs=1,
            logging_steps=1, eval_strategy="no", save_strategy="no", seed=seed,
            processing_class=tokenizer, compute_metrics=compute_metrics, compute_loss_func=compute_loss_func)
        trainer.train()
        trainer.evaluate(validation)
    return [without_machine_keys(entry) for entry in trainer.state.log_history if "train_loss" not in entry]
