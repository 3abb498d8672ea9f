"""Chapter 11: the Trainer pieces of the package, the early-stopping reference against a real Trainer, and the checkers.

Real ``Trainer`` runs here use a tiny model (a linear layer, or a 2-layer BERT of width 32), so that each takes
a second: what is tested is Trainer's control flow, not what a model learns.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from transformers import EvalPrediction

from behind_pipeline.checks.ch11_trainer import (
    EARLY_STOPPING_CASES,
    TINY_LABELS,
    TinyClassifier,
    _tiny_loss_run,
    balanced_weights,
    check_early_stopping_outcome,
    check_make_compute_metrics,
    check_make_weighted_loss,
    early_stopping_reference,
    tiny_dataset,
    tiny_trainer,
    tiny_weighted_loss_expected,
    trainer_early_stopping_outcome,
)
from behind_pipeline.trainer_setup import (
    compute_metrics,
    learning_rate_log,
    quick_trainer,
    tiny_bert_classifier,
    tokenize_split,
    trainable_parameters,
    without_machine_keys,
)

from checker_asserts import assert_rejected


def quiet_trainer(tmp_path, model, **arguments):
    return tiny_trainer(tmp_path, model, **arguments)


# --- the package's Trainer pieces ---------------------------------------------------------------------------


def test_compute_metrics_is_accuracy_and_macro_f1_of_the_argmax():
    generator = np.random.default_rng(0)
    logits = generator.normal(scale=3.0, size=(50, 2)).astype(np.float32)
    labels = generator.integers(0, 2, size=50)
    predictions = logits.argmax(axis=-1)
    scores = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert scores == pytest.approx({"accuracy": accuracy_score(labels, predictions),
                                    "macro_f1": f1_score(labels, predictions, average="macro")})
    assert all(type(value) is float for value in scores.values())  # Trainer logs them as JSON


def test_without_machine_keys_drops_timings_and_rounds():
    entry = {"eval_loss": 0.123456, "eval_runtime": 1.5, "eval_samples_per_second": 9.0, "total_flos": 3.0,
             "train_steps_per_second": 1.0, "step": 10, "epoch": 0.5}
    assert without_machine_keys(entry) == {"eval_loss": 0.1235, "step": 10, "epoch": 0.5}


def test_without_machine_keys_keeps_3_significant_digits_of_a_learning_rate():
    """At 4 decimals the rates of a warmup (2.78e-4 next to 3e-4, 5e-5) would print as 0.0003 and 0.0001."""
    entry = {"learning_rate": 0.000277777, "loss": 0.000277777}
    assert without_machine_keys(entry) == {"learning_rate": 0.000278, "loss": 0.0003}


def test_learning_rate_log_records_every_step_with_the_warmup(tmp_path):
    callback, rates = learning_rate_log()
    trainer = tiny_trainer(tmp_path, max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3,
                           warmup_steps=2, lr_scheduler_type="linear", save_strategy="no", callbacks=[callback])
    trainer.train()
    # linear warmup over 2 steps, then linear decay to 0 at step 6: the rate each step used
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_tokenize_split_keeps_label_and_model_inputs_unpadded(splits, tokenizer):
    sample = splits["train"].select(range(6))
    tokens = tokenize_split(sample, tokenizer)
    assert set(tokens.column_names) == {"label", "input_ids", "token_type_ids", "attention_mask"}
    assert tokens["label"] == sample["label"]
    lengths = [len(ids) for ids in tokens["input_ids"]]
    assert lengths == [len(ids) for ids in tokenizer(list(sample["text"]))["input_ids"]]
    assert len(set(lengths)) > 1  # not padded to one length


def test_trainable_parameters_counts_only_what_learns():
    model = TinyClassifier()
    assert trainable_parameters(model) == 6
    model.linear.bias.requires_grad_(False)
    assert trainable_parameters(model) == 4


# --- the early-stopping reference is what Trainer does ----------------------------------------------------------


@pytest.mark.parametrize("case", EARLY_STOPPING_CASES, ids=[case[-1] for case in EARLY_STOPPING_CASES])
def test_early_stopping_reference_equals_a_real_trainer(case):
    *inputs, _ = case
    assert early_stopping_reference(*inputs) == trainer_early_stopping_outcome(*inputs)


def test_the_evaluation_at_start_never_becomes_the_best_in_a_real_trainer():
    """A start value better than all later ones: with eval_on_start the best is still a later evaluation."""
    values = [0.1, 0.9, 0.8, 0.85, 0.95]
    stopped_at, best_at = trainer_early_stopping_outcome(values, 2, 0.0, False, True)
    assert best_at == 2 and stopped_at == 4
    assert early_stopping_reference(values, 2, 0.0, False, False) == (2, 0)  # without eval_on_start it would be


# --- the exercises' solutions work inside a real Trainer ----------------------------------------------------------


def make_compute_metrics(id2label):
    ids = sorted(id2label)

    def metrics(eval_pred):
        logits, labels = eval_pred
        predictions = np.asarray(logits).argmax(axis=-1)
        recalls = recall_score(labels, predictions, labels=ids, average=None, zero_division=0)
        scores = {"macro_f1": float(f1_score(labels, predictions, labels=ids, average="macro", zero_division=0))}
        return scores | {f"recall_{id2label[i]}": float(r) for i, r in zip(ids, recalls, strict=True)}

    return metrics


def make_weighted_loss(train_labels, num_labels):
    weights = balanced_weights(train_labels, num_labels).float()

    def loss_func(outputs, labels, num_items_in_batch=None):
        per_review = F.cross_entropy(outputs.logits, labels, reduction="none")
        return (weights[labels] * per_review).sum() / num_items_in_batch

    return loss_func


def test_the_checkers_eval_prediction_behaves_like_transformers():
    from behind_pipeline.checks.ch11_trainer import EvalPrediction as Standin

    logits, labels = np.zeros((3, 2)), np.array([0, 1, 1])
    for value in (EvalPrediction(predictions=logits, label_ids=labels), Standin(logits, labels)):
        unpacked_logits, unpacked_labels = value
        assert unpacked_logits is logits and unpacked_labels is labels
        assert value[0] is logits and value[1] is labels
        assert value.predictions is logits and value.label_ids is labels


def test_the_compute_metrics_solution_names_trainer_metrics(tmp_path):
    trainer = quiet_trainer(tmp_path, TinyClassifier(), max_steps=1, eval_strategy="no", save_strategy="no",
                            compute_metrics=make_compute_metrics({0: "rotten", 1: "fresh"}))
    metrics = trainer.evaluate(tiny_dataset(6))
    assert {"eval_macro_f1", "eval_recall_rotten", "eval_recall_fresh"} <= set(metrics)


def test_the_weighted_loss_solution_is_the_loss_trainer_optimizes(tmp_path):
    """Over 2 accumulated micro-batches: the logged loss and the step's gradient are those of the 8 reviews."""
    logged, gradients = _tiny_loss_run(make_weighted_loss(list(TINY_LABELS), 2), accumulation_steps=2)
    expected_loss, expected_gradients = tiny_weighted_loss_expected()
    assert logged == pytest.approx(expected_loss, abs=1e-5)
    for name, gradient in expected_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, atol=1e-6, rtol=1e-5)
    one_batch_loss, _ = _tiny_loss_run(make_weighted_loss(list(TINY_LABELS), 2), accumulation_steps=1)
    assert one_batch_loss == pytest.approx(logged, abs=1e-5)  # the same whatever the accumulation


