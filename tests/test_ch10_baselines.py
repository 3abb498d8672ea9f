"""Chapter 10: the shared metrics equal their definitions, the baselines' helpers read the fitted models right, and
each checker accepts the right answer, rejects the typical wrong ones (each named after its mistake) and never
raises."""

import numpy as np
import pytest
import torch
from sklearn.dummy import DummyClassifier
from sklearn.metrics import f1_score

from behind_pipeline.baselines import (
    C_VALUES,
    coefficient_count,
    frozen_features,
    probe,
    tfidf_by_hand,
    tfidf_logistic_regression,
    tfidf_vectorizer,
    tune_c,
    tuned_tfidf_logistic_regression,
    weighted_words,
)
from behind_pipeline.checks._core import course_encoder
from behind_pipeline.checks.ch10_baselines import (
    check_bigram_against_unigram,
    check_cluster_bootstrap,
    check_macro_f1_from_confusion,
    check_tune_threshold,
    paired_bootstrap_interval,
)
from behind_pipeline.metrics import (
    accuracy,
    classification_scores,
    cluster_bootstrap_interval,
    confusion,
    label_array,
    macro_f1,
    mean_sd,
)
from behind_pipeline.pooling import embed

from checker_asserts import assert_accepted, assert_rejected


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
    assert_accepted(check_macro_f1_from_confusion, macro_f1_from_confusion,
                    lambda c: torch.tensor(macro_f1_from_confusion(c)))
    messages = {computes_accuracy: "accuracy", weights_by_support: "weighted", f1_of_the_averages: "per class first",
                positive_class_only: "positive class", nan_for_a_class_never_predicted: "0 / 0",
                per_class_scores: "shape"}
    for wrong, message in messages.items():
        assert_rejected(check_macro_f1_from_confusion(wrong), message)
    assert_rejected(check_macro_f1_from_confusion(...), "still `...`")
    assert_rejected(check_macro_f1_from_confusion(lambda c: c.nope()), "raised")


def test_mean_sd_is_the_mean_and_the_sample_standard_deviation():
    assert mean_sd([0.1, 0.2, 0.3]) == "0.2000 ± 0.1000"
    assert mean_sd([1.0, 3.0], digits=1) == "2.0 ± 1.4"
    assert mean_sd([0.5]) == "0.5000 ± 0.0000"


def test_cluster_bootstrap_with_one_review_per_movie_is_the_paired_bootstrap():
    generator = np.random.default_rng(0)
    labels, a, b = (generator.integers(0, 2, 300) for _ in range(3))
    movies = [f"movie_{i:03d}" for i in range(300)]  # sorted names: the movie order is the review order
    assert cluster_bootstrap_interval(labels, a, b, movies, 500, 7) == pytest.approx(
        paired_bootstrap_interval(labels, a, b, 500, 7))


def test_cluster_bootstrap_is_wider_when_a_movies_reviews_agree():
    from behind_pipeline.checks.ch10_baselines import _cluster_case

    labels, a, b, movies = _cluster_case(0, 60)
    low, high = cluster_bootstrap_interval(labels, a, b, movies, 4000, 0)
    review_low, review_high = paired_bootstrap_interval(labels, a, b, 4000, 0)
    difference = accuracy(labels, a) - accuracy(labels, b)
    assert low < difference < high and review_low < difference < review_high
    assert high - low > 1.2 * (review_high - review_low)


def test_tune_c_picks_the_best_validation_score_and_never_sees_test(splits):
    texts, labels = list(splits["train"]["text"])[:600], list(splits["train"]["label"])[:600]
    val_texts, val_labels = list(splits["validation"]["text"]), list(splits["validation"]["label"])
    vectorizer = tfidf_vectorizer().fit(texts)
    best, scores = tune_c(vectorizer.transform(texts), labels, vectorizer.transform(val_texts), val_labels)
    assert list(scores) == list(C_VALUES) and scores[best] == max(scores.values())
    model = tuned_tfidf_logistic_regression(texts, labels, val_texts, val_labels)
    assert model[-1].C == best and model.validation_scores_ == scores  # the grid it chose from, kept
    assert model[0].vocabulary_ == vectorizer.vocabulary_  # fitted on the training texts only
    expected = tfidf_logistic_regression(C=best).fit(texts, labels).predict_proba(val_texts)
    assert np.abs(model.predict_proba(val_texts) - expected).max() < 1e-9


