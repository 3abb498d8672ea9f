"""Checkers for the exercises of chapter 8: a stop string by hand, a repetition penalty by hand, and batched
generation with left padding and the KV cache.

Each checker compares the learner's answer with the library itself (``StopStringCriteria``, its logits processors,
``generate``) on several cases (overhanging tokens, other pad ids, a row that ends early, limits met exactly), checks
every field on every call, and never raises: whatever the learner returns becomes an ``ok`` or a ``FIX`` line.
"""

from functools import cache

import torch

from behind_pipeline.checks._core import CheckReport, as_tensor
from behind_pipeline.generation import new_tokens


@cache
def _generator():
    """(tokenizer, model) of the chapter's generator in eval mode, loaded once for all checkers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from behind_pipeline.models import generator_id

    return AutoTokenizer.from_pretrained(generator_id()), AutoModelForCausalLM.from_pretrained(generator_id()).eval()


def _fresh_tokenizer():
    """A tokenizer of its own for each case: a learner's answer may change ``padding_side`` or ``pad_token``."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import generator_id

    return AutoTokenizer.from_pretrained(generator_id())


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: a stop string by hand


def reference_stop_string_hit(tokenizer, ids: list[int], stop_string: str) -> bool:
    """The library's answer: ``StopStringCriteria``, what ``generate(stop_strings=..., tokenizer=...)`` runs."""
    from transformers import StopStringCriteria

    return bool(StopStringCriteria(tokenizer, [stop_string])(torch.tensor([ids]), None)[0])


# (what the case shows, text, how many of its tokens, stop string). The text's tokens are
# ['Ġmy', 'Ġlord', ',', 'Ġsir', '!'] and ['HAMLET', 'Ċ', 'To', 'Ġbe', ...]: the stop string inside the last token,
# across tokens, past the end of the last token (an overhang), only earlier in the text, and not at all.
STOP_TEXT = " my lord, sir!"
STOP_CASES = [
    ("the stop string inside the last token", STOP_TEXT, 2, "lord"),
    ("the stop string across the last two tokens", STOP_TEXT, 3, "d,"),
    ("the last token runs past the end of the stop string", STOP_TEXT, 4, "lord, s"),
    ("the stop string only earlier in the text", STOP_TEXT, 5, "lord"),
    ("the stop string not in the text", STOP_TEXT, 5, "sir?"),
    ("the stop string at the very end", STOP_TEXT, 5, "ir!"),
    ("a stop string with a newline, across three tokens", "HAMLET\nTo be", 3, "T\nT"),
    ("one token: the stop string is the whole text", "HAMLET", 1, "HAMLET"),
    # ['Ġc', 'a', 'f', 'Ã', '©']: the last token completes the two bytes of 'é', so the earlier tokens alone decode
    # to ' caf\ufffd', one character longer than the ' caf' the whole text starts with
    ("a character split over the last two tokens", " café", 5, "é"),
]
# (prompt, stop string, seed or None for greedy): generate(stop_strings=...) against generate with your criterion,
# then your function against StopStringCriteria after each token of the same run left to go on (STEPS_PAST_THE_STOP).
# The greedy text is '\nHAMLET\nHAMLET...': 'T\nH' spans 'HAMLET', '\n', 'HAMLET', and the last token overhangs it.
# Seed 0 writes ' lord' as its 4th token and ' Clown' next: the stop string ends where that token starts. The third
# prompt holds the stop string already and seed 1's first token is '\n' too, so only the steps after it (a '\n'
# earlier in the text, none in the last token) tell an answer that searches the whole text.
STOP_RUNS = [
    ("HAMLET\nTo be, or not to be:", "T\nH", None),  # greedy: spans three tokens, the last overhangs
    ("HAMLET\nGive me your pardon, sir:", "lord", 0),  # sampled
    ("HAMLET\nGive me your pardon, sir:", "\n", 1),  # the prompt holds the stop string already
]
STOP_NEW_TOKENS = 30
STEPS_PAST_THE_STOP = 8  # how far the run left to go on goes past the stop


def _hit_value(report: CheckReport, result, where: str) -> bool | None:
    """The learner's answer as a bool, or None and a FIX line: a bool, a NumPy bool or a one-element tensor."""
    if isinstance(result, torch.Tensor) and result.numel() == 1 and result.dtype == torch.bool:
        return bool(result)
    if type(result).__name__ in ("bool", "bool_"):
        return bool(result)
    report.fail(f"{where}: return True or False, got {type(result).__name__} {result!r:.60}")
    return None


