"""Chapter 15: int8 and NF4 by hand equal PyTorch and bitsandbytes, and the checkers reject typical wrong answers.

The layers here are small random ``nn.Linear``s: PyTorch's dynamic int8 kernels and bitsandbytes' NF4 quantizer do
the same on any size.
"""

import numpy as np
import pytest
import torch
from torch import nn

from behind_pipeline.checks.ch15_quantization import (
    ASYMMETRIC_CASES,
    asymmetric_rows_reference,
    check_int8_matmul,
    check_nf4_levels,
    check_quantize_asymmetric_rows,
    int8_matmul_reference,
    matmul_inputs,
    nf4_levels_reference,
)
from behind_pipeline.checks.ch15_quantization import (
    test_weight as weight_for_case,
)
from behind_pipeline.quantize import (
    asymmetric_params,
    dequantize,
    dequantize_nf4,
    dynamic_int8,
    int8_linear_by_hand,
    module_type_counts,
    nf4_levels,
    quantize_asymmetric,
    quantize_nf4,
    quantize_symmetric,
    saved_size_mib,
    static_int8_linears,
    symmetric_scale,
    torch_ao_warning,
    torch_int8_weights,
)

from checker_asserts import assert_rejected
from tiny_models import tiny_bert_classifier

# --- the chapter's code ---------------------------------------------------------------------------------------------


def test_symmetric_int8_error_is_within_half_a_step_and_per_channel_scales_are_per_row():
    torch.manual_seed(0)
    weight = torch.randn(6, 10) * torch.logspace(-2, 0, 6)[:, None]
    for per_channel in (False, True):
        scale = symmetric_scale(weight, per_channel=per_channel)
        q = quantize_symmetric(weight, scale)
        assert q.dtype == torch.int8 and int(q.abs().max()) == 127
        assert bool(((dequantize(q, scale) - weight).abs() <= scale / 2 + 1e-7).all())
    row_scale = symmetric_scale(weight, per_channel=True)
    assert row_scale.shape == (6, 1)
    assert torch.allclose(row_scale.flatten(), weight.abs().amax(dim=1) / 127)


def test_asymmetric_params_have_an_integer_zero_point_and_store_zero_exactly():
    x = torch.tensor([-1.0, 0.0, 0.7, 3.0])
    scale, zero_point = asymmetric_params(x)
    assert isinstance(zero_point, int) and zero_point == 64
    assert torch.isclose(scale, torch.tensor(4 / 255))
    q = quantize_asymmetric(x, scale, zero_point)
    assert int(q[1]) == zero_point and float(dequantize(q, scale, zero_point)[1]) == 0.0
    positive_scale, positive_zero = asymmetric_params(torch.tensor([0.5, 2.0]))
    assert positive_zero == 0 and torch.isclose(positive_scale, torch.tensor(2 / 255))


@pytest.mark.parametrize("shape", [(4, 16), (2, 5, 16)])
def test_int8_linear_by_hand_equals_pytorch_dynamic_int8(shape):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 7))
    quantized = dynamic_int8(model)[0]
    weight_int8, scale, bias = torch_int8_weights(quantized)
    assert torch.equal(weight_int8, torch.clamp(torch.round(model[0].weight / scale), -128, 127).to(torch.int8))
    x = torch.randn(*shape) * 3
    with torch.inference_mode():
        expected = quantized(x)
    hand = int8_linear_by_hand(x, weight_int8, scale, bias)
    assert (hand - expected).abs().max() < 1e-5
    # the check can fail: inputs quantized to [0, 255] (no reduce_range) give another result
    assert (int8_linear_by_hand(x, weight_int8, scale, bias, activation_qmax=255) - expected).abs().max() > 1e-3


