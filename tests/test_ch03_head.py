"""Chapter 3: the hand-built head equals the library's (BERT and DistilBERT); each checker tells right from wrong."""

import logging

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)
from transformers.utils import logging as hf_logging

from behind_pipeline.checks import ch03_head
from behind_pipeline.checks.ch03_head import (
    check_classifier_for_labels,
    check_pooling_probe,
    check_probe_accuracy,
    check_sentence_features,
    reference_features,
)
from behind_pipeline.head import (
    LOADING_LOGGER,
    POOLER_BIAS,
    POOLER_WEIGHT,
    HeadByHand,
    captured_load_reports,
    head_layout,
    head_weights,
    logits_by_hand,
    pooler_by_hand,
    tidy_load_report,
)
from behind_pipeline.models import classifier_id, encoder_id
from behind_pipeline.predict import predict_logits

from checker_asserts import ODD_ANSWERS, assert_rejected, assert_reported
from tiny_models import tiny_bert_classifier

SAMPLE_EVERY = 4  # every 4th test review: 362 reviews of all lengths, a quarter of the cost of the whole split


# --- the head by hand ---------------------------------------------------------------------------------------------


def test_logits_by_hand_equal_the_model_on_test_reviews(splits, tokenizer, classifier):
    texts = list(splits["test"]["text"])[::SAMPLE_EVERY]
    library = predict_logits(classifier, tokenizer, texts)
    by_hand = predict_logits(HeadByHand(classifier), tokenizer, texts)
    assert not classifier.training  # the wrapper hands the classifier back in the mode it found it in
    assert len(texts) > 300 and by_hand.shape == library.shape == (len(texts), classifier.config.num_labels)
    assert (by_hand.argmax(-1) != library.argmax(-1)).sum() == 0
    assert (by_hand - library).abs().max() < 1e-4


def _tiny(model_type: str, num_labels: int = 3):
    if model_type == "bert":
        return tiny_bert_classifier(60, hidden=12, max_positions=16, num_labels=num_labels)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=60, dim=12, n_layers=1, n_heads=2, hidden_dim=24,
                              max_position_embeddings=16, num_labels=num_labels)
    return DistilBertForSequenceClassification(config).eval()


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_head_by_hand_matches_both_architectures_on_a_padded_batch(model_type):
    model = _tiny(model_type)
    input_ids = torch.tensor([[2, 5, 9, 7, 3], [2, 8, 3, 0, 0]])
    encoding = {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}
    with torch.inference_mode():
        library = model(**encoding).logits
        states = model.base_model(**encoding).last_hidden_state
        wrapped = HeadByHand(model)(**encoding).logits
    assert library.shape == (2, 3)
    assert torch.allclose(logits_by_hand(states, model), library, atol=1e-6)
    assert torch.allclose(wrapped, library, atol=1e-6)
    # The activation matters: the other architecture's one gives other logits, so the comparison can fail.
    dense, activation, output = head_layout(model)
    other = torch.relu if activation is torch.tanh else torch.tanh
    weights = head_weights(model)
    pooled = pooler_by_hand(states, weights[f"{dense}.weight"], weights[f"{dense}.bias"], other)
    assert not torch.allclose(pooled @ weights[f"{output}.weight"].T + weights[f"{output}.bias"], library, atol=1e-3)


def test_head_layout_refuses_an_architecture_it_does_not_know():
    config = RobertaConfig(vocab_size=60, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=24, max_position_embeddings=20)
    with pytest.raises(NotImplementedError, match="roberta"):
        head_weights(RobertaForSequenceClassification(config))


