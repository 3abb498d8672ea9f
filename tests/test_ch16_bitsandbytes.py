"""Chapter 16: bitsandbytes' 4-bit weights dequantized by hand, the loader, and the checkers against wrong answers.

Models here are tiny random BERTs saved to a temporary folder and loaded through ``BitsAndBytesConfig``, as the
chapter loads the course classifier: what is tested (layer types, packing, footprint) does not depend on the size.
"""

import pytest
import torch
from torch import nn

from behind_pipeline.bnb import (
    absmax_by_hand,
    bnb_config,
    dequantize_nf4_by_hand,
    dequantize_with_bnb,
    linear_layer_types,
    load_bnb_classifier,
    unpack_nibbles,
)
from behind_pipeline.checks.ch16_bitsandbytes import (
    check_dequantize_int8,
    check_pack_nf4,
    check_predicted_footprint,
    footprint_reference,
    int8_reference,
    pack_nf4_reference,
    tiny_classifier,
)
from behind_pipeline.quantize import nf4_levels, quantize_nf4

from checker_asserts import assert_rejected


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    # width 128: 64 x 128 query weights give 128 blocks, so nothing here depends on a block filling a row
    tiny_classifier(128, 2, 256, 2, 80).save_pretrained(folder)
    return str(folder)


# --- the chapter's code ---------------------------------------------------------------------------------------------


def test_unpack_nibbles_puts_the_high_nibble_first():
    assert unpack_nibbles(torch.tensor([0x7F, 0x0A], dtype=torch.uint8)).tolist() == [7, 15, 0, 10]


def test_bnb_config_rejects_other_bit_widths():
    assert bnb_config(4).bnb_4bit_use_double_quant and bnb_config(4).bnb_4bit_quant_type == "nf4"
    assert bnb_config(8).load_in_8bit
    with pytest.raises(ValueError):
        bnb_config(2)


@pytest.mark.parametrize("bits, layer_type", [(8, "Linear8bitLt"), (4, "Linear4bit")])
def test_loader_replaces_every_linear_and_matches_the_footprint_formula(tiny_folder, bits, layer_type):
    fp32 = tiny_classifier(128, 2, 256, 2, 80)
    classifier = load_bnb_classifier(tiny_folder, bits)
    assert not classifier.training
    assert linear_layer_types(classifier) == {layer_type: linear_layer_types(fp32)["Linear"]}
    assert classifier.get_memory_footprint() == footprint_reference(fp32, bits)


def test_nf4_weight_dequantized_by_hand_equals_bitsandbytes_and_chapter_15(tiny_folder):
    fp32 = tiny_classifier(128, 2, 256, 2, 80)
    classifier = load_bnb_classifier(tiny_folder, 4)
    layer = classifier.bert.encoder.layer[1].intermediate.dense
    state = layer.weight.quant_state
    assert state.nested  # double quantization on: absmax_by_hand has to undo it
    with torch.inference_mode():  # a forward pass must not repack the weight (cpu_bf16_kernel=False)
        classifier(input_ids=torch.tensor([[1, 5, 7, 2]]))
    assert not getattr(state, "packing_format_for_cpu", False)
    assert torch.equal(dequantize_nf4_by_hand(layer.weight), dequantize_with_bnb(layer.weight))
    indices, absmax = quantize_nf4(fp32.bert.encoder.layer[1].intermediate.dense.weight.detach(), nf4_levels())
    assert torch.equal(unpack_nibbles(layer.weight.data), indices)
    assert torch.allclose(absmax_by_hand(state), absmax, rtol=0.02)
    assert not torch.equal(absmax_by_hand(state), absmax)  # the double quantization did round them


def test_4bit_layer_computes_with_its_dequantized_weight(tiny_folder):
    layer = load_bnb_classifier(tiny_folder, 4).bert.encoder.layer[0].attention.self.query
    x = torch.randn(2, 5, 128)
    with torch.inference_mode():
        expected = x @ dequantize_nf4_by_hand(layer.weight).T + layer.bias
        assert torch.allclose(layer(x), expected, atol=1e-5)


# --- Exercise 1: pack NF4 -------------------------------------------------------------------------------------------


def low_nibble_first(weight, blocksize):
    packed, absmax = pack_nf4_reference(weight, blocksize)
    return ((packed & 15) << 4) | (packed >> 4), absmax


def absmax_per_row(weight, blocksize):
    absmax = weight.abs().amax(dim=1)
    indices = (weight[..., None] / absmax[:, None, None] - nf4_levels()).abs().argmin(-1).reshape(-1)
    return ((indices[0::2] << 4) | indices[1::2]).to(torch.uint8), absmax


def blocksize_ignored(weight, blocksize):
    return pack_nf4_reference(weight, 64)


def max_instead_of_absmax(weight, blocksize):
    absmax = weight.reshape(-1, blocksize).amax(dim=1)  # the largest value, not the largest magnitude
    return pack_nf4_reference(weight, blocksize)[0], absmax


def one_index_per_byte(weight, blocksize):
    blocks = weight.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    indices = (blocks[..., None] / absmax[:, None, None] - nf4_levels()).abs().argmin(-1).reshape(-1)
    return indices.to(torch.uint8), absmax


def levels_not_normalised(weight, blocksize):
    blocks = weight.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    raw_levels = nf4_levels() * 1.8481308  # the quantiles before dividing by the largest
    indices = (blocks[..., None] / absmax[:, None, None] - raw_levels).abs().argmin(-1).reshape(-1)
    return ((indices[0::2] << 4) | indices[1::2]).to(torch.uint8), absmax


