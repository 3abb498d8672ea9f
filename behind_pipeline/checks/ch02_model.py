"""Checkers for chapter 2's exercises: attention with a mask, heads, parameter counts, embeddings, GELU."""

import math

import torch

from behind_pipeline import bert_by_hand
from behind_pipeline.checks._core import CheckReport, allclose, course_encoder, tensor_of_shape

TOLERANCE = 1e-4


def check_scaled_dot_product_attention(scaled_dot_product_attention) -> CheckReport:
    """``scaled_dot_product_attention(query, key, value, mask) -> (context, probs)`` with an additive mask."""
    report = CheckReport("Scaled dot-product attention with a mask")
    generator = torch.Generator().manual_seed(0)
    # Scores of this size make the missing 1/sqrt(d_head) visible; sequence 2 ends in two padding tokens.
    query, key, value = (2 * torch.randn(2, 3, 5, 16, generator=generator) for _ in range(3))
    mask = bert_by_hand.additive_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    result = report.call(scaled_dot_product_attention, query, key, value, mask, name="scaled_dot_product_attention")
    if result is Ellipsis:
        return report
    if not report.expect(isinstance(result, tuple) and len(result) == 2, "returns a pair (context, probs)",
                         "return two things: `return context, probs`"):
        return report
    context, probs = result
    if not (tensor_of_shape(report, probs, (2, 3, 5, 5), "probs")
            and tensor_of_shape(report, context, (2, 3, 5, 16), "context")):
        return report
    expected_context, expected_probs = bert_by_hand.scaled_dot_product_attention(query, key, value, mask)
    report.expect(torch.allclose(probs.sum(-1), torch.ones(2, 3, 5), atol=TOLERANCE), "each row of probs sums to 1",
                  "each row of probs should sum to 1: softmax over the last dimension (the keys)")
    report.expect(probs[1, :, :, 3:].abs().max().item() < 1e-6, "padding keys get weight 0",
                  "padding keys get weight > 0: add the mask to the scores before the softmax")
    unscaled = torch.softmax(query @ key.transpose(-2, -1) + mask, dim=-1)
    if allclose(probs, unscaled, atol=TOLERANCE):
        report.fail("probs are those of unscaled scores: divide Q K^T by sqrt(d_head) = sqrt(query.shape[-1])")
    else:
        report.expect(allclose(probs, expected_probs, atol=TOLERANCE),
                      "probs equal softmax(Q K^T / sqrt(d_head) + mask)",
                      "probs differ from softmax(Q K^T / sqrt(d_head) + mask)")
    report.expect(allclose(context, expected_context, atol=TOLERANCE), "context equals probs @ value",
                  "context should be probs @ value, shape (batch, heads, seq, d_head)")
    return report


def check_split_and_merge_heads(split_heads, merge_heads) -> CheckReport:
    """``split_heads(x, num_heads)`` (batch, seq, hidden) -> (batch, heads, seq, d_head) and ``merge_heads`` back."""
    report = CheckReport("Split and merge heads")
    x = torch.randn(2, 5, 384, generator=torch.Generator().manual_seed(0))
    split = report.call(split_heads, x, 12, name="split_heads")
    if split is not Ellipsis and tensor_of_shape(report, split, (2, 12, 5, 32), "split_heads(x, 12)"):
        report.expect(torch.equal(split, bert_by_hand.split_heads(x, 12)),
                      "head h of token t holds x[:, t, 32*h : 32*(h+1)]",
                      "right shape, wrong values: view as (batch, seq, heads, d_head) first, then swap seq and "
                      "heads with .transpose(1, 2) (a straight view to (batch, heads, seq, d_head) mixes tokens)")
    heads = bert_by_hand.split_heads(x, 12)
    merged = report.call(merge_heads, heads, name="merge_heads")
    if merged is not Ellipsis and tensor_of_shape(report, merged, (2, 5, 384), "merge_heads(heads)"):
        report.expect(torch.equal(merged, x), "merge_heads(split_heads(x)) gives x back",
                      "merge_heads should undo split_heads: transpose(1, 2) back, then reshape to (batch, seq, hidden)")
    return report


