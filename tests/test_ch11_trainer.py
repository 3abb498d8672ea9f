"""Chapter 11: the Trainer pieces of the package, the early-stopping reference against a real Trainer, and the checkers.

Real ``Trainer`` runs here use a tiny model (a linear layer, or a 2-layer BERT of width 32), so that each takes
a second: what is tested is Trainer's control flow, not what a model learns.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.trainer_callback import EarlyStoppingCallback, PrinterCallback

from behind_pipeline.checks.ch11_trainer import (
    EARLY_STOPPING_CASES,
    balanced_weights,
    check_early_stopping_outcome,
    check_make_compute_metrics,
    check_make_weighted_loss,
    early_stopping_reference,
)
from behind_pipeline.trainer_setup import (
    compute_metrics,
    tokenize_split,
    trainable_parameters,
    without_machine_keys,
)


class TinyClassifier(torch.nn.Module):
    """Two numbers in, two logits out; returns the loss when given labels, as a transformers model does."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        return {"logits": logits} if labels is None else {"loss": F.cross_entropy(logits, labels), "logits": logits}


def tiny_dataset(size=8):
    generator = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(2, generator=generator), "labels": int(index % 3 == 0)} for index in range(size)]


def quiet_trainer(tmp_path, model, **arguments):
    options = {"output_dir": str(tmp_path), "report_to": "none", "disable_tqdm": True, "use_cpu": True,
               "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8}
    trainer_options = {key: arguments.pop(key) for key in ("compute_metrics", "callbacks", "compute_loss_func",
                                                           "eval_dataset") if key in arguments}
    trainer = Trainer(model=model, args=TrainingArguments(**options | arguments), train_dataset=tiny_dataset(),
                      **trainer_options)
    trainer.remove_callback(PrinterCallback)
    return trainer


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


def trainer_outcome(tmp_path, values, patience, threshold, greater_is_better):
    """Run a real Trainer whose evaluation i reports values[i]; return (stopped_at, best_at) as it decided them."""
    scripted = iter(values)
    callback = EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
    trainer = quiet_trainer(
        tmp_path, TinyClassifier(), max_steps=len(values), learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
        save_strategy="steps", save_steps=1, save_only_model=True, load_best_model_at_end=True,
        metric_for_best_model="score", greater_is_better=greater_is_better,
        eval_dataset=tiny_dataset(4), compute_metrics=lambda _: {"score": next(scripted)}, callbacks=[callback],
    )
    trainer.train()
    state = trainer.state
    stopped = callback.early_stopping_patience_counter >= patience  # also when it stops at the last evaluation
    return (state.global_step - 1 if stopped else None), state.best_global_step - 1


@pytest.mark.parametrize("case", EARLY_STOPPING_CASES, ids=[case[-1] for case in EARLY_STOPPING_CASES])
def test_early_stopping_reference_equals_a_real_trainer(tmp_path, case):
    values, patience, threshold, greater_is_better, _ = case
    assert early_stopping_reference(values, patience, threshold, greater_is_better) == trainer_outcome(
        tmp_path, values, patience, threshold, greater_is_better)


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
        return F.cross_entropy(outputs["logits"], labels, weight=weights)

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
    torch.manual_seed(0)
    model = TinyClassifier()
    data = tiny_dataset()
    labels = torch.tensor([row["labels"] for row in data])
    with torch.no_grad():
        logits = model(torch.stack([row["x"] for row in data]))["logits"]
    expected = F.cross_entropy(logits, labels, weight=balanced_weights(labels.tolist(), 2).float()).item()
    trainer = quiet_trainer(tmp_path, model, max_steps=1, learning_rate=0.0, logging_steps=1,
                            train_sampling_strategy="sequential", save_strategy="no",
                            compute_loss_func=make_weighted_loss(labels.tolist(), 2))
    trainer.train()
    logged = trainer.state.log_history[0]["loss"]
    assert logged == pytest.approx(expected, abs=1e-5)
    assert logged != pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-3)  # the weights matter here


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
    report = check_make_compute_metrics(mistake)
    assert not report.passed and says in repr(report)