def test_pack_checker_accepts_the_reference_and_bitsandbytes_shapes():
    import bitsandbytes.functional as bnb_functional

    assert check_pack_nf4(pack_nf4_reference).passed

    def with_bnb(weight, blocksize):
        packed, state = bnb_functional.quantize_4bit(weight, blocksize=blocksize, quant_type="nf4")
        return packed, state.absmax  # packed of shape (numel / 2, 1)

    assert check_pack_nf4(with_bnb).passed


@pytest.mark.parametrize("wrong, words", [
    (low_nibble_first, ["swapped", "high 4 bits"]),
    (absmax_per_row, ["not one per row"]),
    (blocksize_ignored, ["blocks of 128"]),
    (max_instead_of_absmax, ["largest magnitude"]),
    (one_index_per_byte, ["two 4-bit indices"]),
    (levels_not_normalised, ["nearest of the 16 nf4 levels"]),
    (lambda weight, blocksize: pack_nf4_reference(weight, blocksize)[0], ["tuple"]),
    (lambda weight, blocksize: 1 / 0, ["raised zerodivisionerror"]),
], ids=["low_nibble_first", "absmax_per_row", "blocksize_ignored", "max_instead_of_absmax", "one_index_per_byte",
        "levels_not_normalised", "packed_only", "raises"])
def test_pack_checker_rejects(wrong, words):
    assert_rejected(check_pack_nf4(wrong), *words)


# --- Exercise 2: the footprint --------------------------------------------------------------------------------------


def right_footprint(classifier, bits):
    return footprint_reference(classifier, bits)


def four_bit_as_one_byte(classifier, bits):
    return footprint_reference(classifier, bits, linear_weight_bytes=1)


def buffers_forgotten(classifier, bits):
    return footprint_reference(classifier, bits, count_buffers=False)


def biases_quantized(classifier, bits):
    return footprint_reference(classifier, bits, linear_bias_bytes={8: 1, 4: 0.5}[bits])


def embeddings_quantized(classifier, bits):
    return footprint_reference(classifier, bits, embedding_bytes={8: 1, 4: 0.5}[bits])


def absmax_counted(classifier, bits):
    extra = sum(m.weight.numel() / 64 for m in classifier.modules() if isinstance(m, nn.Linear)) if bits == 4 else 0
    return footprint_reference(classifier, bits) + extra


def only_8bit_right(classifier, bits):
    return footprint_reference(classifier, 8)


def test_footprint_checker_accepts_the_right_answer_as_int_float_or_tensor():
    assert check_predicted_footprint(right_footprint).passed
    assert check_predicted_footprint(lambda c, bits: int(footprint_reference(c, bits))).passed
    assert check_predicted_footprint(lambda c, bits: torch.tensor(footprint_reference(c, bits))).passed


@pytest.mark.parametrize("wrong, words", [
    (four_bit_as_one_byte, ["two 4-bit indices share a byte"]),
    (buffers_forgotten, ["buffers"]),
    (biases_quantized, ["biases"]),
    (embeddings_quantized, ["embeddings"]),
    (absmax_counted, ["absmax"]),
    (only_8bit_right, ["4-bit"]),
    (lambda classifier, bits: [1, 2], ["one number"]),
], ids=["four_bit_as_one_byte", "buffers_forgotten", "biases_quantized", "embeddings_quantized", "absmax_counted",
        "bits_ignored", "a_list"])
def test_footprint_checker_rejects(wrong, words):
    assert_rejected(check_predicted_footprint(wrong), *words)


# --- Exercise 3: dequantize 8-bit -----------------------------------------------------------------------------------


def test_int8_checker_accepts_the_reference_as_float32_or_numpy():
    assert check_dequantize_int8(lambda layer: int8_reference(layer).float()).passed
    assert check_dequantize_int8(lambda layer: int8_reference(layer).numpy()).passed


def scb_over_columns(layer):
    return layer.weight.data.float() * layer.weight.SCB[None, :] / 127


def divided_by_128(layer):
    return layer.weight.data.float() * layer.weight.SCB[:, None] / 128


def scale_not_divided(layer):
    return layer.weight.data.float() * layer.weight.SCB[:, None]


def int8_values_only(layer):
    return layer.weight.data


def changes_the_layer(layer):
    result = int8_reference(layer)
    layer.weight.data.zero_()
    return result


@pytest.mark.parametrize("wrong, words", [
    (scb_over_columns, ["raised"]),
    (divided_by_128, ["128"]),
    (scale_not_divided, ["not divided by 127"]),
    (int8_values_only, ["int8 values themselves"]),
    (changes_the_layer, ["changed"]),
    (lambda layer: int8_reference(layer).T, ["shape"]),
], ids=["scb_over_columns", "divided_by_128", "scale_not_divided", "int8_values_only", "changes_the_layer",
        "transposed"])
def test_int8_checker_rejects(wrong, words):
    assert_rejected(check_dequantize_int8(wrong), *words)


def test_int8_checker_names_a_per_column_scale_on_a_square_layer():
    from behind_pipeline.checks import ch16_bitsandbytes

    cases = ch16_bitsandbytes.INT8_CASES
    try:
        ch16_bitsandbytes.INT8_CASES = [case for case in cases if case[0] == case[1]]
        assert_rejected(check_dequantize_int8(scb_over_columns), "per column")
    finally:
        ch16_bitsandbytes.INT8_CASES = cases