def test_int8_linear_by_hand_equals_pytorch_on_a_large_batch_with_outlier_features():
    """Large batches put a few inputs within float rounding of a half step: the zero point must be added before
    rounding, as PyTorch does, or those inputs land one integer off and outputs move by s_x * s_w * |q_w|."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(384, 384))
    quantized = dynamic_int8(model)[0]
    weight_int8, scale, bias = torch_int8_weights(quantized)
    x = torch.randn(32, 40, 384)
    x[..., 5] *= 12
    x[..., 100] -= 4
    with torch.inference_mode():
        expected = quantized(x)
    assert (int8_linear_by_hand(x, weight_int8, scale, bias) - expected).abs().max() < 1e-5


def test_nf4_indices_and_absmax_equal_bitsandbytes():
    import bitsandbytes.functional as bnb_functional

    from behind_pipeline.bnb import unpack_nibbles

    torch.manual_seed(2)
    weight = torch.randn(12, 64 * 2) * 0.05
    levels = nf4_levels()
    indices, absmax = quantize_nf4(weight, levels)
    packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    assert torch.equal(unpack_nibbles(packed), indices)
    assert torch.equal(absmax, state.absmax)
    assert torch.allclose(dequantize_nf4(indices, absmax, levels, weight.shape),
                          bnb_functional.dequantize_4bit(packed, state))


def test_dynamic_int8_converts_linears_only_and_shrinks_the_saved_model():
    classifier = tiny_bert_classifier(50, hidden=32, layers=2, max_positions=16)
    quantized = dynamic_int8(classifier)
    counts = module_type_counts(quantized)
    assert counts["Linear (int8)"] == module_type_counts(classifier)["Linear"] and "Linear" not in counts
    assert counts["Embedding"] == 3
    assert saved_size_mib(quantized) < saved_size_mib(classifier)
    assert isinstance(classifier.classifier, nn.Linear)  # the original is left in fp32


class TinyTokenizer:
    """Enough of a tokenizer for ``predict_logits``: ids from the characters, padding with 0."""

    def __call__(self, texts, truncation=True, max_length=None):
        return {"input_ids": [[2] + [5 + ord(ch) % 40 for ch in text][:12] + [3] for text in texts]}

    def pad(self, features, return_tensors="pt"):
        longest = max(len(ids) for ids in features["input_ids"])
        ids = [row + [0] * (longest - len(row)) for row in features["input_ids"]]
        mask = [[1] * len(row) + [0] * (longest - len(row)) for row in features["input_ids"]]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def tiny_bert():
    return tiny_bert_classifier(50, hidden=32, layers=2, max_positions=24)


TEXTS = ["a good film", "bad", "not bad at all, really", "an awful, awful mess", "fine", "wonderful acting"]


def test_per_channel_dynamic_int8_has_one_scale_per_output_row_and_a_smaller_error():
    classifier = tiny_bert()
    per_tensor, per_channel = dynamic_int8(classifier), dynamic_int8(classifier, per_channel=True)
    layer = per_channel.bert.encoder.layer[0].intermediate.dense
    weight = classifier.bert.encoder.layer[0].intermediate.dense.weight.detach()  # (64, 32)
    assert layer.weight().qscheme() == torch.per_channel_affine
    assert torch.allclose(layer.weight().q_per_channel_scales().float(), weight.abs().amax(dim=1) / 127.5)
    assert per_tensor.bert.encoder.layer[0].intermediate.dense.weight().qscheme() == torch.per_tensor_affine
    error = {name: (model.bert.encoder.layer[0].intermediate.dense.weight().dequantize() - weight).abs().mean()
             for name, model in (("tensor", per_tensor), ("channel", per_channel))}
    assert error["channel"] < error["tensor"]


def test_dynamic_int8_depends_on_the_batch_and_static_int8_does_not():
    from behind_pipeline.predict import predict_logits

    classifier, tokenizer = tiny_bert(), TinyTokenizer()
    dynamic = dynamic_int8(classifier)
    static = static_int8_linears(classifier, tokenizer, TEXTS[::-1], batch_size=3)
    counts = module_type_counts(static)
    assert counts["Linear (static int8)"] == module_type_counts(classifier)["Linear"] and "Linear" not in counts
    alone = {name: torch.cat([predict_logits(model, tokenizer, [text]) for text in TEXTS])
             for name, model in (("dynamic", dynamic), ("static", static))}
    together = {name: predict_logits(model, tokenizer, TEXTS, batch_size=6)
                for name, model in (("dynamic", dynamic), ("static", static))}
    moved = {name: (alone[name] - together[name]).abs().max() for name in alone}
    assert moved["dynamic"] > 1e-4  # the batch's range sets the input scale
    # scales fixed by calibration: only float rounding (padding) can tip a value across a rounding boundary
    assert moved["static"] < moved["dynamic"] / 10


def test_static_int8_fixes_each_linear_input_scale_from_the_calibration_range():
    from behind_pipeline.predict import predict_logits

    classifier, tokenizer = tiny_bert(), TinyTokenizer()
    captured = []
    hook = classifier.bert.encoder.layer[0].attention.self.query.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach()))
    predict_logits(classifier, tokenizer, TEXTS, batch_size=6)
    hook.remove()
    static = static_int8_linears(classifier, tokenizer, TEXTS, batch_size=6)
    stub = static.bert.encoder.layer[0].attention.self.query.quant  # QuantStub -> Quantize after convert
    low, high = min(captured[0].min().item(), 0.0), max(captured[0].max().item(), 0.0)
    span = stub.scale.item() * 127  # reduce_range: activations on [0, 127]
    assert span <= (high - low) * 1.001 and span > (high - low) * 0.3  # the histogram may clip, never widen
    assert isinstance(classifier.bert.encoder.layer[0].attention.self.query, nn.Linear)  # the original stays fp32


def test_torch_ao_warning_is_quoted_from_this_torch():
    message = torch_ao_warning()
    assert message.startswith("torch.ao.quantization is deprecated")


# --- Exercise 1: asymmetric int8 per row ----------------------------------------------------------------------------


def right_rows(weight):
    return asymmetric_rows_reference(weight)


def scale_from_mean(weight):
    q, _, zero_point = asymmetric_rows_reference(weight)
    return q, weight.abs().mean(dim=1, keepdim=True) / 255, zero_point


def zero_point_not_integer(weight):
    low = weight.amin(dim=1, keepdim=True).clamp(max=0)
    high = weight.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low) / 255
    zero_point = -low / scale  # not rounded
    return torch.clamp(torch.round(weight / scale + zero_point), 0, 255), scale, zero_point


def scale_over_wrong_axis(weight):
    low = weight.amin(dim=0, keepdim=True).clamp(max=0)  # per input column
    high = weight.amax(dim=0, keepdim=True).clamp(min=0)
    scale = (high - low) / 255
    zero_point = torch.round(-low / scale)
    return torch.clamp(torch.round(weight / scale) + zero_point, 0, 255), scale, zero_point


def rounding_before_scaling(weight):
    q, scale, zero_point = asymmetric_rows_reference(weight)
    return torch.clamp(torch.round(weight) / scale + zero_point, 0, 255).round(), scale, zero_point


def range_without_zero(weight):
    low, high = weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)  # 0 not always inside
    scale = (high - low) / 255
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    return torch.clamp(torch.round(weight / scale) + zero_point, 0, 255), scale, zero_point


def zero_row_unguarded(weight):
    low = weight.amin(dim=1, keepdim=True).clamp(max=0)
    high = weight.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low) / 255  # 0 for a row of zeros
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)  # NaN there
    return torch.clamp(torch.round(weight / scale) + zero_point, 0, 255), scale, zero_point


def zero_row_with_a_tiny_scale(weight):
    """A right answer: any positive scale stores a row of zeros exactly."""
    low = weight.amin(dim=1, keepdim=True).clamp(max=0)
    high = weight.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low).clamp(min=1e-8) / 255
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    q = torch.clamp(torch.round(weight / scale) + zero_point, 0, 255)
    return q.to(torch.uint8), scale, zero_point.to(torch.int32)


def numpy_rows(weight):
    q, scale, zero_point = asymmetric_rows_reference(weight)
    return q.numpy().astype(np.uint8), scale.flatten().numpy(), zero_point.numpy().astype(np.int64)


def test_asymmetric_rows_checker_accepts_right_answers_in_any_container():
    assert check_quantize_asymmetric_rows(right_rows).passed
    assert check_quantize_asymmetric_rows(numpy_rows).passed
    assert check_quantize_asymmetric_rows(zero_row_with_a_tiny_scale).passed


def test_the_asymmetric_cases_include_a_row_of_zeros():
    assert any(not weight_for_case(rows, cols, seed, zero).any(dim=1).all()
               for seed, (rows, cols, zero, _) in enumerate(ASYMMETRIC_CASES))


@pytest.mark.parametrize("wrong, words", [
    (scale_from_mean, ["mean"]),
    (zero_point_not_integer, ["not integers"]),
    (scale_over_wrong_axis, ["dim=1"]),
    (rounding_before_scaling, ["divide by the scale first"]),
    (range_without_zero, ["0 inside the range", "row 1"]),
    (zero_row_unguarded, ["row 3 is all zeros", "scale 1"]),
    (lambda weight: asymmetric_rows_reference(weight)[:2], ["tuple"]),
    (lambda weight: (_ for _ in ()).throw(ValueError("boom")), ["raised valueerror"]),
    (lambda weight: None, ["returned none"]),
    (..., ["still `...`"]),
], ids=["scale_from_mean", "zero_point_not_integer", "scale_over_wrong_axis", "rounding_before_scaling",
        "range_without_zero", "zero_row_unguarded", "two_values", "raises", "returns_none", "not_done"])
def test_asymmetric_rows_checker_rejects(wrong, words):
    assert_rejected(check_quantize_asymmetric_rows(wrong), *words)


def test_asymmetric_rows_checker_rejects_a_function_that_changes_the_weight():
    def in_place(weight):
        result = asymmetric_rows_reference(weight.clone())
        weight.mul_(2)
        return result

    assert_rejected(check_quantize_asymmetric_rows(in_place), "changed the weight")


# --- Exercise 2: the int8 matmul ------------------------------------------------------------------------------------


def right_matmul(x, weight):
    return int8_matmul_reference(x, weight).float()


def fp32_product(x, weight):
    return x @ weight.T


def per_tensor_scales(x, weight):
    x_scale, w_scale = x.abs().max() / 127, weight.abs().max() / 127
    x_int = torch.round(x / x_scale).to(torch.int32)
    w_int = torch.round(weight / w_scale).to(torch.int32)
    return (x_int @ w_int.T).float() * x_scale * w_scale


def weight_scale_over_wrong_axis(x, weight):
    x_scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    w_scale = weight.abs().amax(dim=0, keepdim=True) / 127  # (1, in): per input column
    x_int = torch.round(x / x_scale).to(torch.int32)
    w_int = torch.round(weight / w_scale).to(torch.int32)
    return (x_int @ w_int.T).float() * x_scale * w_scale.mean()


def accumulate_in_int8(x, weight):
    x_scale = torch.where(x.abs().amax(1, keepdim=True) > 0, x.abs().amax(1, keepdim=True) / 127, 1.0)
    w_scale = weight.abs().amax(1, keepdim=True) / 127
    x_int = torch.round(x / x_scale).to(torch.int8)
    w_int = torch.round(weight / w_scale).to(torch.int8)
    products = x_int[:, None, :].to(torch.int16) * w_int[None, :, :].to(torch.int16)
    return products.to(torch.int8).sum(dim=-1, dtype=torch.int8).float() * (x_scale * w_scale.T)  # wraps around


def zero_row_divides_by_zero(x, weight):
    x_scale = x.abs().amax(1, keepdim=True) / 127  # 0 for a row of zeros -> NaN
    w_scale = weight.abs().amax(1, keepdim=True) / 127
    x_int = torch.round(x / x_scale)
    w_int = torch.round(weight / w_scale)
    return (x_int @ w_int.T) * (x_scale * w_scale.T)


def zero_row_cast_to_int32(x, weight):
    """No guard, as the statement's steps read: the NaN of 0 / 0 cast to int32, then multiplied by the 0 scale."""
    def quantize_rows(t):
        scale = t.abs().amax(dim=1, keepdim=True) / 127  # 0 for a row of zeros
        return torch.clamp(torch.round(t / scale), -127, 127).to(torch.int32), scale

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x), quantize_rows(weight)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def zero_row_guarded_with_where(x, weight):
    """A right answer that computes 0 / 0 but throws the NaN away before any cast."""
    def quantize_rows(t):
        scale = t.abs().amax(dim=1, keepdim=True) / 127
        q = torch.where(scale > 0, torch.clamp(torch.round(t / scale), -127, 127), 0.0)
        return q.to(torch.int32), torch.where(scale > 0, scale, 1.0)

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x), quantize_rows(weight)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def zero_row_guarded_for_x_only(x, weight):
    """The guard written for the tokens only: a weight row of zeros still divides 0 by 0."""
    x_absmax = x.abs().amax(dim=1, keepdim=True)
    x_scale = torch.where(x_absmax > 0, x_absmax / 127, torch.ones_like(x_absmax))
    w_scale = weight.abs().amax(dim=1, keepdim=True) / 127  # 0 for a row of zeros
    x_int = torch.clamp(torch.round(x / x_scale), -127, 127).to(torch.int32)
    w_int = torch.clamp(torch.round(weight / w_scale), -127, 127).to(torch.int32)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def test_a_guard_for_the_tokens_only_is_caught_on_the_weights_zero_row():
    assert_rejected(check_int8_matmul(zero_row_guarded_for_x_only), "a row of zeros", "NaN", "scale 1")


