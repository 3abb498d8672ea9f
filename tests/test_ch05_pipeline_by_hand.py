"""Chapter 5: the pipeline by hand answers like pipeline("text-classification"), and each checker grades right."""

import pytest
import torch
from transformers import pipeline

from behind_pipeline.checks.ch05_pipeline_by_hand import (
    check_fresh_probability,
    check_labels_from_ids,
    check_my_pipeline,
    check_top_k_results,
)
from behind_pipeline.head import logits_by_hand
from behind_pipeline.pipeline_by_hand import classify, ranked_labels, scores_from_logits
from behind_pipeline.softmax import stable_softmax

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


def test_scores_from_logits():
    logits = torch.tensor([[-1.0, 2.0], [0.5, 0.5]])
    assert torch.allclose(scores_from_logits(logits, "softmax"), logits.softmax(dim=-1))
    assert torch.allclose(scores_from_logits(logits, "sigmoid"), torch.sigmoid(logits))
    assert torch.equal(scores_from_logits(logits, "none"), logits)
    with pytest.raises(ValueError, match="function_to_apply"):
        scores_from_logits(logits, "argmax")


# --- checkers: right answers pass, typical mistakes fail, blanks are reported ----------------------------------


def test_check_labels_from_ids():
    assert check_labels_from_ids(lambda ids, id2label: [id2label[int(i)] for i in ids]).passed
    tensor_keys = check_labels_from_ids(lambda ids, id2label: [id2label[i] for i in ids])
    assert not tensor_keys.passed and "int(i)" in repr(tensor_keys)
    off_by_one = check_labels_from_ids(lambda ids, id2label: [id2label[(int(i) + 1) % len(id2label)] for i in ids])
    assert not off_by_one.passed and "off by one" in repr(off_by_one)
    swapped = check_labels_from_ids(lambda ids, id2label: [id2label[1 - int(i)] for i in ids])
    assert not swapped.passed and "swapped" in repr(swapped)


def test_check_top_k_results():
    assert check_top_k_results(lambda scores, id2label, top_k: ranked_labels(scores, id2label, top_k)).passed

    def unsorted(scores, id2label, top_k):
        results = [{"label": id2label[i], "score": s} for i, s in enumerate(scores.tolist())]
        return results if top_k is None else results[:top_k]

    assert not check_top_k_results(unsorted).passed

    def ascending(scores, id2label, top_k):
        results = sorted(unsorted(scores, id2label, None), key=lambda r: r["score"])
        return results if top_k is None else results[:top_k]

    report = check_top_k_results(ascending)
    assert not report.passed and "highest first" in repr(report)
    assert not check_top_k_results(lambda scores, id2label, top_k: ranked_labels(scores, id2label, None)).passed


def _softmax_pipeline(texts, tokenizer, classifier, softmax=True):
    encoding = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = logits_by_hand(classifier.bert(**encoding).last_hidden_state, classifier)
    scores = stable_softmax(logits) if softmax else logits
    best = scores.max(dim=-1)
    return [{"label": classifier.config.id2label[int(i)], "score": s.item()}
            for s, i in zip(best.values, best.indices, strict=True)]


def test_check_my_pipeline():
    assert check_my_pipeline(_softmax_pipeline).passed
    assert check_my_pipeline(lambda texts, tokenizer, classifier: classify(texts, tokenizer, classifier)).passed
    forgot_softmax = check_my_pipeline(lambda *args: _softmax_pipeline(*args, softmax=False))
    assert not forgot_softmax.passed and "softmax" in repr(forgot_softmax)
    nested = check_my_pipeline(lambda texts, tokenizer, classifier: classify(texts, tokenizer, classifier, top_k=2))
    assert not nested.passed


def test_check_fresh_probability():
    assert check_fresh_probability(lambda logits: torch.sigmoid(logits[:, 1] - logits[:, 0])).passed
    assert check_fresh_probability(lambda logits: logits.softmax(dim=-1)[:, 1]).passed
    alone = check_fresh_probability(lambda logits: torch.sigmoid(logits[:, 1]))
    assert not alone.passed and "alone" in repr(alone)
    assert not check_fresh_probability(lambda logits: torch.sigmoid(logits[:, 0] - logits[:, 1])).passed


@pytest.mark.parametrize("check", [check_labels_from_ids, check_top_k_results, check_my_pipeline,
                                   check_fresh_probability])
def test_blank_answers_are_reported_not_raised(check):
    def blank(*args):
        ...

    for answer in (Ellipsis, blank):
        report = check(answer)
        assert not report.passed and ("still `...`" in repr(report) or "returned None" in repr(report))
