"""Chapter 1: the hand-built WordPiece tokenizer equals the library's, and each exercise checker grades fairly."""

import shutil
from functools import partial

import numpy as np
import pytest
import torch

from behind_pipeline.checks.ch01_tokenizer import (
    DECODE_TEXTS,
    OFFSET_TEXTS,
    WINDOW_CASES,
    _one_token_words,
    _reference_tokenizer,
    check_decode,
    check_train_wordpiece,
    check_windows,
    check_word_ids_and_offsets,
)
from behind_pipeline.models import classifier_id, encoder_id
from behind_pipeline.wordpiece import (
    WordPieceTokenizer,
    is_punctuation,
    load_vocab,
    normalize,
    pre_tokenize,
    wordpiece,
)

from checker_asserts import assert_accepted, assert_rejected

KEYS = ("input_ids", "token_type_ids", "attention_mask")


@pytest.fixture(scope="module")
def vocab():
    return load_vocab(classifier_id())


@pytest.fixture(scope="module")
def hand():
    return WordPieceTokenizer.from_pretrained(classifier_id())


@pytest.fixture(scope="module")
def test_texts(splits):
    return list(splits["test"]["text"])


# --- loading --------------------------------------------------------------------------------------------------


def test_the_classifier_folder_has_no_vocab_txt_and_loads_from_tokenizer_json(vocab, tokenizer):
    import os

    assert not os.path.exists(os.path.join(classifier_id(), "vocab.txt"))
    assert vocab == tokenizer.get_vocab() and len(vocab) == 30522


def test_a_folder_with_only_vocab_txt_still_loads(tmp_path, tokenizer):
    shutil.copy(f"{encoder_id()}/vocab.txt", tmp_path / "vocab.txt")
    only_txt = WordPieceTokenizer.from_pretrained(str(tmp_path))
    assert only_txt.vocab == tokenizer.get_vocab()
    assert only_txt.input_names == KEYS  # no tokenizer_config.json: BERT's three lists
    assert only_txt("A mess.") == dict(tokenizer("A mess."))


def test_a_hub_id_reads_the_same_files_and_falls_back_to_vocab_txt(tmp_path, monkeypatch, tokenizer):
    """BTP_ONLINE=1 passes Hub ids: files come from hf_hub_download (faked here, offline), missing ones are skipped."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    shutil.copy(f"{encoder_id()}/vocab.txt", tmp_path / "vocab.txt")
    asked = []

    def fake_download(repo_id, filename):
        asked.append(filename)
        if filename == "vocab.txt":
            return str(tmp_path / "vocab.txt")
        raise EntryNotFoundError(f"{filename} is not in {repo_id}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    from_hub = WordPieceTokenizer.from_pretrained("some-org/some-bert")
    assert from_hub.vocab == tokenizer.get_vocab() and from_hub.input_names == KEYS
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(asked)


def test_an_empty_folder_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json nor vocab.txt"):
        load_vocab(str(tmp_path))


def test_a_distilbert_folder_gives_no_token_type_ids(tmp_path):
    from transformers import AutoTokenizer, DistilBertTokenizerFast

    DistilBertTokenizerFast.from_pretrained(encoder_id()).save_pretrained(tmp_path)
    library, by_hand = AutoTokenizer.from_pretrained(tmp_path), WordPieceTokenizer.from_pretrained(str(tmp_path))
    assert by_hand.input_names == ("input_ids", "attention_mask") == tuple(library.model_input_names)
    texts = ["A mess.", "Nice piece of work, really."]
    assert by_hand(texts, padding=True) == dict(library(texts, padding=True))


# --- parity with the library ----------------------------------------------------------------------------------


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


@pytest.mark.parametrize("max_length", [None, 4, 5, 16])
def test_an_empty_second_text_is_no_pair_alone_and_an_empty_segment_in_a_batch(hand, tokenizer, max_length):
    truncation = max_length is not None
    single = hand("A dull, tedious mess.", "", truncation=truncation, max_length=max_length)
    assert single == dict(tokenizer("A dull, tedious mess.", "", truncation=truncation, max_length=max_length))
    assert single == hand("A dull, tedious mess.", truncation=truncation, max_length=max_length)  # no pair at all
    texts, pairs = ["A dull, tedious mess.", "Fine."], ["", "Really fine."]
    batch = hand(texts, pairs, truncation=truncation, max_length=max_length)
    assert batch == dict(tokenizer(texts, pairs, truncation=truncation, max_length=max_length))
    assert batch["input_ids"][0][-2:] == [102, 102]  # [CLS] A [SEP] [SEP]: an empty second segment


def test_truncation_without_max_length_cuts_at_the_model_limit(hand, tokenizer):
    long_text = "This film goes on and on. " * 80
    assert len(hand(long_text, truncation=True)["input_ids"]) == 512 == tokenizer.model_max_length
    assert hand(long_text, truncation=True) == dict(tokenizer(long_text, truncation=True))


def test_decode_matches_the_library(hand, tokenizer, test_texts):
    for ids in tokenizer(test_texts[:400])["input_ids"]:
        assert hand.decode(ids) == tokenizer.decode(ids)
        assert hand.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", [
    "Renée\u00a0Zellweger\tis SUPERB\x07 in 東京!",
    "x$y+z<w>=^`|~ über-cool!!! ﬁne ½",
    "Hello\u2028world\x0b\x85\u200b end \ufffd\x00",
    "a" * 101 + " ok🎬ok [CLS] typed [SEP]",
    "ΟΔΟΣ ΣΑΣ İstanbul",  # the library lower-cases one character at a time: a final Σ becomes σ, not ς
    "-" * 200 + " https://www.rottentomatoes.com/m/the_room/reviews?type=top_critics",
    "",
])
def test_edge_cases_match_the_library(hand, tokenizer, text):
    assert normalize(text) == tokenizer.backend_tokenizer.normalizer.normalize_str(text)
    normalized = normalize(text)
    assert pre_tokenize(normalized) == [w for w, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
        normalized)]
    assert hand(text) == dict(tokenizer(text))


def test_the_100_character_limit_is_per_word_after_punctuation_is_split(hand, vocab):
    assert wordpiece("a" * 100, vocab) != ["[UNK]"] and wordpiece("a" * 101, vocab) == ["[UNK]"]
    assert len(hand.tokenize("-" * 200)) == 200  # 200 one-character words, none over the limit


def test_tensors_feed_the_classifier_like_the_library(hand, tokenizer, classifier, test_texts):
    batch = test_texts[:8]
    with torch.no_grad():
        by_hand = classifier(**hand(batch, padding=True, return_tensors="pt")).logits
        library = classifier(**tokenizer(batch, padding=True, return_tensors="pt")).logits
    assert torch.equal(by_hand, library)


def test_the_checkers_answer_key_is_the_library(tokenizer, vocab, test_texts):
    """The reference the offsets checker builds around any vocabulary gives AutoTokenizer's word ids and offsets."""
    reference = _reference_tokenizer(vocab)
    for text in [*OFFSET_TEXTS, *test_texts[:300]]:
        library, ours = tokenizer(text, return_offsets_mapping=True), reference.encode(text)
        assert ours.ids == library["input_ids"]
        assert ours.word_ids == library.word_ids() and ours.offsets == list(library["offset_mapping"])