def tune_threshold(val_labels, val_fresh_probabilities):
    labels, probabilities = np.asarray(val_labels), np.asarray(val_fresh_probabilities)
    candidates = np.unique(probabilities)
    scores = [f1_score(labels, (probabilities >= t).astype(int), average="macro") for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def _best(val_labels, val_fresh_probabilities, score):
    labels, probabilities = np.asarray(val_labels), np.asarray(val_fresh_probabilities)
    candidates = np.unique(probabilities)
    return candidates, [score(labels, (probabilities >= t).astype(int)) for t in candidates]


def maximises_accuracy(val_labels, val_fresh_probabilities):
    candidates, scores = _best(val_labels, val_fresh_probabilities, lambda y, p: float(np.mean(y == p)))
    return float(candidates[int(np.argmax(scores))])


def returns_the_best_score(val_labels, val_fresh_probabilities):
    candidates, scores = _best(val_labels, val_fresh_probabilities,
                               lambda y, p: f1_score(y, p, average="macro"))
    return float(max(scores))


def keeps_one_half(val_labels, val_fresh_probabilities):
    return 0.5


def test_the_checkers_scores_per_threshold_equal_sklearns():
    from sklearn.metrics import accuracy_score, f1_score

    from behind_pipeline.checks.ch10_baselines import THRESHOLD_CASES, _scores_per_threshold, _threshold_case

    cases = [_threshold_case(*case[1:]) for case in THRESHOLD_CASES]
    cases.append((np.array([1, 0, 1, 0, 1]), np.array([0.2, 0.2, 0.7, 0.9, 0.9])))  # ties; a threshold above all
    for labels, probabilities in cases:
        macro_f1s, accuracies = _scores_per_threshold(labels, probabilities)
        for threshold, got_f1, got_accuracy in zip(np.unique(probabilities), macro_f1s, accuracies, strict=True):
            predicted = (probabilities >= threshold).astype(int)
            assert got_f1 == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0), abs=1e-12)
            assert got_accuracy == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)


def test_check_tune_threshold():
    assert_accepted(check_tune_threshold, tune_threshold, lambda labels, p: torch.tensor(tune_threshold(labels, p)))
    messages = {maximises_accuracy: "maximises accuracy", returns_the_best_score: "best macro-F1 itself",
                keeps_one_half: "predict's own threshold"}
    for wrong, message in messages.items():
        assert_rejected(check_tune_threshold(wrong), message)
    assert_rejected(check_tune_threshold(...), "still `...`")
    assert not check_tune_threshold(lambda labels, p: [0.5, 0.6]).passed


def cluster_bootstrap(labels, predictions_a, predictions_b, groups, resamples, seed):
    labels, a, b, groups = (np.asarray(x) for x in (labels, predictions_a, predictions_b, groups))
    movies = np.unique(groups)
    rows = {movie: np.flatnonzero(groups == movie) for movie in movies}
    generator = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        drawn = np.concatenate([rows[movie] for movie in generator.choice(movies, len(movies))])
        means.append(np.mean(a[drawn] == labels[drawn]) - np.mean(b[drawn] == labels[drawn]))
    return tuple(np.percentile(means, [2.5, 97.5]))


def resamples_reviews(labels, predictions_a, predictions_b, groups, resamples, seed):
    return paired_bootstrap_interval(labels, predictions_a, predictions_b, resamples, seed)


def averages_per_movie(labels, predictions_a, predictions_b, groups, resamples, seed):
    from behind_pipeline.checks.ch10_baselines import _per_movie_mean_interval

    return _per_movie_mean_interval(*(np.asarray(x) for x in (labels, predictions_a, predictions_b, groups)),
                                    resamples, seed)


def b_minus_a(labels, predictions_a, predictions_b, groups, resamples, seed):
    return cluster_bootstrap(labels, predictions_b, predictions_a, groups, resamples, seed)


