"""Checkers for the exercises of chapter 8: the size of the nucleus under temperature, a repetition penalty by hand,
and batched generation with left padding and the KV cache.

Each checker compares the learner's answer with the library itself (its logits processors, ``generate``) on several
cases (other sizes, other temperatures, other pad ids, limits met exactly), checks every field on every call, and
never raises: whatever the learner returns becomes an ``ok`` or a ``FIX`` line.
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


# The held-out lines of Hamlet the checkers run the model on (a few lines of the chapter's test text).
CHECK_TEXT = ("HAMLET\nGive me your pardon, sir: I've done you wrong;\nBut pardon't, as you are a gentleman.\n"
              "This presence knows,\nAnd you must needs have heard, how I am punish'd\n")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: how many tokens can sampling pick?


def reference_nucleus_size(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Tokens left with a non-zero probability by the library's temperature then top-p warpers: (rows,) ints."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = logits.float()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.isfinite(scores).sum(dim=-1)


def nucleus_margin(logits: torch.Tensor, temperature: float, top_p: float) -> float:
    """How far a row's cumulative probabilities (most likely first) stay from ``top_p``: a case close to 0 would
    depend on float rounding, so the tests keep every case of this module above 1e-5."""
    probs = (logits.double() / temperature).softmax(dim=-1).sort(dim=-1, descending=True).values
    return float((probs.cumsum(dim=-1) - top_p).abs().min())


# (name, logits rows, temperature, top_p). Logits span far more than 1, rows differ, limits met: top_p 1.0 keeps
# every token, a dominant token is kept alone, temperature 1.0 changes nothing.
_CRAFTED = torch.tensor([[4.0, 2.5, 2.0, 0.5, -1.0, -3.0, -3.5, 1.2],
                         [0.3, 0.1, -0.2, 0.0, 0.25, -0.1, 0.05, 0.2],
                         [9.0, 1.0, 0.5, 0.0, -0.5, -2.0, -4.0, 0.7]])
NUCLEUS_CASES = [
    ("3 rows of 8 logits", _CRAFTED, 1.0, 0.9),
    ("3 rows of 8 logits", _CRAFTED, 0.5, 0.9),
    ("3 rows of 8 logits", _CRAFTED, 2.0, 0.8),
    ("3 rows of 8 logits", _CRAFTED, 1.5, 0.5),
    ("3 rows of 8 logits (a transposed view, not contiguous)", _CRAFTED.T.contiguous().T, 0.7, 0.75),
    ("3 rows of 8 logits (top_p=1.0: nothing is dropped)", _CRAFTED, 1.0, 1.0),
    ("one dominant token", torch.tensor([[12.0, 0.0, -1.0, -2.0, 1.0]]), 1.0, 0.9),
]
REAL_POSITIONS = 12  # positions of CHECK_TEXT whose next-token logits are checked too
# (temperature, top_p) on those logits: with thousands of small probabilities, some cumulative sum always lands near
# top_p; these two keep every sum at least 1e-5 away from it (a test checks), far above float32 rounding.
REAL_CASES = ((0.6, 0.9), (1.2, 0.8))


@cache
def _real_logits() -> torch.Tensor:
    tokenizer, model = _generator()
    ids = tokenizer(CHECK_TEXT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -REAL_POSITIONS:].float()  # (positions, vocab)


def _nucleus_case(report: CheckReport, nucleus_size, where: str, logits, temperature, top_p) -> bool:
    given = logits.clone()
    result = report.call(nucleus_size, given, temperature, top_p, name="nucleus_size")
    if result is Ellipsis:
        return False
    where = f"{where}, temperature={temperature}, top_p={top_p}"
    sizes = report.tensor(result, f"{where}: nucleus_size(...)", shape=(len(logits),))
    if sizes is None:
        return False
    if not torch.equal(given, logits):
        report.fail(f"{where}: your function changed the logits it was given: work on a copy")
        return False
    expected = reference_nucleus_size(logits, temperature, top_p)
    if not torch.equal(sizes, sizes.round()):
        report.fail(f"{where}: {sizes.tolist()} are not whole numbers: count the tokens left")
        return False
    got = sizes.long()
    if torch.equal(got, expected):
        report.ok(f"{where}: sizes {expected.tolist()}")
        return True
    hints = []
    if temperature != 1.0 and torch.equal(got, reference_nucleus_size(logits, 1.0, top_p)):
        hints.append("they are the sizes without temperature: divide the logits by the temperature *before* the "
                     "softmax (a softmax first, then temperature, leaves the ranking and the nucleus unchanged)")
    if temperature != 1.0 and torch.equal(got, reference_nucleus_size(logits, 1 / temperature, top_p)):
        hints.append("they are the sizes at 1/temperature: divide the logits by the temperature, don't multiply")
    if torch.equal(got, (expected - 1).clamp(min=1)) or torch.equal(got, expected - 1):
        hints.append("one token short: keep the token whose probability makes the sum cross top_p")
    if torch.equal(got, expected + 1):
        hints.append("one token too many: stop at the first token whose cumulative probability reaches top_p")
    report.fail(f"{where}: got {got.tolist()}, expected {expected.tolist()}"
                + (f": {'; '.join(hints)}" if hints else ""))
    return False


def check_nucleus_size(nucleus_size) -> CheckReport:
    """``nucleus_size(logits, temperature, top_p)``: tokens of each row that sampling can still pick."""
    report = CheckReport("How many tokens can sampling pick?")
    for where, logits, temperature, top_p in NUCLEUS_CASES:
        if not _nucleus_case(report, nucleus_size, where, logits, temperature, top_p):
            return report
    real = _real_logits()
    for temperature, top_p in REAL_CASES:
        if not _nucleus_case(report, nucleus_size, f"the model's logits at {REAL_POSITIONS} positions", real,
                             temperature, top_p):
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
    result = report.call(repetition_penalty, given_ids, given, penalty, name="repetition_penalty")
    if result is Ellipsis:
        return False
    where = f"{where}, penalty={penalty}"
    values = report.tensor(result, f"{where}: repetition_penalty(...)", shape=tuple(logits.shape))
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
    negative_seen = seen & (logits < 0)
    if (wrong & negative_seen).any() and not (wrong & seen & (logits > 0)).any():
        hints.append("negative logits are wrong: dividing a negative logit by the penalty *raises* it; multiply "
                     "negative logits by the penalty instead")
    counts = torch.zeros_like(logits).scatter_add(1, input_ids, torch.ones_like(input_ids, dtype=logits.dtype))
    if (wrong & (counts > 1)).any():
        hints.append("a token seen twice must be penalized once, not once per occurrence")
    report.fail(f"{where}: {int(wrong.sum())} logits differ from the library's"
                + (f": {'; '.join(hints)}" if hints else ""))
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
    """Wraps a model and records each ``model(...)`` call: the shape of ``input_ids`` and whether a cache came in.

    Anything else (``config``, ``device``...) is the wrapped model's. ``generate`` is too, but it calls the model's
    forward directly, so a loop that hides behind ``generate`` records no calls.
    """

    def __init__(self, model):
        self._model = model
        self.calls: list[tuple[tuple[int, ...] | None, bool]] = []

    def __call__(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else None
        self.calls.append((shape, kwargs.get("past_key_values") is not None))
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


# (prompts, max_new_tokens, pad token): lengths from 1 token to a line, two of the same length, one new token only
# (the limit: a single call), and a pad token that is an ordinary word, so pads that leak into attention show.
BATCH_CASES = [
    (["HAMLET\nGive me your pardon, sir: I've done you wrong;", "O", "To be, or not"], 6, "eos"),
    (["Good my lord,", "HAMLET\nThe king", "Horatio, what", "Ay"], 5, "ordinary"),
    (["Good my lord,", "O"], 1, "eos"),
]


def expected_one_at_a_time(model, tokenizer, prompts, max_new_tokens) -> list[list[int]]:
    """Greedy new tokens of each prompt alone (no padding at all), from ``generate``."""
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
        rows.extend(new_tokens(out, ids.shape[1], tokenizer.eos_token_id))
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


def _batch_case(report, generate_batch, prompts, max_new_tokens, pad) -> bool:
    tokenizer_for_expected, model = _generator()
    tokenizer = _fresh_tokenizer()
    if pad == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    else:  # an ordinary token as pad: the mask must hide it, whatever it is
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(tokenizer("e")["input_ids"][0])
    where = f"{len(prompts)} prompts, max_new_tokens={max_new_tokens}, pad {tokenizer.pad_token!r}"
    counting = CountingModel(model)
    result = report.call(generate_batch, counting, tokenizer, list(prompts), max_new_tokens, name="generate_batch")
    if result is Ellipsis:
        return False
    rows = _as_rows(report, result, len(prompts), where, tokenizer.eos_token_id)
    if rows is None:
        return False
    expected = expected_one_at_a_time(model, tokenizer_for_expected, prompts, max_new_tokens)
    wrong = [i for i, (row, want) in enumerate(zip(rows, expected, strict=True)) if row[:len(want)] != want
             or len(row) != len(want)]
    if wrong:
        lengths = [len(tokenizer(prompt)["input_ids"]) for prompt in prompts]
        hint = ""
        if all(lengths[i] < max(lengths) for i in wrong):
            hint = (": only prompts shorter than the longest are wrong, so the padding is: pad on the left, pass "
                    "the attention mask, and count each row's positions from its first real token")
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
    report.ok(f"{where}: each prompt's {max_new_tokens} new token(s) equal generating it alone, "
              f"{len(calls)} model call(s), one token per row after the first")
    return True


def check_generate_batch(generate_batch) -> CheckReport:
    """``generate_batch(model, tokenizer, prompts, max_new_tokens)``: greedy, batched, left-padded, with the cache."""
    report = CheckReport("Batched generation with the KV cache")
    for prompts, max_new_tokens, pad in BATCH_CASES:
        if not _batch_case(report, generate_batch, prompts, max_new_tokens, pad):
            return report
    return report
