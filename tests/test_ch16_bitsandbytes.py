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
    int8_matmul_calls,
    int8_matmul_kernel,
    linear_layer_types,
    load_bnb_classifier,
    outlier_columns,
    unpack_nibbles,
)
from behind_pipeline.checks.ch16_bitsandbytes import (
    check_predicted_footprint,
    check_save_and_reload_4bit,
    check_threshold_sweep,
    footprint_reference,
    safetensors_files,
    save_and_reload_reference,
    state_bytes_in,
    threshold_sweep_reference,
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


# --- Exercise 1: a 4-bit checkpoint ----------------------------------------------------------------------------------


def test_checkpoint_checker_accepts_the_reference():
    assert check_save_and_reload_4bit(save_and_reload_reference).passed


def saves_the_fp32_model(model_id, folder):
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(model_id).save_pretrained(folder)
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    return reloaded, sum(p.stat().st_size for p in safetensors_files(folder)), state_bytes_in(folder)


def saves_8bit(model_id, folder):
    from transformers import AutoModelForSequenceClassification

    load_bnb_classifier(model_id, 8).save_pretrained(folder)
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    return reloaded, sum(p.stat().st_size for p in safetensors_files(folder)), state_bytes_in(folder)


def without_double_quantization(model_id, folder):
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    AutoModelForSequenceClassification.from_pretrained(model_id, quantization_config=config).save_pretrained(folder)
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    return reloaded, sum(p.stat().st_size for p in safetensors_files(folder)), state_bytes_in(folder)


def footprint_as_file_size(model_id, folder):
    reloaded, _, state = save_and_reload_reference(model_id, folder)
    return reloaded, reloaded.get_memory_footprint(), state


def whole_folder(model_id, folder):
    from pathlib import Path

    reloaded, _, state = save_and_reload_reference(model_id, folder)
    return reloaded, sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()), state


def size_in_mib(model_id, folder):
    reloaded, size, state = save_and_reload_reference(model_id, folder)
    return reloaded, size / 2**20, state


def fp32_file_size(model_id, folder):
    reloaded, _, state = save_and_reload_reference(model_id, folder)
    return reloaded, sum(p.stat().st_size for p in safetensors_files(model_id)), state


def absmax_only(model_id, folder):
    reloaded, size, _ = save_and_reload_reference(model_id, folder)
    return reloaded, size, state_bytes_in(folder, ("absmax",))


def packed_weights_counted(model_id, folder):
    reloaded, size, _ = save_and_reload_reference(model_id, folder)
    return reloaded, size, state_bytes_in(folder, ("absmax", "quant_map", "quant_state", ".weight"))


def nested_forgotten(model_id, folder):
    reloaded, size, state = save_and_reload_reference(model_id, folder)
    return reloaded, size, state - state_bytes_in(folder, ("nested_",))