def test_int8_matmul_checker_accepts_the_right_answer_and_a_float64_result():
    assert check_int8_matmul(right_matmul).passed
    assert check_int8_matmul(lambda x, weight: int8_matmul_reference(x, weight)).passed
    assert check_int8_matmul(zero_row_guarded_with_where).passed


def test_the_zero_row_case_catches_a_missing_guard_the_result_hides():
    x, weight = matmul_inputs(4, 16, 16, 2)
    hidden = zero_row_cast_to_int32(x, weight)
    assert torch.isfinite(hidden).all() and torch.allclose(hidden.double(), int8_matmul_reference(x, weight),
                                                           atol=1e-4)  # the output alone cannot tell
    assert_rejected(check_int8_matmul(zero_row_cast_to_int32), "a row of zeros", "NaN", "scale 1")


@pytest.mark.parametrize("wrong, words", [
    (fp32_product, ["fp32 product"]),
    (per_tensor_scales, ["one scale per tensor"]),
    (weight_scale_over_wrong_axis, ["max abs diff"]),
    (accumulate_in_int8, ["int32"]),
    (zero_row_divides_by_zero, ["row of zeros"]),
    (lambda x, weight: right_matmul(x, weight).T, ["shape"]),
    (lambda x, weight: "not a tensor", ["should be a tensor"]),
], ids=["fp32_product", "per_tensor_scales", "weight_scale_over_wrong_axis", "accumulate_in_int8",
        "zero_row_divides_by_zero", "transposed", "a_string"])