def _stop_case(report, stop_string_hit, where, tokenizer, ids, stop_string) -> bool | None:
    """One crafted case; True when right, False when wrong, None when it could not be graded (already reported)."""
    given = list(ids)
    result = report.call(stop_string_hit, tokenizer, given, stop_string, name="stop_string_hit")
    if result is Ellipsis:
        return None
    if given != ids:
        report.fail(f"{where}: your function changed the ids it was given: work on a copy")
        return None
    got = _hit_value(report, result, where)
    if got is None:
        return None
    return got == reference_stop_string_hit(tokenizer, ids, stop_string)


def _stop_hint(tokenizer, ids, stop_string, got: bool) -> str:
    text, before = tokenizer.decode(ids), tokenizer.decode(ids[:-1])
    if got and before.endswith(stop_string) and stop_string not in before[:-1]:
        return ("the stop string is earlier in the text, ending exactly where the last token starts: that "
                "occurrence was checked at the previous step; count only one that ends inside the last token (an "
                "off-by-one in where the search starts?)")
    if got and stop_string in before:
        return ("the stop string is earlier in the text, but not in the last token: only an occurrence that "
                "reaches into the last token stops generation (earlier ones were checked at their own step)")
    if not got and before.endswith("\ufffd") and stop_string in text:
        return ("the earlier tokens end inside a character (its UTF-8 bytes are split across tokens), so decoded "
                "alone they end with '\ufffd' and are no prefix of the whole text: measure them without it")
    if not got and stop_string in text and not text.endswith(stop_string):
        return ("the last token runs past the end of the stop string: the text need not *end* with the stop "
                "string, it only has to contain it in a place that reaches into the last token"
                + ("" if stop_string in tokenizer.decode(ids[-2:]) else
                   " (here it also starts before the last two tokens: search the decoded text of them all)"))
    if not got and stop_string in text and stop_string not in tokenizer.decode(ids[-1:]):
        return ("the stop string spans several tokens: look for it in the decoded text, not in the last token "
                "alone")
    return "compare with StopStringCriteria's rule in the statement"


class LearnerStopCriterion:
    """The learner's ``stop_string_hit`` as a ``StoppingCriteria`` for ``generate``: one bool per row."""

    def __init__(self, stop_string_hit, tokenizer, stop_string):
        self.hit, self.tokenizer, self.stop_string = stop_string_hit, tokenizer, stop_string

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([bool(self.hit(self.tokenizer, row.tolist(), self.stop_string)) for row in input_ids])


def _stop_run(report, stop_string_hit, prompt, stop_string, seed) -> bool:
    from transformers import StoppingCriteriaList

    tokenizer, model = _generator()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    settings = dict(attention_mask=torch.ones_like(ids), max_new_tokens=STOP_NEW_TOKENS,
                    pad_token_id=tokenizer.eos_token_id, do_sample=seed is not None)
    where = f"{'greedy' if seed is None else f'sampling with seed {seed}'}, stop string {stop_string!r}"
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        expected = model.generate(ids, stop_strings=[stop_string], tokenizer=tokenizer, **settings)
    criterion = LearnerStopCriterion(stop_string_hit, tokenizer, stop_string)

    def run():
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            return model.generate(ids, stopping_criteria=StoppingCriteriaList([criterion]), **settings)

    got = report.call(run, name=f"generate with your stop_string_hit ({where})")
    if got is Ellipsis:
        return False
    new_expected, new_got = expected.shape[1] - ids.shape[1], got.shape[1] - ids.shape[1]
    if torch.equal(got, expected):
        if not _every_step(report, stop_string_hit, where, ids, stop_string, seed,
                           settings | dict(max_new_tokens=min(STOP_NEW_TOKENS, new_expected + STEPS_PAST_THE_STOP))):
            return False
        report.ok(f"{where}: generate stops after the same {new_expected} new token(s) as "
                  "generate(stop_strings=...)")
        return True
    report.fail(f"{where}: generate with your criterion stopped after {new_got} new token(s), "
                f"generate(stop_strings=...) after {new_expected}: "
                + _stop_hint(tokenizer, got[0].tolist() if new_got < new_expected else expected[0].tolist(),
                             stop_string, new_got < new_expected))
    return False


