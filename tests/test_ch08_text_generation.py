"""Chapter 8: the hand-built tokenizer, loss and decoding loops equal the library; the checkers grade fairly.

Each checker must accept the reference answer and valid alternatives, reject the typical wrong answers named below
(each named after the mistake it models), and never raise, whatever the learner returns.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from behind_pipeline import models, tiny_gpt
from behind_pipeline.checks import ch08_text_generation as ch08
from behind_pipeline.checks.ch08_text_generation import (
    check_generate_batch,
    check_nucleus_size,
    check_repetition_penalty,
)
from behind_pipeline.generation import (
    bpe_tables,
    bytes_to_unicode,
    causal_lm_loss,
    encode_by_hand,
    greedy_batch_by_hand,
    greedy_by_hand,
    greedy_with_cache,
    left_pad,
    new_tokens,
    position_ids_from_mask,
    sample_by_hand,
    warp_logits,
)

PROMPTS = ["HAMLET\nTo be, or not to be:", "O", "Good my lord,", "QUEEN GERTRUDE\nThis is the very"]


@pytest.fixture(scope="module")
def gen_tokenizer():
    return AutoTokenizer.from_pretrained(models.generator_id())


@pytest.fixture(scope="module")
def generator():
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(models.generator_id()).eval()


@pytest.fixture(scope="module")
def test_text():
    return tiny_gpt.hamlet_texts()[1]


def _ids(tokenizer, text):
    return tokenizer(text, return_tensors="pt")["input_ids"]


def _generate(model, ids, **kwargs):
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=model.config.eos_token_id,
                              **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The model and its training


def test_the_saved_generator_is_current_and_summarised():
    summary = json.loads((models.GENERATOR_DIR / tiny_gpt.SUMMARY_FILE).read_text())
    assert tiny_gpt.is_current() and summary["fingerprint"] == tiny_gpt.fingerprint()
    assert summary["vocab_size"] == tiny_gpt.SETTINGS.vocab_size
    assert summary["final_loss"] < summary["first_loss"]  # it learned something
    assert (models.GENERATOR_DIR / "model.safetensors").exists()


def test_the_fingerprint_changes_with_the_settings(monkeypatch):
    before = tiny_gpt.fingerprint()
    monkeypatch.setattr(tiny_gpt, "SETTINGS", tiny_gpt.TinyGPTSettings(steps=tiny_gpt.SETTINGS.steps + 1))
    assert tiny_gpt.fingerprint() != before


def test_the_split_cuts_at_a_line_and_keeps_every_character():
    text = "".join(f"line {i}\n" for i in range(100))
    train, test = tiny_gpt.split_hamlet(text, 0.05)
    assert train + test == text and train.endswith("\n") and 0 < len(test) <= 0.06 * len(text)


def test_generator_id_offline_online_and_overridden(monkeypatch):
    monkeypatch.delenv("BTP_GENERATOR_ID", raising=False)
    monkeypatch.setenv("BTP_ONLINE", "0")
    assert models.generator_id() == str(models.GENERATOR_DIR)
    monkeypatch.setenv("BTP_ONLINE", "1")
    assert models.generator_id() == "gpt2"
    monkeypatch.setenv("BTP_GENERATOR_ID", "/somewhere/else")
    assert models.generator_id() == "/somewhere/else"


# ---------------------------------------------------------------------------------------------------------------
# The chapter's claims


def test_bytes_to_unicode_covers_every_byte_once():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[32] == "Ġ" and table[10] == "Ċ" and table[65] == "A"


@pytest.mark.parametrize("text", ["test", "odd"])
def test_hand_bpe_equals_the_fast_tokenizer(gen_tokenizer, test_text, text):
    text = test_text if text == "test" else "Tokens in 2026: naïve café, ½ price!!  🙂\n\tend  \n\n x's 'tis we'll"
    vocab, ranks = bpe_tables(gen_tokenizer)
    assert encode_by_hand(text, vocab, ranks) == gen_tokenizer(text)["input_ids"]


def test_the_loss_with_shifted_labels_is_the_models_loss(generator, gen_tokenizer, test_text):
    ids = torch.tensor(gen_tokenizer(test_text)["input_ids"][:256]).view(2, 128)  # (2, 128)
    with torch.inference_mode():
        outputs = generator(input_ids=ids, labels=ids)
    assert abs(causal_lm_loss(outputs.logits, ids) - outputs.loss).item() < 1e-5
    unshifted = F.cross_entropy(outputs.logits.flatten(0, 1), ids.flatten())
    assert abs(unshifted - outputs.loss).item() > 0.5  # forgetting the shift is not a small error


def test_the_causal_mask_hides_later_tokens(generator, gen_tokenizer):
    ids = _ids(gen_tokenizer, PROMPTS[0])
    changed = ids.clone()
    changed[0, -2:] = torch.tensor([5, 6])
    with torch.inference_mode():
        a, b = generator(input_ids=ids).logits, generator(input_ids=changed).logits
    assert (a[0, :-2] - b[0, :-2]).abs().max() < 1e-4 < (a[0, -2:] - b[0, -2:]).abs().max()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_loops_equal_generate(generator, gen_tokenizer, prompt):
    ids = _ids(gen_tokenizer, prompt)
    eos = gen_tokenizer.eos_token_id
    expected = _generate(generator, ids, do_sample=False, max_new_tokens=20)
    assert torch.equal(greedy_by_hand(generator, ids, 20, eos), expected)
    assert torch.equal(greedy_with_cache(generator, ids, 20, eos), expected)


def test_greedy_loops_stop_at_eos():
    class AlwaysEOS(torch.nn.Module):  # a model whose next token is always id 2
        def forward(self, input_ids, **kwargs):
            logits = torch.zeros(*input_ids.shape, 5)
            logits[..., 2] = 1.0
            return type("Out", (), {"logits": logits, "past_key_values": None})()

    ids = torch.tensor([[0, 1]])
    assert greedy_by_hand(AlwaysEOS(), ids, 10, eos_token_id=2).tolist() == [[0, 1, 2]]
    assert greedy_with_cache(AlwaysEOS(), ids, 10, eos_token_id=2).tolist() == [[0, 1, 2]]
    assert greedy_by_hand(AlwaysEOS(), ids, 10, eos_token_id=None).shape[1] == 12


@pytest.mark.parametrize(("temperature", "top_k", "top_p"),
                         [(0.8, 50, 0.9), (1.0, None, 0.5), (1.5, 5, None), (0.3, 0, 0.99), (2.0, 1, 0.9)])
def test_warp_logits_equals_the_library_warpers_in_order(generator, gen_tokenizer, test_text, temperature, top_k,
                                                         top_p):
    ids = torch.tensor([gen_tokenizer(test_text)["input_ids"][:128]])
    with torch.inference_mode():
        rows = generator(input_ids=ids).logits[0].float()
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        warpers.append(TopPLogitsWarper(top_p))
    expected, got = warpers(ids, rows.clone()), warp_logits(rows, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
    kept = torch.isfinite(got)
    assert (got[kept] - expected[kept]).abs().max() < 1e-5


def test_top_p_before_temperature_keeps_other_tokens(generator, gen_tokenizer, test_text):
    ids = torch.tensor([gen_tokenizer(test_text)["input_ids"][:128]])
    with torch.inference_mode():
        rows = generator(input_ids=ids).logits[0].float()
    right = torch.isfinite(warp_logits(rows, 0.5, None, 0.9))
    swapped = torch.isfinite(warp_logits(rows, 1.0, None, 0.9) / 0.5)
    assert not torch.equal(right, swapped)


@pytest.mark.parametrize(("seed", "settings"), [(0, dict(temperature=0.8, top_k=50, top_p=0.9)),
                                                (1, dict(temperature=1.3, top_k=0, top_p=0.95)),
                                                (2, dict(temperature=1.0, top_k=10, top_p=1.0))])
def test_sampling_loop_equals_generate_with_the_same_seed(generator, gen_tokenizer, seed, settings):
    ids = _ids(gen_tokenizer, PROMPTS[0])
    torch.manual_seed(seed)
    hand = sample_by_hand(generator, ids, 20, eos_token_id=gen_tokenizer.eos_token_id, **settings)
    torch.manual_seed(seed)
    library = _generate(generator, ids, do_sample=True, max_new_tokens=20, **settings)
    assert torch.equal(hand, library)


def test_left_padded_batch_equals_generate_and_each_prompt_alone(generator, gen_tokenizer):
    eos = gen_tokenizer.eos_token_id
    token_lists = [gen_tokenizer(p)["input_ids"] for p in PROMPTS]
    batch = left_pad(token_lists, eos)
    gen_tokenizer.pad_token, gen_tokenizer.padding_side = gen_tokenizer.eos_token, "left"
    library_batch = gen_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert all(torch.equal(batch[key], library_batch[key]) for key in batch)
    hand = greedy_batch_by_hand(generator, batch["input_ids"], batch["attention_mask"], 12, eos, eos)
    with torch.inference_mode():
        library = generator.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=eos)
    assert torch.equal(hand, library)
    alone = [new_tokens(_generate(generator, torch.tensor([ids]), do_sample=False, max_new_tokens=12), len(ids),
                        eos)[0] for ids in token_lists]
    assert new_tokens(hand, batch["input_ids"].shape[1], eos) == alone


def test_right_padding_reads_the_shorter_prompts_next_token_off_a_pad(generator, gen_tokenizer):
    eos = gen_tokenizer.eos_token_id
    token_lists = [gen_tokenizer(p)["input_ids"] for p in PROMPTS]
    longest = max(len(ids) for ids in token_lists)
    ids = torch.tensor([ids + [eos] * (longest - len(ids)) for ids in token_lists])
    mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in token_lists])
    with torch.inference_mode():
        right = generator(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
        alone = torch.cat([generator(input_ids=torch.tensor([t])).logits[:, -1] for t in token_lists])
    diffs = (right - alone).abs().amax(dim=-1)
    for t, diff in zip(token_lists, diffs, strict=True):
        assert diff < 1e-4 if len(t) == longest else diff > 0.5


def test_position_ids_count_from_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


def test_the_pipeline_puts_the_prompt_string_before_the_decoded_new_tokens(generator, gen_tokenizer):
    generator_pipeline = pipeline("text-generation", model=models.generator_id())
    for prompt in PROMPTS[:2]:
        ids = _ids(gen_tokenizer, prompt)
        out = _generate(generator, ids, do_sample=False, max_new_tokens=12)
        new_text = gen_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        full = generator_pipeline(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
        new = generator_pipeline(prompt, max_new_tokens=12, do_sample=False, return_full_text=False)
        assert full == prompt + new_text and new[0]["generated_text"] == new_text


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: nucleus size


def nucleus_size(logits, temperature, top_p):
    probs = (logits / temperature).softmax(dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    return ((sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p).sum(dim=-1)


def nucleus_size_with_the_chapters_functions(logits, temperature, top_p):
    return torch.isfinite(warp_logits(logits, temperature, None, top_p)).sum(dim=-1).numpy()  # NumPy is fine


def temperature_after_the_softmax(logits, temperature, top_p):
    probs = logits.softmax(dim=-1) / temperature
    probs = probs / probs.sum(dim=-1, keepdim=True)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    return ((sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p).sum(dim=-1)


def temperature_multiplied(logits, temperature, top_p):
    return nucleus_size(logits * temperature, 1.0, top_p)


def top_p_before_temperature(logits, temperature, top_p):
    kept = torch.isfinite(warp_logits(logits, 1.0, None, top_p))
    return torch.isfinite(torch.where(kept, logits / temperature, -torch.inf)).sum(dim=-1)


def drops_the_token_crossing_top_p(logits, temperature, top_p):
    sorted_probs = (logits / temperature).softmax(dim=-1).sort(dim=-1, descending=True).values
    return (sorted_probs.cumsum(dim=-1) < top_p).sum(dim=-1)


def divides_the_logits_in_place(logits, temperature, top_p):
    logits /= temperature
    return nucleus_size(logits, 1.0, top_p)


def as_python_floats(logits, temperature, top_p):
    return [float(n) + 0.5 for n in nucleus_size(logits, temperature, top_p)]


def test_every_nucleus_case_is_far_from_the_top_p_boundary():
    real = ch08._real_logits()
    cases = [(logits, t, p) for _, logits, t, p in ch08.NUCLEUS_CASES if p < 1.0]
    cases += [(real, temperature, top_p) for temperature, top_p in ch08.REAL_CASES]
    for logits, temperature, top_p in cases:
        for row in logits:
            # float32 rounding of a cumulative sum over the vocabulary stays below 1e-6
            assert ch08.nucleus_margin(row, temperature, top_p) > 1e-5


@pytest.mark.parametrize("answer", [nucleus_size, nucleus_size_with_the_chapters_functions])
def test_nucleus_checker_accepts_right_answers(answer):
    assert check_nucleus_size(answer).passed


@pytest.mark.parametrize(("answer", "hint"), [
    (temperature_after_the_softmax, "before* the softmax"),
    (temperature_multiplied, "don't multiply"),
    (top_p_before_temperature, "sizes without temperature"),
    (drops_the_token_crossing_top_p, "makes the sum cross top_p"),
    (divides_the_logits_in_place, "changed the logits"),
    (as_python_floats, "whole numbers"),
])
def test_nucleus_checker_rejects_typical_mistakes(answer, hint):
    report = check_nucleus_size(answer)
    assert not report.passed and hint in repr(report)


def test_the_wrong_nucleus_answers_are_wrong_on_some_case():
    # Not a test of the checker's messages: each mistake really gives other numbers than the library.
    for answer in (temperature_after_the_softmax, temperature_multiplied, top_p_before_temperature,
                   drops_the_token_crossing_top_p):
        assert any(not torch.equal(torch.as_tensor(answer(logits, t, p)), ch08.reference_nucleus_size(logits, t, p))
                   for _, logits, t, p in ch08.NUCLEUS_CASES)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: repetition penalty


def repetition_penalty(input_ids, logits, penalty):
    seen = torch.gather(logits, 1, input_ids)
    return logits.scatter(1, input_ids, torch.where(seen < 0, seen * penalty, seen / penalty))


def repetition_penalty_by_loops(input_ids, logits, penalty):
    result = logits.clone().numpy()
    for row, ids in enumerate(input_ids.tolist()):
        for token in set(ids):
            value = result[row, token]
            result[row, token] = value * penalty if value < 0 else value / penalty
    return result


def divides_every_logit(input_ids, logits, penalty):
    seen = torch.gather(logits, 1, input_ids)
    return logits.scatter(1, input_ids, seen / penalty)


def penalty_per_occurrence(input_ids, logits, penalty):
    result = logits.clone()
    for row, ids in enumerate(input_ids.tolist()):
        for token in ids:
            value = result[row, token]
            result[row, token] = value * penalty if value < 0 else value / penalty
    return result


def penalty_for_every_row_s_tokens(input_ids, logits, penalty):
    every = input_ids.flatten().unique().expand(len(logits), -1)
    return repetition_penalty(every, logits, penalty)


def penalizes_in_place(input_ids, logits, penalty):
    seen = torch.gather(logits, 1, input_ids)
    return logits.scatter_(1, input_ids, torch.where(seen < 0, seen * penalty, seen / penalty))


@pytest.mark.parametrize("answer", [repetition_penalty, repetition_penalty_by_loops])
def test_penalty_checker_accepts_right_answers(answer):
    assert check_repetition_penalty(answer).passed


@pytest.mark.parametrize(("answer", "hint"), [
    (divides_every_logit, "multiply negative logits"),
    (penalty_per_occurrence, "once, not once per occurrence"),
    (penalty_for_every_row_s_tokens, "each row has its own history"),
    (penalizes_in_place, "in place"),
])
def test_penalty_checker_rejects_typical_mistakes(answer, hint):
    report = check_repetition_penalty(answer)
    assert not report.passed and hint in repr(report)


def test_the_penalty_changes_the_greedy_text(generator, gen_tokenizer):
    ids = _ids(gen_tokenizer, ch08.PROMPT)
    plain = _generate(generator, ids, do_sample=False, max_new_tokens=ch08.PENALTY_NEW_TOKENS)
    penalized = _generate(generator, ids, do_sample=False, max_new_tokens=ch08.PENALTY_NEW_TOKENS,
                          repetition_penalty=1.3)
    assert not torch.equal(plain, penalized)  # so the checker's greedy run tests the penalty


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: batched generation with the cache


def generate_batch(model, tokenizer, prompts, max_new_tokens, side="left", positions_from_mask=True, mask_on=True,
                   cache=True):
    tokenizer.padding_side = side
    encoding = tokenizer(prompts, padding=True, return_tensors="pt")
    ids, mask = encoding["input_ids"], encoding["attention_mask"]
    positions = position_ids_from_mask(mask)
    all_ids = ids
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    rows, past = [[] for _ in prompts], None
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            kwargs = dict(input_ids=ids if cache else all_ids, use_cache=cache)
            if mask_on:
                kwargs["attention_mask"] = mask
            if positions_from_mask:
                kwargs["position_ids"] = positions if cache else position_ids_from_mask(mask)
            if cache:
                kwargs["past_key_values"] = past
            outputs = model(**kwargs)
            past = outputs.past_key_values if cache else None
            next_ids = outputs.logits[:, -1].argmax(dim=-1)
            for row, token in zip(rows, next_ids.tolist(), strict=True):
                row.append(token)
            finished |= next_ids == tokenizer.eos_token_id
            if finished.all():
                break
            ids = next_ids[:, None]
            all_ids = torch.cat([all_ids, ids], dim=-1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            positions = positions[:, -1:] + 1
    return rows


def generate_batch_as_a_tensor(model, tokenizer, prompts, max_new_tokens):
    return torch.tensor(generate_batch(model, tokenizer, prompts, max_new_tokens))


def right_padded(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, side="right")


def without_position_ids(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, positions_from_mask=False)


def without_attention_mask(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, mask_on=False)


def without_the_cache(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, cache=False)


def calls_generate(model, tokenizer, prompts, max_new_tokens):
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
        rows.append(out[0, ids.shape[1]:].tolist())
    return rows


@pytest.mark.parametrize("answer", [generate_batch, generate_batch_as_a_tensor])
def test_batch_checker_accepts_right_answers(answer):
    assert check_generate_batch(answer).passed


@pytest.mark.parametrize(("answer", "hint"), [
    (right_padded, "pad on the left"),
    (without_position_ids, "count each row's positions"),
    (without_attention_mask, "pass the attention mask"),
    (without_the_cache, "past_key_values"),
    (calls_generate, "never called"),
])
def test_batch_checker_rejects_typical_mistakes(answer, hint):
    report = check_generate_batch(answer)
    assert not report.passed and hint in repr(report)


# ---------------------------------------------------------------------------------------------------------------
# Checkers never raise


def _raises(*args, **kwargs):
    raise RuntimeError("boom")


@pytest.mark.parametrize("check", [check_nucleus_size, check_repetition_penalty, check_generate_batch])
@pytest.mark.parametrize("answer", [..., None, _raises, lambda *a: None, lambda *a: "text", lambda *a: 3.5,
                                    lambda *a: np.zeros((2, 2)), lambda *a: torch.zeros(7, dtype=torch.float64),
                                    lambda *a: [[1, 2], [3]], lambda *a: {"a": 1}])
def test_checkers_report_and_never_raise(check, answer):
    report = check(answer)
    assert not report.passed and report.lines
