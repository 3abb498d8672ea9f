"""Chapter 2: the hand-written BERT encoder equals the library's, and each exercise checker grades behaviour."""

import math

import pytest
import torch

from behind_pipeline import bert_by_hand
from behind_pipeline.checks.ch02_model import (
    check_embed,
    check_gelu,
    check_layer_parameter_count,
    check_scaled_dot_product_attention,
    check_split_and_merge_heads,
)

SAMPLE = 256  # test reviews compared layer by layer: sizeable, yet quick on a 2-core CPU
BATCH_SIZE = 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def encoder():
    from transformers import AutoModel

    from behind_pipeline.models import encoder_id

    # Eager attention, so the library also returns attention probabilities; its hidden states match sdpa's.
    return AutoModel.from_pretrained(encoder_id(), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def batches(splits, tokenizer):
    texts = splits["test"]["text"][:SAMPLE]
    return [tokenizer(texts[i:i + BATCH_SIZE], padding=True, return_tensors="pt")
            for i in range(0, len(texts), BATCH_SIZE)]


def _max_diffs(model, weights, config, batch, with_attentions=False):
    with torch.no_grad():
        library = model(**batch, output_hidden_states=True, output_attentions=with_attentions)
    hand = bert_by_hand.encoder_forward(weights, config, batch["input_ids"], batch["attention_mask"],
                                        batch["token_type_ids"], output_attentions=with_attentions)
    real = batch["attention_mask"].bool()
    hidden = [(mine - theirs)[real].abs().max().item()
              for mine, theirs in zip(hand.hidden_states, library.hidden_states, strict=True)]
    attentions = [(mine - theirs).abs().max().item()
                  for mine, theirs in zip(hand.attentions or (), library.attentions or (), strict=True)]
    return hidden, attentions


def test_hand_encoder_matches_library_at_every_layer_and_attention(encoder, batches):
    weights = encoder.state_dict()
    for batch in batches:
        assert (batch["attention_mask"] == 0).any(), "each batch should contain padding"
        hidden, attentions = _max_diffs(encoder, weights, encoder.config, batch, with_attentions=True)
        assert len(hidden) == encoder.config.num_hidden_layers + 1
        assert len(attentions) == encoder.config.num_hidden_layers
        assert max(hidden) < TOLERANCE and max(attentions) < TOLERANCE


def test_hand_encoder_runs_the_classifier_body(classifier, batches):
    hidden, _ = _max_diffs(classifier.bert, classifier.bert.state_dict(), classifier.config, batches[0])
    assert max(hidden) < TOLERANCE


def test_padding_with_mask_changes_nothing_and_without_mask_changes_much(encoder, tokenizer):
    weights, config = encoder.state_dict(), encoder.config
    batch = tokenizer(["Short.", "A much longer review that forces padding onto the first one."], padding=True,
                      return_tensors="pt")
    length = int(batch["attention_mask"][0].sum())
    alone = bert_by_hand.encoder_forward(weights, config, batch["input_ids"][:1, :length]).last_hidden_state[0]
    masked = bert_by_hand.encoder_forward(weights, config, batch["input_ids"], batch["attention_mask"])
    unmasked = bert_by_hand.encoder_forward(weights, config, batch["input_ids"])
    assert (masked.last_hidden_state[0, :length] - alone).abs().max() < TOLERANCE
    assert (unmasked.last_hidden_state[0, :length] - alone).abs().max() > 0.01


def test_parameter_table_adds_up_to_the_model(encoder):
    counts = bert_by_hand.parameters_per_component(encoder.state_dict())
    assert sum(counts.values()) == sum(p.numel() for p in encoder.parameters())
    assert counts[("embeddings", "word")] == 30522 * 384
    assert counts[("pooler", "dense")] == 384 * 384 + 384


def test_gelu_is_the_exact_one():
    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(bert_by_hand.gelu(x), torch.nn.functional.gelu(x), atol=1e-6)


# --- checkers: accept a right answer, reject a typical wrong one, report a blank without raising ---

def _blank(*args):
    ...


def test_attention_checker():
    assert check_scaled_dot_product_attention(bert_by_hand.scaled_dot_product_attention).passed

    def unscaled(query, key, value, mask):
        probs = torch.softmax(query @ key.transpose(-2, -1) + mask, dim=-1)
        return probs @ value, probs

    def unmasked(query, key, value, mask):
        probs = torch.softmax(query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1]), dim=-1)
        return probs @ value, probs

    report = check_scaled_dot_product_attention(unscaled)
    assert not report.passed and "sqrt(d_head)" in repr(report)
    report = check_scaled_dot_product_attention(unmasked)
    assert not report.passed and "mask" in repr(report)
    report = check_scaled_dot_product_attention(_blank)
    assert not report.passed and "returned None" in repr(report)
    assert not check_scaled_dot_product_attention(Ellipsis).passed


def test_heads_checker():
    assert check_split_and_merge_heads(bert_by_hand.split_heads, bert_by_hand.merge_heads).passed

    def split_without_transpose(x, num_heads):
        batch, seq, hidden = x.shape
        return x.view(batch, num_heads, seq, hidden // num_heads)

    def merge_without_transpose(x):
        batch, heads, seq, d_head = x.shape
        return x.reshape(batch, seq, heads * d_head)

    report = check_split_and_merge_heads(split_without_transpose, merge_without_transpose)
    assert not report.passed and "transpose" in repr(report)
    assert not check_split_and_merge_heads(_blank, _blank).passed


def test_parameter_count_checker():
    def right(hidden, intermediate):
        return 4 * (hidden * hidden + hidden) + 2 * hidden * intermediate + intermediate + hidden + 4 * hidden

    def no_layer_norms(hidden, intermediate):
        return right(hidden, intermediate) - 4 * hidden

    def no_biases(hidden, intermediate):
        return 4 * hidden * hidden + 2 * hidden * intermediate + 4 * hidden

    assert check_layer_parameter_count(right).passed
    report = check_layer_parameter_count(no_layer_norms)
    assert not report.passed and "LayerNorm" in repr(report)
    report = check_layer_parameter_count(no_biases)
    assert not report.passed and "biases" in repr(report)
    assert not check_layer_parameter_count(_blank).passed


def test_embed_checker():
    class Config:
        layer_norm_eps = 1e-12

    def right(weights, input_ids, token_type_ids, eps):
        return bert_by_hand.embeddings(weights, Config, input_ids, token_type_ids)

    def raw_sum(weights, input_ids, token_type_ids, eps):
        positions = torch.arange(input_ids.shape[1])
        return (weights["embeddings.word_embeddings.weight"][input_ids]
                + weights["embeddings.position_embeddings.weight"][positions]
                + weights["embeddings.token_type_embeddings.weight"][token_type_ids])

    def no_segments(weights, input_ids, token_type_ids, eps):
        return right(weights, input_ids, torch.zeros_like(token_type_ids), eps)

    assert check_embed(right).passed
    report = check_embed(raw_sum)
    assert not report.passed and "LayerNorm" in repr(report)
    assert not check_embed(no_segments).passed
    assert not check_embed(_blank).passed


def test_gelu_checker():
    assert check_gelu(bert_by_hand.gelu).passed
    report = check_gelu(lambda x: torch.nn.functional.gelu(x, approximate="tanh"))
    assert not report.passed and "tanh" in repr(report)
    assert not check_gelu(torch.relu).passed
    assert not check_gelu(_blank).passed