def nothing_saved(model_id, folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(model_id), 0, 0


@pytest.mark.parametrize("wrong, words", [
    (saves_the_fp32_model, ["fp32 model was saved"]),
    (saves_8bit, ["8-bit", "bnb_config(4)"]),
    (without_double_quantization, ["double quantization", "load_bnb_classifier(model_id, 4)"]),
    (footprint_as_file_size, ["get_memory_footprint", "quantization state"]),
    (whole_folder, ["config.json"]),
    (size_in_mib, ["mib"]),
    (fp32_file_size, ["fp32 checkpoint"]),
    (absmax_only, ["only the absmax"]),
    (packed_weights_counted, ["packed weights"]),
    (nested_forgotten, ["nested"]),
    (nothing_saved, ["no .safetensors"]),
    (lambda model_id, folder: save_and_reload_reference(model_id, folder)[:2], ["tuple"]),
    (lambda model_id, folder: (None, 1, 2), ["first item"]),
], ids=["saves_the_fp32_model", "saves_8bit", "without_double_quantization", "footprint_as_file_size",
        "whole_folder", "size_in_mib", "fp32_file_size", "absmax_only", "packed_weights_counted",
        "nested_forgotten", "nothing_saved", "two_items", "no_model"])
def test_checkpoint_checker_rejects(wrong, words):
    assert_rejected(check_save_and_reload_4bit(wrong), *words)


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


# --- Exercise 3: the threshold -------------------------------------------------------------------------------------


def test_threshold_checker_accepts_the_reference_and_tensor_values():
    assert check_threshold_sweep(threshold_sweep_reference).passed

    def as_tensors(model_id, encoding, thresholds):
        return {t: torch.tensor(v) for t, v in threshold_sweep_reference(model_id, encoding, thresholds).items()}

    assert check_threshold_sweep(as_tensors).passed


@pytest.mark.parametrize("options, words", [
    ({"pass_threshold": False}, ["llm_int8_threshold=threshold"]),
    ({"compare_with": "8-bit"}, ["reference is the fp32 model"]),
    ({"reduce": "mean"}, ["mean"]),
    ({"bits": 4}, ["4 bits"]),
], ids=["threshold_not_passed", "compared_with_8bit", "mean_not_max", "loaded_in_4bit"])
def test_threshold_checker_rejects(options, words):
    assert_rejected(check_threshold_sweep(
        lambda model_id, encoding, thresholds: threshold_sweep_reference(model_id, encoding, thresholds, **options)),
        *words)


@pytest.mark.parametrize("wrong, words", [
    (lambda model_id, encoding, thresholds: list(threshold_sweep_reference(model_id, encoding, thresholds).values()),
     ["dict"]),
    (lambda model_id, encoding, thresholds: {str(t): 0.0 for t in thresholds} | {"x": 1}, ["keys"]),
    (lambda model_id, encoding, thresholds: dict.fromkeys(thresholds, 0.0), ["expected"]),
], ids=["a_list", "wrong_keys", "zeros"])
def test_threshold_checker_rejects_odd_answers(wrong, words):
    assert_rejected(check_threshold_sweep(wrong), *words)


# --- the chapter's int8 path ------------------------------------------------------------------------------------------


def test_int8_product_runs_through_the_kernel_this_cpu_registers(tiny_folder):
    classifier = load_bnb_classifier(tiny_folder, 8)
    with torch.inference_mode():
        calls = int8_matmul_calls(lambda: classifier(input_ids=torch.tensor([[1, 5, 7, 2]])))
    layers = linear_layer_types(classifier)["Linear8bitLt"]
    expected = "torch._int_mm" if int8_matmul_kernel() == "torch._int_mm" else "fp32 fallback"
    assert calls[expected] == layers and sum(calls.values()) == layers


def test_outlier_columns_grow_as_the_threshold_falls(tmp_path):
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    tiny_classifier(64, 2, 128, 2, 120).save_pretrained(tmp_path)
    counts = {}
    for threshold in (0.0, 1.0, 100.0):
        model = AutoModelForSequenceClassification.from_pretrained(
            tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)).eval()
        with torch.inference_mode():
            model(input_ids=torch.tensor([[1, 5, 7, 2, 9, 11]]))
        counts[threshold] = sum(outlier_columns(model).values())
    assert counts[0.0] == 0 and counts[100.0] == 0 < counts[1.0]


# --- llm_int8_skip_modules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, layer_type", [(8, "Linear8bitLt"), (4, "Linear4bit")])
def test_the_head_is_quantized_unless_skipped(tiny_folder, bits, layer_type):
    from transformers.quantizers.base import get_keys_to_not_convert

    fp32 = tiny_classifier(128, 2, 256, 2, 80)
    assert get_keys_to_not_convert(fp32) == ["classifier.bias"]  # the rule that misses the head
    assert type(load_bnb_classifier(tiny_folder, bits).classifier).__name__ == layer_type
    kept = load_bnb_classifier(tiny_folder, bits, skip_modules=["classifier"])
    assert type(kept.classifier) is nn.Linear and kept.classifier.weight.dtype == torch.float32
    linears = linear_layer_types(fp32)["Linear"]
    assert linear_layer_types(kept) == {layer_type: linears - 1, "Linear": 1}
    head = fp32.classifier.weight.numel()
    assert kept.get_memory_footprint() - load_bnb_classifier(tiny_folder, bits).get_memory_footprint() == (
        head * 4 - head * {8: 1, 4: 0.5}[bits])