def test_int8_matmul_checker_rejects(wrong, words):
    assert_rejected(check_int8_matmul(wrong), *words)


# --- Exercise 3: the NF4 levels -------------------------------------------------------------------------------------


def test_nf4_reference_equals_bitsandbytes_table():
    assert torch.allclose(nf4_levels_reference(0.9677083), nf4_levels().double(), atol=1e-6)


def not_normalised(offset):
    levels = nf4_levels_reference(offset)
    normal = torch.distributions.Normal(0.0, 1.0)
    return levels * normal.icdf(torch.tensor(offset, dtype=torch.float64))  # raw quantiles, not in [-1, 1]


def mirrored(offset):
    return -nf4_levels_reference(offset).flip(0)  # 8 negative, 7 positive


def evenly_spaced(offset):
    levels = torch.linspace(-1, 1, 16)
    return levels


def hard_coded_table(offset):
    return nf4_levels().tolist()  # right only at bitsandbytes' offset


def symmetric_fifteen(offset):
    levels = nf4_levels_reference(offset)
    return levels[levels > -1]


@pytest.mark.parametrize("wrong, words", [
    (not_normalised, ["normalise"]),
    (mirrored, ["7 negative"]),
    (evenly_spaced, ["zero"]),
    (hard_coded_table, ["another offset"]),
    (symmetric_fifteen, ["15 levels"]),
    (lambda offset: nf4_levels_reference(offset).flip(0), ["sorted"]),
    (lambda offset: torch.full((16,), float("nan")), ["nan"]),
], ids=["not_normalised", "mirrored", "evenly_spaced", "hard_coded_table", "fifteen_levels", "descending", "nan"])
def test_nf4_levels_checker_rejects(wrong, words):
    assert_rejected(check_nf4_levels(wrong), *words)


def test_nf4_levels_checker_accepts_the_derivation_and_a_list():
    assert check_nf4_levels(nf4_levels_reference).passed
    assert check_nf4_levels(lambda offset: nf4_levels_reference(offset).tolist()).passed


# --- After a skeptical instructor's trial: boundaries, wrapped integers, named mistakes -----------------------------


def _row_range(weight):
    low = weight.amin(dim=1, keepdim=True).clamp(max=0.0)
    high = weight.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = (high - low) / 255
    return low, high, torch.where(scale > 0, scale, torch.ones_like(scale))