def _every_step(report, stop_string_hit, where, ids, stop_string, seed, settings) -> bool:
    """Your function against ``StopStringCriteria`` after each new token of the run left to go on: the steps after
    the stop show answers that stop at the right token for the wrong reason (a whole-text search when the first
    new token holds the stop string too, an occurrence that ends where the last token starts). FIX lines only."""
    from transformers import StopStringCriteria

    tokenizer, model = _generator()
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        run = model.generate(ids, **settings)[0].tolist()
    library = StopStringCriteria(tokenizer, [stop_string])
    for end in range(ids.shape[1] + 1, len(run) + 1):
        prefix = run[:end]
        result = report.call(stop_string_hit, tokenizer, list(prefix), stop_string, name="stop_string_hit")
        if result is Ellipsis:
            return False
        got = _hit_value(report, result, where)
        if got is None:
            return False
        expected = bool(library(torch.tensor([prefix]), None)[0])
        if got != expected:
            report.fail(f"{where}: generate stops at the right token, but on the same run left to go on, after "
                        f"{end - ids.shape[1]} new token(s) (the last ones "
                        f"{tokenizer.convert_ids_to_tokens(prefix[-3:])}) you say {got}, StopStringCriteria says "
                        f"{expected}: " + _stop_hint(tokenizer, prefix, stop_string, got))
            return False
    return True


def check_stop_string(stop_string_hit) -> CheckReport:
    """``stop_string_hit(tokenizer, ids, stop_string)``: the rule of ``generate(stop_strings=...)``, by hand."""
    report = CheckReport("A stop string by hand")
    tokenizer, _ = _generator()
    for where, text, count, stop_string in STOP_CASES:
        ids = tokenizer(text)["input_ids"][:count]
        where = f"{where} ({tokenizer.convert_ids_to_tokens(ids)}, stop string {stop_string!r})"
        right = _stop_case(report, stop_string_hit, where, tokenizer, ids, stop_string)
        if right is None:
            return report
        expected = reference_stop_string_hit(tokenizer, ids, stop_string)
        if not report.expect(right, f"{where}: {expected}",
                             f"{where}: got {not expected}, expected {expected}: "
                             + _stop_hint(tokenizer, ids, stop_string, not expected)):
            return report
    for prompt, stop_string, seed in STOP_RUNS:
        if not _stop_run(report, stop_string_hit, prompt, stop_string, seed):
            return report
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: a repetition penalty by hand


def reference_repetition_penalty(input_ids: torch.Tensor, logits: torch.Tensor, penalty: float) -> torch.Tensor:
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    return RepetitionPenaltyLogitsProcessor(penalty)(input_ids, logits.clone())


# (name, input_ids, logits, penalty): positive, negative and zero logits of seen tokens, a token seen twice, rows
# with different histories, a penalty below 1 (which favours repeats).
_LOGITS = torch.tensor([[2.0, -1.5, 0.0, 3.0, -0.5, 1.0, -2.0, 0.5, 4.0, -3.0],
                        [-1.0, 2.5, 1.5, -2.0, 0.0, -0.5, 3.0, 1.0, -4.0, 2.0]])
PENALTY_CASES = [
    ("1 row, token 3 seen twice", torch.tensor([[3, 1, 3, 8]]), _LOGITS[:1], 1.3),
    ("2 rows with different histories", torch.tensor([[0, 1, 2, 9], [3, 6, 6, 4]]), _LOGITS, 2.0),
    ("2 rows (a penalty below 1 favours repeats)", torch.tensor([[5, 7], [8, 1]]), _LOGITS, 0.5),
    ("2 rows (penalty 1.0 changes nothing)", torch.tensor([[5, 7], [8, 1]]), _LOGITS, 1.0),
]
PROMPT = "HAMLET\nGive me your pardon, sir:"
PENALTY_NEW_TOKENS = 16