def test_the_optional_trainer_run_uses_the_learners_metrics_and_loss():
    """Issue 23, section 3: the solutions' optional cell runs the learner's compute_metrics and loss in Trainer. A
    loss equal to the model's own (summed, divided by num_items_in_batch) logs exactly the own-loss run; a weighted
    one logs another loss; the evaluation carries the learner's metric names."""
    from behind_pipeline.checks.ch11_trainer import short_trainer_run

    def own_loss(outputs, labels, num_items_in_batch=None):
        return F.cross_entropy(outputs.logits, labels, reduction="sum") / num_items_in_batch

    metrics = make_compute_metrics({0: "rotten", 1: "fresh"})
    model_loss = short_trainer_run(metrics)
    assert short_trainer_run(metrics, own_loss) == model_loss
    weighted = short_trainer_run(metrics, make_weighted_loss([1] * 14 + [0] * 6, 2))
    assert weighted[0]["loss"] != model_loss[0]["loss"]
    assert {"eval_macro_f1", "eval_recall_rotten", "eval_recall_fresh"} <= set(weighted[-1])


def test_trainer_does_not_divide_a_compute_loss_func_by_the_accumulation_steps():
    """The statement of exercise 3: a per-micro-batch weighted mean doubles the step's gradient at k = 2."""
    def micro_batch_mean(train_labels, num_labels):
        weights = balanced_weights(train_labels, num_labels).float()
        return lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs.logits, labels,
                                                                                weight=weights)

    _, one = _tiny_loss_run(micro_batch_mean(list(TINY_LABELS), 2), accumulation_steps=1)
    _, two = _tiny_loss_run(micro_batch_mean(list(TINY_LABELS), 2), accumulation_steps=2)
    ratio = two["linear.weight"].norm() / one["linear.weight"].norm()
    assert 1.5 < ratio < 2.5  # the sum of two micro-batch means, not their mean (not exactly 2: unequal weights)