def q_never_clamped(weight):
    """Right but for the clamp: a zero point that rounds up (127.5 -> 128) puts the row's max at 256."""
    low, _, scale = _row_range(weight)
    zero_point = torch.round(-low / scale)
    return torch.round(weight / scale) + zero_point, scale, zero_point


def q_never_clamped_in_uint8(weight):
    """The same, cast to uint8: 256 wraps around to 0, the row's max becomes its min."""
    q, scale, zero_point = q_never_clamped(weight)
    return q.to(torch.uint8), scale, zero_point


@pytest.mark.parametrize("wrong, words", [
    (q_never_clamped, ["clamp", "256"]),
    (q_never_clamped_in_uint8, ["clamp", "wrapped"]),
], ids=["float_q", "uint8_q"])
def test_asymmetric_rows_checker_rejects_a_q_never_clamped(wrong, words):
    assert_rejected(check_quantize_asymmetric_rows(wrong), *words)


def test_the_asymmetric_cases_put_a_zero_point_half_way_between_two_integers():
    found = False
    for seed, (rows, cols, zero, _) in enumerate(ASYMMETRIC_CASES):
        weight = weight_for_case(rows, cols, seed, zero)
        low, high = weight.amin(dim=1).clamp(max=0).double(), weight.amax(dim=1).clamp(min=0).double()
        exact = -low * 255 / (high - low).clamp(min=1e-30)
        found |= bool(((exact - exact.floor()) == 0.5).any())
    assert found


def rows_in_float64(weight):
    low, _, scale = _row_range(weight.double())
    zero_point = torch.round(-low / scale)
    q = torch.clamp(torch.round(weight.double() / scale) + zero_point, 0, 255)
    return q.to(torch.uint8), scale, zero_point.long()


def rows_rounding_half_up(weight):
    """floor(v + 0.5): the other integer at a tie (q = 1 for row 4's min), as near as the even one."""
    low, _, scale = _row_range(weight)
    zero_point = torch.floor(-low / scale + 0.5)
    return torch.clamp(torch.floor(weight / scale + 0.5) + zero_point, 0, 255), scale, zero_point


def rows_zero_point_from_the_max(weight):
    """z = 255 - round(max / scale): equal to round(-min / scale) except at a tie, where it rounds the other way."""
    low, high, scale = _row_range(weight)
    zero_point = torch.where(high - low > 0, 255 - torch.round(high / scale), 0.0)
    return torch.clamp(torch.round(weight / scale) + zero_point, 0, 255), scale, zero_point


def rows_times_inverse(weight):
    low, _, scale = _row_range(weight)
    inverse = 1 / scale
    zero_point = torch.round(-low * inverse)
    return torch.clamp(torch.round(weight * inverse) + zero_point, 0, 255), scale, zero_point


def rows_in_numpy(weight):
    w = weight.numpy()
    low, high = np.minimum(w.min(axis=1, keepdims=True), 0), np.maximum(w.max(axis=1, keepdims=True), 0)
    scale = np.where(high - low > 0, (high - low) / 255, 1.0)
    zero_point = np.round(-low / scale)
    return np.clip(np.round(w / scale) + zero_point, 0, 255).astype(np.uint8), scale, zero_point.astype(np.int64)


@pytest.mark.parametrize("right", [rows_in_float64, rows_rounding_half_up, rows_zero_point_from_the_max,
                                   rows_times_inverse, rows_in_numpy])
def test_asymmetric_rows_checker_accepts_either_rounding_of_a_tie(right):
    assert check_quantize_asymmetric_rows(right).passed, check_quantize_asymmetric_rows(right)


def one_scale_for_the_tensor(weight):
    low, high = weight.min().clamp(max=0), weight.max().clamp(min=0)
    scale = (high - low) / 255
    zero_point = torch.round(-low / scale)
    return torch.clamp(torch.round(weight / scale) + zero_point, 0, 255), scale, zero_point  # scale of shape ()


def test_asymmetric_rows_checker_names_one_scale_for_the_whole_tensor_not_one_per_column():
    report = check_quantize_asymmetric_rows(one_scale_for_the_tensor)
    assert_rejected(report, "whole tensor", "dim=1")
    assert "input column" not in str(report), report


def zero_row_with_zero_point_255(weight):
    """Scale 1 for the row of zeros, as asked, but its zero point from 255 - round(max / scale) = 255."""
    low, high, scale = _row_range(weight)
    zero_point = torch.clamp(255 - torch.round(high / scale), 0, 255)
    return torch.clamp(torch.round(weight / scale) + zero_point, 0, 255), scale, zero_point


def test_asymmetric_rows_checker_names_the_zero_point_of_a_row_of_zeros_not_its_scale():
    report = check_quantize_asymmetric_rows(zero_row_with_zero_point_255)
    assert_rejected(report, "row 3", "zero point must be 0", "got zero point 255")
    assert "give such a row scale 1" not in str(report), report


def _rows_with(weight, divisor=255, symmetric=False, whole=False, zero_rounding=torch.round, q_rounding=torch.round,
               signed=False):
    if symmetric:
        absmax = weight.abs().amax(dim=1, keepdim=True)
        low, high = -absmax, absmax
    elif whole:
        low = weight.min().clamp(max=0).expand(weight.shape[0], 1)
        high = weight.max().clamp(min=0).expand(weight.shape[0], 1)
    else:
        low = weight.amin(dim=1, keepdim=True).clamp(max=0.0)
        high = weight.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = torch.where(high - low > 0, (high - low) / divisor, 1.0)
    qmin = -128 if signed else 0
    zero_point = torch.clamp(zero_rounding(qmin - low / scale), qmin, qmin + 255)
    q = torch.clamp(q_rounding(weight / scale + zero_point), qmin, qmin + 255)
    return q.to(torch.int8) if signed else q, scale, zero_point


