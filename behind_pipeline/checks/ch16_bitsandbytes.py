"""Checkers for the exercises of chapter 16 (bitsandbytes): NF4 packing, the memory footprint, an 8-bit layer.

Each compares the learner's answer with bitsandbytes itself on weights of other shapes and block sizes than the
chapter's: ``bitsandbytes.functional.quantize_4bit`` for the packing, ``get_memory_footprint()`` of tiny models
really loaded through ``BitsAndBytesConfig`` for the footprint, and ``Linear8bitLt`` layers for the 8-bit weights.
"""

import logging
import tempfile
from functools import cache

import torch
from torch import nn

from behind_pipeline.checks._core import CheckReport
from behind_pipeline.quantize import nf4_levels

# --- Exercise 1: pack a weight into bitsandbytes' 4-bit format ------------------------------------------------------

# (out, in, blocksize, what the case exposes)
PACK_CASES = [
    (8, 128, 64, "8 x 128, blocks of 64"),
    (6, 256, 128, "6 x 256, blocks of 128 (a block spans half a row)"),
    (4, 32, 64, "4 x 32, blocks of 64 (a block spans two rows)"),
]


def pack_weight(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    """Rows of different ranges; in row 0 the largest magnitude is negative and a few weights are exactly 0."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * torch.logspace(-2, 0, out_features)[:, None]
    weight[0, 3] = -3 * weight[0].abs().max()
    weight[0, :2] = 0.0
    return weight


def bnb_pack(weight: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' own packing (no double quantization): bytes (numel / 2,) and absmax (numel / blocksize,)."""
    import bitsandbytes.functional as bnb_functional

    packed, state = bnb_functional.quantize_4bit(weight, blocksize=blocksize, quant_type="nf4")
    return packed.reshape(-1), state.absmax


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    values = packed.reshape(-1).to(torch.int64)
    return torch.stack([values >> 4, values & 15], dim=1).reshape(-1)


def check_pack_nf4(pack_nf4) -> CheckReport:
    """``pack_nf4(weight, blocksize)`` -> (packed uint8 bytes, absmax per block), equal to bitsandbytes'."""
    report = CheckReport("Pack a weight into 4-bit NF4")
    for seed, (rows, cols, blocksize, description) in enumerate(PACK_CASES):
        weight = pack_weight(rows, cols, seed)
        before = weight.clone()
        result = report.call(pack_nf4, weight, blocksize, name="pack_nf4")
        if result is Ellipsis:
            return report
        if not isinstance(result, tuple | list) or len(result) != 2:
            report.fail(f"{description}: return a tuple (packed, absmax), got {type(result).__name__}")
            return report
        if not torch.equal(weight, before):
            report.fail(f"{description}: pack_nf4 changed the weight it was given; leave it unchanged")
            return report
        expected_packed, expected_absmax = bnb_pack(weight, blocksize)
        absmax = report.tensor(result[1], "absmax")
        packed = report.tensor(result[0], "packed", dtype=torch.int64)
        if absmax is None or packed is None:
            return report
        absmax, packed = absmax.reshape(-1), packed.reshape(-1)
        if absmax.numel() != expected_absmax.numel():
            report.fail(f"{description}: {absmax.numel()} absmax values, expected {expected_absmax.numel()}, one per "
                        f"block of {blocksize} consecutive weights of the flattened weight (not one per row)")
            return report
        if not torch.allclose(absmax, expected_absmax.double(), rtol=1e-6, atol=0):
            hint = (" (the largest value, not the largest magnitude: take .abs() first)"
                    if absmax[0] < expected_absmax[0] else "")
            report.fail(f"{description}: absmax of block 0 is {absmax[0]:.5g}, expected {expected_absmax[0]:.5g}: "
                        f"max |w| over each block of {blocksize}{hint}")
            return report
        if packed.numel() == weight.numel():
            report.fail(f"{description}: {packed.numel()} bytes for {weight.numel()} weights: pack two 4-bit indices "
                        "into each byte, (first << 4) | second")
            return report
        if packed.numel() != expected_packed.numel() or packed.min() < 0 or packed.max() > 255:
            report.fail(f"{description}: packed should hold {expected_packed.numel()} bytes (values 0..255), got "
                        f"{packed.numel()} values from {packed.min()} to {packed.max()}")
            return report
        expected_nibbles, nibbles = _nibbles(expected_packed), _nibbles(packed)
        wrong = int((nibbles != expected_nibbles).sum())
        if wrong > nibbles.numel() // 1000:  # a value at the exact midpoint of two levels may round either way
            swapped = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)
            if int((swapped != expected_nibbles).sum()) <= nibbles.numel() // 1000:
                hint = "the two indices of each byte are swapped: the first index goes in the high 4 bits"
            else:
                hint = ("each index is the nearest of the 16 NF4 levels (in [-1, 1]) to the weight divided by its "
                        "block's absmax")
            report.fail(f"{description}: {wrong} of {nibbles.numel()} indices differ from bitsandbytes': {hint}")
            return report
        report.ok(f"{description}: packed bytes and absmax equal bitsandbytes' quantize_4bit")
    return report