def test_gradient_accumulation_doubles_the_loss_of_bert_for_sequence_classification(tmp_path, splits, tokenizer):
    """The chapter's trap: forward takes **kwargs, so Trainer does not divide its mean loss by k."""
    sixteen = tokenize_split(splits["train"].select(range(16)), tokenizer)
    logs = {}
    for batch_size, accumulation, accepts in ((16, 1, None), (8, 2, None), (8, 2, False)):
        model = tiny_bert_classifier(tokenizer)
        if accepts is not None:
            model.accepts_loss_kwargs = accepts
        trainer = quick_trainer(model, tokenizer, sixteen, tmp_path, max_steps=1,
                                per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
        trainer.train()
        logs[accepts, accumulation] = trainer.state.log_history[0]
    one, two, fixed = logs[None, 1], logs[None, 2], logs[False, 2]
    assert two["loss"] == pytest.approx(2 * one["loss"], rel=1e-4)
    assert two["grad_norm"] == pytest.approx(2 * one["grad_norm"], rel=1e-4)
    assert fixed["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert fixed["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)


def test_resume_from_checkpoint_continues_the_run_exactly(tmp_path, splits, tokenizer):
    sixteen = tokenize_split(splits["train"].select(range(16)), tokenizer)

    def four_steps(seed, output_dir, resume=None):
        trainer = quick_trainer(tiny_bert_classifier(tokenizer, seed=seed), tokenizer, sixteen, output_dir,
                                max_steps=4, per_device_train_batch_size=4, save_strategy="steps", save_steps=2)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = four_steps(0, tmp_path / "straight")
    resumed = four_steps(1, tmp_path / "resumed", resume=str(tmp_path / "straight" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    fresh = tiny_bert_classifier(tokenizer, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), resumed.model.parameters(), strict=True))


def test_trainer_drops_columns_forward_does_not_take_and_pads_with_the_tokenizer(tmp_path, splits, tokenizer):
    from transformers import DataCollatorWithPadding

    tokens = tokenize_split(splits["validation"].select(range(8)), tokenizer)
    trainer = quick_trainer(tiny_bert_classifier(tokenizer), tokenizer, tokens, tmp_path)
    assert type(trainer.data_collator) is DataCollatorWithPadding
    batch = next(iter(trainer.get_eval_dataloader(tokens.add_column("weight", [1.0] * 8))))
    assert "weight" not in batch and "labels" in batch
    kept = quick_trainer(tiny_bert_classifier(tokenizer), tokenizer, tokens, tmp_path, remove_unused_columns=False)
    assert "weight" in kept._remove_unused_columns(tokens.add_column("weight", [1.0] * 8)).column_names


# --- checkers: right answers pass, typical mistakes fail and say why, odd answers never raise ---------------------


def metrics_variant(f1=None, recall=recall_score, axis=-1):
    """A compute_metrics factory with one ingredient swapped for a typical mistake."""
    def factory(id2label):
        ids = sorted(id2label)

        def metrics(eval_pred):
            logits, labels = eval_pred
            predictions = np.asarray(logits).argmax(axis=axis)
            recalls = recall(labels, predictions, labels=ids, average=None, zero_division=0)
            macro = (f1 or (lambda y, p: f1_score(y, p, labels=ids, average="macro", zero_division=0)))(
                labels, predictions)
            return {"macro_f1": float(macro)} | {f"recall_{id2label[i]}": float(r)
                                                 for i, r in zip(ids, recalls, strict=True)}

        return metrics

    return factory


def test_check_make_compute_metrics_accepts_the_solution():
    assert check_make_compute_metrics(make_compute_metrics).passed


@pytest.mark.parametrize(("mistake", "says"), [
    (metrics_variant(f1=lambda y, p: accuracy_score(y, p)), "accuracy"),
    (metrics_variant(f1=lambda y, p: f1_score(y, p, average="micro")), "accuracy"),
    (metrics_variant(f1=lambda y, p: f1_score(y, p, average="weighted")), "weighted"),
    (metrics_variant(f1=lambda y, p: f1_score(y, p)), "binary"),
    (metrics_variant(recall=precision_score), "precisions"),
    (metrics_variant(axis=0), "axis=-1"),
], ids=["accuracy_as_macro_f1", "micro_f1", "weighted_f1", "binary_f1", "precision_as_recall", "argmax_axis_0"])
def test_check_make_compute_metrics_rejects_and_names_the_mistake(mistake, says):
    assert_rejected(check_make_compute_metrics(mistake), says)


def test_check_make_compute_metrics_allows_extra_keys():
    def with_accuracy(id2label):
        metrics = make_compute_metrics(id2label)
        return lambda eval_pred: metrics(eval_pred) | {"accuracy": 0.5}

    assert check_make_compute_metrics(with_accuracy).passed


def without_labels_argument(zip_strict):
    """f1_score and recall_score without labels=: a label no review has nor is predicted as drops out."""
    def factory(id2label):
        ids = sorted(id2label)

        def metrics(eval_pred):
            logits, labels = eval_pred
            predictions = np.asarray(logits).argmax(axis=-1)
            recalls = recall_score(labels, predictions, average=None, zero_division=0)
            scores = {"macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}
            return scores | {f"recall_{id2label[i]}": float(r) for i, r in zip(ids, recalls, strict=zip_strict)}

        return metrics

    return factory


@pytest.mark.parametrize("zip_strict", [True, False], ids=["zip_raises", "recalls_shifted"])
def test_check_make_compute_metrics_says_labels_is_needed(zip_strict):
    assert_rejected(check_make_compute_metrics(without_labels_argument(zip_strict)), "labels=sorted(id2label)")


def test_check_make_compute_metrics_names_a_macro_over_present_labels_only():
    """Recalls right (labels= given) but the macro-F1 without labels=: the macro message, not a generic one."""
    def macro_over_present_labels(labels, predictions):
        return f1_score(labels, predictions, average="macro")

    assert_rejected(check_make_compute_metrics(metrics_variant(f1=macro_over_present_labels)),
                    "averages only the labels present")


def test_check_make_compute_metrics_names_a_recall_counted_by_hand_as_nan():
    """Recall by hand, right / count, with no guard: 0 / 0 for a label no review has is NaN, named as such."""
    def recalls_by_hand(y_true, y_pred, labels, average, zero_division):
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        with np.errstate(invalid="ignore"):
            return [np.float64(((y_pred == i) & (y_true == i)).sum()) / np.float64((y_true == i).sum())
                    for i in labels]

    assert_rejected(check_make_compute_metrics(metrics_variant(recall=recalls_by_hand)), "['recall_neutral'] is NaN",
                    "0 by 0")


def test_check_make_compute_metrics_catches_axis_0_when_reviews_equal_labels():
    """With as many reviews as labels, argmax(axis=0) raises nothing: only the values give it away."""
    from behind_pipeline.checks.ch11_trainer import _metric_cases, _metric_mistakes, expected_metrics

    description, id2label, logits, labels = next(case for case in _metric_cases() if case[0] == "3 labels, 3 reviews")
    assert len(logits) == len(id2label)
    wrong = expected_metrics(id2label, logits.T, labels)
    assert wrong != expected_metrics(id2label, logits, labels)
    assert any("axis" in message for message in _metric_mistakes(id2label, logits, labels))


@pytest.mark.parametrize("answer", [
    lambda id2label: 3,
    lambda id2label: (lambda eval_pred: [0.5]),
    lambda id2label: (lambda eval_pred: {"macro_f1": 0.5}),
    lambda id2label: (lambda eval_pred: {"macro_f1": torch.tensor([0.5, 0.1]), "recall_rotten": "high",
                                         "recall_fresh": None, "recall_negative": 0, "recall_neutral": 0,
                                         "recall_positive": 0}),
    lambda id2label: (lambda eval_pred: 1 / 0),
], ids=["not_a_function", "a_list", "missing_recalls", "not_numbers", "raises"])
def test_check_make_compute_metrics_reports_odd_answers(answer):
    assert not check_make_compute_metrics(answer).passed


def test_check_early_stopping_outcome_accepts_the_reference():
    report = check_early_stopping_outcome(early_stopping_reference)
    assert report.passed and "a real Trainer" in repr(report)


def stopping_variant(ties=False, ignore_threshold=False, inclusive=False, relative=False, best_needs_threshold=False,
                     no_reset=False, extra=0, start_is_best=False):
    def outcome(values, patience, threshold, greater_is_better, eval_on_start):
        best, best_at, waited = None, None, 0
        for index, value in enumerate(values):
            if best is None:
                better = True
            elif greater_is_better:
                better = value >= best if ties else value > best
            else:
                better = value <= best if ties else value < best
            limit = threshold * abs(best) if relative and best is not None else threshold
            enough = best is None or ignore_threshold or (
                abs(value - best) >= limit if inclusive else abs(value - best) > limit)
            waited = (waited if no_reset else 0) if better and enough else waited + 1
            start = eval_on_start and index == 0 and not start_is_best
            if better and (enough or not best_needs_threshold) and not start:
                best, best_at = value, index
            if waited >= patience + extra:
                return index, best_at
        return None, best_at

    return outcome


def drops_the_start(values, patience, threshold, greater_is_better, eval_on_start):
    """Skips the evaluation at start but returns indices into the shortened list."""
    return early_stopping_reference(values[1:] if eval_on_start else values, patience, threshold, greater_is_better)


@pytest.mark.parametrize(("mistake", "says"), [
    (stopping_variant(ties=True), "equal to the best"),
    (stopping_variant(ignore_threshold=True), "by more than the threshold"),
    (stopping_variant(inclusive=True), "exactly the threshold does not reset the count"),
    (stopping_variant(relative=True), "not a share of the best"),
    (stopping_variant(best_needs_threshold=True), "any improvement"),
    (stopping_variant(no_reset=True), "restarts the count"),
    (stopping_variant(extra=1), "reach patience + 1"),
    (lambda values, patience, threshold, greater, start: stopping_variant()(values, patience, threshold, not greater,
                                                                           start), "reversed"),
    (stopping_variant(start_is_best=True), "never becomes the best"),
    (drops_the_start, "values[0] is evaluation 0"),
], ids=["tie_counts_as_improvement", "threshold_ignored", "threshold_compared_with_ge", "threshold_relative",
        "best_moves_only_past_threshold", "count_never_resets", "stops_at_patience_plus_one",
        "greater_is_better_reversed", "start_evaluation_becomes_best", "indices_shifted_by_the_start"])
def test_check_early_stopping_outcome_rejects_and_names_the_mistake(mistake, says):
    assert_rejected(check_early_stopping_outcome(mistake, real_trainer=False), says)


@pytest.mark.parametrize("mistake", [stopping_variant(inclusive=True), stopping_variant(relative=True)],
                         ids=["threshold_compared_with_ge", "threshold_relative"])
def test_check_early_stopping_outcome_never_calls_a_threshold_mistake_off_by_one(mistake):
    """Issue 23: these got the patience message. Where a case cannot tell them apart, the line shows the inputs."""
    report = repr(check_early_stopping_outcome(mistake, real_trainer=False))
    for line in report.splitlines():
        if "patience + 1" in line:
            assert "fits several mistakes" in line and "values [" in line


@pytest.mark.parametrize("answer", [
    lambda *args: (2.0, 1), lambda *args: 4, lambda *args: (True, 0), lambda *args: (None,),
    lambda *args: (torch.tensor(4), torch.tensor(2)), lambda *args: [][0],
    lambda values, patience, threshold, greater_is_better: (None, 0),  # the old 4-argument signature
], ids=["float_index", "one_number", "bool", "one_item", "tensors", "raises", "no_eval_on_start_argument"])
def test_check_early_stopping_outcome_never_raises(answer):
    report = check_early_stopping_outcome(answer)
    assert isinstance(repr(report), str)
    assert not report.passed


def test_check_early_stopping_outcome_accepts_integer_tensors():
    def as_tensors(*args):
        stopped_at, best_at = early_stopping_reference(*args)
        return (None if stopped_at is None else torch.tensor(stopped_at)), torch.tensor(best_at)

    assert check_early_stopping_outcome(as_tensors, real_trainer=False).passed


def test_check_make_weighted_loss_accepts_the_solution_at_any_weight_scale_of_mean_1():
    report = check_make_weighted_loss(make_weighted_loss)
    assert report.passed and "a real Trainer" in repr(report)

    def dictionary_access(train_labels, num_labels):  # outputs["logits"] works on a model output as well
        weights = balanced_weights(train_labels, num_labels).float()
        return lambda outputs, labels, num_items_in_batch=None: (weights[labels] * F.cross_entropy(
            outputs["logits"], labels, reduction="none")).sum() / num_items_in_batch

    assert check_make_weighted_loss(dictionary_access, real_trainer=False).passed


def loss_variant(kind):
    def factory(train_labels, num_labels):
        counts = torch.bincount(torch.as_tensor(train_labels), minlength=num_labels).float()
        weights = counts.sum() / (num_labels * counts)

        def loss_func(outputs, labels, num_items_in_batch=None):
            logits = outputs.logits
            per_review = F.cross_entropy(logits, labels, reduction="none")
            if kind == "unweighted":
                return per_review.sum() / num_items_in_batch
            if kind == "unweighted_mean":
                return F.cross_entropy(logits, labels)
            if kind == "by_count":
                return (counts[labels] * per_review).sum() / num_items_in_batch
            if kind == "micro_batch_weighted_mean":
                return F.cross_entropy(logits, labels, weight=weights)
            if kind == "batch_size_mean":
                return (weights[labels] * per_review).mean()
            if kind == "not_divided":
                return (weights[labels] * per_review).sum()
            return torch.tensor((weights[labels] * per_review).sum().item()) / num_items_in_batch  # "detached"

        return loss_func

    return factory


@pytest.mark.parametrize(("kind", "says"), [
    ("unweighted", "no class weights: this is the plain"), ("unweighted_mean", "no class weights, and divided"),
    ("by_count", "grow with"), ("micro_batch_weighted_mean", "weighted mean of this micro-batch alone"),
    ("batch_size_mean", "divided by this micro-batch's size"), ("not_divided", "not divided at all"),
    ("detached", "graph")])
def test_check_make_weighted_loss_rejects_and_names_the_mistake(kind, says):
    assert_rejected(check_make_weighted_loss(loss_variant(kind)), says)


def test_check_make_weighted_loss_reports_a_loss_that_fails_only_inside_trainer():
    """Right on the direct calls, but it reads the batch size from a fixed number: Trainer's micro-batches of 4."""
    def fixed_count(train_labels, num_labels):
        right = make_weighted_loss(train_labels, num_labels)
        return lambda outputs, labels, num_items_in_batch=None: (
            right(outputs, labels, num_items_in_batch) if len(labels) != 4 else right(outputs, labels, 4))

    assert_rejected(check_make_weighted_loss(fixed_count), "2 accumulated micro-batches", "2.00 times")


@pytest.mark.parametrize("answer", [
    lambda train_labels, num_labels: 0.5,
    lambda train_labels, num_labels: (lambda outputs, labels: 0.0),  # no num_items_in_batch argument
    lambda train_labels, num_labels: (lambda outputs, labels, num_items_in_batch=None: 0.7),
    lambda train_labels, num_labels: (lambda outputs, labels, num_items_in_batch=None: torch.ones(3,
                                                                                                 requires_grad=True)),
], ids=["not_a_function", "no_num_items_keyword", "a_float", "several_numbers"])
def test_check_make_weighted_loss_reports_odd_answers(answer):
    assert not check_make_weighted_loss(answer).passed


@pytest.mark.parametrize("check", [check_make_compute_metrics, check_early_stopping_outcome,
                                   check_make_weighted_loss])
def test_blank_answers_are_reported_not_raised(check):
    def blank(*args):
        ...

    for answer, hint in ((Ellipsis, "still `...`"), (blank, "returned None")):
        assert_rejected(check(answer), hint)


def compares_with_the_previous_evaluation(values, patience, threshold, greater_is_better, eval_on_start):
    """A common wrong rule: an improvement over the last evaluation, not over the best so far."""
    previous, best, best_at, waited = None, None, None, 0
    for index, value in enumerate(values):
        better = previous is None or (value > previous if greater_is_better else value < previous)
        waited = 0 if better and (previous is None or abs(value - previous) > threshold) else waited + 1
        if (best is None or (value > best if greater_is_better else value < best)) and not (
                eval_on_start and index == 0):
            best, best_at = value, index
        previous = value
        if waited >= patience:
            return index, best_at
    return None, best_at


def test_a_mistake_not_on_the_list_is_not_given_a_listed_name():
    """No listed mistake gives this rule's outcomes on the cases it passed as well as on the one it failed: the
    checker shows the inputs, got and expected instead of guessing one."""
    report = check_early_stopping_outcome(compares_with_the_previous_evaluation, real_trainer=False)
    assert_rejected(report, "got (")
    assert "patience + 1" not in repr(report), report