def _penalty_case(report, repetition_penalty, where, input_ids, logits, penalty) -> bool:
    given_ids, given = input_ids.clone(), logits.clone()
    where = f"{where}, penalty={penalty}"
    values = report.tensor_answer(repetition_penalty, given_ids, given, penalty, name="repetition_penalty",
                                  what=f"{where}: repetition_penalty(...)", shape=tuple(logits.shape))
    if values is None:
        return False
    if not torch.equal(given, logits) or not torch.equal(given_ids, input_ids):
        report.fail(f"{where}: your function changed its inputs in place: return new logits, leave the given ones")
        return False
    expected = reference_repetition_penalty(input_ids, logits, penalty).double()
    if torch.allclose(values, expected, atol=1e-6):
        report.ok(f"{where}: same logits as RepetitionPenaltyLogitsProcessor")
        return True
    wrong = (values - expected).abs() > 1e-6  # (rows, vocab)
    hints = []
    seen = torch.zeros_like(wrong).scatter(1, input_ids, True)
    if (wrong & ~seen).any():
        hints.append("tokens the row has not seen changed: penalize only the ids in that row's input_ids "
                     "(each row has its own history)")
    wrong_seen = wrong & seen

    def like(mistake: torch.Tensor, where: torch.Tensor) -> bool:  # the wrong values are the mistake's
        return bool(where.any()) and torch.allclose(values[where], mistake.double()[where], atol=1e-5)

    if (wrong_seen & (logits < 0)).any() and not (wrong_seen & (logits > 0)).any():
        hints.append("negative logits are wrong: dividing a negative logit by the penalty *raises* it; multiply "
                     "negative logits by the penalty instead")
    elif like(reference_repetition_penalty(input_ids, logits, 1 / penalty), wrong_seen):
        hints.append("the penalty goes the wrong way: the seen tokens became *more* likely; divide a positive "
                     "logit by the penalty and multiply a negative one")
    if like(logits, wrong_seen):
        hints.append("seen tokens were left as they were: penalize every id in the row's input_ids (the prompt's "
                     "too), not only the last one")
    counts = torch.zeros_like(logits).scatter_add(1, input_ids, torch.ones_like(input_ids, dtype=logits.dtype))
    per_occurrence = torch.where(logits < 0, logits * penalty ** counts, logits / penalty ** counts)
    if like(per_occurrence, wrong & (counts > 1)):
        hints.append("a token seen twice must be penalized once, not once per occurrence")
    if not hints:
        hints.append("a seen token's logit z becomes z / penalty if z > 0, z * penalty if z < 0, once")
    report.fail(f"{where}: {int(wrong.sum())} logits differ from the library's: {'; '.join(hints)}")
    return False


def check_repetition_penalty(repetition_penalty) -> CheckReport:
    """``repetition_penalty(input_ids, logits, penalty)``: the library's repetition penalty, then a greedy run."""
    from behind_pipeline.generation import greedy_by_hand

    report = CheckReport("A repetition penalty by hand")
    for where, input_ids, logits, penalty in PENALTY_CASES:
        if not _penalty_case(report, repetition_penalty, where, input_ids, logits, penalty):
            return report
    tokenizer, model = _generator()
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        real = model(input_ids=prompt).logits[:, -1].float()  # (1, vocab)
    if not _penalty_case(report, repetition_penalty, "the model's logits after the prompt", prompt, real, 1.3):
        return report
    for penalty in (1.3, 2.0):
        with torch.inference_mode():
            expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                      max_new_tokens=PENALTY_NEW_TOKENS, repetition_penalty=penalty,
                                      pad_token_id=tokenizer.eos_token_id)
        by_hand = report.call(greedy_by_hand, model, prompt, PENALTY_NEW_TOKENS, tokenizer.eos_token_id,
                              process=lambda ids, logits, penalty=penalty: _penalized(repetition_penalty, ids,
                                                                                      logits, penalty),
                              name="greedy_by_hand with your penalty")
        if by_hand is Ellipsis:
            return report
        same = torch.equal(by_hand, expected)
        if not report.expect(same, f"greedy run, penalty={penalty}: the same {PENALTY_NEW_TOKENS} tokens as "
                             "generate(repetition_penalty=...)",
                             f"greedy run, penalty={penalty}: tokens differ from generate(repetition_penalty=...)"):
            return report
    return report


def _penalized(repetition_penalty, ids, logits, penalty) -> torch.Tensor:
    """The learner's penalty as a float32 tensor, so that lists and NumPy arrays work in the greedy loop too."""
    result = as_tensor(repetition_penalty(ids, logits, penalty), dtype=torch.float32)
    if result is None:
        raise TypeError("repetition_penalty returned something that is not a tensor")
    return result


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: batched generation with left padding and the KV cache