def pack_nf4_reference(weight: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The packing by hand (used by the tests): nearest level per block, two indices per byte, high first."""
    blocks = weight.float().reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    indices = (blocks[..., None] / absmax[:, None, None] - nf4_levels()).abs().argmin(dim=-1).reshape(-1)
    return ((indices[0::2] << 4) | indices[1::2]).to(torch.uint8), absmax


# --- Exercise 2: predict get_memory_footprint() -----------------------------------------------------------------------

# (hidden, layers, intermediate, labels, vocabulary)
FOOTPRINT_CASES = [(64, 2, 128, 2, 120), (32, 1, 96, 3, 50)]


def tiny_classifier(hidden: int, layers: int, intermediate: int, labels: int, vocabulary: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocabulary, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=intermediate, max_position_embeddings=24, num_labels=labels)
    return BertForSequenceClassification(config).eval()


@cache
def loaded_footprint(case: tuple, bits: int) -> int:
    """``get_memory_footprint()`` of the tiny classifier of ``case`` saved and loaded through bitsandbytes."""
    from behind_pipeline.bnb import load_bnb_classifier

    with tempfile.TemporaryDirectory() as folder:
        tiny_classifier(*case).save_pretrained(folder)
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        return int(load_bnb_classifier(folder, bits).get_memory_footprint())


def footprint_reference(classifier: nn.Module, bits: int, linear_weight_bytes=None, count_buffers: bool = True,
                        linear_bias_bytes: float = 4, embedding_bytes: float = 4) -> float:
    """Bytes of parameters and buffers after bitsandbytes replaced every ``nn.Linear`` (mistakes as options)."""
    weight_bytes = linear_weight_bytes if linear_weight_bytes is not None else {8: 1, 4: 0.5}[bits]
    total = 0.0
    for module in classifier.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, nn.Linear):
                total += parameter.numel() * (weight_bytes if name == "weight" else linear_bias_bytes)
            elif isinstance(module, nn.Embedding):
                total += parameter.numel() * embedding_bytes
            else:
                total += parameter.numel() * parameter.element_size()
    if count_buffers:
        total += sum(buffer.numel() * buffer.element_size() for buffer in classifier.buffers())
    return total


def _footprint_mistakes(classifier: nn.Module, bits: int) -> dict[str, float]:
    mistakes = {
        "the Linear weights are counted as in fp32: they are quantized": footprint_reference(classifier, bits, 4),
        "the buffers (position ids, token type ids) are missing: get_memory_footprint counts them":
            footprint_reference(classifier, bits, count_buffers=False),
        "the biases were counted as quantized: only the weights are, the biases stay fp32":
            footprint_reference(classifier, bits, linear_bias_bytes={8: 1, 4: 0.5}[bits]),
        "the embeddings were counted as quantized: only nn.Linear layers are replaced":
            footprint_reference(classifier, bits, embedding_bytes={8: 1, 4: 0.5}[bits]),
    }
    if bits == 4:
        mistakes["a 4-bit weight was counted as one byte: two 4-bit indices share a byte"] = footprint_reference(
            classifier, bits, 1)
        mistakes["the absmax values were counted: get_memory_footprint does not see the quant_state"] = (
            footprint_reference(classifier, bits) + sum(
                m.weight.numel() / 64 for m in classifier.modules() if isinstance(m, nn.Linear)))
    return mistakes


def check_predicted_footprint(predicted_footprint) -> CheckReport:
    """``predicted_footprint(classifier, bits)`` equals ``get_memory_footprint()`` after loading in ``bits``."""
    report = CheckReport("Predict the memory footprint")
    for case in FOOTPRINT_CASES:
        for bits in (8, 4):
            description = (f"a BERT of width {case[0]}, {case[1]} layer(s), {case[3]} labels, "
                           f"{case[4]} words, {bits}-bit")
            classifier = tiny_classifier(*case)
            result = report.call(predicted_footprint, classifier, bits, name="predicted_footprint")
            if result is Ellipsis:
                return report
            value = report.tensor(result, "the predicted footprint")
            if value is None:
                return report
            if value.numel() != 1:
                report.fail(f"{description}: return one number of bytes, got {value.numel()} values")
                return report
            predicted, actual = value.item(), loaded_footprint(case, bits)
            if predicted == actual:
                report.ok(f"{description}: {actual:,} bytes, as get_memory_footprint() reports")
                continue
            named = [text for text, wrong in _footprint_mistakes(classifier, bits).items() if wrong == predicted]
            hint = named[0] if named else ("count every parameter and buffer at its bytes per value; Linear "
                                           "weights at 1 byte (8-bit) or half a byte (4-bit)")
            report.fail(f"{description}: predicted {predicted:,.0f} bytes, get_memory_footprint() says "
                        f"{actual:,}: {hint}")
            return report
    return report


# --- Exercise 3: an 8-bit layer dequantized by hand -----------------------------------------------------------------

# (in, out, what the case exposes)
INT8_CASES = [(24, 10, "10 outputs x 24 inputs"), (7, 30, "30 outputs x 7 inputs"), (12, 12, "a square 12 x 12")]


def int8_layer(in_features: int, out_features: int, seed: int):
    """(a bitsandbytes ``Linear8bitLt`` quantized on the CPU, the fp32 weight it was made from)."""
    import bitsandbytes as bnb

    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator)
                            * torch.logspace(-2, 0.5, out_features)[:, None])  # rows of different ranges
    layer = bnb.nn.Linear8bitLt(in_features, out_features, has_fp16_weights=False)
    layer.load_state_dict(linear.state_dict())
    return layer.to("cpu"), linear.weight.detach().clone()  # .to(device) quantizes the weight


def int8_reference(layer) -> torch.Tensor:
    """LLM.int8's storage: ``CB`` int8 (out, in) and ``SCB`` the absmax of each row; w = CB * SCB / 127."""
    return layer.weight.data.double() * layer.weight.SCB.double()[:, None] / 127


def check_dequantize_int8(dequantize_int8) -> CheckReport:
    """``dequantize_int8(layer)`` -> the fp32 weight (out, in) of a ``Linear8bitLt``, from its int8 values and SCB."""
    report = CheckReport("Dequantize an 8-bit layer by hand")
    for seed, (d_in, d_out, description) in enumerate(INT8_CASES):
        layer, original = int8_layer(d_in, d_out, seed)
        stored = layer.weight.data.clone()
        result = report.call(dequantize_int8, layer, name="dequantize_int8")
        if result is Ellipsis:
            return report
        if not torch.equal(layer.weight.data, stored):
            report.fail(f"{description}: dequantize_int8 changed the layer's int8 weight; leave it unchanged")
            return report
        weight = report.tensor(result, "the weight", shape=(d_out, d_in))
        if weight is None:
            return report
        expected = int8_reference(layer)
        if torch.allclose(weight, expected, rtol=1e-5, atol=1e-7):
            step = layer.weight.SCB.double()[:, None] / 127
            # bitsandbytes quantizes from a float16 copy of the weight: allow its rounding (2^-11 relative) too
            slack = step / 2 + original.double().abs() * 2**-10 + 1e-6
            within = bool(((weight - original.double()).abs() <= slack).all())
            report.expect(within, f"{description}: equals CB * SCB / 127, within half a step of the fp32 weight",
                          f"{description}: not within half a step of the fp32 weight")
            continue
        codes, scb = layer.weight.data.double(), layer.weight.SCB.double()
        mistakes = {
            "this is the int8 values themselves: multiply by each row's scale SCB / 127": codes,
            "divided by 128: int8 weights use [-127, 127], so a row's absmax SCB maps to 127":
                codes * scb[:, None] / 128,
            "SCB was not divided by 127: the scale of a row is SCB / 127": codes * scb[:, None],
        }
        if d_in == d_out:
            mistakes["SCB is applied per column: it holds one absmax per output row, SCB[:, None]"] = (
                codes * scb[None, :] / 127)
        named = [text for text, wrong in mistakes.items() if torch.allclose(weight, wrong, rtol=1e-5, atol=1e-7)]
        report.fail(f"{description}: max abs diff {(weight - expected).abs().max():.3g} from CB * SCB / 127: "
                    + (named[0] if named else "each row i is layer.weight[i] (int8) times layer.weight.SCB[i] / 127"))
        return report
    return report