# --- exercise 1: decode ---------------------------------------------------------------------------------------


def _decode(ids, vocab, skipped=None, glued=(".", ",", "!", "?"), hash_pieces=True):
    id_to_token = {index: token for token, index in vocab.items()}
    skipped = skipped if skipped is not None else {0, 100, 101, 102, 103}
    text = ""
    for token in (id_to_token[i] for i in ids if i not in skipped):
        if hash_pieces and token.startswith("##"):
            text += token[2:]
        elif not text or token in glued:
            text += token
        else:
            text += " " + token
    return text


def test_check_decode_accepts_the_answer(vocab):
    assert check_decode(partial(_decode, vocab=vocab)).passed


@pytest.mark.parametrize("mistake", {
    "keeps_special_tokens": {"skipped": set()},
    "forgets_that_unk_is_special": {"skipped": {0, 101, 102}},
    "keeps_the_hash_marks": {"hash_pieces": False},
    "no_space_before_any_punctuation": {"glued": tuple(c for c in map(chr, range(33, 127)) if is_punctuation(c))},
    "a_space_before_every_token": {"glued": ()},
}.items(), ids=lambda item: item[0])
def test_check_decode_rejects(vocab, mistake):
    hints = {"forgets_that_unk_is_special": ["[UNK] is a special token too"]}.get(mistake[0], [])
    assert_rejected(check_decode(partial(_decode, vocab=vocab, **mistake[1])), *hints)


def test_check_decode_reports_without_raising():
    for answer in (..., lambda ids: None, lambda ids: 1 / 0, lambda ids: ids, lambda ids: np.array(ids)):
        report = check_decode(answer)
        assert not report.passed
    assert_rejected(check_decode(...), "still `...`")


def test_decode_texts_need_every_rule(tokenizer):
    """Each rule of the statement changes at least one expected string, so skipping it cannot pass."""
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in tokenizer(list(DECODE_TEXTS))["input_ids"]]
    assert any("[UNK]" in tokenizer.decode(ids) for ids in tokenizer(list(DECODE_TEXTS))["input_ids"])
    assert any(" :" in text for text in decoded) and any("!!!" in text for text in decoded)


# --- exercise 2: word ids and offsets -------------------------------------------------------------------------