class CountingModel:
    """Wraps a model and records each ``model(...)`` call: the shape of ``input_ids`` and whether a cache came in
    (``calls``), and the width of its attention mask (``mask_widths``, None without one).

    Anything else (``config``, ``device``...) is the wrapped model's. ``generate`` is too, but it calls the model's
    forward directly, so a loop that hides behind ``generate`` records no calls.
    """

    def __init__(self, model):
        self._model = model
        self.calls: list[tuple[tuple[int, ...] | None, bool]] = []
        self.mask_widths: list[int | None] = []

    def __call__(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else None
        self.calls.append((shape, kwargs.get("past_key_values") is not None))
        mask = kwargs.get("attention_mask")
        self.mask_widths.append(mask.shape[-1] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


# (prompts, max_new_tokens, pad token, EOS): lengths from 1 token to a line (with 14 pads, 'KING CLAUDIUS\nHow' reads
# another third token when its cached steps' positions count the pads), two of the same length, one new token
# only (the limit: a single call), a pad token that is an ordinary word, so pads that leak into attention show, a
# prompt that holds the pad token as a real token (the longest, so no pad goes in front of it: once the EOS, once
# ' lord' as its last token, which the next token depends on), and the newline as EOS, so rows end at different
# steps and the batch must go on until every row has ended.
BATCH_CASES = [
    (["HAMLET\nGive me your pardon, sir: I've done you wrong;", "O", "KING CLAUDIUS\nHow"], 6, "eos", "eos"),
    (["Good my lord,", "HAMLET\nThe king", "Horatio, what", "Ay"], 5, "ordinary", "eos"),
    (["Good my lord,", "O"], 1, "eos", "eos"),
    (["Good my lord,", "O", "The end.<|endoftext|>HAMLET\nTo be, or"], 6, "eos", "eos"),
    (["O", "The king", "HAMLET\nGood my lord"], 6, "lord", "eos"),
    (["HAMLET\nTo be, or not to be:", "O", "The king"], 8, "ordinary", "newline"),
]


def expected_one_at_a_time(model, tokenizer, prompts, max_new_tokens, eos_token_id=None) -> list[list[int]]:
    """Greedy new tokens of each prompt alone (no padding at all), from ``generate``, cut after EOS."""
    eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                                 eos_token_id=eos_token_id)
        rows.extend(new_tokens(out, ids.shape[1], eos_token_id))
    return rows


def _as_rows(report: CheckReport, result, count: int, where: str, eos_token_id) -> list[list[int]] | None:
    """The learner's rows as lists of ints, cut after the first EOS, or None and a FIX line."""
    try:
        rows = [[int(token) for token in row] for row in result]
    except Exception as error:  # not iterable, strings...: all become a message
        report.fail(f"{where}: return one list of new token ids per prompt ({type(error).__name__}: {error})")
        return None
    if len(rows) != count:
        report.fail(f"{where}: {len(rows)} rows for {count} prompts: return one row per prompt, in their order")
        return None
    return [row[: row.index(eos_token_id) + 1] if eos_token_id in row else row for row in rows]


def _batch_case(report, generate_batch, prompts, max_new_tokens, pad, eos) -> bool:
    tokenizer_for_expected, model = _generator()
    tokenizer = _fresh_tokenizer()
    if pad == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    else:  # an ordinary token as pad: the mask must hide it, whatever it is
        word = " lord" if pad == "lord" else "e"
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(tokenizer(word)["input_ids"][0])
    if eos == "newline":  # rows then end at different steps
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(tokenizer("\n")["input_ids"][0])
    where = (f"{len(prompts)} prompts, max_new_tokens={max_new_tokens}, pad {tokenizer.pad_token!r}, "
             f"EOS {tokenizer.eos_token!r}")
    counting = CountingModel(model)
    result = report.call(generate_batch, counting, tokenizer, list(prompts), max_new_tokens, name="generate_batch")
    if result is Ellipsis:
        return False
    rows = _as_rows(report, result, len(prompts), where, tokenizer.eos_token_id)
    if rows is None:
        return False
    expected = expected_one_at_a_time(model, tokenizer_for_expected, prompts, max_new_tokens,
                                      tokenizer.eos_token_id)
    wrong = [i for i, (row, want) in enumerate(zip(rows, expected, strict=True)) if row[:len(want)] != want
             or len(row) != len(want)]
    if wrong:
        token_lists = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        lengths = [len(ids) for ids in token_lists]
        holds_pad = [i for i, ids in enumerate(token_lists) if tokenizer.pad_token_id in ids]
        ended = [i for i, row in enumerate(rows) if row and row[-1] == tokenizer.eos_token_id]
        widths = counting.mask_widths  # each call's attention mask: one column wider than the last
        if len(widths) > 1 and None not in widths and widths != list(range(widths[0], widths[0] + len(widths))):
            hint = (f": the attention mask's widths were {widths}: it covers the cache and the new token, so add a "
                    "column of ones for each new token")
        elif ended and all(len(rows[i]) < len(expected[i]) and rows[i] == expected[i][:len(rows[i])]
                           for i in wrong):
            hint = (f": rows {wrong} stop early, when row(s) {ended} produced EOS: go on until *every* row has "
                    "produced EOS (a finished row's later tokens are ignored)")
        elif all(lengths[i] < max(lengths) for i in wrong):
            hint = (": only prompts shorter than the longest are wrong, so the padding is: pad on the left, pass "
                    "the attention mask, and count each row's positions from its first real token (in the cached "
                    "steps too: a row's next position is its count of real tokens so far)")
        elif holds_pad and set(wrong) <= set(holds_pad):
            hint = (f": only the prompt(s) that hold the pad token {tokenizer.pad_token!r} as a real token are "
                    "wrong: take the attention mask from the tokenizer, not from input_ids != pad_token_id (a "
                    "prompt may contain that id)")
        else:
            hint = _row_hint(rows, expected, wrong, token_lists, max_new_tokens, tokenizer.eos_token_id)
        report.fail(f"{where}: prompt(s) {wrong} differ from generating each prompt alone, e.g. got "
                    f"{rows[wrong[0]]}, expected {expected[wrong[0]]}{hint}")
        return False
    calls = counting.calls
    if not calls:
        report.fail(f"{where}: the right tokens, but model(...) was never called: write the loop yourself, "
                    "calling model(...) once per step, rather than model.generate")
        return False
    longest = max(len(tokenizer(prompt)["input_ids"]) for prompt in prompts)
    first_ok = calls[0][0] == (len(prompts), longest) and not calls[0][1]
    later_ok = all(shape == (len(prompts), 1) and cached for shape, cached in calls[1:])
    if not (first_ok and later_ok and len(calls) <= max_new_tokens):
        report.fail(f"{where}: the right tokens, but the model saw input_ids of shapes {[c[0] for c in calls]}: "
                    f"run the padded prompts once ({(len(prompts), longest)}), then one new token per row with "
                    f"past_key_values, {max_new_tokens} call(s) at most")
        return False
    needed = max(len(row) for row in expected)  # one call per new token; none once every row has ended
    if len(calls) != needed:
        report.fail(f"{where}: the right tokens, but {len(calls)} model calls where {needed} make them: every row "
                    f"had produced EOS after {needed} token(s), so stop there; compare each new token with "
                    f"tokenizer.eos_token_id (here {tokenizer.eos_token!r}), not model.config.eos_token_id")
        return False
    report.ok(f"{where}: each prompt's new tokens ({[len(row) for row in expected]}) equal generating it alone, "
              f"{len(calls)} model call(s), one token per row after the first")
    return True


def _row_hint(rows, expected, wrong, token_lists, max_new_tokens, eos_token_id) -> str:
    """The mistake behind wrong rows when it is not the padding: the prompt kept, the EOS left out, a step too many
    or too few; "" when none fits."""
    if any(len(rows[i]) > len(expected[i]) and rows[i][:len(token_lists[i])] == token_lists[i] for i in wrong):
        return ": rows start with their prompt's tokens (and pads): return only the new tokens"
    if all(expected[i][-1:] == [eos_token_id] and rows[i] == expected[i][:-1] for i in wrong):
        return ": rows lack the EOS that ends them: keep it as the row's last token"
    if all(eos_token_id not in rows[i] and eos_token_id not in expected[i] and len(rows[i]) != max_new_tokens
           for i in wrong):
        return (f": rows hold {sorted({len(rows[i]) for i in wrong})} new tokens where max_new_tokens="
                f"{max_new_tokens} were asked for (an off-by-one in the loop?)")
    return ""


def check_generate_batch(generate_batch) -> CheckReport:
    """``generate_batch(model, tokenizer, prompts, max_new_tokens)``: greedy, batched, left-padded, with the cache."""
    report = CheckReport("Batched generation with the KV cache")
    for prompts, max_new_tokens, pad, eos in BATCH_CASES:
        if not _batch_case(report, generate_batch, prompts, max_new_tokens, pad, eos):
            return report
    return report
