"""Chapter 2: the hand-written BERT encoder equals the library's, and each exercise checker grades behaviour."""

import copy

import numpy as np
import pytest
import torch

from behind_pipeline import bert_by_hand
from behind_pipeline.bert_by_hand import embeddings, layer_norm, linear, merge_heads, split_heads
from behind_pipeline.checks._core import CheckReport
from behind_pipeline.checks.ch02_model import (
    check_attention_block,
    check_bert_parameter_count,
    check_left_pad,
    check_my_encoder,
    tiny_bert,
)

from checker_asserts import ODD_ANSWERS, assert_accepted, assert_rejected, assert_reported

SAMPLE = 256  # test reviews compared layer by layer (the chapter compares all 1,445)
BATCH_SIZE = 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def encoder():
    from transformers import AutoModel

    from behind_pipeline.models import encoder_id

    # Eager attention, so the library also returns attention probabilities; its hidden states match sdpa's.
    return AutoModel.from_pretrained(encoder_id(), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def encoder_tokenizer():
    from transformers import AutoTokenizer

    from behind_pipeline.models import encoder_id

    return AutoTokenizer.from_pretrained(encoder_id())


def tanh_gelu(x):
    return torch.nn.functional.gelu(x, approximate="tanh")


# --- the hand-written encoder equals the library ----------------------------------------------------------------

def test_hand_encoder_matches_library_at_every_layer(encoder, encoder_tokenizer, splits):
    diffs = bert_by_hand.max_diffs_by_layer(encoder, encoder_tokenizer, splits["test"]["text"][:SAMPLE], BATCH_SIZE)
    assert len(diffs) == encoder.config.num_hidden_layers + 1
    assert max(diffs) < TOLERANCE
    assert max(diffs) > 0, "the library and the hand code run different float operations: exact 0 means no comparison"


def test_max_diffs_by_layer_sees_a_wrong_layer(encoder, encoder_tokenizer, monkeypatch):
    original = bert_by_hand.encoder_forward
    monkeypatch.setattr(bert_by_hand, "encoder_forward",
                        lambda *args, **kwargs: original(*args, **kwargs, activation=tanh_gelu))
    diffs = bert_by_hand.max_diffs_by_layer(encoder, encoder_tokenizer, ["The plot is thin.", "Dull."])
    assert diffs[0] < TOLERANCE and diffs[-1] > TOLERANCE


def test_hand_attention_probabilities_match_the_library(encoder, encoder_tokenizer, splits):
    batch = encoder_tokenizer(splits["test"]["text"][:BATCH_SIZE], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch should contain padding"
    with torch.no_grad():
        library = encoder(**batch, output_attentions=True).attentions
    hand = bert_by_hand.encoder_forward(encoder.state_dict(), encoder.config, batch["input_ids"],
                                        batch["attention_mask"], output_attentions=True).attentions
    assert len(hand) == len(library) == encoder.config.num_hidden_layers
    assert max((mine - theirs).abs().max().item() for mine, theirs in zip(hand, library, strict=True)) < TOLERANCE


@pytest.mark.parametrize(("heads", "layers"), [(4, 2), (6, 3)])
def test_hand_encoder_matches_the_checkers_small_berts(heads, layers):
    """The checkers grade against bert_by_hand on these models too, so it must equal the library on them."""
    model = copy.deepcopy(tiny_bert(heads, layers))  # a copy: the checkers share the cached model
    model.config._attn_implementation = "eager"  # attention probabilities from the library as well
    input_ids = torch.tensor([[5, 9, 12, 40, 1, 1], [7, 8, 9, 10, 11, 12]])
    attention_mask = (input_ids != 1).long()
    token_type_ids = torch.tensor([[0, 0, 1, 2, 0, 0], [0, 1, 1, 2, 2, 2]])
    with torch.no_grad():
        library = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        output_hidden_states=True, output_attentions=True)
    hand = bert_by_hand.encoder_forward(model.state_dict(), model.config, input_ids, attention_mask, token_type_ids,
                                        output_attentions=True)
    real = attention_mask.bool()
    assert max((h - lib)[real].abs().max().item()
               for h, lib in zip(hand.hidden_states, library.hidden_states, strict=True)) < TOLERANCE
    assert max((h - lib).abs().max().item() for h, lib in zip(hand.attentions, library.attentions, strict=True)) < 1e-5
    # Weights large enough that attention is neither uniform nor one-hot: the scaling and the mask both show.
    largest = library.attentions[0].max(-1).values
    assert 0.2 < largest.mean().item() < 0.95


def test_hand_encoder_runs_the_classifier_body(classifier, encoder_tokenizer):
    body = classifier.base_model
    if classifier.config.model_type != "bert":
        pytest.skip("the hand encoder rebuilds BERT; this classifier's body is another architecture")
    batch = encoder_tokenizer(["The plot is thin, but the actors make it sing.", "Dull."], padding=True,
                              return_tensors="pt")
    with torch.no_grad():
        library = body(**batch, output_hidden_states=True).hidden_states
    hand = bert_by_hand.encoder_forward(body.state_dict(), classifier.config, batch["input_ids"],
                                        batch["attention_mask"]).hidden_states
    real = batch["attention_mask"].bool()
    assert max((h - lib)[real].abs().max().item() for h, lib in zip(hand, library, strict=True)) < TOLERANCE


def test_padding_with_mask_changes_nothing_and_without_mask_changes_much(encoder, encoder_tokenizer):
    weights, config = encoder.state_dict(), encoder.config
    batch = encoder_tokenizer(["Short.", "A much longer review that forces padding onto the first one."],
                              padding=True, return_tensors="pt")
    length = int(batch["attention_mask"][0].sum())
    alone = bert_by_hand.encoder_forward(weights, config, batch["input_ids"][:1, :length]).last_hidden_state[0]
    masked = bert_by_hand.encoder_forward(weights, config, batch["input_ids"], batch["attention_mask"])
    unmasked = bert_by_hand.encoder_forward(weights, config, batch["input_ids"])
    assert (masked.last_hidden_state[0, :length] - alone).abs().max() < TOLERANCE
    assert (unmasked.last_hidden_state[0, :length] - alone).abs().max() > 0.01


def test_left_padding_needs_its_position_ids(encoder, encoder_tokenizer):
    weights, config = encoder.state_dict(), encoder.config
    encoder_tokenizer.padding_side = "left"
    try:
        batch = encoder_tokenizer(["Short.", "A much longer review that forces padding."], padding=True,
                                  return_tensors="pt")
    finally:
        encoder_tokenizer.padding_side = "right"
    mask = batch["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    length = int(mask[0].sum())
    alone = bert_by_hand.encoder_forward(weights, config, batch["input_ids"][:1, -length:]).last_hidden_state[0]
    right = bert_by_hand.encoder_forward(weights, config, batch["input_ids"], mask, position_ids=position_ids)
    shifted = bert_by_hand.encoder_forward(weights, config, batch["input_ids"], mask)
    assert (right.last_hidden_state[0, -length:] - alone).abs().max() < TOLERANCE
    assert (shifted.last_hidden_state[0, -length:] - alone).abs().max() > 0.01
    with torch.no_grad():
        library = encoder(**batch, position_ids=position_ids).last_hidden_state
    assert (library[0, -length:] - alone).abs().max() < TOLERANCE


def test_parameter_table_adds_up_to_the_model(encoder):
    counts = bert_by_hand.parameters_per_component(encoder.state_dict())
    assert sum(counts.values()) == sum(p.numel() for p in encoder.parameters())
    assert counts[("embeddings", "word")] == 30522 * 384
    assert counts[("pooler", "dense")] == 384 * 384 + 384


def test_gelu_is_the_exact_one():
    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(bert_by_hand.gelu(x), torch.nn.functional.gelu(x), atol=1e-6)
    assert not torch.allclose(bert_by_hand.gelu(x), torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-5)


# --- right answers, as the solutions notebook writes them -------------------------------------------------------

def right_parameter_count(config):
    h, i = config.hidden_size, config.intermediate_size
    table_rows = config.vocab_size + config.max_position_embeddings + config.type_vocab_size
    attention = 4 * (h * h + h) + 2 * h
    feed_forward = (h * i + i) + (i * h + h) + 2 * h
    return table_rows * h + 2 * h + config.num_hidden_layers * (attention + feed_forward) + (h * h + h)


def right_attention_block(hidden, weights, prefix, config, attention_mask):
    heads = config.num_attention_heads
    query, key, value = (split_heads(linear(hidden, weights, f"{prefix}.self.{name}"), heads)
                         for name in ("query", "key", "value"))
    blocked = (1 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    probs = torch.softmax(query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5 + blocked, dim=-1)
    projected = linear(merge_heads(probs @ value), weights, f"{prefix}.output.dense")
    return layer_norm(projected + hidden, weights, f"{prefix}.output.LayerNorm", config.layer_norm_eps), probs


def encoder_with(attention_block=right_attention_block, activation=torch.nn.functional.gelu, layers=None,
                 use_mask=True, use_types=True, eps=None, residual_from_layer_input=False):
    """My encoder, built from an attention block, with one of the typical mistakes switched on."""

    def my_encoder(weights, config, input_ids, attention_mask, token_type_ids):
        hidden = embeddings(weights, config, input_ids, token_type_ids if use_types else None)
        mask = attention_mask if use_mask else torch.ones_like(attention_mask)
        states = [hidden]
        for index in range(layers or config.num_hidden_layers):
            prefix = f"encoder.layer.{index}"
            attended, _ = attention_block(hidden, weights, f"{prefix}.attention", config, mask)
            expanded = activation(linear(attended, weights, f"{prefix}.intermediate.dense"))
            residual = hidden if residual_from_layer_input else attended
            hidden = layer_norm(linear(expanded, weights, f"{prefix}.output.dense") + residual, weights,
                                f"{prefix}.output.LayerNorm", eps or config.layer_norm_eps)
            states.append(hidden)
        return states

    return my_encoder


def left_pad_with(positions="cumsum", side="left", pad_from_ids=False, pad_id=None, as_lists=False):
    """My left_pad, with one of the typical mistakes switched on."""

    def left_pad(sequences, pad_token_id):
        pad = pad_token_id if pad_id is None else pad_id
        longest = max(len(ids) for ids in sequences)

        def padded(row, filler):
            return [filler] * (longest - len(row)) + list(row) if side == "left" else list(row) + [filler] * (
                longest - len(row))

        input_ids = torch.tensor([padded(ids, pad) for ids in sequences])
        attention_mask = torch.tensor([padded([1] * len(ids), 0) for ids in sequences])
        if pad_from_ids:
            attention_mask = (input_ids != pad).long()
        counted = attention_mask.cumsum(-1)
        position_ids = {"cumsum": (counted - 1).clamp(min=0), "padding gets 1": (counted - 1).masked_fill(
            attention_mask == 0, 1), "row start": torch.arange(longest).expand(len(sequences), longest),
                        "off by one": counted, "minus one on padding": counted - 1}[positions]
        result = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        return {key: value.tolist() for key, value in result.items()} if as_lists else result

    return left_pad


@pytest.mark.parametrize("checker", [check_bert_parameter_count, check_attention_block, check_my_encoder,
                                     check_left_pad])
@pytest.mark.parametrize("name", ODD_ANSWERS)
def test_checkers_report_odd_answers_without_raising(checker, name):
    report = checker(ODD_ANSWERS[name])
    assert isinstance(report, CheckReport)
    assert_reported(report)


# --- exercise 1: parameters -------------------------------------------------------------------------------------

def test_parameter_count_checker_accepts_the_count_in_any_number_type():
    assert_accepted(check_bert_parameter_count, right_parameter_count,
                    lambda config: np.int64(right_parameter_count(config)),
                    lambda config: torch.tensor(right_parameter_count(config)),
                    lambda config: float(right_parameter_count(config)))


@pytest.mark.parametrize(("mistake", "hint"), [
    ("without_pooler", "pooler"),
    ("without_biases", "biases"),
    ("without_layer_norms", "LayerNorms"),
    ("without_embeddings_layer_norm", "embeddings' LayerNorm"),
    ("token_types_hard_coded_2", "type_vocab_size"),
    ("intermediate_as_4_hidden", "intermediate_size"),
    ("one_layer_only", "num_hidden_layers"),
    ("without_position_table", "position"),
    ("vocab_hard_coded", "config.vocab_size"),
    ("rounded_to_millions", "got"),
    ("several_numbers", "shape"),
])
def test_parameter_count_checker_names_each_mistake(mistake, hint):
    def wrong(config):
        h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
        right = right_parameter_count(config)
        return {
            "without_pooler": right - (h * h + h),
            "without_biases": right - layers * (4 * h + i + h) - h,
            "without_layer_norms": right - 4 * h * layers - 2 * h,
            "without_embeddings_layer_norm": right - 2 * h,
            "token_types_hard_coded_2": right + (2 - config.type_vocab_size) * h,
            "intermediate_as_4_hidden": right + layers * (2 * h + 1) * (4 * h - i),
            "one_layer_only": right - (layers - 1) * (4 * (h * h + h) + 2 * h * i + i + h + 4 * h),
            "without_position_table": right - config.max_position_embeddings * h,
            "vocab_hard_coded": right + (30522 - config.vocab_size) * h,
            "rounded_to_millions": round(right / 1e6) * 1e6,
            "several_numbers": torch.tensor([right, right]),
        }[mistake]

    assert_rejected(check_bert_parameter_count(wrong), hint)


# --- exercise 2: the attention block ----------------------------------------------------------------------------

def attention_with(scale="d_head", mask="keys", heads=None, split="transpose", softmax_dim=-1, residual="before",
                   eps=None):
    """My attention block, with one of the typical mistakes switched on."""

    def attention_block(hidden, weights, prefix, config, attention_mask):
        num_heads = heads or config.num_attention_heads
        projections = [linear(hidden, weights, f"{prefix}.self.{name}") for name in ("query", "key", "value")]
        batch, seq, size = hidden.shape
        if split == "transpose":
            query, key, value = (split_heads(p, num_heads) for p in projections)
        else:
            query, key, value = (p.reshape(batch, num_heads, seq, size // num_heads) for p in projections)
        divisor = {"d_head": query.shape[-1] ** 0.5, "none": 1.0, "hidden": size ** 0.5}[scale]
        blocked = (1 - attention_mask.float()) * -1e9
        added = {"keys": blocked[:, None, None, :], "queries": blocked[:, None, :, None], "none": 0.0,
                 "-inf": torch.zeros_like(blocked).masked_fill(attention_mask == 0, float("-inf"))[:, None, None, :]}
        probs = torch.softmax(query @ key.transpose(-2, -1) / divisor + added[mask], dim=softmax_dim)
        projected = linear(merge_heads(probs @ value), weights, f"{prefix}.output.dense")
        norm = f"{prefix}.output.LayerNorm"
        epsilon = eps or config.layer_norm_eps
        output = {"before": layer_norm(projected + hidden, weights, norm, epsilon),
                  "after": layer_norm(projected, weights, norm, epsilon) + hidden,
                  "none": layer_norm(projected, weights, norm, epsilon)}[residual]
        return output, probs

    return attention_block


def test_attention_checker_accepts_right_answers_in_other_forms():
    assert_accepted(check_attention_block, right_attention_block, attention_with(mask="-inf"),
                    lambda *args: tuple(t.double() for t in right_attention_block(*args)),
                    lambda *args: [t.numpy() for t in right_attention_block(*args)])


@pytest.mark.parametrize(("mistake", "hint"), [
    (attention_with(scale="none"), "not scaled"),
    (attention_with(scale="hidden"), "sqrt(hidden_size)"),
    (attention_with(mask="none"), "padding keys get weight"),
    (attention_with(mask="queries"), "blocks keys"),
    (attention_with(heads=12), "config.num_attention_heads"),
    (attention_with(split="view"), "transpose"),
    (attention_with(softmax_dim=-2), "sum to 1"),
    (attention_with(residual="none"), "residual is missing"),
    (attention_with(residual="after"), "after the LayerNorm"),
    (attention_with(eps=1e-12), "config.layer_norm_eps"),
    (lambda *args: right_attention_block(*args)[0], "return two things"),
    (lambda *args: right_attention_block(*args)[::-1], "swapped"),
    (lambda *args: bert_by_hand.attention(*args[:4], bert_by_hand.additive_mask(args[4])), "book's own answer"),
], ids=["unscaled", "scaled_by_hidden", "no_mask", "mask_on_queries", "heads_hard_coded_12", "split_without_transpose",
        "softmax_over_queries", "no_residual", "residual_after_layer_norm", "eps_hard_coded", "returns_only_output",
        "returns_probs_first",
        "calls_the_package_answer"])
def test_attention_checker_names_each_mistake(mistake, hint):
    assert_rejected(check_attention_block(mistake), hint)


def test_attention_checker_tries_other_head_counts_and_left_padding():
    """The 12-head answer passes on all-MiniLM-L6-v2, so only the other cases can catch it."""
    report = check_attention_block(attention_with(heads=12))
    assert_rejected(report, "4 heads", "6 heads")
    assert "ok   all-MiniLM-L6-v2" in repr(report), report


# --- exercise 3: the whole encoder ------------------------------------------------------------------------------

def test_encoder_checker_accepts_right_answers_in_other_forms():
    assert_accepted(check_my_encoder, encoder_with(), encoder_with(activation=bert_by_hand.gelu),
                    lambda *args: torch.stack(encoder_with()(*args)).double(),
                    lambda *args: tuple(s.numpy() for s in encoder_with()(*args)))


@pytest.mark.parametrize(("mistake", "hint"), [
    (encoder_with(use_mask=False), "mask is not applied"),
    (encoder_with(activation=tanh_gelu), "tanh GELU"),
    (encoder_with(activation=torch.relu), "ReLU"),
    (encoder_with(use_types=False), "token types"),
    (encoder_with(layers=6), "range(config.num_hidden_layers)"),
    (encoder_with(attention_block=attention_with(heads=12)), "config.num_attention_heads"),
    (encoder_with(attention_block=attention_with(eps=1e-12), eps=1e-12), "config.layer_norm_eps"),
    (encoder_with(attention_block=attention_with(scale="none")), "differs"),
    (encoder_with(residual_from_layer_input=True), "not the layer's input"),
    (lambda *args: encoder_with()(*args)[-1], "one tensor"),
    (lambda *args: encoder_with()(*args)[1:], "embeddings output first"),
    (lambda *args: bert_by_hand.encoder_forward(*args[:4], token_type_ids=args[4]).hidden_states, "own answer"),
], ids=["no_mask", "tanh_gelu", "relu", "ignores_token_types", "layers_hard_coded_6", "heads_hard_coded_12",
        "eps_hard_coded", "unscaled_attention", "feed_forward_residual_from_layer_input", "returns_last_state_only",
        "no_embeddings_output",
        "calls_the_package_encoder"])
def test_encoder_checker_names_each_mistake(mistake, hint):
    assert_rejected(check_my_encoder(mistake), hint)


def test_encoder_checker_catches_hard_coded_sizes_only_on_other_models():
    report = check_my_encoder(encoder_with(attention_block=attention_with(eps=1e-12), eps=1e-12))
    assert_rejected(report, "a BERT of hidden size 48")
    assert "ok   all-MiniLM-L6-v2" in repr(report), report


# --- exercise 4: left padding -----------------------------------------------------------------------------------

def test_left_pad_checker_accepts_right_answers_in_other_forms():
    assert_accepted(check_left_pad, left_pad_with(), left_pad_with(as_lists=True),
                    left_pad_with(positions="padding gets 1"))


@pytest.mark.parametrize(("mistake", "hint"), [
    (left_pad_with(side="right"), "padded on the right"),
    (left_pad_with(positions="row start"), "left edge of the row"),
    (left_pad_with(positions="off by one"), "off by one"),
    (left_pad_with(positions="minus one on padding"), "valid id"),
    (left_pad_with(pad_id=0), "pad_token_id (1 here)"),
    (left_pad_with(pad_from_ids=True), "real token equal to the pad id"),
    (lambda sequences, pad_token_id: left_pad_with()(sequences, pad_token_id)["input_ids"], "return a dict"),
    (lambda sequences, pad_token_id: {k: v for k, v in left_pad_with()(sequences, pad_token_id).items()
                                      if k != "position_ids"}, "no 'position_ids'"),
], ids=["right_padding", "positions_from_row_start", "positions_off_by_one", "minus_one_on_padding",
        "pad_id_hard_coded_0", "mask_from_pad_id", "returns_only_ids", "no_position_ids"])
def test_left_pad_checker_names_each_mistake(mistake, hint):
    assert_rejected(check_left_pad(mistake), hint)