@pytest.mark.parametrize("wrong, words", [
    (lambda weight: _rows_with(weight, symmetric=True), ["2 max|w| / 255", "min"]),
    (lambda weight: _rows_with(weight, divisor=256), ["256", "divide by 255"]),
    (lambda weight: _rows_with(weight, whole=True), ["whole tensor"]),
    (lambda weight: _rows_with(weight, zero_rounding=torch.floor), ["zero point", "truncates"]),
    (lambda weight: _rows_with(weight, q_rounding=torch.floor), ["truncated", "round"]),
    (lambda weight: _rows_with(weight, signed=True), ["unsigned", "[0, 255]"]),
    (lambda weight: (lambda q, s, z: (q.to(torch.int8), s, z))(*asymmetric_rows_reference(weight)),
     ["uint8", "wrapped"]),
], ids=["symmetric_absmax_range", "divided_by_256", "scale_of_the_whole_tensor", "zero_point_floored", "q_floored",
        "signed_int8", "q_stored_as_int8"])
def test_asymmetric_rows_checker_names_the_mistake(wrong, words):
    assert_rejected(check_quantize_asymmetric_rows(wrong), *words)


def _quantize_rows_as(t, dtype=torch.int32, rounding=torch.round, per_row=True, divisor=127, low=-127):
    absmax = t.abs().amax(dim=1, keepdim=True) if per_row else t.abs().amax().reshape(1, 1)
    scale = torch.where(absmax > 0, absmax / divisor, torch.ones_like(absmax))
    return torch.clamp(rounding(t / scale), low, 127).to(dtype), scale


def accumulate_in_int16(x, weight):
    """int16 holds every q and every product (127 * 127 = 16,129), not the sum of 256 of them."""
    (x_int, x_scale), (w_int, w_scale) = _quantize_rows_as(x, torch.int16), _quantize_rows_as(weight, torch.int16)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def int8_tensors_multiplied(x, weight):
    """q fits int8, so the learner keeps int8 for the product too: torch multiplies int8 in int8."""
    (x_int, x_scale), (w_int, w_scale) = _quantize_rows_as(x, torch.int8), _quantize_rows_as(weight, torch.int8)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def dequantized_then_fp32_product(x, weight):
    """Fake quantization: the same numbers as the int8 product, with no integer product at all."""
    (x_int, x_scale), (w_int, w_scale) = _quantize_rows_as(x), _quantize_rows_as(weight)
    return (x_int * x_scale) @ (w_int * w_scale).T


def zero_row_unguarded_in_numpy(x, weight):
    """No guard, in NumPy: the NaN of 0 / 0 becomes an integer in astype, which the torch watch cannot see."""
    def quantize_rows(t):
        scale = np.abs(t).max(axis=1, keepdims=True) / 127
        return np.clip(np.round(t / scale), -127, 127).astype(np.int32), scale

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x.numpy()), quantize_rows(weight.numpy())
    return (x_int.astype(np.int64) @ w_int.T.astype(np.int64)).astype(np.float32) * (x_scale * w_scale.T)


def test_the_matmul_cases_have_integer_sums_past_int16():
    from behind_pipeline.checks.ch15_quantization import MATMUL_CASES

    largest = 0
    for seed, (tokens, d_in, d_out, _) in enumerate(MATMUL_CASES):
        x, weight = matmul_inputs(tokens, d_in, d_out, seed)
        largest = max(largest, int((_quantize_rows_as(x)[0] @ _quantize_rows_as(weight)[0].T).abs().max()))
    assert largest > 32767


@pytest.mark.parametrize("wrong, words", [
    (accumulate_in_int16, ["int16", "wrapped", "int32"]),
    (int8_tensors_multiplied, ["wrapped", "int32"]),
    (dequantized_then_fp32_product, ["dequantized", "int32"]),
    (zero_row_unguarded_in_numpy, ["a row of zeros", "NaN", "scale 1"]),
], ids=["int16_sums", "int8_sums", "fake_quantization", "numpy_unguarded"])
def test_int8_matmul_checker_rejects_answers_whose_numbers_looked_right(wrong, words):
    assert_rejected(check_int8_matmul(wrong), *words)


def scales_from_max_without_abs(x, weight):
    def quantize_rows(t):
        largest = t.amax(dim=1, keepdim=True)  # the largest value, not the largest |value|
        scale = torch.where(largest != 0, largest / 127, torch.ones_like(largest))
        return torch.clamp(torch.round(t / scale), -127, 127).to(torch.int32), scale

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x), quantize_rows(weight)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def _matmul_with(x_kind=None, w_kind=None, result_dtype=torch.float32):
    def int8_matmul(x, weight):
        (x_int, x_scale), (w_int, w_scale) = _quantize_rows_as(x, **(x_kind or {})), _quantize_rows_as(
            weight, **(w_kind or {}))
        return ((x_int @ w_int.T).float() * (x_scale * w_scale.T)).to(result_dtype)

    return int8_matmul


