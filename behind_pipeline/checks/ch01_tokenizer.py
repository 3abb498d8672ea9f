"""Checkers for chapter 1's exercises: WordPiece, the [CLS]/[SEP] frame, the longest review, decode."""

from functools import cache

from behind_pipeline.checks._core import CheckReport, course_tokenizer

# Words chosen so that each typical mistake shows: several pieces (forgotten ##, shortest match), a whole word
# that must not be cut, characters the vocabulary lacks (whole word [UNK]) and a word over 100 characters.
WORDPIECE_WORDS = ("unwatchable", "film", "zellweger", "mesmerizing", "overwrought", "bittersweet", "🎬", "ok🎬ok",
                   "a" * 101)
FRAME_TEXTS = ("A mess.", "Nice piece of work.",
               "A film that's flawed and brilliant in equal measure, and long-winded too.")
DECODE_TEXTS = ("Unfunny, overwrought and unwatchable.", "Don't miss it: a bittersweet, mesmerizing melodrama!",
                "Is it good? Yes!", "Renée Zellweger is superb.")


@cache
def _vocab() -> dict[str, int]:
    from behind_pipeline.models import encoder_id
    from behind_pipeline.wordpiece import load_vocab

    return load_vocab(encoder_id())


@cache
def _test_texts() -> tuple[str, ...]:
    from behind_pipeline.data import load_rotten_tomatoes

    return tuple(load_rotten_tomatoes()["test"]["text"])


def check_wordpiece(wordpiece) -> CheckReport:
    """``wordpiece(word, vocab)`` must split like BERT: longest match first, ``##`` continuations, whole-word [UNK]."""
    from behind_pipeline.wordpiece import wordpiece as reference

    report = CheckReport("WordPiece")
    vocab = _vocab()
    for word in WORDPIECE_WORDS:
        expected = reference(word, vocab)
        got = report.call(wordpiece, word, vocab, name="wordpiece")
        if got is Ellipsis:
            return report
        shown = word if len(word) <= 20 else word[:8] + f"... ({len(word)} characters)"
        if list(got) == expected:
            report.ok(f"{shown!r} -> {expected}")
            continue
        if len(got) > 1 and any(not piece.startswith("##") for piece in got[1:]):
            hint = "pieces after the first continue the word: they need the '##' prefix"
        elif len(got) > len(expected) and "[UNK]" not in expected:
            hint = "take the LONGEST piece in the vocabulary first (start from the end of the word and shrink)"
        elif "[UNK]" in expected:
            hint = "a word with no full split (or over 100 characters) becomes one [UNK], not partial pieces"
        else:
            hint = "compare with the search shown in the chapter"
        report.fail(f"{shown!r}: expected {expected}, got {got}: {hint}")
    return report


def check_build_inputs(build_inputs) -> CheckReport:
    """``build_inputs(ids, max_length)`` must frame ids as ``padding="max_length", truncation=True`` would."""
    report = CheckReport("Special tokens and attention mask")
    tokenizer = course_tokenizer()
    for text, max_length in zip(FRAME_TEXTS, (8, 12, 12), strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = tokenizer(text, padding="max_length", truncation=True, max_length=max_length)
        got = report.call(build_inputs, list(ids), max_length, name="build_inputs")
        if got is Ellipsis:
            return report
        if not isinstance(got, dict) or not {"input_ids", "attention_mask"} <= set(got):
            report.fail(f"return a dict with keys 'input_ids' and 'attention_mask', not {type(got).__name__}")
            return report
        input_ids, mask = list(got["input_ids"]), list(got["attention_mask"])
        where = f"{len(ids)} ids, max_length={max_length}"
        if input_ids == expected["input_ids"] and mask == expected["attention_mask"]:
            report.ok(f"{where}: {input_ids}")
            continue
        real = [token for token, keep in zip(input_ids, mask, strict=False) if keep]
        if len(input_ids) != max_length:
            hint = f"the result must be exactly max_length={max_length} long (pad with PAD_ID, or cut)"
        elif not input_ids or input_ids[0] != tokenizer.cls_token_id:
            hint = f"start with [CLS] (id {tokenizer.cls_token_id})"
        elif not real or real[-1] != tokenizer.sep_token_id:
            hint = f"end the real tokens with [SEP] (id {tokenizer.sep_token_id}), also after cutting a long input"
        elif mask != expected["attention_mask"]:
            hint = "attention_mask is 1 on [CLS], the ids and [SEP], and 0 on padding"
        else:
            hint = "cut the ids so that [CLS] + ids + [SEP] fit in max_length, then pad with PAD_ID"
        report.fail(f"{where}: expected {expected['input_ids']}, got {input_ids}: {hint}")
    return report


def check_longest_review(longest_review) -> CheckReport:
    """``longest_review(texts, tokenizer)`` must return (text, number of tokens with [CLS] and [SEP])."""
    report = CheckReport("Longest review in tokens")
    tokenizer = course_tokenizer()
    # Longest in characters is not longest in tokens: punctuation and rare words cost more tokens per character.
    trap = ["wonderful wonderful wonderful", "a, b, c! d? e."]
    cases = [("two short texts", trap), ("the test split", list(_test_texts()))]
    for label, texts in cases:
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        expected = (texts[lengths.index(max(lengths))], max(lengths))
        got = report.call(longest_review, texts, tokenizer, name="longest_review")
        if got is Ellipsis:
            return report
        if not isinstance(got, tuple | list) or len(got) != 2:
            report.fail(f"return a pair (text, n_tokens), not {got!r}")
            return report
        text, n_tokens = got
        if text != expected[0]:
            report.fail(f"{label}: not the review with the most tokens (count tokens, not characters or words)")
        elif n_tokens == expected[1] - 2:
            report.fail(f"{label}: {n_tokens} tokens: count [CLS] and [SEP] too (the length of input_ids)")
        elif n_tokens != expected[1]:
            report.fail(f"{label}: expected {expected[1]} tokens, got {n_tokens}")
        else:
            report.ok(f"{label}: {n_tokens} tokens")
    return report


def check_decode(decode) -> CheckReport:
    """``decode(ids)`` must equal ``tokenizer.decode(ids, skip_special_tokens=True)``."""
    report = CheckReport("Decode")
    tokenizer = course_tokenizer()
    padded = tokenizer(list(DECODE_TEXTS), padding=True)["input_ids"]
    for ids in padded:
        expected = tokenizer.decode(ids, skip_special_tokens=True)
        got = report.call(decode, list(ids), name="decode")
        if got is Ellipsis:
            return report
        if got == expected:
            report.ok(repr(expected))
            continue
        if not isinstance(got, str):
            hint = f"return a string, not {type(got).__name__}"
        elif "##" in got:
            hint = "glue a '##' piece to the piece before it, without the '##'"
        elif "[" in got:
            hint = "leave out the special tokens [CLS], [SEP] and [PAD]"
        elif got.replace(" ", "") == expected.replace(" ", ""):
            hint = "spaces: one between pieces that start a word, none before . , ! ? or inside a word"
        else:
            hint = "map each id back with id_to_token"
        report.fail(f"expected {expected!r}, got {got!r}: {hint}")
    return report