def _library_layer_parameters(hidden_size: int, intermediate_size: int) -> int:
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(hidden_size=hidden_size, intermediate_size=intermediate_size, num_attention_heads=1)
    return sum(p.numel() for p in BertLayer(config).parameters())


def check_layer_parameter_count(layer_parameter_count) -> CheckReport:
    """``layer_parameter_count(hidden_size, intermediate_size)``: parameters of one BERT encoder layer."""
    report = CheckReport("Parameters of one layer")
    for hidden, intermediate, name in ((384, 1536, "all-MiniLM-L6-v2"), (768, 3072, "bert-base")):
        answer = report.call(layer_parameter_count, hidden, intermediate, name="layer_parameter_count")
        if answer is Ellipsis:
            return report
        expected = _library_layer_parameters(hidden, intermediate)
        no_bias = 4 * hidden * hidden + 2 * hidden * intermediate
        if answer == expected:
            report.ok(f"{name} ({hidden}, {intermediate}): {expected:,} parameters, as BertLayer has")
        elif answer == no_bias or answer == no_bias + 4 * hidden:
            report.fail(f"{name}: {answer:,} is missing the biases of the six Linear layers (one per output unit)")
        elif answer == expected - 4 * hidden:
            report.fail(f"{name}: {answer:,} is missing the two LayerNorms (a weight and a bias of hidden_size each)")
        else:
            report.fail(f"{name} ({hidden}, {intermediate}): got {answer!r}, BertLayer has {expected:,}")
    return report


def check_embed(embed) -> CheckReport:
    """``embed(weights, input_ids, token_type_ids, eps)``: the embeddings sum, then LayerNorm."""
    report = CheckReport("Embeddings: sum and LayerNorm")
    encoder = course_encoder()
    weights = encoder.state_dict()
    # A sentence pair, so segment B's token-type embedding matters: [CLS] a b [SEP] c d [SEP].
    input_ids = torch.tensor([[101, 1996, 2143, 2001, 2146, 1012, 102, 1045, 3866, 2009, 1012, 102]])
    token_type_ids = torch.tensor([[0] * 7 + [1] * 5])
    result = report.call(embed, weights, input_ids, token_type_ids, encoder.config.layer_norm_eps, name="embed")
    if result is Ellipsis or not tensor_of_shape(report, result, (1, 12, 384), "embed(...)"):
        return report
    with torch.no_grad():
        expected = encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    summed = (weights["embeddings.word_embeddings.weight"][input_ids]
              + weights["embeddings.position_embeddings.weight"][torch.arange(12)]
              + weights["embeddings.token_type_embeddings.weight"][token_type_ids])
    if allclose(result, summed, atol=TOLERANCE):
        report.fail("this is the raw sum: finish with LayerNorm (weights 'embeddings.LayerNorm.weight' / '.bias')")
    elif report.expect(allclose(result, expected, atol=TOLERANCE), "equals the library's encoder.embeddings(...)",
                       "differs from encoder.embeddings(...): sum word + position + token-type rows, then LayerNorm"):
        report.ok(f"max abs diff {(result - expected).abs().max().item():.1e}")
    return report


def check_gelu(gelu) -> CheckReport:
    """``gelu(x)``: BERT's exact GELU, x * Phi(x) with Phi written through erf."""
    report = CheckReport("Exact GELU")
    x = torch.linspace(-6, 6, 1201)
    result = report.call(gelu, x, name="gelu")
    if result is Ellipsis or not tensor_of_shape(report, result, (1201,), "gelu(x)"):
        return report
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    tanh_form = torch.nn.functional.gelu(x, approximate="tanh")
    if torch.allclose(result, tanh_form, atol=1e-6):
        report.fail("this is the tanh approximation: BERT's 'gelu' uses erf, 0.5 * x * (1 + erf(x / sqrt(2)))")
    elif report.expect(torch.allclose(result, exact, atol=1e-6), "equals 0.5 * x * (1 + erf(x / sqrt(2))) on [-6, 6]",
                       "differs from x * Phi(x): Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))"):
        report.expect(torch.allclose(result, torch.nn.functional.gelu(x), atol=1e-6),
                      "equals torch.nn.functional.gelu(x)", "differs from torch.nn.functional.gelu(x)")
    return report