@pytest.mark.parametrize("wrong, words", [
    (_matmul_with({"rounding": torch.trunc}, {"rounding": torch.trunc}), ["truncated"]),
    (_matmul_with({"per_row": False}), ["one scale for all of x"]),
    (_matmul_with(w_kind={"per_row": False}), ["one scale for all of w"]),
    (_matmul_with({"divisor": 128, "low": -128}, {"divisor": 128, "low": -128}), ["/ 128", "[-127, 127]"]),
    (_matmul_with(result_dtype=torch.float16), ["float16", "float32"]),
    (_matmul_with(result_dtype=torch.bfloat16), ["bfloat16", "float32"]),
    (scales_from_max_without_abs, ["instead of max(|row|)"]),
], ids=["truncated", "x_per_tensor", "w_per_tensor", "divided_by_128", "float16_result", "bfloat16_result",
        "w_scale_from_max_without_abs"])
def test_int8_matmul_checker_names_the_mistake(wrong, words):
    assert_rejected(check_int8_matmul(wrong), *words)


def integers_multiplied_as_floats(x, weight):
    """Whole numbers in float32: exact while the sums stay under 2**24, as here."""
    (x_int, x_scale), (w_int, w_scale) = _quantize_rows_as(x), _quantize_rows_as(weight)
    return (x_int.float() @ w_int.float().T) * (x_scale * w_scale.T)


def integers_multiplied_and_summed(x, weight):
    (x_int, x_scale), (w_int, w_scale) = _quantize_rows_as(x), _quantize_rows_as(weight)
    return (x_int[:, None, :] * w_int[None, :, :]).sum(dim=-1).float() * (x_scale * w_scale.T)


def integers_in_einsum(x, weight):
    (x_int, x_scale), (w_int, w_scale) = _quantize_rows_as(x, torch.int64), _quantize_rows_as(weight, torch.int64)
    return torch.einsum("ik,jk->ij", x_int, w_int).double() * (x_scale * w_scale.T)


def int8_matmul_in_numpy(x, weight):
    def quantize_rows(t):
        absmax = np.abs(t).max(axis=1, keepdims=True)
        scale = np.where(absmax > 0, absmax / 127, 1.0)
        return np.clip(np.round(t / scale), -127, 127).astype(np.int32), scale

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x.numpy()), quantize_rows(weight.numpy())
    return (x_int @ w_int.T).astype(np.float32) * (x_scale * w_scale.T)


def int8_matmul_times_inverse(x, weight):
    def quantize_rows(t):
        absmax = t.abs().amax(dim=1, keepdim=True)
        inverse = torch.where(absmax > 0, 127 / absmax, torch.ones_like(absmax))
        return torch.clamp(torch.round(t * inverse), -127, 127).to(torch.int32), 1 / inverse

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x), quantize_rows(weight)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def zero_row_nan_cleaned_before_the_cast(x, weight):
    def quantize_rows(t):
        scale = t.abs().amax(dim=1, keepdim=True) / 127
        q = torch.nan_to_num(torch.round(t / scale), nan=0.0)  # 0 / 0 computed, cleaned before any cast
        return torch.clamp(q, -127, 127).to(torch.int32), torch.where(scale > 0, scale, 1.0)

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x), quantize_rows(weight)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


@pytest.mark.parametrize("right", [
    integers_multiplied_as_floats, integers_multiplied_and_summed, integers_in_einsum, int8_matmul_in_numpy,
    int8_matmul_times_inverse, zero_row_nan_cleaned_before_the_cast,
    lambda x, weight: (lambda xi, xs, wi, ws: (xi @ wi.T).double() * (xs * ws.T))(
        *_quantize_rows_as(x.double(), torch.int64), *_quantize_rows_as(weight.double(), torch.int64)),
    lambda x, weight: (lambda xi, xs, wi, ws: (xi @ wi.T).float() * (xs * ws.T))(
        *_quantize_rows_as(x, low=-128), *_quantize_rows_as(weight, low=-128)),
], ids=["floats_of_integers", "mul_and_sum", "einsum", "numpy", "times_inverse", "nan_to_num", "float64",
        "clamp_at_-128"])
def test_int8_matmul_checker_accepts_other_right_answers(right):
    assert check_int8_matmul(right).passed, check_int8_matmul(right)


def nf4_levels_at_the_default_offset(offset=0.9677083):
    return nf4_levels_reference(0.9677083)  # the argument ignored


@pytest.mark.parametrize("wrong, words", [
    (nf4_levels_at_the_default_offset, ["another offset", "`offset` argument"]),
    (lambda offset: nf4_levels_reference(offset).half(), ["float16"]),
], ids=["offset_ignored", "float16"])
def test_nf4_levels_checker_names_the_mistake(wrong, words):
    assert_rejected(check_nf4_levels(wrong), *words)


def nf4_levels_in_float32_from_erfinv(offset):
    """sqrt(2) erfinv(2p - 1) without the sqrt(2), in float32: the normalisation cancels the factor."""
    positive = torch.erfinv(2 * torch.linspace(offset, 0.5, 9)[:-1] - 1)
    negative = -torch.erfinv(2 * torch.linspace(offset, 0.5, 8)[:-1] - 1)
    raw = torch.cat([negative, torch.zeros(1), positive]).sort().values
    return raw / raw.max()


