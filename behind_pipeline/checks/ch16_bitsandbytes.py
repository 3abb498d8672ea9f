"""Checkers for the exercises of chapter 16 (bitsandbytes): a 4-bit checkpoint, the memory footprint, the threshold.

Each runs the learner's answer on tiny BERT classifiers of other widths, depths and label counts than the course
classifier, saved to a temporary folder and loaded through ``BitsAndBytesConfig`` as the chapter loads it, and
compares with what bitsandbytes itself produces: the saved and reloaded 4-bit checkpoint, ``get_memory_footprint()``
and the 8-bit logits for each ``llm_int8_threshold``.
"""

import logging
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import nn

from behind_pipeline.checks._core import CheckReport

# --- Exercise 1: a 4-bit checkpoint, saved and loaded back ---------------------------------------------------------

# (hidden, layers, intermediate, labels, vocabulary): the checkpoints the checker saves and reloads
CHECKPOINT_CASES = [(64, 2, 128, 2, 120), (32, 1, 96, 3, 50)]
STATE_PARTS = ("absmax", "quant_map", "quant_state")  # the names of a 4-bit layer's quantization state in the file


def safetensors_files(folder) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def state_bytes_in(folder, parts=STATE_PARTS) -> int:
    """Bytes of the tensors of the saved files whose name contains one of ``parts`` (the 4-bit quantization state)."""
    from safetensors import safe_open

    total = 0
    for path in safetensors_files(folder):
        with safe_open(str(path), "pt") as tensors:
            for key in tensors.keys():
                if any(part in key for part in parts):
                    tensor = tensors.get_tensor(key)
                    total += tensor.numel() * tensor.element_size()
    return total


def save_and_reload_reference(model_id: str, folder: str):
    """The exercise's answer (used by the tests): load in 4 bits, save, load back, measure the file and its state."""
    from transformers import AutoModelForSequenceClassification

    from behind_pipeline.bnb import load_bnb_classifier

    load_bnb_classifier(model_id, 4).save_pretrained(folder)
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    file_bytes = sum(path.stat().st_size for path in safetensors_files(folder))
    return reloaded, file_bytes, state_bytes_in(folder)


def _same_4bit_weights(reloaded, reference) -> str | None:
    """None when every 4-bit layer of ``reloaded`` holds the reference's packed bytes and absmax; else what differs."""
    import bitsandbytes as bnb

    from behind_pipeline.bnb import absmax_by_hand

    layers = dict(reference.named_modules())
    for name, module in reloaded.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        expected = layers.get(name)
        if expected is None or not torch.equal(module.weight.data.reshape(-1), expected.weight.data.reshape(-1)):
            return f"the packed 4-bit weight of {name} differs from a fresh load with bnb_config(4)"
        state, expected_state = module.weight.quant_state, expected.weight.quant_state
        if state.nested != expected_state.nested or state.quant_type != expected_state.quant_type:
            return (f"{name} was quantized with quant_type {state.quant_type!r}, double quantization "
                    f"{state.nested}: use the chapter's recipe, load_bnb_classifier(model_id, 4)")
        if not torch.equal(absmax_by_hand(state), absmax_by_hand(expected_state)):
            return f"the absmax values of {name} differ from a fresh load with bnb_config(4)"
    return None


