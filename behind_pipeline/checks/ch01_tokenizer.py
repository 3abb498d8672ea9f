"""Checkers for chapter 1's exercises: decode, word ids and offsets, sliding windows, a WordPiece vocabulary trained
on our reviews. Each compares the learner's answer with the library on inputs the chapter never used."""

from functools import cache

from behind_pipeline.checks._core import CheckReport, course_tokenizer

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Padded to different lengths in one batch; an emoji becomes [UNK], which skip_special_tokens drops too; " :"
# and " '" keep their space while " ." " ," " !" " ?" lose it.
DECODE_TEXTS = ("Unfunny, overwrought and unwatchable.", "Don't miss it: a bittersweet, mesmerizing melodrama!",
                "Is it good? Yes!!!", "A 🎬 buff's $5 film (sort of)...", "Renée Zellweger is superb.")
# Characters that normalization removes (U+0007, U+200B, a combining accent), adds (spaces around CJK) or keeps
# apart; a leading run of spaces; a word of exactly 100 characters (split) next to one of 101 ([UNK] whole).
OFFSET_TEXTS = ("Renée  Zellweger, 東京!", "  Don't\tmiss it: a bittersweet, mesmerizing melodrama!",
                "Rene\u0301e's cafe\u0301\u200bnoir is wow🎬 ok\x07k.", "a" * 100 + " " + "b" * 101 + ".")
# (number of ids, max_length, stride): an exact fit and one id over it, the largest stride the library allows
# (max_length - 3), a length where the last window ends exactly on the last id, and a real review.
WINDOW_CASES = ((12, 14, 0), (13, 14, 0), (12, 10, 7), (18, 10, 3), (20, 10, 3), (5, 3, 0))
# A made-up corpus: a vocabulary trained on it must know its made-up words, so it must be trained on `texts`.
MADE_UP_TEXTS = ("The zorblax quixel grumped!", "A quixel, a zorblax and a fnord.", "Zorblax? Quixel!") * 40


@cache
def _texts(split: str) -> tuple[str, ...]:
    from behind_pipeline.data import load_rotten_tomatoes

    return tuple(load_rotten_tomatoes()[split]["text"])


def _reference_tokenizer(vocab: dict[str, int]):
    """BERT's uncased pipeline from the ``tokenizers`` library around any vocabulary (the checkers' answer key)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tokenizer


@cache
def _short_word_vocab() -> tuple[tuple[str, int], ...]:
    """BERT's vocabulary without its whole words of 4+ characters: words now split into several pieces."""
    kept = [t for t, _ in sorted(course_tokenizer().get_vocab().items(), key=lambda item: item[1])
            if t.startswith(("##", "[")) or len(t) < 4]
    return tuple((token, index) for index, token in enumerate(kept))


# --- exercise 1: decode ---------------------------------------------------------------------------------------


def check_decode(decode) -> CheckReport:
    """``decode(ids)`` must equal ``tokenizer.decode(ids, skip_special_tokens=True)``."""
    report = CheckReport("Decode")
    tokenizer = course_tokenizer()
    for ids in tokenizer(list(DECODE_TEXTS), padding=True)["input_ids"]:
        expected = tokenizer.decode(ids, skip_special_tokens=True)
        got = report.call(decode, list(ids), name="decode")
        if got is Ellipsis:
            return report
        if isinstance(got, str) and got == expected:  # `==` on an array would raise
            report.ok(repr(expected))
            continue
        if not isinstance(got, str):
            hint = f"return a string, not {type(got).__name__}"
        elif "##" in got:
            hint = "glue a '##' piece to the text before it, without the '##'"
        elif "[UNK]" in got and not any(token in got for token in ("[CLS]", "[SEP]", "[PAD]")):
            hint = "[UNK] is a special token too: leave out every id in tokenizer.all_special_ids"
        elif "[" in got:
            hint = "leave out the special tokens ([CLS], [SEP], [PAD], [UNK], [MASK])"
        elif got.replace(" ", "") == expected.replace(" ", ""):
            hint = "spaces: one before each token that starts a word, except before . , ! ? (keep it before : ' $ ()"
        else:
            hint = "map each id back with id_to_token"
        report.fail(f"expected {expected!r}, got {got!r}: {hint}")
    return report