def _word_ids_and_offsets(text, vocab, mistake=None):
    """The solution, with one switch per typical mistake."""
    if mistake == "offsets_in_the_normalized_text":
        chars = [(char, index) for index, char in enumerate(normalize(text))]
    else:  # normalize one character at a time, remembering where each normalized character came from
        chars = [(norm, index) for index, char in enumerate(text) for norm in normalize(char)]
    words, current = [], []
    for char, index in chars:
        if char.isspace() or (is_punctuation(char) and mistake != "words_split_on_spaces_only"):
            if current:
                words.append(current)
                current = []
            if not char.isspace():
                words.append([(char, index)])
        else:
            current.append((char, index))
    if current:
        words.append(current)
    special_word = 0 if mistake == "special_tokens_in_word_zero" else None
    word_ids, offsets = [special_word], [(0, 0)]
    max_chars = 99 if mistake == "limit_at_100_inclusive" else 100
    for word_id, word in enumerate(words):
        pieces = wordpiece("".join(char for char, _ in word), vocab, max_chars=max_chars)
        if pieces == ["[UNK]"]:
            end = word[0][1] + 5 if mistake == "unk_is_five_characters" else word[-1][1] + 1
            word_ids.append(word_id)
            offsets.append((word[0][1], end))
            continue
        start = 0
        for piece in pieces:
            length = len(piece) if mistake == "counts_the_hash_prefix" else len(piece.removeprefix("##"))
            span = word[start : start + length] or word[-1:]
            word_ids.append(word_id)
            offsets.append((span[0][1], span[-1][1] + (0 if mistake == "end_inclusive" else 1)))
            start += len(piece.removeprefix("##"))
    word_ids, offsets = word_ids + [special_word], offsets + [(0, 0)]
    if mistake == "no_special_tokens":
        return word_ids[1:-1], offsets[1:-1]
    return word_ids, offsets


def test_check_word_ids_and_offsets_accepts_the_answer_in_several_forms():
    def as_array(text, vocab):
        word_ids, offsets = _word_ids_and_offsets(text, vocab)
        return word_ids, np.array(offsets)

    def as_lists(text, vocab):
        word_ids, offsets = _word_ids_and_offsets(text, vocab)
        return word_ids, [list(pair) for pair in offsets]

    assert_accepted(check_word_ids_and_offsets, _word_ids_and_offsets, as_array, as_lists)


@pytest.mark.parametrize("mistake", ["offsets_in_the_normalized_text", "counts_the_hash_prefix",
                                     "words_split_on_spaces_only", "special_tokens_in_word_zero",
                                     "no_special_tokens", "unk_is_five_characters", "end_inclusive",
                                     "limit_at_100_inclusive"])
def test_check_word_ids_and_offsets_rejects(mistake):
    expected_hint = {"offsets_in_the_normalized_text": "ORIGINAL text", "counts_the_hash_prefix": "len(piece) - 2",
                     "words_split_on_spaces_only": "punctuation mark is a word", "no_special_tokens": "[CLS] and [SEP]",
                     "special_tokens_in_word_zero": "belong to no word", "unk_is_five_characters": "whole word",
                     "end_inclusive": "exclusive", "limit_at_100_inclusive": "exactly 100 characters"}[mistake]
    assert_rejected(check_word_ids_and_offsets(partial(_word_ids_and_offsets, mistake=mistake)), expected_hint)


def test_check_word_ids_and_offsets_rejects_the_library_with_the_course_vocabulary(tokenizer):
    """Calling the course tokenizer ignores `vocab`: the checker's second vocabulary exposes it."""

    def course_tokenizer_only(text, vocab):
        encoding = tokenizer(text, return_offsets_mapping=True)
        return encoding.word_ids(), encoding["offset_mapping"]

    assert_rejected(check_word_ids_and_offsets(course_tokenizer_only), "without 4+ letter words")


def test_check_word_ids_and_offsets_reports_without_raising():
    answers = (..., lambda t, v: None, lambda t, v: 1 / 0, lambda t, v: 3, lambda t, v: ([1, 2], "ab"),
               lambda t, v: ("x", [(0, 1)]), lambda t, v: ([None], [(0, 0, 0)]), lambda t, v: torch.zeros(2, 3))
    for answer in answers:
        assert not check_word_ids_and_offsets(answer).passed


# --- exercise 3: sliding windows ------------------------------------------------------------------------------


def _windows(ids, max_length, stride, budget_room=2, mistake=None):
    budget = max_length - budget_room
    step = budget if mistake == "no_overlap" else budget - stride
    if mistake == "one_window_too_many":  # a window at every step that starts before the end
        return [[101, *ids[start : start + budget], 102] for start in range(0, max(len(ids), 1), step)]
    result, start = [], 0
    while True:
        framed = start == 0 or mistake != "frames_only_the_first"
        result.append([101, *ids[start : start + budget], 102] if framed else ids[start : start + budget])
        if start + budget >= len(ids):
            return result
        start += step


