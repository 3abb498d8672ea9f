"""Chapter 10: the shared metrics equal their definitions, the baselines' helpers read the fitted models right, and
each checker accepts the right answer, rejects the typical wrong ones (each named after its mistake) and never
raises."""

import numpy as np
import pytest
import torch
from sklearn.dummy import DummyClassifier
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from behind_pipeline.baselines import (
    coefficient_count,
    frozen_features,
    probe,
    tfidf_by_hand,
    tfidf_logistic_regression,
    tfidf_vectorizer,
    weighted_words,
)
from behind_pipeline.checks._core import course_encoder
from behind_pipeline.checks.ch10_baselines import (
    check_bigram_against_unigram,
    check_bigram_model,
    check_macro_f1_from_confusion,
    check_paired_bootstrap,
)
from behind_pipeline.metrics import accuracy, classification_scores, confusion, label_array, macro_f1
from behind_pipeline.pooling import embed


def test_scores_match_their_definitions():
    labels, predictions = [1, 1, 0, 1], [1, 0, 0, 1]
    # class 1: precision 2/2, recall 2/3 -> F1 0.8; class 0: precision 1/2, recall 1/1 -> F1 2/3
    expected = {"accuracy": 0.75, "macro_f1": (0.8 + 2 / 3) / 2}
    assert classification_scores(labels, predictions) == pytest.approx(expected)
    always_fresh = [1] * 4
    assert accuracy(labels, always_fresh) == 0.75
    assert macro_f1(labels, always_fresh) == pytest.approx((2 * 0.75 / 1.75 + 0) / 2)  # class 0 never predicted: 0


def test_scores_accept_lists_arrays_tensors_and_columns(splits):
    labels = splits["test"]["label"]  # a datasets Column
    predictions = torch.ones(len(splits["test"]), dtype=torch.long)
    from_column = classification_scores(labels, predictions)
    from_lists = classification_scores(list(labels), predictions.tolist())
    from_arrays = classification_scores(np.array(list(labels)), predictions.numpy())
    assert from_column == from_lists == from_arrays
    assert label_array(torch.tensor([[1], [0]])).tolist() == [1, 0]


def test_confusion_rows_are_gold_labels():
    counts = confusion([0, 0, 1, 1, 1], [0, 1, 1, 1, 0])
    assert counts.tolist() == [[1, 1], [1, 2]]
    assert confusion([0, 0], [0, 0]).shape == (2, 2)  # both classes, even when one never appears


def test_weighted_words_reads_the_coefficients_strongest_first():
    texts = ["great fun", "great film", "dull mess", "dull film", "great", "dull"]
    model = tfidf_logistic_regression().fit(texts, [1, 1, 0, 0, 1, 0])
    words = weighted_words(model, k=2)
    assert words["fresh"][0][0] == "great" and words["rotten"][0][0] == "dull"
    assert words["fresh"][0][1] > words["fresh"][1][1] > words["rotten"][1][1] > words["rotten"][0][1]
    assert len(words["fresh"]) == len(words["rotten"]) == 2
    assert coefficient_count(model[-1]) == len(model[0].vocabulary_) + 1


def test_tfidf_is_one_plus_log_count_times_smoothed_idf_then_unit_length():
    texts = ["good good good film", "bad film", "good"]
    vectors = tfidf_vectorizer().fit(texts)
    row = vectors.transform(texts[:1]).toarray()[0]
    vocabulary = vectors.vocabulary_
    idf = {word: np.log((1 + 3) / (1 + df)) + 1 for word, df in {"good": 2, "film": 2, "bad": 1}.items()}
    raw = {"good": (1 + np.log(3)) * idf["good"], "film": 1 * idf["film"]}
    norm = np.sqrt(sum(v * v for v in raw.values()))
    for word, value in raw.items():
        assert row[vocabulary[word]] == pytest.approx(value / norm)
    assert row[vocabulary["bad"]] == 0


def test_frozen_features_are_the_mean_pooled_embeddings(splits):
    texts = list(splits["test"]["text"])[:16]
    from transformers import AutoTokenizer

    from behind_pipeline.models import encoder_id

    tokenizer, encoder = AutoTokenizer.from_pretrained(encoder_id()), course_encoder()
    features = frozen_features(texts, tokenizer, encoder)
    assert features.shape == (16, encoder.config.hidden_size)
    assert np.abs(features - embed(texts, tokenizer, encoder).numpy()).max() < 1e-6
    assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    fitted = probe().fit(features, list(splits["test"]["label"])[:16])
    assert coefficient_count(fitted) == encoder.config.hidden_size + 1


# Chapter 10's exercises, solved, and their typical wrong answers.

def macro_f1_from_confusion(confusion):
    confusion = np.asarray(confusion, dtype=float)
    true_positives = np.diag(confusion)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    both = precision + recall
    return float(np.mean(np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)))