# --- exercise 2: word ids and character offsets ---------------------------------------------------------------


def _as_word_ids(value) -> list | None:
    try:
        return [None if w is None else int(w) for w in value]
    except (TypeError, ValueError, RuntimeError):
        return None


def _as_offsets(value) -> list | None:
    try:
        offsets = [tuple(int(x) for x in pair) for pair in value]
    except (TypeError, ValueError, RuntimeError):
        return None
    return offsets if all(len(pair) == 2 for pair in offsets) else None


def _offset_hint(text: str, token: str, got: tuple, expected: tuple, in_normalized: bool) -> str:
    if in_normalized:
        return "offsets index the ORIGINAL text, not the normalized one (normalizing removes and adds characters)"
    if token.startswith("##") and got[1] - got[0] == expected[1] - expected[0] + 2:
        return f"a '##' piece stands for len(piece) - 2 characters: {token!r} for {len(token) - 2}"
    if token == "[UNK]":
        return "an [UNK] covers its whole word, whatever its length"
    if token in ("[CLS]", "[SEP]"):
        return "special tokens come from no character: (0, 0)"
    if got[1] == expected[1] - 1:
        return "end is exclusive: text[start:end] is the token's characters"
    return f"text[start:end] should be the characters {token!r} came from, {text[expected[0]:expected[1]]!r}"


def check_word_ids_and_offsets(word_ids_and_offsets) -> CheckReport:
    """``word_ids_and_offsets(text, vocab)`` must equal ``encoding.word_ids()`` and ``["offset_mapping"]``."""
    report = CheckReport("Word ids and character offsets")
    from behind_pipeline.wordpiece import normalize

    bert_vocab = course_tokenizer().get_vocab()
    cases = [("BERT's vocabulary", bert_vocab, text) for text in OFFSET_TEXTS]
    short = dict(_short_word_vocab())
    cases += [("a vocabulary without 4+ letter words", short, text) for text in (OFFSET_TEXTS[1], _texts("test")[0])]
    for label, vocab, text in cases:
        reference = _reference_tokenizer(vocab)
        encoding = reference.encode(text)
        tokens, expected_ids, expected_offsets = encoding.tokens, encoding.word_ids, encoding.offsets
        shown = text if len(text) <= 30 else text[:27] + "..."
        where = f"{label}, {shown!r}"
        got = report.call(word_ids_and_offsets, text, dict(vocab), name="word_ids_and_offsets")
        if got is Ellipsis:
            return report
        pair = list(got) if isinstance(got, tuple | list) else None
        if pair is None or len(pair) != 2:
            report.fail(f"return a pair (word_ids, offsets), not {type(got).__name__}")
            return report
        word_ids, offsets = _as_word_ids(pair[0]), _as_offsets(pair[1])
        if word_ids is None or offsets is None:
            report.fail("word_ids: a list of ints (None for special tokens); offsets: a list of (start, end) pairs")
            return report
        if not (len(word_ids) == len(offsets) == len(tokens)):
            missing = " (include [CLS] and [SEP])" if len(word_ids) == len(tokens) - 2 else ""
            if text == OFFSET_TEXTS[-1]:
                missing += " (a word of exactly 100 characters is split into pieces; only a longer one is [UNK])"
            report.fail(f"{where}: {len(tokens)} tokens {tokens[:6]}..., but {len(word_ids)} word ids and "
                        f"{len(offsets)} offsets: one of each per token{missing}")
            continue
        if word_ids != expected_ids:
            first = next(i for i, (a, b) in enumerate(zip(word_ids, expected_ids, strict=True)) if a != b)
            if tokens[first] in ("[CLS]", "[SEP]"):
                hint = "[CLS] and [SEP] belong to no word: their word id is None"
            elif len(set(word_ids) - {None}) < len(set(expected_ids) - {None}):
                hint = "fewer words than the pre-tokenizer makes: each punctuation mark is a word of its own"
            else:
                hint = "all pieces of one word share its word id; words are numbered from 0"
            report.fail(f"{where}: token {first} {tokens[first]!r} has word id {word_ids[first]}, expected "
                        f"{expected_ids[first]}: {hint}")
            continue
        if offsets != expected_offsets:
            first = next(i for i, (a, b) in enumerate(zip(offsets, expected_offsets, strict=True)) if a != b)
            in_normalized = offsets == reference.encode(normalize(text)).offsets != expected_offsets
            hint = _offset_hint(text, tokens[first], offsets[first], expected_offsets[first], in_normalized)
            report.fail(f"{where}: token {first} {tokens[first]!r} has offsets {offsets[first]}, expected "
                        f"{expected_offsets[first]}: {hint}")
            continue
        report.ok(f"{where}: {len(tokens)} tokens, word ids and offsets as the library's")
    return report