def test_pooler_by_hand_equals_the_body_pooler_output(tokenizer, classifier):
    if classifier.config.model_type != "bert":
        pytest.skip("only BERT's body returns a pooler_output")
    encoding = tokenizer(["A gorgeous film.", "Dull, and far too long."], padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = classifier.base_model(**encoding)
    weights = head_weights(classifier)
    pooled = pooler_by_hand(output.last_hidden_state, weights[POOLER_WEIGHT], weights[POOLER_BIAS])
    assert torch.allclose(pooled, output.pooler_output, atol=1e-5)


def test_from_pretrained_returns_eval_mode_and_train_mode_makes_logits_noisy(tokenizer):
    classifier = AutoModelForSequenceClassification.from_pretrained(classifier_id())
    assert classifier.training is False  # chapter 3 says so; a library change would show here
    encoding = tokenizer(["A gorgeous film."], return_tensors="pt")
    with torch.inference_mode():
        reference = classifier(**encoding).logits
        torch.manual_seed(0)
        classifier.train()
        noisy = [classifier(**encoding).logits for _ in range(2)]
        classifier.eval()
        again = classifier(**encoding).logits
    assert not torch.allclose(noisy[0], reference) and not torch.allclose(noisy[0], noisy[1])
    assert torch.equal(again, reference)


def test_captured_load_reports_show_the_new_head_without_stderr(tmp_path, capfd):
    config = BertConfig(vocab_size=60, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=16)
    BertModel(config).save_pretrained(tmp_path)
    hf_logging.set_verbosity_error()  # as setup_chapter leaves it, progress bars included
    hf_logging.disable_progress_bar()
    capfd.readouterr()
    logger = logging.getLogger(LOADING_LOGGER)
    before = logger.level, logger.propagate, list(logger.handlers)
    with captured_load_reports() as reports:
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert len(reports) == 1
    report = reports[0]
    assert "BertForSequenceClassification LOAD REPORT" in report and "newly initialized" in report
    rows = [line for line in report.splitlines() if "MISSING" in line and "|" in line]
    assert [row.split()[0] for row in rows] == ["classifier.bias", "classifier.weight"]
    assert "\x1b" not in report and str(tmp_path) in report  # outside the project the folder stays as it is
    assert capfd.readouterr().err == ""
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    with captured_load_reports() as reports:  # a clean load reports nothing
        AutoModel.from_pretrained(tmp_path)
    assert reports == []


def test_tidy_load_report_sorts_rows_strips_colours_and_project_folders():
    from behind_pipeline.paths import PROJECT_ROOT

    message = (f"\x1b[1mX LOAD REPORT\x1b[0m from: {PROJECT_ROOT}/.cache/m\nKey | Status  \n----+---\n"
               "b.weight | MISSING  \na.bias | MISSING \n\nNotes:\n- MISSING:\tnewly initialized")
    assert tidy_load_report(message).splitlines() == [
        "X LOAD REPORT from: .cache/m", "Key | Status", "----+---", "a.bias | MISSING", "b.weight | MISSING", "",
        "Notes:", "- MISSING:\tnewly initialized"]


# --- exercise 1: a classifier for other labels ----------------------------------------------------------------------


def _loaded(model_id, labels, **extra):
    options = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)},
               "ignore_mismatched_sizes": True, "output_loading_info": True, **extra}
    return AutoModelForSequenceClassification.from_pretrained(model_id, **options)


def right_classifier_for_labels(model_id, labels):
    classifier, info = _loaded(model_id, labels)
    return classifier, sorted(set(info["missing_keys"]) | {name for name, *_ in info["mismatched_keys"]})


def without_ignore_mismatched_sizes(model_id, labels):
    classifier, info = _loaded(model_id, labels, ignore_mismatched_sizes=False)
    return classifier, sorted(info["missing_keys"])


def num_labels_only(model_id, labels):
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        model_id, num_labels=len(labels), ignore_mismatched_sizes=True, output_loading_info=True)
    return classifier, sorted(set(info["missing_keys"]) | {name for name, *_ in info["mismatched_keys"]})


def id2label_only_keeps_the_old_label2id(model_id, labels):
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        model_id, id2label=dict(enumerate(labels)), ignore_mismatched_sizes=True, output_loading_info=True)
    return classifier, sorted(set(info["missing_keys"]) | {name for name, *_ in info["mismatched_keys"]})


def string_ids(model_id, labels):
    classifier, info = _loaded(model_id, labels, id2label={str(i): label for i, label in enumerate(labels)})
    return classifier, sorted(set(info["missing_keys"]) | {name for name, *_ in info["mismatched_keys"]})


def missing_keys_only(model_id, labels):
    classifier, info = _loaded(model_id, labels)
    return classifier, sorted(info["missing_keys"])


def mismatched_keys_only(model_id, labels):
    classifier, info = _loaded(model_id, labels)
    return classifier, sorted(name for name, *_ in info["mismatched_keys"])


def mismatched_triples(model_id, labels):
    classifier, info = _loaded(model_id, labels)
    return classifier, sorted(info["mismatched_keys"], key=str)


def hard_coded_names(model_id, labels):
    classifier, _ = _loaded(model_id, labels)
    return classifier, ["classifier.bias", "classifier.weight"]


def always_the_encoder(model_id, labels):
    return right_classifier_for_labels(encoder_id(), labels)


def automodel(model_id, labels):
    return AutoModel.from_pretrained(model_id), []


def the_model_alone(model_id, labels):
    return right_classifier_for_labels(model_id, labels)[0]


def test_check_classifier_for_labels_accepts_the_solution():
    report = check_classifier_for_labels(right_classifier_for_labels)
    assert report.passed, report
    assert "3 labels" in repr(report) and "4 labels" in repr(report) and "nothing" in repr(report)


