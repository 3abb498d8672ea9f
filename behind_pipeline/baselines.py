"""The baselines a fine-tuned model has to beat (chapter 10): TF-IDF + logistic regression, and a frozen-encoder probe.

Both are scikit-learn models fitted on the train split only. TF-IDF turns a review into one weight per word of the
training vocabulary; logistic regression learns one coefficient per word. The probe keeps the pretrained encoder
frozen: each review becomes its mean-pooled all-MiniLM-L6-v2 sentence embedding (:func:`pooling.embed`, chapter 7)
and logistic regression learns one coefficient per embedding dimension. Chapter 9 also uses a TF-IDF nearest-neighbour
model, which answers with the labels of the most similar training reviews: a model that memorises.
"""

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline

from behind_pipeline.data import LABEL_NAMES
from behind_pipeline.metrics import macro_f1
from behind_pipeline.pooling import embed

# The regularisation strengths both baselines choose from on the validation split (a factor 10 apart; C is the
# inverse of the penalty's weight: small C, strong regularisation, answers pulled towards the majority class).
C_VALUES = (0.1, 1.0, 10.0, 100.0, 1000.0)


def tfidf_vectorizer(**options) -> TfidfVectorizer:
    """scikit-learn's TF-IDF with ``sublinear_tf=True`` (its default is False, raw counts): a word said 5 times
    weighs 1 + ln 5, not 5 times one mention."""
    return TfidfVectorizer(sublinear_tf=True, **options)


def tfidf_by_hand(documents: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """The rows ``tfidf_vectorizer()`` computes, by hand, for documents already cut into words.

    weight(t, d) = (1 + ln count(t, d)) * (ln((1 + n) / (1 + df(t))) + 1), 0 where t is not in d, where n is the
    number of documents and df(t) how many of them contain t; then each row is divided by its Euclidean length.
    """
    counts = np.array([[list(words).count(word) for word in vocabulary] for words in documents], dtype=float)
    term_frequency = np.where(counts > 0, 1 + np.log(np.maximum(counts, 1)), 0.0)
    document_frequency = (counts > 0).sum(axis=0)
    inverse_document_frequency = np.log((1 + len(documents)) / (1 + document_frequency)) + 1
    weights = term_frequency * inverse_document_frequency
    lengths = np.linalg.norm(weights, axis=1, keepdims=True)
    return weights / np.maximum(lengths, 1e-12)  # a document with no vocabulary word stays all zeros


def tfidf_logistic_regression(C: float = 1.0, **vectorizer_options) -> Pipeline:
    """TF-IDF features, then logistic regression (lbfgs; ``C=1`` is scikit-learn's default, not a tuned value)."""
    return make_pipeline(tfidf_vectorizer(**vectorizer_options), LogisticRegression(C=C))


def tune_c(train_features, train_labels, val_features, val_labels,
           c_values: Sequence[float] = C_VALUES) -> tuple[float, dict[float, float]]:
    """The ``C`` of a logistic regression with the best validation macro-F1, and every ``C``'s validation score.

    One logistic regression per value, fitted on the training features, scored on validation; a tie goes to the
    first value (the strongest regularisation when ``c_values`` rises). The test split plays no part.
    """
    scores = {float(c): macro_f1(val_labels, LogisticRegression(C=c).fit(train_features, train_labels)
                                 .predict(val_features)) for c in c_values}
    return max(scores, key=scores.get), scores


def tuned_tfidf_logistic_regression(train_texts: Sequence[str], train_labels, val_texts: Sequence[str], val_labels,
                                    c_values: Sequence[float] = C_VALUES, **vectorizer_options) -> Pipeline:
    """TF-IDF + logistic regression fitted on the training texts, ``C`` chosen on validation with :func:`tune_c`.

    The vectorizer is fitted once, on the training texts only; the returned pipeline holds it and the regression
    refitted with the chosen ``C`` (``pipeline[-1].C``), and keeps every ``C``'s validation macro-F1 in
    ``pipeline.validation_scores_`` (``{C: score}``; ``sklearn.clone`` drops it), so a chapter can show the grid
    without fitting it again.
    """
    vectorizer = tfidf_vectorizer(**vectorizer_options).fit(train_texts)
    train_matrix = vectorizer.transform(train_texts)
    best_c, scores = tune_c(train_matrix, train_labels, vectorizer.transform(val_texts), val_labels, c_values)
    pipeline = make_pipeline(vectorizer, LogisticRegression(C=best_c).fit(train_matrix, train_labels))
    pipeline.validation_scores_ = scores  # learned from the data, hence sklearn's trailing underscore
    return pipeline


def tfidf_nearest_neighbours(k: int = 10) -> Pipeline:
    """Majority label of the ``k`` training reviews whose TF-IDF vectors are closest (cosine): it memorises."""
    return make_pipeline(tfidf_vectorizer(), KNeighborsClassifier(n_neighbors=k, metric="cosine"))


def weighted_words(model: Pipeline, k: int = 10, label_names: Sequence[str] = LABEL_NAMES) -> dict:
    """The ``k`` words whose coefficient pushes hardest towards each of the two labels, strongest first.

    A binary logistic regression has one coefficient per word: positive pushes towards label 1, negative towards
    label 0. Returns ``{label_names[0]: [(word, coefficient), ...], label_names[1]: [...]}``.
    """
    words = model[0].get_feature_names_out()
    coefficients = model[-1].coef_[0]
    order = np.argsort(coefficients, kind="stable")  # most negative first
    return {label_names[0]: [(str(words[i]), float(coefficients[i])) for i in order[:k]],
            label_names[1]: [(str(words[i]), float(coefficients[i])) for i in order[::-1][:k]]}


def probe(C: float = 1.0) -> LogisticRegression:
    """The linear classifier trained on frozen features (a "linear probe"): the TF-IDF model's settings."""
    return LogisticRegression(C=C)


def frozen_features(texts: Sequence[str], tokenizer, encoder) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings of the frozen encoder, shape (len(texts), hidden)."""
    return embed(list(texts), tokenizer, encoder).numpy()


def coefficient_count(regression: LogisticRegression) -> int:
    """Numbers a fitted logistic regression learned: one coefficient per feature and class row, plus intercepts."""
    return int(regression.coef_.size + regression.intercept_.size)