def test_check_make_compute_metrics_catches_axis_0_when_reviews_equal_labels():
    """With as many reviews as labels, argmax(axis=0) raises nothing: only the values give it away."""
    from behind_pipeline.checks.ch11_trainer import _metric_cases, _metric_mistakes, expected_metrics

    description, id2label, logits, labels = _metric_cases()[-1]
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
    assert check_early_stopping_outcome(early_stopping_reference).passed


def stopping_variant(ties=False, ignore_threshold=False, best_needs_threshold=False, no_reset=False, extra=0):
    def outcome(values, patience, threshold, greater_is_better):
        best, best_at, waited = None, None, 0
        for index, value in enumerate(values):
            if best is None:
                better = True
            elif greater_is_better:
                better = value >= best if ties else value > best
            else:
                better = value <= best if ties else value < best
            enough = best is None or ignore_threshold or abs(value - best) > threshold
            waited = (waited if no_reset else 0) if better and enough else waited + 1
            if better and (enough or not best_needs_threshold):
                best, best_at = value, index
            if waited >= patience + extra:
                return index, best_at
        return None, best_at

    return outcome


@pytest.mark.parametrize(("mistake", "says"), [
    (stopping_variant(ties=True), "equal to the best"),
    (stopping_variant(ignore_threshold=True), "more than the threshold"),
    (stopping_variant(best_needs_threshold=True), "any improvement"),
    (stopping_variant(no_reset=True), "restarts the count"),
    (stopping_variant(extra=1), "off by one"),
    (lambda values, patience, threshold, greater: stopping_variant()(values, patience, threshold, not greater),
     "reversed"),
], ids=["tie_counts_as_improvement", "threshold_ignored", "best_moves_only_past_threshold", "count_never_resets",
        "stops_at_patience_plus_one", "greater_is_better_reversed"])
def test_check_early_stopping_outcome_rejects_and_names_the_mistake(mistake, says):
    report = check_early_stopping_outcome(mistake)
    assert not report.passed and says in repr(report)


@pytest.mark.parametrize("answer", [
    lambda *args: (2.0, 1), lambda *args: 4, lambda *args: (True, 0), lambda *args: (None,),
    lambda *args: (torch.tensor(4), torch.tensor(2)), lambda *args: [][0],
], ids=["float_index", "one_number", "bool", "one_item", "tensors", "raises"])
def test_check_early_stopping_outcome_never_raises(answer):
    report = check_early_stopping_outcome(answer)
    assert isinstance(repr(report), str)
    assert not report.passed


def test_check_early_stopping_outcome_accepts_integer_tensors():
    def as_tensors(*args):
        stopped_at, best_at = early_stopping_reference(*args)
        return (None if stopped_at is None else torch.tensor(stopped_at)), torch.tensor(best_at)

    assert check_early_stopping_outcome(as_tensors).passed


def test_check_make_weighted_loss_accepts_the_solution_at_any_weight_scale():
    assert check_make_weighted_loss(make_weighted_loss).passed

    def one_over_count(train_labels, num_labels):  # the same weighted mean: the scale of the weights cancels
        weights = 1 / torch.bincount(torch.as_tensor(train_labels), minlength=num_labels).float()
        return lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs.logits, labels, weight=weights)

    assert check_make_weighted_loss(one_over_count).passed


def loss_variant(kind):
    def factory(train_labels, num_labels):
        counts = torch.bincount(torch.as_tensor(train_labels), minlength=num_labels).float()
        weights = counts.sum() / (num_labels * counts)

        def loss_func(outputs, labels, num_items_in_batch=None):
            logits = outputs.logits
            if kind == "unweighted":
                return F.cross_entropy(logits, labels)
            if kind == "by_count":
                return F.cross_entropy(logits, labels, weight=counts)
            if kind == "batch_mean":
                return (weights[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()
            return torch.tensor(F.cross_entropy(logits, labels, weight=weights).item())  # "detached"

        return loss_func

    return factory


@pytest.mark.parametrize(("kind", "says"), [("unweighted", "no class weights"), ("by_count", "grow with"),
                                            ("batch_mean", "sum of the weights"), ("detached", "graph")])
def test_check_make_weighted_loss_rejects_and_names_the_mistake(kind, says):
    report = check_make_weighted_loss(loss_variant(kind))
    assert not report.passed and says in repr(report)


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

    for answer in (Ellipsis, blank):
        report = check(answer)
        assert not report.passed and ("still `...`" in repr(report) or "returned None" in repr(report))