def test_nf4_levels_checker_accepts_float32_and_an_unscaled_quantile():
    assert check_nf4_levels(nf4_levels_in_float32_from_erfinv).passed


# --- Statements that give the goal, not the recipe: answers built another way, mistakes the steps used to prevent ---


def int8_matmul_from_the_chapter_helpers(x, weight):
    """The chapter's per-row weight quantization, reused for both operands, with the guard for a row of zeros."""
    def quantize_rows(t):
        scale = symmetric_scale(t, per_channel=True)  # (rows, 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return quantize_symmetric(t, scale).to(torch.int32), scale

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x), quantize_rows(weight)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def int8_matmul_from_the_chapter_helpers_unguarded(x, weight):
    """The same without the guard: symmetric_scale gives a row of zeros scale 0, quantize_symmetric casts 0 / 0."""
    def quantize_rows(t):
        scale = symmetric_scale(t, per_channel=True)
        return quantize_symmetric(t, scale).to(torch.int32), scale

    (x_int, x_scale), (w_int, w_scale) = quantize_rows(x), quantize_rows(weight)
    return (x_int @ w_int.T).float() * (x_scale * w_scale.T)


def test_int8_matmul_checker_accepts_the_chapter_helpers_with_a_guard_and_rejects_them_without():
    assert check_int8_matmul(int8_matmul_from_the_chapter_helpers).passed
    assert_rejected(check_int8_matmul(int8_matmul_from_the_chapter_helpers_unguarded), "a row of zeros", "NaN",
                    "scale 1")


def _nf4_with_negative_grid(offset, steps, keep):
    """The negative side on ``steps`` equal steps from 0.5 to the offset, keeping ``keep`` ("outer" or "inner") 7."""
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    grid = normal.icdf(torch.linspace(offset, 0.5, steps + 1, dtype=torch.float64)[:-1])  # outermost first
    negative = -(grid[:7] if keep == "outer" else grid[-7:])
    raw = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return raw / raw.max()


@pytest.mark.parametrize("wrong, words", [
    (lambda offset: _nf4_with_negative_grid(offset, 8, "outer"), ["positive side's probabilities", "/ 7"]),
    (lambda offset: _nf4_with_negative_grid(offset, 8, "inner"), ["most negative level", "not -1", "`offset`"]),
], ids=["negative_side_on_the_positive_steps", "negative_side_short_of_the_offset"])
def test_nf4_levels_checker_names_a_negative_side_spaced_like_the_positive_one(wrong, words):
    assert_rejected(check_nf4_levels(wrong), *words)


def test_nf4_levels_checker_accepts_the_levels_from_scipy():
    from scipy.stats import norm

    def from_scipy(offset):
        positive = norm.ppf(np.linspace(0.5, offset, 9)[1:])
        negative = -norm.ppf(np.linspace(0.5, offset, 8)[1:])
        raw = np.sort(np.concatenate([negative, [0.0], positive]))
        return raw / raw[-1]

    assert check_nf4_levels(from_scipy).passed, check_nf4_levels(from_scipy)


# --- A skeptical instructor's trial of the rewritten statements: mistakes the generic hint did not name ------------


def _rescaled(x_part, w_part, rescale="both"):
    """Build an int8_matmul from how each operand is prepared ("int", "float", "int255" or "half") and rescaled."""
    def prepare(t, part):
        if part == "float":
            return t.double(), None
        q, scale = _quantize_rows_as(t, divisor=255 if part == "int255" else 127)
        return (q.half() if part == "half" else q), scale

    def int8_matmul(x, weight):
        (x_q, x_scale), (w_q, w_scale) = prepare(x, x_part), prepare(weight, w_part)
        if x_scale is None or w_scale is None:  # one float operand: dequantize the other, float product
            x_q = x_q if x_scale is None else x_q.double() * x_scale
            w_q = w_q if w_scale is None else w_q.double() * w_scale
            return (x_q @ w_q.T).float()
        sums = (x_q @ w_q.T).float()
        factor = {"both": x_scale * w_scale.T, "x": x_scale, "none": 1.0}[rescale]
        return sums * factor

    return int8_matmul


@pytest.mark.parametrize("wrong, words", [
    (_rescaled("float", "int"), ["weight-only", "quantize each row of x"]),
    (_rescaled("int", "float"), ["float w", "quantize each row of w"]),
    (_rescaled("int", "int", "none"), ["never rescaled", "x_scale[i] * w_scale[j]"]),
    (_rescaled("int", "int", "x"), ["x's scales only"]),
    (_rescaled("int255", "int255"), ["/ 255", "/ 127"]),
    (_rescaled("half", "half"), ["float16", "2,048", "int32"]),
], ids=["weight_only", "x_only", "sums_not_rescaled", "rescaled_by_x_only", "divided_by_255", "float16_sums"])
def test_int8_matmul_checker_names_what_the_generic_hint_did_not(wrong, words):
    assert_rejected(check_int8_matmul(wrong), *words)


def nf4_levels_evenly_spaced_on_each_side(offset):
    return torch.cat([torch.linspace(-1, 0, 8), torch.linspace(0, 1, 9)[1:]])  # 7 negative, 0, 8 positive


def test_nf4_levels_checker_names_levels_evenly_spaced_on_each_side():
    assert_rejected(check_nf4_levels(nf4_levels_evenly_spaced_on_each_side), "evenly spaced values on each side",
                    "quantile")
