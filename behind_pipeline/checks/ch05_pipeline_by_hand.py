"""Checkers for the exercises of chapter 5 (id2label and the whole pipeline by hand)."""

import functools
import math

import torch

from behind_pipeline.checks._core import CheckReport

COURSE_ID2LABEL = {0: "rotten", 1: "fresh"}
THREE_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
# Reviews of different moods and lengths; the first is one the course classifier gets wrong, barely.
REVIEWS = [
    "Two hours of my life I will never get back.",
    "A gorgeous, moving film with a script that keeps surprising you.",
    "The cast is wonderful, but the plot falls apart in the last act.",
    "Dull.",
]


def _labels(result) -> list | None:
    try:
        return list(result)
    except TypeError:
        return None


def _close(score, expected: float) -> bool:
    try:
        return math.isclose(float(score), expected, abs_tol=1e-6)
    except (TypeError, ValueError, RuntimeError):  # a score that is not a number is simply wrong
        return False


def check_labels_from_ids(labels_from_ids) -> CheckReport:
    """``labels_from_ids(ids, id2label)``: a tensor of label ids to the list of their names."""
    report = CheckReport("Label names from ids")
    cases = [(torch.tensor([1, 0, 0, 1]), COURSE_ID2LABEL), (torch.tensor([2, 0, 1, 2]), THREE_LABELS)]
    for ids, id2label in cases:
        result = report.call(labels_from_ids, ids, id2label, name="labels_from_ids")
        if result is Ellipsis:
            if any("KeyError: tensor" in line for line in report.lines):
                report.fail("a 0-d tensor is not a dict key: look up id2label[int(i)]")
            return report
        expected = [id2label[int(i)] for i in ids]
        labels = _labels(result)
        where = f"{len(id2label)} labels"
        if labels == expected:
            report.ok(f"{where}: {ids.tolist()} -> {expected}")
        elif len(id2label) == 2 and labels == [id2label[1 - int(i)] for i in ids]:
            report.fail(f"{where}: rotten and fresh are swapped, got {labels}: label id i is named id2label[i]")
        elif labels in ([id2label[(int(i) + 1) % len(id2label)] for i in ids],
                        [id2label[(int(i) - 1) % len(id2label)] for i in ids]):
            report.fail(f"{where}: off by one, got {labels}: label id i is named id2label[i]")
        else:
            report.fail(f"{where}: got {result!r}, expected {expected}")
    return report


def check_top_k_results(top_k_results) -> CheckReport:
    """``top_k_results(scores, id2label, top_k)``: ``{label, score}`` dicts, best first, ``top_k`` of them."""
    report = CheckReport("top_k results sorted by score")
    id2label = {0: "anger", 1: "joy", 2: "fear", 3: "surprise"}
    scores = torch.tensor([0.1, 0.6, 0.05, 0.25])
    ranked = [{"label": id2label[i], "score": scores[i].item()} for i in (1, 3, 0, 2)]
    for top_k, expected in ((2, ranked[:2]), (None, ranked), (1, ranked[:1])):
        result = report.call(top_k_results, scores, id2label, top_k, name="top_k_results")
        if result is Ellipsis:
            return report
        if not isinstance(result, list) or not all(isinstance(r, dict) and {"label", "score"} <= r.keys()
                                                   for r in result):
            report.fail(f"top_k={top_k}: expected a list of {{'label', 'score'}} dicts, got {result!r}")
            continue
        labels = [r["label"] for r in result]
        score_ok = len(result) == len(expected) and all(
            _close(r["score"], e["score"]) for r, e in zip(result, expected, strict=False)
        )
        if labels == [e["label"] for e in expected] and score_ok:
            report.ok(f"top_k={top_k}: {labels}")
        elif sorted(labels) == sorted(e["label"] for e in expected) and labels != [e["label"] for e in expected]:
            report.fail(f"top_k={top_k}: right labels in the wrong order {labels}: sort by score, highest first")
        elif top_k is not None and len(result) != top_k:
            report.fail(f"top_k={top_k}: got {len(result)} results, expected {top_k}")
        elif labels == [e["label"] for e in ranked[::-1]][: len(labels)]:
            report.fail(f"top_k={top_k}: lowest scores first {labels}: sort with reverse=True")
        else:
            report.fail(f"top_k={top_k}: got {result!r}, expected {expected!r}")
    return report