@pytest.mark.parametrize(("wrong", "hint"), [
    (without_ignore_mismatched_sizes, "ignore_mismatched_sizes=True"),
    (num_labels_only, "pass id2label="),
    (id2label_only_keeps_the_old_label2id, "pass label2id= too"),
    (string_ids, "string keys"),
    (missing_keys_only, "mismatched_keys"),
    (mismatched_keys_only, "missing_keys"),
    (mismatched_triples, "keep the names"),
    (hard_coded_names, "expected []"),
    (always_the_encoder, "load the folder you are given"),
    (automodel, "AutoModelForSequenceClassification"),
    (the_model_alone, "return a pair"),
], ids=lambda value: getattr(value, "__name__", ""))
def test_check_classifier_for_labels_rejects(wrong, hint):
    assert_rejected(check_classifier_for_labels(wrong), hint)


# --- exercise 2: sentence features ----------------------------------------------------------------------------------


def masked_fill_mean(last_hidden_state, attention_mask, pooling):
    if pooling == "cls":
        return last_hidden_state[:, 0, :]
    real = attention_mask.bool().unsqueeze(-1)
    return last_hidden_state.masked_fill(~real, 0).sum(1) / real.sum(1)


def as_float64_list(last_hidden_state, attention_mask, pooling):
    return reference_features(last_hidden_state.double(), attention_mask, pooling).tolist()


def as_numpy(last_hidden_state, attention_mask, pooling):
    return reference_features(last_hidden_state, attention_mask, pooling).numpy()


def unmasked_mean(last_hidden_state, attention_mask, pooling):
    return last_hidden_state[:, 0] if pooling == "cls" else last_hidden_state.mean(dim=1)


def divides_by_padded_length(last_hidden_state, attention_mask, pooling):
    if pooling == "cls":
        return last_hidden_state[:, 0]
    return (last_hidden_state * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.shape[1]


def masked_sum(last_hidden_state, attention_mask, pooling):
    return last_hidden_state[:, 0] if pooling == "cls" else (last_hidden_state * attention_mask.unsqueeze(-1)).sum(1)


def last_real_token(last_hidden_state, attention_mask, pooling):
    if pooling == "mean":
        return reference_features(last_hidden_state, attention_mask, "mean")
    return last_hidden_state[torch.arange(len(attention_mask)), attention_mask.sum(1) - 1]


def mean_without_special_tokens(last_hidden_state, attention_mask, pooling):
    if pooling == "cls":
        return last_hidden_state[:, 0]
    inner = attention_mask.clone()
    inner[:, 0] = 0
    inner[torch.arange(len(inner)), attention_mask.sum(1) - 1] = 0
    return (last_hidden_state * inner.unsqueeze(-1)).sum(1) / inner.sum(1, keepdim=True).clamp(min=1)


def ignores_pooling(last_hidden_state, attention_mask, pooling):
    return last_hidden_state[:, 0]


def hard_coded_shape(last_hidden_state, attention_mask, pooling):
    return reference_features(last_hidden_state, attention_mask, pooling).reshape(4, 5)


def needs_contiguous(last_hidden_state, attention_mask, pooling):
    flat = last_hidden_state.view(-1, last_hidden_state.shape[-1])  # fails on a transposed (strided) tensor
    return reference_features(flat.view(last_hidden_state.shape), attention_mask, pooling)


def whole_hidden_states(last_hidden_state, attention_mask, pooling):
    return last_hidden_state


def raises(last_hidden_state, attention_mask, pooling):
    raise ValueError("not yet")


def forgets_return(last_hidden_state, attention_mask, pooling):
    reference_features(last_hidden_state, attention_mask, pooling)


@pytest.mark.parametrize("right", [reference_features, masked_fill_mean, as_float64_list, as_numpy])
def test_check_sentence_features_accepts(right):
    assert check_sentence_features(right).passed


@pytest.mark.parametrize(("wrong", "hint"), [
    (unmasked_mean, "averaged the padding"),
    (divides_by_padded_length, "divided by the padded length"),
    (masked_sum, "masked sum"),
    (last_real_token, "last real token"),
    (mean_without_special_tokens, "[CLS] and [SEP]"),
    (ignores_pooling, "that is the [CLS] vector"),
    (hard_coded_shape, "shape"),
    (needs_contiguous, "raised RuntimeError"),
    (whole_hidden_states, "expected (4, 5)"),
    (raises, "raised ValueError"),
    (forgets_return, "returned None"),
], ids=lambda value: getattr(value, "__name__", ""))
def test_check_sentence_features_rejects(wrong, hint):
    assert_rejected(check_sentence_features(wrong), hint)


# --- exercise 3: a linear probe ---------------------------------------------------------------------------------


def logistic_probe(train_features, train_labels, test_features, test_labels):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0], max_iter=2000))
    probe.fit(np.asarray(train_features), np.asarray(train_labels))
    return probe.score(np.asarray(test_features), np.asarray(test_labels))