def check_save_and_reload_4bit(save_and_reload_4bit) -> CheckReport:
    """``save_and_reload_4bit(model_id, folder)`` -> (model loaded back, bytes of the .safetensors, bytes of state)."""
    from behind_pipeline.bnb import linear_layer_types, load_bnb_classifier

    report = CheckReport("A 4-bit checkpoint, saved and loaded back")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for case in CHECKPOINT_CASES:
        description = f"a BERT of width {case[0]}, {case[1]} layer(s), {case[3]} labels"
        with tempfile.TemporaryDirectory() as source, tempfile.TemporaryDirectory() as folder:
            fp32 = tiny_classifier(*case)
            fp32.save_pretrained(source)
            result = report.call(save_and_reload_4bit, source, folder, name="save_and_reload_4bit")
            if result is Ellipsis:
                return report
            if not isinstance(result, tuple | list) or len(result) != 3:
                report.fail(f"{description}: return a tuple (reloaded, file_bytes, state_bytes), got "
                            f"{type(result).__name__}")
                return report
            reloaded, file_bytes, state_bytes = result
            if not isinstance(reloaded, nn.Module):
                report.fail(f"{description}: the first item should be the model loaded back from the folder, got "
                            f"{type(reloaded).__name__}")
                return report
            files = safetensors_files(folder)
            if not files:
                report.fail(f"{description}: no .safetensors file in the folder: save the 4-bit model there with "
                            "save_pretrained(folder)")
                return report
            types = linear_layer_types(reloaded)
            expected_types = {"Linear4bit": linear_layer_types(fp32)["Linear"]}
            if types != expected_types:
                hint = ("the fp32 model was saved (or returned): save the one loaded with bnb_config(4)"
                        if "Linear" in types else
                        "8-bit layers: load with 4 bits (bnb_config(4))" if "Linear8bitLt" in types else
                        "every nn.Linear should come back as Linear4bit")
                report.fail(f"{description}: the model loaded back has {types}: {hint}")
                return report
            reference = load_bnb_classifier(source, 4)
            wrong = _same_4bit_weights(reloaded, reference)
            if wrong:
                report.fail(f"{description}: {wrong}")
                return report
            actual_file = sum(path.stat().st_size for path in files)
            value = report.scalar(file_bytes, "file_bytes")
            if value is None:
                return report
            if value != actual_file:
                everything = sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())
                mistakes = {
                    "that is get_memory_footprint(), the bytes in memory: the file also holds the quantization "
                    "state (absmax, quant maps) and a header": float(reference.get_memory_footprint()),
                    "config.json was counted too: only the .safetensors file(s) hold the weights": float(everything),
                    "that is MiB: return a number of bytes": actual_file / 2**20,
                    "that is the fp32 checkpoint's size: measure the 4-bit file you saved": float(
                        sum(path.stat().st_size for path in safetensors_files(source))),
                }
                named = [text for text, wrong_value in mistakes.items() if abs(value - wrong_value) < 1e-6]
                report.fail(f"{description}: file_bytes is {value:,.0f}, the .safetensors file(s) hold "
                            f"{actual_file:,} bytes: " + (named[0] if named else "sum path.stat().st_size of the "
                                                          "*.safetensors files in the folder"))
                return report
            actual_state = state_bytes_in(folder)
            value = report.scalar(state_bytes, "state_bytes")
            if value is None:
                return report
            if value != actual_state:
                mistakes = {
                    "only the absmax tensors: the quant maps and each layer's quant_state entry are state too":
                        state_bytes_in(folder, ("absmax",)),
                    "the packed weights were counted as state: only tensors named absmax, quant_map or quant_state":
                        state_bytes_in(folder, (*STATE_PARTS, ".weight")),
                    "the nested (double-quantization) tensors are missing: nested_absmax and nested_quant_map count "
                    "too": actual_state - state_bytes_in(folder, ("nested_",)),
                }
                named = [text for text, wrong_value in mistakes.items() if abs(value - wrong_value) < 1e-6]
                report.fail(f"{description}: state_bytes is {value:,.0f}, the file holds {actual_state:,} bytes of "
                            "tensors named absmax, quant_map or quant_state: " + (
                                named[0] if named else "open the file with safetensors.safe_open and add up "
                                "numel() * element_size() of those tensors"))
                return report
            report.ok(f"{description}: loads back as Linear4bit with the same packed weights; file "
                      f"{actual_file:,} bytes, quantization state {actual_state:,}")
    return report


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


# --- Exercise 3: llm_int8_threshold, chosen by measurement ---------------------------------------------------------

# (case of tiny_classifier, thresholds): 1.5 moves many columns out of the int8 product, 6.0 almost none
THRESHOLD_CASES = [((64, 2, 128, 2, 120), (0.0, 1.5, 6.0)), ((32, 1, 96, 3, 50), (0.0, 1.0, 3.0))]