# --- exercise 3: sliding windows over a long text -------------------------------------------------------------


def _one_token_words(count: int) -> list[str]:
    """Distinct whole words that are one token each, so a text of n of them has exactly n ids."""
    vocab = course_tokenizer().get_vocab()
    words = [token for token in sorted(vocab, key=vocab.get)[2000:2600] if token.isalpha() and len(token) > 2]
    return words[:count]


def _as_windows(value) -> list | None:
    try:
        return [[int(i) for i in window] for window in value]
    except (TypeError, ValueError, RuntimeError):
        return None


def _window_hint(got: list, expected: list, ids: list, max_length: int, stride: int, cls: int, sep: int) -> str:
    if any(len(window) > max_length for window in got):
        return f"each window is at most max_length={max_length} tokens, [CLS] and [SEP] included"
    if any(not window or window[0] != cls or window[-1] != sep for window in got):
        return f"frame every window: [CLS] (id {cls}) first, [SEP] (id {sep}) last"
    if len(got) > len(expected) and got[: len(expected)] == expected:
        return "too many windows: stop once a window reaches the last id (the next would only repeat the overlap)"
    budget = max_length - 2
    no_overlap = [[cls, *ids[start:start + budget], sep] for start in range(0, max(len(ids), 1), budget)]
    if stride and got == no_overlap:
        return f"consecutive windows share `stride`={stride} ids: step forward by max_length - 2 - stride"
    if len(got) < len(expected) and all(window in expected for window in got):
        return "windows are missing: keep going until a window holds the last id"
    return f"window {next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), len(got))} " \
           "differs: each window starts max_length - 2 - stride ids after the previous one"


def check_windows(windows) -> CheckReport:
    """``windows(ids, max_length, stride)`` must equal ``return_overflowing_tokens=True, stride=stride``."""
    report = CheckReport("Sliding windows")
    tokenizer = course_tokenizer()
    words = _one_token_words(max(n for n, _, _ in WINDOW_CASES))
    longest = max(_texts("test"), key=lambda text: len(tokenizer(text)["input_ids"]))
    cases = [(" ".join(words[:n]), max_length, stride) for n, max_length, stride in WINDOW_CASES]
    cases.append((longest, 32, 8))
    for text, max_length, stride in cases:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = [list(window) for window in tokenizer(text, max_length=max_length, truncation=True, stride=stride,
                                                          return_overflowing_tokens=True)["input_ids"]]
        where = f"{len(ids)} ids, max_length={max_length}, stride={stride}"
        got = report.call(windows, list(ids), max_length, stride, name="windows")
        if got is Ellipsis:
            return report
        got = _as_windows(got)
        if got is None:
            report.fail(f"{where}: return a list of windows, each a list of ids")
            continue
        if got == expected:
            report.ok(f"{where}: {len(expected)} window(s) of {[len(window) for window in expected]} tokens")
            continue
        hint = _window_hint(got, expected, ids, max_length, stride, tokenizer.cls_token_id, tokenizer.sep_token_id)
        report.fail(f"{where}: expected {len(expected)} window(s) {[len(w) for w in expected]} tokens long, got "
                    f"{len(got)} {[len(w) for w in got]}: {hint}")
    return report


# --- exercise 4: a WordPiece vocabulary trained on our reviews ------------------------------------------------


def _backend(value):
    """The ``tokenizers.Tokenizer`` inside what the learner returned (a fast tokenizer wraps one), or None."""
    from tokenizers import Tokenizer

    if isinstance(value, Tokenizer):
        return value
    backend = getattr(value, "backend_tokenizer", None)
    return backend if isinstance(backend, Tokenizer) else None


