"""Chapter 5: the pipeline by hand answers like pipeline("text-classification"); each checker accepts the right
answer, rejects the typical wrong ones (each named after its mistake) and never raises."""

import copy

import pytest
import torch
from transformers import PretrainedConfig, pipeline

from behind_pipeline.checks.ch05_pipeline_by_hand import (
    RULE_CASES,
    check_function_to_apply,
    check_one_logit_classifier,
    check_reorder_labels,
    library_function_to_apply,
)
from behind_pipeline.pipeline_by_hand import classify, scores_from_logits

from checker_asserts import ODD_ANSWERS, assert_accepted, assert_rejected, assert_reported

SAMPLE_EVERY = 4  # every 4th test review: 362 reviews of all lengths, a quarter of the cost of the whole split
BATCH_SIZE = 64
TEXTS = ["Two hours of my life I will never get back.", "Funny, warm and smarter than it looks."]


@pytest.fixture(scope="module")
def clf(tokenizer, classifier):
    return pipeline("text-classification", model=classifier, tokenizer=tokenizer)


def _as_lists(results):
    return [item if isinstance(item, list) else [item] for item in results]


def test_classify_equals_the_pipeline_on_test_reviews(splits, tokenizer, classifier, clf):
    texts = list(splits["test"]["text"])[::SAMPLE_EVERY]
    mine = classify(texts, tokenizer, classifier, batch_size=BATCH_SIZE)
    theirs = clf(texts, batch_size=BATCH_SIZE)
    assert len(mine) == len(theirs) > 300
    assert [r["label"] for r in mine] == [r["label"] for r in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(mine, theirs, strict=True)) < 1e-4


@pytest.mark.parametrize("top_k", [1, 2, None])
@pytest.mark.parametrize("function_to_apply", ["softmax", "sigmoid", "none"])
def test_classify_options_equal_the_pipeline_options(tokenizer, classifier, clf, top_k, function_to_apply):
    options = {"function_to_apply": function_to_apply} | ({} if top_k == 1 else {"top_k": top_k})
    mine = classify(TEXTS, tokenizer, classifier, top_k=top_k, function_to_apply=function_to_apply)
    theirs = clf(TEXTS, **options)
    assert [type(item) for item in mine] == [type(item) for item in theirs]
    for row_mine, row_theirs in zip(_as_lists(mine), _as_lists(theirs), strict=True):
        assert [r["label"] for r in row_mine] == [r["label"] for r in row_theirs]
        assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(row_mine, row_theirs, strict=True))


def test_a_single_string_is_one_text(tokenizer, classifier, clf):
    mine, theirs = classify(TEXTS[1], tokenizer, classifier), clf(TEXTS[1])
    assert len(mine) == len(theirs) == 1 and mine[0]["label"] == theirs[0]["label"]


def test_classify_truncates_where_the_pipeline_needs_truncation_true(tokenizer, classifier, clf):
    long_text = "a film that never ends " * 200  # about 1,000 tokens, twice the model's 512 positions
    with pytest.raises(RuntimeError):
        clf(long_text)
    mine, theirs = classify(long_text, tokenizer, classifier)[0], clf(long_text, truncation=True)[0]
    assert mine["label"] == theirs["label"] and abs(mine["score"] - theirs["score"]) < 1e-4


def test_scores_from_logits():
    logits = torch.tensor([[-1.0, 2.0], [0.5, 0.5]])
    assert torch.allclose(scores_from_logits(logits, "softmax"), logits.softmax(dim=-1))
    assert torch.allclose(scores_from_logits(logits, "sigmoid"), torch.sigmoid(logits))
    assert torch.equal(scores_from_logits(logits, "none"), logits)
    with pytest.raises(ValueError, match="function_to_apply"):
        scores_from_logits(logits, "argmax")


def test_the_checkers_oracle_reads_the_rule_off_the_library():
    """The rule the chapter states, as the library's own postprocess applies it (the oracle of exercise 1)."""
    choices = {(tuple(sorted(fields.items())), requested): library_function_to_apply(PretrainedConfig(**fields),
                                                                                     requested)
               for fields, requested in RULE_CASES}
    assert set(choices.values()) == {"softmax", "sigmoid", "none"}
    assert library_function_to_apply(PretrainedConfig(num_labels=1)) == "sigmoid"
    assert library_function_to_apply(PretrainedConfig(num_labels=2, function_to_apply="none")) == "softmax"
    assert library_function_to_apply(PretrainedConfig(num_labels=2, problem_type="regression")) == "none"