def threshold_encoding(vocabulary: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocabulary, (4, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0  # one padded row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _logits(model, encoding) -> torch.Tensor:
    with torch.inference_mode():
        return model(**encoding).logits.float()


def threshold_sweep_reference(model_id: str, encoding: dict, thresholds, compare_with: str = "fp32",
                              bits: int = 8, pass_threshold: bool = True, reduce: str = "max") -> dict:
    """For each threshold, max |logits of the 8-bit model - logits of fp32| on ``encoding`` (mistakes as options)."""
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if compare_with == "fp32":
        reference = _logits(AutoModelForSequenceClassification.from_pretrained(model_id).eval(), encoding)
    else:  # the 8-bit model at the default threshold
        reference = _logits(AutoModelForSequenceClassification.from_pretrained(
            model_id, quantization_config=BitsAndBytesConfig(load_in_8bit=True)).eval(), encoding)
    sweep = {}
    for threshold in thresholds:
        if bits == 4:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32,
                                        llm_int8_threshold=threshold)
        else:
            config = (BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold) if pass_threshold
                      else BitsAndBytesConfig(load_in_8bit=True))
        model = AutoModelForSequenceClassification.from_pretrained(model_id, quantization_config=config).eval()
        for module in model.modules():  # the same fp32 path on every CPU (chapter 16)
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        difference = (_logits(model, encoding) - reference).abs()
        sweep[threshold] = float(difference.max() if reduce == "max" else difference.mean())
    return sweep


# What each typical mistake returns, as options of the reference: {message: keyword arguments}
THRESHOLD_MISTAKES = {
    "every threshold gives the same difference: pass llm_int8_threshold=threshold to BitsAndBytesConfig":
        {"pass_threshold": False},
    "compared with the 8-bit model at the default threshold: the reference is the fp32 model":
        {"compare_with": "8-bit"},
    "that is the mean difference: take the largest, .abs().max()": {"reduce": "mean"},
    "the model was loaded in 4 bits, where llm_int8_threshold does nothing: use load_in_8bit=True": {"bits": 4},
}


@cache
def _sweep(case: tuple, thresholds: tuple, seed: int, mistake: str | None = None) -> dict:
    """The reference sweep on the tiny classifier of ``case`` (or what ``mistake`` of THRESHOLD_MISTAKES gives)."""
    with tempfile.TemporaryDirectory() as folder:
        tiny_classifier(*case).save_pretrained(folder)
        options = THRESHOLD_MISTAKES[mistake] if mistake else {}
        return threshold_sweep_reference(folder, threshold_encoding(case[4], seed), thresholds, **options)


def _close(values: dict, sweep: dict) -> bool:
    return all(abs(values[t] - sweep[t]) <= 1e-5 + 1e-4 * abs(sweep[t]) for t in sweep)


def check_threshold_sweep(threshold_sweep) -> CheckReport:
    """``threshold_sweep(model_id, encoding, thresholds)`` -> {threshold: max abs logit difference from fp32}."""
    report = CheckReport("llm_int8_threshold, chosen by measurement")
    for seed, (case, thresholds) in enumerate(THRESHOLD_CASES):
        description = f"a BERT of width {case[0]}, {case[1]} layer(s), thresholds {', '.join(map(str, thresholds))}"
        expected = _sweep(case, thresholds, seed)
        with tempfile.TemporaryDirectory() as folder:
            tiny_classifier(*case).save_pretrained(folder)
            result = report.call(threshold_sweep, folder, threshold_encoding(case[4], seed), list(thresholds),
                                 name="threshold_sweep")
        if result is Ellipsis:
            return report
        if not isinstance(result, dict):
            report.fail(f"{description}: return a dict {{threshold: max abs logit difference}}, got "
                        f"{type(result).__name__}")
            return report
        keys = [key for key in result if isinstance(key, int | float) and not isinstance(key, bool)]
        if len(keys) != len(result) or sorted(map(float, keys)) != sorted(thresholds):
            report.fail(f"{description}: the keys should be the thresholds {list(thresholds)}, got {list(result)}")
            return report
        values = {float(key): report.scalar(value, f"the value for threshold {key}") for key, value in result.items()}
        if any(value is None for value in values.values()):
            return report
        if _close(values, expected):
            report.ok(f"{description}: " + ", ".join(f"{t}: {expected[t]:.2e}" for t in thresholds))
            continue
        named = [text for text in THRESHOLD_MISTAKES if _close(values, _sweep(case, thresholds, seed, text))]
        report.fail(f"{description}: got " + ", ".join(f"{t}: {values[t]:.2e}" for t in thresholds)
                    + ", expected " + ", ".join(f"{t}: {expected[t]:.2e}" for t in thresholds) + ": "
                    + (named[0] if named else "for each threshold load the model with BitsAndBytesConfig("
                       "load_in_8bit=True, llm_int8_threshold=threshold) and take max |logits - fp32 logits|"))
        return report
    return report
