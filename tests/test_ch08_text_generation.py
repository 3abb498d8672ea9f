"""Chapter 8: the hand-built tokenizer, loss and decoding loops equal the library; the checkers grade fairly.

Each checker must accept the reference answer and valid alternatives, reject the typical wrong answers named below
(each named after the mistake it models), and never raise, whatever the learner returns.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, pipeline
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from behind_pipeline import models, tiny_gpt, trained_once
from behind_pipeline.checks import ch08_text_generation as ch08
from behind_pipeline.checks.ch08_text_generation import (
    check_generate_batch,
    check_repetition_penalty,
    check_stop_string,
)
from behind_pipeline.generation import (
    beam_search_by_hand,
    bpe_tables,
    bytes_to_unicode,
    cache_tensor_bytes,
    causal_lm_loss,
    encode_by_hand,
    greedy_batch_by_hand,
    greedy_by_hand,
    greedy_with_cache,
    kv_cache_bytes_per_token,
    left_pad,
    min_new_tokens_processor,
    new_tokens,
    no_repeat_ngram_processor,
    position_ids_from_mask,
    sample_by_hand,
    sequence_log_prob,
    warp_logits,
)

from checker_asserts import assert_rejected

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


def test_the_shipped_generator_is_current_and_prepare_copies_it_without_training(tmp_path, monkeypatch):
    """Chapter 8's stored outputs were made with the shipped generator: it must match today's recipe, settings and text,
    and `make prepare` must copy it byte for byte rather than train one."""
    shipped = trained_once.read_summary(tiny_gpt.SHIPPED_DIR)
    assert shipped["fingerprint"] == tiny_gpt.fingerprint(), (
        "the shipped generator is stale: run `python -m behind_pipeline.tiny_gpt --retrain-shipped`, re-execute "
        "chapter 8 and its solutions, and commit all three")
    monkeypatch.setattr(tiny_gpt, "train", lambda *args, **kwargs: pytest.fail("trained instead of copying"))
    folder = tmp_path / "tiny-gpt-hamlet"
    assert tiny_gpt.ensure_generator(show=False, folder=folder)
    for file in tiny_gpt.SHIPPED_DIR.iterdir():
        assert (folder / file.name).read_bytes() == file.read_bytes(), file.name
    assert not tiny_gpt.ensure_generator(show=False, folder=folder)  # current now: nothing to do


def test_the_shipped_weights_give_the_held_out_loss_their_summary_records():
    """The summary beside the shipped weights describes those weights: the held-out loss, recomputed."""
    summary = trained_once.read_summary(tiny_gpt.SHIPPED_DIR)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt.SHIPPED_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt.SHIPPED_DIR)
    test_ids = torch.tensor(tokenizer(tiny_gpt.hamlet_texts()[1])["input_ids"])
    loss = tiny_gpt.held_out_loss(model, test_ids)
    assert len(test_ids) == summary["test_tokens"] and loss == pytest.approx(summary["test_loss"], abs=5e-4)


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


def _newline(tokenizer):
    return tokenizer("\n")["input_ids"][0]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(("num_beams", "stop", "length_penalty"),
                         [(3, "eos", 1.0), (3, "newline", 1.0), (2, "newline", 1.0), (4, "newline", 2.0),
                          (3, "newline", -1.0)])
def test_beam_search_by_hand_equals_generate(generator, gen_tokenizer, prompt, num_beams, stop, length_penalty):
    # With the newline as EOS, beams end at different steps, so the finished hypotheses, the length penalty and
    # the early-stopping rule all decide the result; with the model's EOS (never produced) only the last step does.
    ids = _ids(gen_tokenizer, prompt)
    stop_id = gen_tokenizer.eos_token_id if stop == "eos" else _newline(gen_tokenizer)
    expected = _generate(generator, ids, do_sample=False, num_beams=num_beams, max_new_tokens=20,
                         eos_token_id=stop_id, length_penalty=length_penalty)
    got = beam_search_by_hand(generator, ids, num_beams, 20, eos_token_id=stop_id, length_penalty=length_penalty)
    assert torch.equal(got, expected)


def test_beam_search_differs_from_greedy_somewhere(generator, gen_tokenizer):
    # so the parity above is not greedy decoding in disguise
    differ = 0
    for prompt in PROMPTS:
        ids = _ids(gen_tokenizer, prompt)
        beam = beam_search_by_hand(generator, ids, 3, 20, eos_token_id=gen_tokenizer.eos_token_id)
        greedy = greedy_by_hand(generator, ids, 20, gen_tokenizer.eos_token_id)
        differ += not torch.equal(beam, greedy)
    assert differ > 0


def test_sequence_log_prob_is_the_sum_of_the_new_tokens_log_probs(generator, gen_tokenizer):
    ids = _ids(gen_tokenizer, PROMPTS[0])
    out = generator.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=5,
                             pad_token_id=gen_tokenizer.eos_token_id, return_dict_in_generate=True,
                             output_scores=True)
    scores = generator.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    assert abs(sequence_log_prob(generator, out.sequences, ids.shape[1]) - scores.sum().item()) < 1e-4


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("min_new", [1, 4, 9])
def test_min_new_tokens_processor_equals_generate(generator, gen_tokenizer, prompt, min_new):
    ids, newline = _ids(gen_tokenizer, prompt), _newline(gen_tokenizer)
    expected = _generate(generator, ids, do_sample=False, max_new_tokens=20, eos_token_id=newline,
                         min_new_tokens=min_new)
    got = greedy_by_hand(generator, ids, 20, newline, process=min_new_tokens_processor(ids.shape[1], min_new,
                                                                                      newline))
    assert torch.equal(got, expected)
    assert expected.shape[1] - ids.shape[1] >= min_new


def test_min_new_tokens_changes_where_a_line_ends(generator, gen_tokenizer):
    ids, newline = _ids(gen_tokenizer, PROMPTS[0]), _newline(gen_tokenizer)
    plain = _generate(generator, ids, do_sample=False, max_new_tokens=20, eos_token_id=newline)
    longer = _generate(generator, ids, do_sample=False, max_new_tokens=20, eos_token_id=newline, min_new_tokens=5)
    assert plain.shape[1] - ids.shape[1] < 5 <= longer.shape[1] - ids.shape[1]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram_processor_equals_generate(generator, gen_tokenizer, prompt, size):
    ids = _ids(gen_tokenizer, prompt)
    expected = _generate(generator, ids, do_sample=False, max_new_tokens=20, no_repeat_ngram_size=size)
    got = greedy_by_hand(generator, ids, 20, gen_tokenizer.eos_token_id, process=no_repeat_ngram_processor(size))
    assert torch.equal(got, expected)
    tokens = got[0].tolist()
    ngrams = list(zip(*[tokens[i:] for i in range(size)], strict=False))  # ngrams[j] starts at token j
    for j in range(ids.shape[1] - size + 1, len(ngrams)):  # each n-gram that ends in a new token
        assert ngrams[j] not in ngrams[:j]  # never seen before, prompt included (the prompt may repeat)


def test_kv_cache_bytes_per_token_match_the_cache_tensors(generator, gen_tokenizer, test_text):
    ids = torch.tensor([gen_tokenizer(test_text)["input_ids"][:50]])
    with torch.inference_mode():
        cache = generator(input_ids=ids, use_cache=True).past_key_values
    assert cache_tensor_bytes(cache) == 50 * kv_cache_bytes_per_token(generator.config)
    assert kv_cache_bytes_per_token(generator.config, torch.float16) * 2 == kv_cache_bytes_per_token(generator.config)
    assert kv_cache_bytes_per_token(GPT2Config()) == 2 * 12 * 768 * 4  # GPT-2 small: 12 layers of width 768


def test_reusing_a_dynamic_cache_after_a_step_corrupts_the_next_one(generator, gen_tokenizer):
    import copy

    ids = _ids(gen_tokenizer, PROMPTS[0])
    a, b = torch.tensor([[308]]), torch.tensor([[267]])
    with torch.inference_mode():
        fresh = generator(input_ids=torch.cat([ids, b], dim=-1)).logits[0, -1]
        cache = generator(input_ids=ids, use_cache=True).past_key_values
        kept = copy.deepcopy(cache)
        generator(input_ids=a, past_key_values=cache, use_cache=True)  # updates `cache` in place
        assert cache.get_seq_length() == ids.shape[1] + 1
        reused = generator(input_ids=b, past_key_values=cache, use_cache=True).logits[0, -1]
        copied = generator(input_ids=b, past_key_values=kept, use_cache=True).logits[0, -1]
    assert (reused - fresh).abs().max() > 0.1 and (copied - fresh).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: a stop string by hand


def stop_string_hit(tokenizer, ids, stop_string):
    text, before = tokenizer.decode(ids), len(tokenizer.decode(ids[:-1]).rstrip("\ufffd"))
    return text.find(stop_string, max(0, before - len(stop_string) + 1)) != -1


def stop_string_hit_by_suffixes(tokenizer, ids, stop_string):
    # another right answer: a prefix of the text that ends inside the last token ends with the stop string
    text, before = tokenizer.decode(ids), len(tokenizer.decode(ids[:-1]).rstrip("\ufffd"))
    return any(text[:end].endswith(stop_string) for end in range(before + 1, len(text) + 1))


def counts_a_split_character(tokenizer, ids, stop_string):
    # the earlier tokens' text measured with the '\ufffd' of a character whose bytes the last token completes
    text, before = tokenizer.decode(ids), len(tokenizer.decode(ids[:-1]))
    return text.find(stop_string, max(0, before - len(stop_string) + 1)) != -1


def stop_string_from_each_token_s_text(tokenizer, ids, stop_string):
    # the text as the tokens' own pieces, the last one's start from their lengths: right until a character's bytes
    # are split over tokens, which then each decode to '\ufffd
    pieces = [tokenizer.decode([token]) for token in ids]
    text = "".join(pieces)
    before = len(text) - len(pieces[-1])
    return stop_string in text[max(0, before - len(stop_string) + 1):]


def stop_string_hit_as_a_tensor(tokenizer, ids, stop_string):
    return torch.tensor(stop_string_hit(tokenizer, ids, stop_string))


def search_starts_one_too_early(tokenizer, ids, stop_string):
    # counts an occurrence that ends exactly where the last token starts
    text, before = tokenizer.decode(ids), len(tokenizer.decode(ids[:-1]))
    return text.find(stop_string, max(0, before - len(stop_string))) != -1


def last_two_tokens_only(tokenizer, ids, stop_string):
    return stop_string in tokenizer.decode(ids[-2:])


def returns_a_match(tokenizer, ids, stop_string):
    import re

    text, before = tokenizer.decode(ids), len(tokenizer.decode(ids[:-1]))
    return re.compile(re.escape(stop_string)).search(text, max(0, before - len(stop_string) + 1))


def stop_string_anywhere(tokenizer, ids, stop_string):
    return stop_string in tokenizer.decode(ids)


def text_ends_with_the_stop_string(tokenizer, ids, stop_string):
    return tokenizer.decode(ids).endswith(stop_string)


def last_token_only(tokenizer, ids, stop_string):
    return stop_string in tokenizer.decode(ids[-1:])


def returns_a_string(tokenizer, ids, stop_string):
    return str(stop_string_hit(tokenizer, ids, stop_string))


def pops_the_last_token(tokenizer, ids, stop_string):
    last = ids.pop()
    return stop_string in tokenizer.decode(ids + [last]) and stop_string not in tokenizer.decode(ids)


def test_the_stop_cases_cover_true_and_false_and_each_rule(gen_tokenizer):
    answers = [ch08.reference_stop_string_hit(gen_tokenizer, gen_tokenizer(text)["input_ids"][:count], stop)
               for _, text, count, stop in ch08.STOP_CASES]
    assert True in answers and False in answers


def test_the_stop_runs_stop_before_the_limit(generator, gen_tokenizer):
    for prompt, stop, seed in ch08.STOP_RUNS:
        ids = _ids(gen_tokenizer, prompt)
        if seed is not None:
            torch.manual_seed(seed)
        out = _generate(generator, ids, do_sample=seed is not None, max_new_tokens=ch08.STOP_NEW_TOKENS,
                        stop_strings=[stop], tokenizer=gen_tokenizer)
        assert out.shape[1] - ids.shape[1] < ch08.STOP_NEW_TOKENS


def test_each_stop_run_exercises_what_its_comment_says(generator, gen_tokenizer):
    (greedy_prompt, greedy_stop, no_seed), (_, _, sampled_seed), (held_prompt, held_stop, _) = ch08.STOP_RUNS
    ids = _ids(gen_tokenizer, greedy_prompt)
    out = _generate(generator, ids, do_sample=False, max_new_tokens=ch08.STOP_NEW_TOKENS, stop_strings=[greedy_stop],
                    tokenizer=gen_tokenizer)[0].tolist()
    text = gen_tokenizer.decode(out)
    assert no_seed is None and greedy_stop in text and not text.endswith(greedy_stop)  # the last token overhangs
    assert greedy_stop in gen_tokenizer.decode(out[-3:]) and greedy_stop not in gen_tokenizer.decode(out[-2:])
    assert sampled_seed is not None and held_stop in held_prompt


def test_the_stop_runs_alone_reject_a_whole_text_search_and_an_off_by_one(monkeypatch):
    # Seed 1's first token holds the prompt's '\n' too, so where generate stops cannot tell a whole-text search:
    # the steps after it, on the same run left to go on, must.
    monkeypatch.setattr(ch08, "STOP_CASES", [])
    assert_rejected(check_stop_string(stop_string_anywhere), "earlier in the text", "same run left to go on")
    assert_rejected(check_stop_string(search_starts_one_too_early), "off-by-one")


@pytest.mark.parametrize("answer", [stop_string_hit, stop_string_hit_by_suffixes, stop_string_hit_as_a_tensor])
def test_stop_string_checker_accepts_right_answers(answer):
    assert check_stop_string(answer).passed


@pytest.mark.parametrize(("answer", "hint"), [
    (stop_string_anywhere, "earlier in the text"),
    (text_ends_with_the_stop_string, "runs past the end"),
    (last_token_only, "spans several tokens"),
    (returns_a_string, "return True or False"),
    (pops_the_last_token, "changed the ids"),
    (search_starts_one_too_early, "ending exactly where the last token starts"),
    (last_two_tokens_only, "before the last two tokens"),
    (counts_a_split_character, "inside a character"),
    (stop_string_from_each_token_s_text, "inside a character"),
    (returns_a_match, "return True or False"),
])
def test_stop_string_checker_rejects_typical_mistakes(answer, hint):
    assert_rejected(check_stop_string(answer), hint)


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


def repetition_penalty_with_a_mask(input_ids, logits, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, input_ids, True)
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits).double()


def penalty_the_wrong_way(input_ids, logits, penalty):
    seen = torch.gather(logits, 1, input_ids)
    return logits.scatter(1, input_ids, torch.where(seen > 0, seen * penalty, seen / penalty))


def penalizes_the_last_token_only(input_ids, logits, penalty):
    return repetition_penalty(input_ids[:, -1:], logits, penalty)


def subtracts_the_log_penalty(input_ids, logits, penalty):
    seen = torch.gather(logits, 1, input_ids)
    return logits.scatter(1, input_ids, seen - float(np.log(penalty)))


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


@pytest.mark.parametrize("answer", [repetition_penalty, repetition_penalty_by_loops, repetition_penalty_with_a_mask])
def test_penalty_checker_accepts_right_answers(answer):
    assert check_repetition_penalty(answer).passed


@pytest.mark.parametrize(("answer", "hint"), [
    (divides_every_logit, "multiply negative logits"),
    (penalty_per_occurrence, "once, not once per occurrence"),
    (penalty_for_every_row_s_tokens, "each row has its own history"),
    (penalizes_in_place, "in place"),
    (penalty_the_wrong_way, "the wrong way"),
    (penalizes_the_last_token_only, "not only the last one"),
    (subtracts_the_log_penalty, "z / penalty if z > 0"),
])
def test_penalty_checker_rejects_typical_mistakes(answer, hint):
    assert_rejected(check_repetition_penalty(answer), hint)


@pytest.mark.parametrize("answer", [penalty_the_wrong_way, penalizes_the_last_token_only, subtracts_the_log_penalty])
def test_the_penalty_hints_name_no_mistake_the_answer_did_not_make(answer):
    # token 3 is seen twice in the first case: a wrong value there is not always a per-occurrence penalty
    text = " ".join(line for line in check_repetition_penalty(answer).lines if "FIX" in line)
    assert "once per occurrence" not in text and "own history" not in text


@pytest.mark.parametrize("penalty", [1.3, 2.0])
def test_the_penalty_changes_the_greedy_text(generator, gen_tokenizer, penalty):
    # The plain greedy text repeats itself, and the penalty, right or the wrong way round, changes it: so each of the
    # checker's greedy runs tests the penalty, its direction included.
    ids = _ids(gen_tokenizer, ch08.PROMPT)
    plain = _generate(generator, ids, do_sample=False, max_new_tokens=ch08.PENALTY_NEW_TOKENS)
    new = plain[0, ids.shape[1]:].tolist()
    assert len(set(new)) < len(new)
    penalized, wrong_way = (_generate(generator, ids, do_sample=False, max_new_tokens=ch08.PENALTY_NEW_TOKENS,
                                      repetition_penalty=value) for value in (penalty, 1 / penalty))
    assert not torch.equal(plain, penalized) and not torch.equal(penalized, wrong_way)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: batched generation with the cache


def generate_batch(model, tokenizer, prompts, max_new_tokens, side="left", positions_from_mask=True, mask_on=True,
                   cache=True, stop_when="all", mask_from_ids=False, later_positions=True, grow_mask=True,
                   extra_steps=0, keep_prompt=False, keep_eos=True, cumsum_positions=False):
    tokenizer.padding_side = side
    encoding = tokenizer(prompts, padding=True, return_tensors="pt")
    ids, mask = encoding["input_ids"], encoding["attention_mask"]
    if mask_from_ids:
        mask = (ids != tokenizer.pad_token_id).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0) if cumsum_positions else position_ids_from_mask(mask)
    all_ids = ids
    eos = tokenizer.eos_token_id if stop_when != "config" else model.config.eos_token_id
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    rows, past = [row.tolist() if keep_prompt else [] for row in ids], None
    with torch.inference_mode():
        for step in range(max_new_tokens + extra_steps):
            kwargs = dict(input_ids=ids if cache else all_ids, use_cache=cache)
            if mask_on:
                kwargs["attention_mask"] = mask
            if positions_from_mask and (later_positions or step == 0):
                kwargs["position_ids"] = positions if cache else position_ids_from_mask(mask)
            if cache:
                kwargs["past_key_values"] = past
            outputs = model(**kwargs)
            past = outputs.past_key_values if cache else None
            next_ids = outputs.logits[:, -1].argmax(dim=-1)
            for row, token, done in zip(rows, next_ids.tolist(), finished.tolist(), strict=True):
                if keep_eos or not (done or token == eos):
                    row.append(token)
            finished |= next_ids == eos
            if stop_when != "never" and (finished.any() if stop_when == "any" else finished.all()):
                break
            ids = next_ids[:, None]
            all_ids = torch.cat([all_ids, ids], dim=-1)
            if grow_mask:
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


def stops_when_any_row_ends(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, stop_when="any")


def mask_from_ids_not_pad(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, mask_from_ids=True)


def positions_from_a_cumsum(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, cumsum_positions=True)


def eos_as_pad_token(model, tokenizer, prompts, max_new_tokens):
    # another right answer: the mask hides the pads, whatever their id
    tokenizer.pad_token = tokenizer.eos_token
    return generate_batch(model, tokenizer, prompts, max_new_tokens)


def never_stops_at_eos(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, stop_when="never")


def the_model_s_eos(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, stop_when="config")


def positions_only_in_the_first_step(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, later_positions=False)


def the_mask_does_not_grow(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, grow_mask=False)


def one_step_too_many(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, extra_steps=1)


def one_step_too_few(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, extra_steps=-1)


def rows_keep_the_prompt(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, keep_prompt=True)


def rows_leave_out_the_eos(model, tokenizer, prompts, max_new_tokens):
    return generate_batch(model, tokenizer, prompts, max_new_tokens, keep_eos=False)


def calls_generate(model, tokenizer, prompts, max_new_tokens):
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
        rows.append(out[0, ids.shape[1]:].tolist())
    return rows


@pytest.mark.parametrize("answer", [generate_batch, generate_batch_as_a_tensor, positions_from_a_cumsum,
                                    eos_as_pad_token])
def test_batch_checker_accepts_right_answers(answer):
    assert check_generate_batch(answer).passed


@pytest.mark.parametrize(("answer", "hint"), [
    (right_padded, "pad on the left"),
    (without_position_ids, "count each row's positions"),
    (without_attention_mask, "pass the attention mask"),
    (without_the_cache, "past_key_values"),
    (calls_generate, "never called"),
    (stops_when_any_row_ends, "until *every* row"),
    (mask_from_ids_not_pad, "not from input_ids != pad_token_id"),
    (never_stops_at_eos, "8 model calls where 2"),
    (the_model_s_eos, "not model.config.eos_token_id"),
    (positions_only_in_the_first_step, "in the cached steps too"),
    (the_mask_does_not_grow, "a column of ones for each new token"),
    (one_step_too_many, "off-by-one"),
    (one_step_too_few, "off-by-one"),
    (rows_keep_the_prompt, "only the new tokens"),
    (rows_leave_out_the_eos, "keep it as the row's last token"),
])
def test_batch_checker_rejects_typical_mistakes(answer, hint):
    assert_rejected(check_generate_batch(answer), hint)


# ---------------------------------------------------------------------------------------------------------------
# Checkers never raise


def _raises(*args, **kwargs):
    raise RuntimeError("boom")


@pytest.mark.parametrize("check", [check_stop_string, check_repetition_penalty, check_generate_batch])
@pytest.mark.parametrize("answer", [..., None, _raises, lambda *a: None, lambda *a: "text", lambda *a: 3.5,
                                    lambda *a: np.zeros((2, 2)), lambda *a: torch.zeros(7, dtype=torch.float64),
                                    lambda *a: [[1, 2], [3]], lambda *a: {"a": 1}])
def test_checkers_report_and_never_raise(check, answer):
    report = check(answer)
    assert not report.passed and report.lines