def computes_accuracy(confusion):
    return float(np.trace(confusion) / np.sum(confusion))


def weights_by_support(confusion):
    confusion = np.asarray(confusion, dtype=float)
    per_class = [2 * confusion[i, i] / (confusion[i].sum() + confusion[:, i].sum()) for i in range(len(confusion))]
    return float(np.average(per_class, weights=confusion.sum(axis=1)))


def f1_of_the_averages(confusion):
    confusion = np.asarray(confusion, dtype=float)
    predicted = np.where(confusion.sum(axis=0) > 0, confusion.sum(axis=0), np.inf)
    precision = np.mean(np.diag(confusion) / predicted)
    recall = np.mean(np.diag(confusion) / confusion.sum(axis=1))
    return float(2 * precision * recall / (precision + recall))


def positive_class_only(confusion):
    confusion = np.asarray(confusion, dtype=float)
    return float(2 * confusion[-1, -1] / (confusion[-1].sum() + confusion[:, -1].sum()))


def nan_for_a_class_never_predicted(confusion):
    confusion = np.asarray(confusion, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.diag(confusion) / confusion.sum(axis=0)
        recall = np.diag(confusion) / confusion.sum(axis=1)
        return float(np.mean(2 * precision * recall / (precision + recall)))


def per_class_scores(confusion):
    confusion = np.asarray(confusion, dtype=float)
    return [2 * confusion[i, i] / (confusion[i].sum() + confusion[:, i].sum()) for i in range(len(confusion))]


def test_check_macro_f1_from_confusion():
    assert check_macro_f1_from_confusion(macro_f1_from_confusion).passed
    assert check_macro_f1_from_confusion(lambda c: torch.tensor(macro_f1_from_confusion(c))).passed
    messages = {computes_accuracy: "accuracy", weights_by_support: "weighted", f1_of_the_averages: "per class first",
                positive_class_only: "positive class", nan_for_a_class_never_predicted: "0 / 0",
                per_class_scores: "shape"}
    for wrong, message in messages.items():
        report = check_macro_f1_from_confusion(wrong)
        assert not report.passed and message in repr(report), (wrong.__name__, repr(report))
    assert "still `...`" in repr(check_macro_f1_from_confusion(...))
    assert "raised" in repr(check_macro_f1_from_confusion(lambda c: c.nope()))


@pytest.fixture(scope="module")
def train_and_test(splits):
    return list(splits["train"]["text"]), list(splits["train"]["label"])


@pytest.fixture(scope="module")
def bigram_model(train_and_test):
    return tfidf_logistic_regression(ngram_range=(1, 2)).fit(*train_and_test)


def test_check_bigram_model(train_and_test, bigram_model):
    train_texts, train_labels = train_and_test
    assert check_bigram_model(bigram_model).passed
    unigrams_only = tfidf_logistic_regression().fit(train_texts, train_labels)
    assert "word pairs" in repr(check_bigram_model(unigrams_only))
    pairs_only = tfidf_logistic_regression(ngram_range=(2, 2)).fit(train_texts, train_labels)
    assert "not (2, 2)" in repr(check_bigram_model(pairs_only))
    always_fresh = DummyClassifier(strategy="most_frequent").fit(train_texts, train_labels)
    assert "hardly above always answering fresh" in repr(check_bigram_model(always_fresh))
    no_probabilities = make_pipeline(tfidf_vectorizer(ngram_range=(1, 2)), LinearSVC()).fit(train_texts, train_labels)
    assert "no predict_proba" in repr(check_bigram_model(no_probabilities))
    vectorizer_alone = tfidf_vectorizer(ngram_range=(1, 2)).fit(train_texts)
    assert "no predict()" in repr(check_bigram_model(vectorizer_alone))
    assert "still `...`" in repr(check_bigram_model(...))
    unfitted = check_bigram_model(tfidf_logistic_regression(ngram_range=(1, 2)))
    assert not unfitted.passed and "raised" in repr(unfitted)


def paired_bootstrap(labels, predictions_a, predictions_b, resamples, seed):
    labels, a, b = np.asarray(labels), np.asarray(predictions_a), np.asarray(predictions_b)
    differences = (a == labels).astype(float) - (b == labels)
    generator = np.random.default_rng(seed)
    means = [differences[generator.integers(0, len(labels), len(labels))].mean() for _ in range(resamples)]
    return tuple(np.percentile(means, [2.5, 97.5]))


def normal_approximation(labels, predictions_a, predictions_b, resamples, seed):
    """Not a bootstrap, but the same interval: mean +- 1.96 standard errors of the paired differences."""
    labels, a, b = np.asarray(labels), np.asarray(predictions_a), np.asarray(predictions_b)
    differences = (a == labels).astype(float) - (b == labels)
    half = 1.96 * differences.std() / np.sqrt(len(labels))
    return differences.mean() - half, differences.mean() + half


def b_minus_a(labels, predictions_a, predictions_b, resamples, seed):
    return paired_bootstrap(labels, predictions_b, predictions_a, resamples, seed)


def without_replacement(labels, predictions_a, predictions_b, resamples, seed):
    labels, a, b = np.asarray(labels), np.asarray(predictions_a), np.asarray(predictions_b)
    differences = (a == labels).astype(float) - (b == labels)
    generator = np.random.default_rng(seed)
    means = [differences[generator.permutation(len(labels))].mean() for _ in range(resamples)]
    return tuple(np.percentile(means, [2.5, 97.5]))


def unpaired(labels, predictions_a, predictions_b, resamples, seed):
    labels, a, b = np.asarray(labels), np.asarray(predictions_a), np.asarray(predictions_b)
    generator = np.random.default_rng(seed)
    n = len(labels)
    means = []
    for _ in range(resamples):
        rows_a, rows_b = generator.integers(0, n, n), generator.integers(0, n, n)
        means.append((a[rows_a] == labels[rows_a]).mean() - (b[rows_b] == labels[rows_b]).mean())
    return tuple(np.percentile(means, [2.5, 97.5]))


def ninety_percent(labels, predictions_a, predictions_b, resamples, seed):
    labels, a, b = np.asarray(labels), np.asarray(predictions_a), np.asarray(predictions_b)
    differences = (a == labels).astype(float) - (b == labels)
    generator = np.random.default_rng(seed)
    means = [differences[generator.integers(0, len(labels), len(labels))].mean() for _ in range(resamples)]
    return tuple(np.percentile(means, [5, 95]))


def test_check_paired_bootstrap():
    assert check_paired_bootstrap(paired_bootstrap).passed
    assert check_paired_bootstrap(normal_approximation).passed
    assert check_paired_bootstrap(lambda *args: torch.tensor(paired_bootstrap(*args))).passed
    messages = {b_minus_a: "minus b", without_replacement: "with replacement", unpaired: "paired",
                ninety_percent: "90%"}
    for wrong, message in messages.items():
        report = check_paired_bootstrap(wrong)
        assert not report.passed and message in repr(report), (wrong.__name__, repr(report))
    assert "still `...`" in repr(check_paired_bootstrap(...))
    assert "shape" in repr(check_paired_bootstrap(lambda *args: paired_bootstrap(*args)[0]))
    assert "raised" in repr(check_paired_bootstrap(lambda labels, a, b, resamples, seed: labels.shape))


def test_the_reference_interval_covers_the_observed_difference_and_shrinks_with_agreement():
    from behind_pipeline.checks.ch10_baselines import _bootstrap_case, paired_bootstrap_interval

    labels, a, b = _bootstrap_case(480, 35, 10, 75, seed=0)
    low, high = paired_bootstrap_interval(labels, a, b)
    assert low < (35 - 10) / 600 < high and low > 0
    labels, a, b = _bootstrap_case(300, 90, 150, 60, seed=1)
    wide_low, wide_high = paired_bootstrap_interval(labels, a, b)
    assert wide_high < 0 and wide_high - wide_low > 2 * (high - low)


def test_the_checkers_expected_values_match_scikit_learn():
    from behind_pipeline.checks.ch10_baselines import CONFUSIONS, _labels_from_confusion

    for matrix in CONFUSIONS:
        gold, predicted = _labels_from_confusion(np.array(matrix))
        assert confusion(gold, predicted, num_labels=len(matrix)).tolist() == matrix
        assert macro_f1_from_confusion(np.array(matrix)) == pytest.approx(
            f1_score(gold, predicted, average="macro", zero_division=0))


def test_tfidf_by_hand_equals_the_vectorizer_on_real_reviews(splits):
    texts = list(splits["train"]["text"])[:300] + ["", "the the the film"]
    vectorizer = tfidf_vectorizer().fit(texts)
    analyze = vectorizer.build_analyzer()
    vocabulary = list(vectorizer.get_feature_names_out())
    by_hand = tfidf_by_hand([analyze(text) for text in texts], vocabulary)
    assert np.abs(by_hand - vectorizer.transform(texts).toarray()).max() < 1e-12
    assert not by_hand[-2].any()  # the empty review


def test_check_bigram_against_unigram(bigram_model):
    report = check_bigram_against_unigram(paired_bootstrap, bigram_model)
    assert report.passed and "95% interval" in repr(report)
    assert not check_bigram_against_unigram(unpaired, bigram_model).passed
    assert "still `...`" in repr(check_bigram_against_unigram(paired_bootstrap, ...))
    assert "None" in repr(check_bigram_against_unigram(paired_bootstrap, None))