# --- exercise 1: the default function_to_apply --------------------------------------------------------------------


def function_to_apply_for(config, function_to_apply=None):
    if function_to_apply is not None:
        return function_to_apply
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def ignores_problem_type(config, function_to_apply=None):
    return function_to_apply or ("sigmoid" if config.num_labels == 1 else "softmax")


def softmax_from_three_labels(config, function_to_apply=None):  # the boundary: two labels are softmaxed too
    return function_to_apply or ("softmax" if config.num_labels > 2 else "sigmoid")


def one_label_before_regression(config, function_to_apply=None):
    if function_to_apply:
        return function_to_apply
    if config.num_labels == 1 or config.problem_type == "multi_label_classification":
        return "sigmoid"
    return "none" if config.problem_type == "regression" else "softmax"


def ignores_the_call(config, function_to_apply=None):
    return function_to_apply_for(config)


def config_setting_wins(config, function_to_apply=None):
    return function_to_apply or getattr(config, "function_to_apply", None) or function_to_apply_for(config)


def returns_the_function(config, function_to_apply=None):
    return torch.softmax


def upper_case(config, function_to_apply=None):
    return function_to_apply_for(config, function_to_apply).upper()


def test_check_function_to_apply_accepts_the_rule_in_any_case():
    assert_accepted(check_function_to_apply, function_to_apply_for, upper_case)  # the pipeline accepts "SIGMOID"


@pytest.mark.parametrize("answer, hint", [
    (ignores_problem_type, "regression"),
    (softmax_from_three_labels, "2 mutually exclusive labels"),
    (one_label_before_regression, "'regression' comes first"),
    (ignores_the_call, "always wins"),
    (config_setting_wins, "stored in the config"),
    (returns_the_function, "as a string"),
])
def test_check_function_to_apply_rejects(answer, hint):
    assert_rejected(check_function_to_apply(answer), hint)


# --- exercise 2: labels in another order ----------------------------------------------------------------------------


def reorder_labels(classifier, order):
    new = copy.deepcopy(classifier)
    with torch.no_grad():
        new.classifier.weight.copy_(classifier.classifier.weight[order])
        new.classifier.bias.copy_(classifier.classifier.bias[order])
    new.config.id2label = {i: classifier.config.id2label[j] for i, j in enumerate(order)}
    new.config.label2id = {name: i for i, name in new.config.id2label.items()}
    return new


def _rename(new, classifier, order):
    new.config.id2label = {i: classifier.config.id2label[j] for i, j in enumerate(order)}
    new.config.label2id = {name: i for i, name in new.config.id2label.items()}
    return new


def names_only(classifier, order):
    return _rename(copy.deepcopy(classifier), classifier, order)


def weights_only(classifier, order):
    new = copy.deepcopy(classifier)
    with torch.no_grad():
        new.classifier.weight.copy_(classifier.classifier.weight[order])
        new.classifier.bias.copy_(classifier.classifier.bias[order])
    return new


def inverse_order(classifier, order):
    return reorder_labels(classifier, [order.index(i) for i in range(len(order))])


def bias_not_moved(classifier, order):
    new = names_only(classifier, order)
    with torch.no_grad():
        new.classifier.weight.copy_(classifier.classifier.weight[order])
    return new


def stale_label2id(classifier, order):
    new = reorder_labels(classifier, order)
    new.config.label2id = dict(classifier.config.label2id)
    return new


def flips_the_rows(classifier, order):  # right for the course classifier's [1, 0] only
    new = copy.deepcopy(classifier)
    with torch.no_grad():
        new.classifier.weight.copy_(classifier.classifier.weight.flip(0))
        new.classifier.bias.copy_(classifier.classifier.bias.flip(0))
    return _rename(new, classifier, order)


def in_place(classifier, order):
    new = reorder_labels(classifier, order)
    classifier.load_state_dict(new.state_dict())
    classifier.config.id2label, classifier.config.label2id = new.config.id2label, new.config.label2id
    return classifier


