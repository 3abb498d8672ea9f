"""Chapter 1: the hand-built WordPiece tokenizer equals the library's, and each exercise checker grades fairly."""

import pytest

from behind_pipeline.checks.ch01_tokenizer import (
    check_build_inputs,
    check_decode,
    check_longest_review,
    check_wordpiece,
)
from behind_pipeline.models import encoder_id
from behind_pipeline.wordpiece import WordPieceTokenizer, load_vocab, normalize, pre_tokenize, wordpiece

KEYS = ("input_ids", "token_type_ids", "attention_mask")


@pytest.fixture(scope="module")
def vocab():
    return load_vocab(encoder_id())


@pytest.fixture(scope="module")
def hand(vocab):
    return WordPieceTokenizer(vocab)


@pytest.fixture(scope="module")
def test_texts(splits):
    return list(splits["test"]["text"])


# --- parity with the library ----------------------------------------------------------------------------------


def test_vocab_txt_is_the_classifier_vocabulary(vocab, tokenizer):
    assert vocab == tokenizer.get_vocab()


def test_every_test_review_gives_the_library_ids(hand, tokenizer, test_texts):
    library = tokenizer(test_texts)
    mismatches = [i for i, text in enumerate(test_texts) if any(hand(text)[k] != library[k][i] for k in KEYS)]
    assert len(test_texts) == 1445
    assert mismatches == []


@pytest.mark.parametrize("kwargs", [{"padding": True},
                                    {"padding": "max_length", "truncation": True, "max_length": 16},
                                    {"padding": True, "truncation": True, "max_length": 24}])
def test_padded_batches_match_the_library(hand, tokenizer, test_texts, kwargs):
    for start in range(0, len(test_texts), 32):
        batch = test_texts[start : start + 32]
        by_hand, library = hand(batch, **kwargs), tokenizer(batch, **kwargs)
        assert all(by_hand[k] == library[k] for k in KEYS), start


@pytest.mark.parametrize("max_length", [None, 9, 16, 33])
def test_sentence_pairs_and_longest_first_truncation_match(hand, tokenizer, test_texts, max_length):
    truncation = max_length is not None
    for first, second in zip(test_texts[:150], test_texts[150:300], strict=True):
        by_hand = hand(first, second, truncation=truncation, max_length=max_length)
        assert by_hand == dict(tokenizer(first, second, truncation=truncation, max_length=max_length))


def test_decode_matches_the_library(hand, tokenizer, test_texts):
    for ids in tokenizer(test_texts[:400])["input_ids"]:
        assert hand.decode(ids) == tokenizer.decode(ids)
        assert hand.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", [
    "Renée\u00a0Zellweger\tis SUPERB\x07 in 東京!",
    "x$y+z<w>=^`|~ über-cool!!! ﬁne ½",
    "Hello\u2028world\x0b\x85\u200b end \ufffd\x00",
    "a" * 101 + " ok🎬ok [CLS] typed [SEP]",
    "",
])
def test_edge_cases_match_the_library(hand, tokenizer, text):
    assert normalize(text) == tokenizer.backend_tokenizer.normalizer.normalize_str(text)
    normalized = normalize(text)
    assert pre_tokenize(normalized) == [w for w, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
        normalized)]
    assert hand(text) == dict(tokenizer(text))


def test_tensors_feed_the_classifier_like_the_library(hand, tokenizer, classifier, test_texts):
    import torch

    batch = test_texts[:8]
    with torch.no_grad():
        by_hand = classifier(**hand(batch, padding=True, return_tensors="pt")).logits
        library = classifier(**tokenizer(batch, padding=True, return_tensors="pt")).logits
    assert torch.equal(by_hand, library)


# --- checkers: accept the right answer, reject a typical wrong one, report a blank ----------------------------


def _no_continuation_prefix(word, vocab):
    """Forgets ##: looks up bare pieces, so 'watch' is found instead of '##watch'."""
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            if word[start:end] in vocab:
                pieces.append(word[start:end])
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def _shortest_match(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        prefix = "##" if start else ""
        for end in range(start + 1, len(word) + 1):
            if prefix + word[start:end] in vocab:
                pieces.append(prefix + word[start:end])
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def test_check_wordpiece(vocab):
    assert check_wordpiece(wordpiece).passed
    assert not check_wordpiece(_no_continuation_prefix).passed
    assert not check_wordpiece(_shortest_match).passed
    blank = check_wordpiece(lambda word, vocab: None)
    assert not blank.passed and "`...`" in repr(blank)
    assert "still `...`" in repr(check_wordpiece(...))


def _build_inputs(ids, max_length, forget_sep=False):
    framed = [101, *ids[: max_length - 2]] + ([] if forget_sep else [102])
    padding = max_length - len(framed)
    return {"input_ids": framed + [0] * padding, "attention_mask": [1] * len(framed) + [0] * padding}


def test_check_build_inputs():
    assert check_build_inputs(_build_inputs).passed
    report = check_build_inputs(lambda ids, max_length: _build_inputs(ids, max_length, forget_sep=True))
    assert not report.passed and "[SEP]" in repr(report)
    # padding that the mask does not hide is wrong too
    assert not check_build_inputs(lambda ids, n: {**_build_inputs(ids, n), "attention_mask": [1] * n}).passed
    assert "still `...`" in repr(check_build_inputs(...))


def test_check_longest_review():
    def right(texts, tokenizer):
        lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
        best = lengths.index(max(lengths))
        return texts[best], lengths[best]

    def by_characters(texts, tokenizer):
        text = max(texts, key=len)
        return text, len(tokenizer(text)["input_ids"])

    def without_special_tokens(texts, tokenizer):
        text, n_tokens = right(texts, tokenizer)
        return text, n_tokens - 2

    assert check_longest_review(right).passed
    assert not check_longest_review(by_characters).passed
    assert not check_longest_review(without_special_tokens).passed
    assert "still `...`" in repr(check_longest_review(...))


def test_check_decode(hand):
    assert check_decode(lambda ids: hand.decode(ids, skip_special_tokens=True)).passed
    assert not check_decode(lambda ids: hand.decode(ids)).passed  # keeps [CLS], [SEP], [PAD]
    assert not check_decode(lambda ids: " ".join(hand.convert_ids_to_tokens(ids))).passed  # keeps ##
    assert "still `...`" in repr(check_decode(...))