def test_the_window_cases_hit_their_boundaries(tokenizer):
    words = _one_token_words(max(n for n, _, _ in WINDOW_CASES))
    for n, max_length, stride in WINDOW_CASES:
        ids = tokenizer(" ".join(words[:n]), add_special_tokens=False)["input_ids"]
        assert len(ids) == n and stride < max_length - 2
    budgets = [(n, max_length - 2, max_length - 2 - stride) for n, max_length, stride in WINDOW_CASES]
    assert any(n == budget for n, budget, _ in budgets) and any(n == budget + 1 for n, budget, _ in budgets)
    assert any(n > budget and (n - budget) % step == 0 for n, budget, step in budgets)  # last window ends on the end


def test_check_windows_accepts_the_answer_as_lists_or_tensors():
    assert_accepted(check_windows, _windows, lambda ids, m, s: [torch.tensor(w) for w in _windows(ids, m, s)])


@pytest.mark.parametrize("mistake", ["forgets_the_special_tokens", "no_overlap", "one_window_too_many",
                                     "frames_only_the_first"])
def test_check_windows_rejects(mistake):
    if mistake == "forgets_the_special_tokens":
        answer = partial(_windows, budget_room=0)
    else:
        answer = partial(_windows, mistake=mistake)
    hint = {"forgets_the_special_tokens": "[CLS] and [SEP] included", "no_overlap": "share `stride`",
            "one_window_too_many": "too many windows", "frames_only_the_first": "frame every window"}[mistake]
    assert_rejected(check_windows(answer), hint)


def test_check_windows_rejects_a_single_truncated_window():
    assert not check_windows(lambda ids, max_length, stride: [[101, *ids[: max_length - 2], 102]]).passed


def test_check_windows_reports_without_raising():
    for answer in (..., lambda i, m, s: None, lambda i, m, s: 1 / 0, lambda i, m, s: 7, lambda i, m, s: ["ab"]):
        assert not check_windows(answer).passed


# --- exercise 4: a WordPiece vocabulary of one's own ----------------------------------------------------------


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _train_wordpiece(texts, vocab_size, mistake=None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if mistake == "bpe_model":
        trained = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    else:
        trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(
            vocab_size=30000 if mistake == "fixed_vocab_size" else vocab_size,
            special_tokens=[] if mistake == "no_special_tokens" else SPECIALS, show_progress=False,
            continuing_subword_prefix="" if mistake == "no_continuation_prefix" else "##")
    if mistake == "course_normalizer":  # the Hugging Face course's choice: a valid alternative
        trained.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(),
                                                   normalizers.StripAccents()])
    elif mistake != "cased":
        trained.normalizer = normalizers.BertNormalizer(lowercase=True)
    whitespace = mistake == "whitespace_pre_tokenizer"
    trained.pre_tokenizer = pre_tokenizers.Whitespace() if whitespace else pre_tokenizers.BertPreTokenizer()
    if mistake == "trained_on_the_train_split":
        from behind_pipeline.checks.ch01_tokenizer import _texts

        texts = list(_texts("train")[:3000])
    trained.train_from_iterator(texts, trainer)
    return trained


def test_check_train_wordpiece_accepts_the_answer_and_valid_variants():
    from transformers import PreTrainedTokenizerFast

    def wrapped(texts, vocab_size):
        return PreTrainedTokenizerFast(tokenizer_object=_train_wordpiece(texts, vocab_size))

    assert_accepted(check_train_wordpiece, _train_wordpiece, partial(_train_wordpiece, mistake="course_normalizer"),
                    wrapped)


@pytest.mark.parametrize("mistake", ["bpe_model", "fixed_vocab_size", "no_special_tokens", "cased",
                                     "whitespace_pre_tokenizer", "trained_on_the_train_split",
                                     "no_continuation_prefix"])
def test_check_train_wordpiece_rejects(mistake):
    hint = {"bpe_model": "models.WordPiece", "fixed_vocab_size": "pass vocab_size",
            "no_special_tokens": "special_tokens=", "cased": "BertNormalizer",
            "whitespace_pre_tokenizer": "BertPreTokenizer", "trained_on_the_train_split": "train on `texts`",
            "no_continuation_prefix": "'##' prefix"}[mistake]
    assert_rejected(check_train_wordpiece(partial(_train_wordpiece, mistake=mistake)), hint)


def test_check_train_wordpiece_reports_without_raising():
    for answer in (..., lambda t, v: None, lambda t, v: 1 / 0, lambda t, v: "a tokenizer", lambda t, v: {"[UNK]": 0}):
        assert not check_train_wordpiece(answer).passed