def _tokens(report: CheckReport, tokenizer, text: str) -> list[str] | None:
    encoding = report.call(tokenizer.encode, text, name="tokenizer.encode")
    return None if encoding is Ellipsis else list(encoding.tokens)


def _check_trained(report: CheckReport, tokenizer, vocab_size: int, label: str, made_up: bool) -> None:
    """Every property on every call: model, size, special tokens, [UNK], uncased, punctuation, ##, its texts."""
    model = type(tokenizer.model).__name__
    if not report.expect(model == "WordPiece", f"{label}: a WordPiece model",
                         f"{label}: the model is {model}: use tokenizers.models.WordPiece(unk_token='[UNK]')"):
        return
    size = tokenizer.get_vocab_size()
    small_enough = size <= vocab_size and (made_up or size >= 0.95 * vocab_size)
    # Ok lines print nothing the trainer's run-to-run tie-breaking could change (it orders equally frequent pairs
    # differently in each process), so a stored output repeats.
    report.expect(small_enough, f"{label}: a vocabulary of vocab_size={vocab_size:,} tokens at most",
                  f"{label}: {size:,} tokens for vocab_size={vocab_size:,}: pass vocab_size to the trainer")
    missing = [token for token in SPECIALS if tokenizer.token_to_id(token) is None]
    report.expect(not missing, f"{label}: special tokens {list(SPECIALS)} in the vocabulary",
                  f"{label}: {missing} missing: give the trainer special_tokens={list(SPECIALS)}")
    if missing:
        return
    unknown = _tokens(report, tokenizer, "a ☃ b")
    cased, uncased = _tokens(report, tokenizer, "Renée FILM"), _tokens(report, tokenizer, "renee film")
    marks = _tokens(report, tokenizer, "and!!! the?")
    if None in (unknown, cased, uncased, marks):
        return
    report.expect("[UNK]" in unknown, f"{label}: a character never seen becomes [UNK]",
                  f"{label}: 'a ☃ b' gives {unknown}: the model needs unk_token='[UNK]'")
    report.expect(cased == uncased, f"{label}: uncased and accent-free, as BERT's ('Renée FILM' = 'renee film')",
                  f"{label}: 'Renée FILM' gives {cased} but 'renee film' {uncased}: add BertNormalizer(lowercase=True)")
    split = marks.count("!") == 3 and "?" in marks
    report.expect(split, f"{label}: each punctuation mark is a word of its own",
                  f"{label}: 'and!!! the?' gives {marks}: pre-tokenize as BERT does, BertPreTokenizer()")
    long_word = "zorblaxed" if made_up else "unwatchableness"  # rare enough to be split in either vocabulary
    word = _tokens(report, tokenizer, long_word)
    if word is not None:
        report.expect(len(word) > 1 and all(piece.startswith("##") for piece in word[1:]),
                      f"{label}: continuation pieces carry '##'",
                      f"{label}: {long_word!r} gives {word}: pieces after the first need the '##' prefix")
    if made_up:  # any English corpus teaches "the"; only the made-up one shows which texts were used
        report.expect(tokenizer.token_to_id("zorblax") is not None, f"{label}: learned 'zorblax' from `texts`",
                      f"{label}: 'zorblax', frequent in `texts`, is not in the vocabulary: train on `texts`")


def check_train_wordpiece(train_wordpiece) -> CheckReport:
    """``train_wordpiece(texts, vocab_size)`` must return a BERT-like WordPiece tokenizer trained on ``texts``."""
    report = CheckReport("A WordPiece vocabulary of your own")
    cases = [("3,000 training reviews", list(_texts("train")[:3000]), 1200, False),
             ("a made-up corpus", list(MADE_UP_TEXTS), 80, True)]
    for label, texts, vocab_size, made_up in cases:
        got = report.call(train_wordpiece, texts, vocab_size, name="train_wordpiece")
        if got is Ellipsis:
            return report
        tokenizer = _backend(got)
        if tokenizer is None:
            report.fail(f"{label}: return a tokenizers.Tokenizer (or a fast tokenizer), not {type(got).__name__}")
            return report
        _check_trained(report, tokenizer, vocab_size, label, made_up)
    return report