@functools.lru_cache(maxsize=1)
def _course_pieces():
    """Tokenizer, classifier and pipeline of the course, loaded once however many times a checker runs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from behind_pipeline.models import classifier_id

    tokenizer = AutoTokenizer.from_pretrained(classifier_id())
    classifier = AutoModelForSequenceClassification.from_pretrained(classifier_id()).eval()
    return tokenizer, classifier, pipeline("text-classification", model=classifier, tokenizer=tokenizer)


def check_my_pipeline(my_pipeline) -> CheckReport:
    """``my_pipeline(texts, tokenizer, classifier)`` must answer like ``pipeline("text-classification")``."""
    report = CheckReport("The whole pipeline by hand")
    if not report.answered(my_pipeline, "my_pipeline"):
        return report
    tokenizer, classifier, clf = _course_pieces()
    result = report.call(my_pipeline, list(REVIEWS), tokenizer, classifier, name="my_pipeline")
    if result is Ellipsis:
        return report
    if not (isinstance(result, list) and len(result) == len(REVIEWS)
            and all(isinstance(r, dict) and {"label", "score"} <= r.keys() for r in result)):
        report.fail(f"expected a list of {len(REVIEWS)} {{'label', 'score'}} dicts (one per text), got {result!r}")
        return report
    report.ok(f"one {{'label', 'score'}} dict per text ({len(REVIEWS)} texts)")
    expected = clf(list(REVIEWS))
    labels, expected_labels = [r["label"] for r in result], [e["label"] for e in expected]
    if not report.expect(labels == expected_labels, f"labels equal the pipeline's: {expected_labels}",
                         f"labels {labels}, the pipeline says {expected_labels}"):
        return report
    try:
        scores = [float(r["score"]) for r in result]
    except (TypeError, ValueError, RuntimeError):
        report.fail(f"each score should be a float, got {[r['score'] for r in result]!r}")
        return report
    diff = max(abs(s - e["score"]) for s, e in zip(scores, expected, strict=True))
    if diff < 1e-4:
        report.ok("scores equal the pipeline's (within 1e-4)")
    elif any(s > 1 or s < 0 for s in scores):
        report.fail(f"scores {[round(s, 4) for s in scores]} are not probabilities: apply softmax to the logits")
    else:
        report.fail(f"scores differ from the pipeline's by up to {diff:.4f}: softmax over both logits of a text")
    return report


def check_fresh_probability(fresh_probability) -> CheckReport:
    """``fresh_probability(logits)``: P(label 1) for (batch, 2) logits, i.e. ``softmax(logits)[:, 1]``."""
    report = CheckReport("Two-label softmax as one sigmoid")
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 2, generator=generator) * 3
    result = report.call(fresh_probability, logits, name="fresh_probability")
    if result is Ellipsis:
        return report
    try:
        result = torch.as_tensor(result, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        report.fail(f"expected a tensor of {len(logits)} probabilities, got {result!r}")
        return report
    if not report.expect(result.shape == (len(logits),), f"one probability per row ({len(logits)})",
                         f"got shape {tuple(result.shape)}, expected ({len(logits)},)"):
        return report
    expected = logits.softmax(dim=-1)[:, 1]
    if torch.allclose(result, expected, atol=1e-5):
        report.ok("equals softmax(logits)[:, 1] = sigmoid(logit_1 - logit_0)")
    elif torch.allclose(result, torch.sigmoid(logits[:, 1]), atol=1e-5):
        report.fail("sigmoid of the fresh logit alone ignores the rotten logit: use their difference")
    elif torch.allclose(result, 1 - expected, atol=1e-5):
        report.fail("this is P(rotten), label 0: swap the two logits in the difference")
    else:
        report.fail("the values differ from softmax(logits)[:, 1]")
    return report