def drops_the_last_label(classifier, order):
    new = copy.deepcopy(classifier)
    kept = order[:-1]
    weight, bias = classifier.classifier.weight, classifier.classifier.bias
    new.classifier = torch.nn.Linear(weight.shape[1], len(kept))
    with torch.no_grad():
        new.classifier.weight.copy_(weight[kept])
        new.classifier.bias.copy_(bias[kept])
    return _rename(new, classifier, kept)


def returns_the_state_dict(classifier, order):
    return reorder_labels(classifier, order).state_dict()


def test_check_reorder_labels_accepts_the_solution():
    assert check_reorder_labels(reorder_labels).passed


@pytest.mark.parametrize("answer, hint", [
    (names_only, "still in the old order"),
    (weights_only, "id2label is still"),
    (inverse_order, "inverse order"),
    (bias_not_moved, "permute classifier.bias"),
    (stale_label2id, "label2id is"),
    (flips_the_rows, "order [2, 0, 1]: the logits are not"),
    (in_place, "you changed the classifier you were given"),
    (drops_the_last_label, "reordering keeps every label"),
    (returns_the_state_dict, "return the new classifier"),
])
def test_check_reorder_labels_rejects(answer, hint):
    assert_rejected(check_reorder_labels(answer), hint)


# --- exercise 3: one logit, scored by the pipeline's sigmoid ------------------------------------------------------


def one_logit_classifier(classifier, rows=(1, 0), bias=True, problem_type=None, name=True):
    new = copy.deepcopy(classifier)
    weight, old_bias = classifier.classifier.weight, classifier.classifier.bias
    new.classifier = torch.nn.Linear(weight.shape[1], 1)
    with torch.no_grad():
        new.classifier.weight.copy_(weight[rows[0]] - (weight[rows[1]] if rows[1] is not None else 0))
        new.classifier.bias.copy_((old_bias[rows[0]] - (old_bias[rows[1]] if rows[1] is not None else 0))
                                  if bias else old_bias[rows[0]])
    positive = classifier.config.id2label[1]
    new.config.problem_type = problem_type
    if name:
        new.config.id2label, new.config.label2id = {0: positive}, {positive: 0}
    else:
        new.config.num_labels = 1
    return new


def label_one_alone(classifier):
    return one_logit_classifier(classifier, rows=(1, None))


def reversed_difference(classifier):
    return one_logit_classifier(classifier, rows=(0, 1))


def bias_of_label_one(classifier):
    return one_logit_classifier(classifier, bias=False)


def config_not_updated(classifier):
    new = one_logit_classifier(classifier)
    new.config.id2label, new.config.label2id = dict(classifier.config.id2label), dict(classifier.config.label2id)
    return new


def unnamed_label(classifier):
    return one_logit_classifier(classifier, name=False)


def keeps_problem_type(classifier):
    return one_logit_classifier(classifier, problem_type=classifier.config.problem_type)


def one_logit_in_place(classifier):
    new = one_logit_classifier(classifier)
    classifier.classifier, classifier.config.id2label = new.classifier, new.config.id2label
    classifier.config.label2id, classifier.config.problem_type = new.config.label2id, None
    return classifier


def test_check_one_logit_classifier_accepts_the_solution():
    assert check_one_logit_classifier(one_logit_classifier).passed


@pytest.mark.parametrize("answer, hint", [
    (label_one_alone, "logit alone"),
    (reversed_difference, "that is P(label 0)"),
    (bias_of_label_one, "the bias is not"),
    (config_not_updated, "config.num_labels is 2"),
    (unnamed_label, "name the single output"),
    (keeps_problem_type, "set config.problem_type = None"),
    (one_logit_in_place, "you changed the classifier you were given"),
])
def test_check_one_logit_classifier_rejects(answer, hint):
    assert_rejected(check_one_logit_classifier(answer), hint)


# --- every checker reports, whatever it is given --------------------------------------------------------------


@pytest.mark.parametrize("check", [check_function_to_apply, check_reorder_labels, check_one_logit_classifier])
@pytest.mark.parametrize("name", list(ODD_ANSWERS))
def test_checkers_report_odd_answers_and_never_raise(check, name):
    assert_reported(check(ODD_ANSWERS[name]))