def nearest_centroid(train_features, train_labels, test_features, test_labels):
    classes = train_labels.unique()
    centroids = torch.stack([train_features[train_labels == c].mean(0) for c in classes])
    predicted = classes[torch.cdist(test_features, centroids).argmin(1)]
    return (predicted == test_labels).float().mean()  # a 0-d tensor is a fine answer


def scores_on_train(train_features, train_labels, test_features, test_labels):
    return logistic_probe(train_features, train_labels, train_features, train_labels)


def fits_on_test(train_features, train_labels, test_features, test_labels):
    return logistic_probe(test_features, test_labels, test_features, test_labels)


def majority_class(train_features, train_labels, test_features, test_labels):
    return (test_labels == train_labels.mode().values).float().mean().item()


def percentage(train_features, train_labels, test_features, test_labels):
    return 100 * logistic_probe(train_features, train_labels, test_features, test_labels)


def predictions_not_accuracy(train_features, train_labels, test_features, test_labels):
    return test_labels.clone()


def first_two_features(train_features, train_labels, test_features, test_labels):
    return ((test_features[:, 1] > test_features[:, 0]).long() == test_labels).float().mean().item()


def default_logistic_regression(train_features, train_labels, test_features, test_labels):
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression().fit(np.asarray(train_features), np.asarray(train_labels))
    return probe.score(np.asarray(test_features), np.asarray(test_labels))


@pytest.mark.parametrize("right", [logistic_probe, nearest_centroid, default_logistic_regression])
def test_check_probe_accuracy_accepts(right):
    assert check_probe_accuracy(right).passed


@pytest.mark.parametrize(("wrong", "hint"), [
    (scores_on_train, "fit the probe on the training features"),
    (fits_on_test, "fit the probe on the training features"),
    (majority_class, "separates the classes"),
    (percentage, "not a percentage"),
    (predictions_not_accuracy, "as one number"),
    (first_two_features, "any number of classes"),  # passes both 2-class cases: only 3 classes expose it
], ids=lambda value: getattr(value, "__name__", ""))
def test_check_probe_accuracy_rejects(wrong, hint):
    assert_rejected(check_probe_accuracy(wrong), hint)


# --- the measurement: both poolings through the learner's probe --------------------------------------------------


def test_check_pooling_probe_accepts_the_solution_on_the_real_data():
    report = check_pooling_probe(reference_features, logistic_probe)
    assert report.passed, report
    assert "504 training and 482 test reviews" in repr(report) and "mean of the tokens probe" in repr(report)


@pytest.fixture
def small_probe(monkeypatch):
    monkeypatch.setattr(ch03_head, "PROBE_TRAIN_EVERY", 40)
    monkeypatch.setattr(ch03_head, "PROBE_TEST_EVERY", 8)


@pytest.mark.parametrize(("features", "probe", "hint"), [
    (unmasked_mean, logistic_probe, "pass its check first"),
    (reference_features, percentage, "not a percentage"),
    (Ellipsis, logistic_probe, "still `...`"),
    (reference_features, Ellipsis, "still `...`"),
    (forgets_return, logistic_probe, "returned None"),
])
def test_check_pooling_probe_rejects(small_probe, features, probe, hint):
    assert_rejected(check_pooling_probe(features, probe), hint)


# --- blanks and odd answers are reported, never raised ------------------------------------------------------------

# The shared odd answers, and two shaped like this chapter's (model, names) pairs.
CHAPTER_ODD_ANSWERS = {
    **ODD_ANSWERS,
    "a pair with a model-like dict": lambda *args: ({"state_dict": 1}, ["classifier.weight"]),
}


@pytest.mark.parametrize("check", [check_classifier_for_labels, check_sentence_features, check_probe_accuracy])
@pytest.mark.parametrize("odd", CHAPTER_ODD_ANSWERS, ids=str)
def test_odd_answers_are_reported_not_raised(check, odd):
    assert_reported(check(CHAPTER_ODD_ANSWERS[odd]))


def test_in_place_edits_of_the_inputs_do_not_fool_the_feature_check():
    def edits_in_place(last_hidden_state, attention_mask, pooling):
        last_hidden_state.mul_(attention_mask.unsqueeze(-1))  # zeroes the padding, then takes a plain mean
        return last_hidden_state[:, 0] if pooling == "cls" else last_hidden_state.mean(dim=1)

    assert not check_sentence_features(edits_in_place).passed


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    check_classifier_for_labels(right_classifier_for_labels)
    check_probe_accuracy(logistic_probe)
    assert torch.equal(torch.get_rng_state(), before)



@pytest.mark.parametrize("check", [check_classifier_for_labels, check_sentence_features, check_probe_accuracy])
def test_blank_answers_are_reported_not_raised(check):
    def blank(*args):
        ...

    for answer, hint in ((Ellipsis, "still `...`"), (blank, "returned None"), (None, "still `...`")):
        assert_rejected(check(answer), hint)