def movies_without_replacement(labels, predictions_a, predictions_b, groups, resamples, seed):
    labels, a, b, groups = (np.asarray(x) for x in (labels, predictions_a, predictions_b, groups))
    generator = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        drawn = np.concatenate([np.flatnonzero(groups == movie) for movie in generator.permutation(np.unique(groups))])
        means.append(np.mean(a[drawn] == labels[drawn]) - np.mean(b[drawn] == labels[drawn]))
    return tuple(np.percentile(means, [2.5, 97.5]))


def ninety_percent(labels, predictions_a, predictions_b, groups, resamples, seed):
    return cluster_bootstrap_interval(labels, predictions_a, predictions_b, groups, resamples, seed, level=0.90)


def test_check_cluster_bootstrap():
    assert_accepted(check_cluster_bootstrap, cluster_bootstrap,
                    lambda *args: torch.tensor(cluster_bootstrap_interval(*args)))
    messages = {resamples_reviews: "resampled reviews", averages_per_movie: "pool the reviews",
                b_minus_a: "minus b", movies_without_replacement: "with replacement", ninety_percent: "90%"}
    for wrong, message in messages.items():
        assert_rejected(check_cluster_bootstrap(wrong), message)
    assert_rejected(check_cluster_bootstrap(...), "still `...`")
    assert_rejected(check_cluster_bootstrap(lambda *args: cluster_bootstrap_interval(*args)[0]), "shape")
    assert_rejected(check_cluster_bootstrap(lambda labels, a, b, groups, resamples, seed: labels.shape), "raised")


@pytest.fixture(scope="module")
def train_texts_and_labels(splits):
    return list(splits["train"]["text"]), list(splits["train"]["label"])


@pytest.fixture(scope="module")
def bigram_model(splits, train_texts_and_labels):
    return tuned_tfidf_logistic_regression(*train_texts_and_labels, list(splits["validation"]["text"]),
                                           list(splits["validation"]["label"]), ngram_range=(1, 2))


def test_check_bigram_against_unigram(bigram_model):
    report = check_bigram_against_unigram(cluster_bootstrap_interval, bigram_model)
    assert report.passed and "movies resampled" in repr(report)
    assert_rejected(check_bigram_against_unigram(b_minus_a, bigram_model), "far from the expected")
    assert_rejected(check_bigram_against_unigram(cluster_bootstrap_interval, ...), "still `...`")
    assert_rejected(check_bigram_against_unigram(cluster_bootstrap_interval, None), "None")


def test_check_bigram_against_unigram_rejects_a_model_fitted_on_test_texts(splits, train_texts_and_labels):
    texts, labels = train_texts_and_labels
    train_plus_test = tfidf_logistic_regression(ngram_range=(1, 2)).fit(
        texts + list(splits["test"]["text"]), labels + list(splits["test"]["label"]))
    assert_rejected(check_bigram_against_unigram(cluster_bootstrap_interval, train_plus_test), "fitted on test texts")


class KnowsTheTestLabels:
    """No vocabulary to inspect: a model that answers the gold label of every test review it has memorised."""

    def __init__(self, splits):
        self.answers = dict(zip(splits["test"]["text"], splits["test"]["label"], strict=True))

    def predict(self, texts):
        return [self.answers.get(text, 1) for text in texts]


def test_check_bigram_against_unigram_rejects_a_test_score_no_honest_model_reaches(splits):
    assert_rejected(check_bigram_against_unigram(cluster_bootstrap_interval, KnowsTheTestLabels(splits)),
                    "fitted on test texts or labels")


def test_check_bigram_against_unigram_rejects_the_majority_class(train_texts_and_labels):
    always_fresh = DummyClassifier(strategy="most_frequent").fit(*train_texts_and_labels)
    assert_rejected(check_bigram_against_unigram(cluster_bootstrap_interval, always_fresh), "always answering fresh")
    vectorizer_alone = tfidf_vectorizer(ngram_range=(1, 2)).fit(train_texts_and_labels[0])
    assert_rejected(check_bigram_against_unigram(cluster_bootstrap_interval, vectorizer_alone), "no predict()")


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
