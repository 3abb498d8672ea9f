"""Error analysis (chapter 13): where two models go wrong on the test split, counted, binned and shown.

Everything here works on plain arrays: gold label ids, predicted label ids and class probabilities, whatever
model produced them (the fine-tuned classifier through :func:`behind_pipeline.predict.predict_logits`, the TF-IDF
baseline through ``predict_proba``). A wrong prediction made with probability 0.99 says more about a model than one
made with 0.51, so mistakes are ranked by the probability the model gave its (wrong) answer.
"""

from collections.abc import Iterable, Sequence

import numpy as np

from behind_pipeline.metrics import label_array


def as_probabilities(probs) -> np.ndarray:
    """Class probabilities as a (examples, classes) float NumPy array, from a tensor, an array or nested lists."""
    probs = probs.detach().numpy() if hasattr(probs, "detach") else probs
    return np.asarray(probs, dtype=np.float64)


def most_confident_mistakes(probs, labels: Iterable, k: int = 8) -> list[int]:
    """Indices of the ``k`` wrong predictions made with the highest probability, most confident first.

    The prediction is the most probable class; ties in confidence keep the order of the examples.
    """
    probs, labels = as_probabilities(probs), label_array(labels)
    predictions = probs.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    confidence = probs[wrong, predictions[wrong]]
    return [int(index) for index in wrong[np.argsort(-confidence, kind="stable")][:k]]


def binned_error_rates(values: Iterable, errors: Iterable, edges: Sequence[float]) -> list[dict]:
    """Error rate of the examples in each bin ``[edges[i], edges[i + 1])``, with the number of examples in it.

    ``errors`` holds True (or 1) for a wrong prediction. An empty bin gets ``rate`` NaN, never a made-up 0.
    """
    values, errors = np.asarray(list(values), dtype=np.float64), label_array(errors).astype(bool)
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (values >= low) & (values < high)
        count = int(inside.sum())
        wrong = int(errors[inside].sum())
        rows.append({"low": low, "high": high, "count": count, "errors": wrong,
                     "rate": wrong / count if count else float("nan")})
    return rows


def agreement_table(labels: Iterable, predictions_a: Iterable, predictions_b: Iterable) -> dict[str, np.ndarray]:
    """Indices of the examples each model gets right or wrong: ``both right``, ``only a wrong``, ``only b wrong``,
    ``both wrong`` (each an array of indices; together they cover every example once)."""
    labels = label_array(labels)
    a_right, b_right = label_array(predictions_a) == labels, label_array(predictions_b) == labels
    return {"both right": np.flatnonzero(a_right & b_right), "only a wrong": np.flatnonzero(~a_right & b_right),
            "only b wrong": np.flatnonzero(a_right & ~b_right), "both wrong": np.flatnonzero(~a_right & ~b_right)}


def plot_confusion(ax, matrix: np.ndarray, label_names: Sequence[str], title: str) -> None:
    """A confusion matrix as a heat map with its counts written in the cells (rows gold, columns predicted)."""
    ax.imshow(matrix, cmap="Blues")
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            dark = matrix[row, column] > matrix.max() / 2
            ax.text(column, row, f"{matrix[row, column]:,}", ha="center", va="center",
                    color="white" if dark else "black")
    ax.set_xticks(range(len(label_names)), [f"predicted {name}" for name in label_names])
    ax.set_yticks(range(len(label_names)), [f"gold {name}" for name in label_names])
    ax.set_title(title)


def leave_one_word_out(classifier, tokenizer, text: str, label: int = 1) -> list[tuple[str, float]]:
    """Occlusion: how much the probability of ``label`` drops when each word (split on spaces) is left out.

    Every variant goes through the book's prediction path (:func:`behind_pipeline.predict.predict_logits`), the
    full text first, in one call; a positive value means the word pushed the model towards ``label``. Words, not
    tokens: a reader can read them, and leaving out one sub-word token would leave a fragment no review contains.
    """
    from behind_pipeline.predict import predict_logits

    words = text.split()
    variants = [text] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    probs = predict_logits(classifier, tokenizer, variants).softmax(dim=-1)[:, label]  # (1 + words,)
    return [(word, float(probs[0] - probs[1 + i])) for i, word in enumerate(words)]


def contains_word(texts: Iterable[str], word: str) -> np.ndarray:
    """True for each text holding ``word`` as a whole word, any case (``"but"`` matches *But*, not *button*)."""
    import re

    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return np.array([bool(pattern.search(text)) for text in texts])
