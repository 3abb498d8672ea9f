"""Checkers for the exercises of chapter 16 (bitsandbytes): a 4-bit checkpoint, the memory footprint, the threshold.

Each runs the learner's answer on tiny BERT classifiers of other widths, depths and label counts than the course
classifier, saved to a temporary folder and loaded through ``BitsAndBytesConfig`` as the chapter loads it, and
compares with what bitsandbytes itself produces: the saved and reloaded 4-bit checkpoint, ``get_memory_footprint()``
and the 8-bit logits for each ``llm_int8_threshold``.
"""

import logging
import operator
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import nn

from behind_pipeline.checks._core import CheckReport, named_mistakes

# --- Exercise 1: a 4-bit checkpoint, saved and loaded back ---------------------------------------------------------

# (hidden, layers, intermediate, labels, vocabulary): the checkpoints the checker saves and reloads
CHECKPOINT_CASES = [(64, 2, 128, 2, 120), (32, 1, 96, 3, 50)]
STATE_PARTS = ("absmax", "quant_map", "quant_state")  # the names of a 4-bit layer's quantization state in the file


def _size_text(value: float) -> str:
    """A learner's byte count as the report shows it: whole numbers with thousands separators, others as they are
    (0.1, say, which ``{:,.0f}`` would print as 0)."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


# Units a size may come in instead of bytes: a value this many times smaller (within 5%, so a rounded one too).
SIZE_UNITS = {"MiB": 2**20, "MB": 1e6, "KiB": 2**10, "kB": 1e3}


def _unit_mistake(value: float, actual: float) -> str | None:
    """"that is MiB: ..." when ``value`` is ``actual`` bytes in another unit (the closest); None otherwise."""
    errors = {unit: abs(value * size - actual) / actual for unit, size in SIZE_UNITS.items()}
    unit = min(errors, key=errors.get)
    return f"that is {unit}: return a number of bytes" if value > 0 and errors[unit] <= 0.05 else None


def _size_mistakes(value: float, actual: float, mistakes: dict, matches) -> list[str]:
    """The ``mistakes`` (see ``named_mistakes``) whose size ``value`` matches; else, when ``value`` is ``actual``
    bytes in another unit, that unit's message."""
    return named_mistakes(value, mistakes, matches) or [unit for unit in [_unit_mistake(value, actual)] if unit]


def _same_size(value: float, wrong: float) -> bool:
    return abs(value - wrong) < 1e-6


def _byte_count(report: CheckReport, value, name: str, description: str) -> float | None:
    """The learner's number of bytes as a float, or None and a FIX line (a None item is not a `...` stub: the
    function did return)."""
    if value is None:
        report.fail(f"{description}: {name} is None: return the number of bytes (an int)")
        return None
    return report.scalar(value, name)


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
        if expected is None:
            return f"{name} is not a layer of the model at model_id"
        # The recipe first: another quant_type (fp4, BitsAndBytesConfig's default) also packs other bytes, and the
        # recipe is what the learner has to change.
        state, expected_state = module.weight.quant_state, expected.weight.quant_state
        if state.nested != expected_state.nested or state.quant_type != expected_state.quant_type:
            return (f"{name} was quantized with quant_type {state.quant_type!r}, double quantization "
                    f"{state.nested} (the recipe uses {expected_state.quant_type!r}, {expected_state.nested}): use "
                    "the chapter's recipe, load_bnb_classifier(model_id, 4)")
        if not torch.equal(module.weight.data.reshape(-1), expected.weight.data.reshape(-1)):
            return f"the packed 4-bit weight of {name} differs from a fresh load with bnb_config(4)"
        if not torch.equal(absmax_by_hand(state), absmax_by_hand(expected_state)):
            return f"the absmax values of {name} differ from a fresh load with bnb_config(4)"
    return None


def _layer_types_hint(reloaded: nn.Module, types: dict, linears: int) -> str:
    """What a model loaded back with other layers than ``linears`` Linear4bit most likely did wrong."""
    head = getattr(reloaded, "classifier", None)
    if head is None:
        return ("it has no classification head: load it back with AutoModelForSequenceClassification.from_pretrained("
                "folder) (AutoModel gives the encoder alone)")
    if types.get("Linear4bit") == linears - 1 and types.get("Linear") == 1 and type(head) is nn.Linear:
        return ("the head (classifier) stayed fp32, as llm_int8_skip_modules=['classifier'] keeps it: this exercise "
                "ships the chapter's recipe as it is, load_bnb_classifier(model_id, 4), which quantizes the head too")
    if "Linear" in types:
        return "the fp32 model was saved (or returned): save the one loaded with bnb_config(4)"
    if "Linear8bitLt" in types:
        return "8-bit layers: load with 4 bits (bnb_config(4))"
    return "every nn.Linear should come back as Linear4bit"


def _loaded_from(model: nn.Module, folder: str) -> bool:
    """Whether ``model`` was loaded from ``folder`` (``from_pretrained`` records where, as ``name_or_path``)."""
    where = getattr(model, "name_or_path", None)
    try:
        return bool(where) and Path(str(where)).resolve() == Path(folder).resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def _tensor_bytes_in(folder) -> int:
    """Bytes of every tensor of the saved files: the file's size without its header."""
    return state_bytes_in(folder, ("",))


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
                report.fail(f"{description}: the model loaded back has {types}: "
                            f"{_layer_types_hint(reloaded, types, expected_types['Linear4bit'])}")
                return report
            if not _loaded_from(reloaded, folder):
                report.fail(f"{description}: the model returned was loaded from {reloaded.name_or_path!r}, not from "
                            "folder: load it back with AutoModelForSequenceClassification.from_pretrained(folder) "
                            "and return that one (only a load from the folder shows the checkpoint works)")
                return report
            reference = load_bnb_classifier(source, 4)
            wrong = _same_4bit_weights(reloaded, reference)
            if wrong:
                report.fail(f"{description}: {wrong}")
                return report
            actual_file = sum(path.stat().st_size for path in files)
            value = _byte_count(report, file_bytes, "file_bytes", description)
            if value is None:
                return report
            if value != actual_file:
                everything = sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())
                mistakes = {
                    "that is get_memory_footprint(), the bytes in memory: the file also holds the quantization "
                    "state (absmax, quant maps) and a header": float(reference.get_memory_footprint()),
                    "config.json was counted too: only the .safetensors file(s) hold the weights": float(everything),
                    "that is the fp32 checkpoint's size: measure the 4-bit file you saved": float(
                        sum(path.stat().st_size for path in safetensors_files(source))),
                    "that is the bytes of the tensors alone: the file also holds a header (each tensor's name, dtype "
                    "and shape, as JSON); measure the file itself, path.stat().st_size": float(
                        _tensor_bytes_in(folder)),
                }
                named = _size_mistakes(value, actual_file, mistakes, _same_size)
                report.fail(f"{description}: file_bytes is {_size_text(value)}, the .safetensors file(s) hold "
                            f"{actual_file:,} bytes: " + (named[0] if named else "sum path.stat().st_size of the "
                                                          "*.safetensors files in the folder"))
                return report
            actual_state = state_bytes_in(folder)
            value = _byte_count(report, state_bytes, "state_bytes", description)
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
                    "only the quant_state entries: the absmax and quant_map tensors are state too":
                        state_bytes_in(folder, ("quant_state",)),
                }
                named = _size_mistakes(value, actual_state, mistakes, _same_size)
                report.fail(f"{description}: state_bytes is {_size_text(value)}, the file holds {actual_state:,} "
                            "bytes of tensors named absmax, quant_map or quant_state: " + (
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
    head = classifier.classifier.weight.numel() if isinstance(getattr(classifier, "classifier", None),
                                                              nn.Linear) else 0
    mistakes["the head's weight was counted as fp32, as if llm_int8_skip_modules=['classifier'] kept it: loaded "
             "without it (as here), bitsandbytes quantizes the classifier too (chapter 16)"] = (
        footprint_reference(classifier, bits) + head * (4 - {8: 1, 4: 0.5}[bits]))
    mistakes[f"the whole model was scaled by {bits} / 32: only the nn.Linear weights are quantized; the embeddings, "
             "LayerNorms, biases and buffers keep their bytes"] = footprint_reference(classifier, bits, 4) * bits / 32
    if bits == 8:
        mistakes["the 8-bit scales (SCB, one fp32 per output row) were counted: they are not parameters, so "
                 "get_memory_footprint does not see them"] = footprint_reference(classifier, bits) + sum(
            m.out_features * 4 for m in classifier.modules() if isinstance(m, nn.Linear))
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
            value = report.tensor_answer(predicted_footprint, classifier, bits, name="predicted_footprint",
                                         what="the predicted footprint")
            if value is None:
                return report
            if value.numel() != 1:
                report.fail(f"{description}: return one number of bytes, got {value.numel()} values")
                return report
            predicted, actual = value.item(), loaded_footprint(case, bits)
            if predicted == actual:
                report.ok(f"{description}: {actual:,} bytes, as get_memory_footprint() reports")
                continue
            named = _size_mistakes(predicted, actual, _footprint_mistakes(classifier, bits), operator.eq)
            hint = named[0] if named else ("count every parameter and buffer at its bytes per value; Linear "
                                           "weights at 1 byte (8-bit) or half a byte (4-bit)")
            report.fail(f"{description}: predicted {_size_text(predicted)} bytes, get_memory_footprint() says "
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


def _sweep_logits(model_id: str, encoding: dict, thresholds, compare_with: str = "fp32", bits: int = 8,
                  pass_threshold: bool = True, use_mask: bool = True) -> tuple[torch.Tensor, dict]:
    """The reference logits (fp32, or 8-bit at the default threshold) and each threshold's logits on ``encoding``."""
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    inputs = encoding if use_mask else {"input_ids": encoding["input_ids"]}
    if compare_with == "fp32":
        reference = _logits(AutoModelForSequenceClassification.from_pretrained(model_id).eval(), inputs)
    else:  # the 8-bit model at the default threshold
        reference = _logits(AutoModelForSequenceClassification.from_pretrained(
            model_id, quantization_config=BitsAndBytesConfig(load_in_8bit=True)).eval(), inputs)
    logits = {}
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
        logits[threshold] = _logits(model, inputs)
    return reference, logits


def _reduced(quantized: torch.Tensor, reference: torch.Tensor, reduce: str) -> float:
    """One number from two logit tensors: the right one (``"max"``) and the ways learners get it wrong."""
    if reduce == "signed":  # .max() without .abs(): the largest move up only
        return float((quantized - reference).max())
    if reduce == "signed_reversed":
        return float((reference - quantized).max())
    if reduce == "probabilities":
        return float((quantized.softmax(dim=-1) - reference.softmax(dim=-1)).abs().max())
    difference = (quantized - reference).abs()
    return float(difference.max() if reduce == "max" else difference.mean())


def threshold_sweep_reference(model_id: str, encoding: dict, thresholds, compare_with: str = "fp32",
                              bits: int = 8, pass_threshold: bool = True, reduce: str = "max",
                              use_mask: bool = True) -> dict:
    """For each threshold, max |logits of the 8-bit model - logits of fp32| on ``encoding`` (mistakes as options)."""
    reference, logits = _sweep_logits(model_id, encoding, thresholds, compare_with, bits, pass_threshold, use_mask)
    return {threshold: _reduced(logits[threshold], reference, reduce) for threshold in thresholds}


# What each typical mistake returns, as options of the reference: {message: keyword arguments}
THRESHOLD_MISTAKES = {
    "every threshold gives the same difference: pass llm_int8_threshold=threshold to BitsAndBytesConfig":
        {"pass_threshold": False},
    "compared with the 8-bit model at the default threshold: the reference is the fp32 model":
        {"compare_with": "8-bit"},
    "that is the mean difference: take the largest, .abs().max()": {"reduce": "mean"},
    "the model was loaded in 4 bits, where llm_int8_threshold does nothing: use load_in_8bit=True": {"bits": 4},
    "the largest signed difference (8-bit minus fp32): a logit that moved down is missed; take .abs() before "
    ".max()": {"reduce": "signed"},
    "the largest signed difference (fp32 minus 8-bit): a logit that moved up is missed; take .abs() before "
    ".max()": {"reduce": "signed_reversed"},
    "those are probabilities (after softmax): compare the logits, which softmax squeezes near 0 and 1":
        {"reduce": "probabilities"},
    "the attention mask was left out, so padding tokens were attended to: run the models on the whole "
    "encoding, model(**encoding)": {"use_mask": False},
}
# The options that change what is loaded or run (the others only reduce the same logits another way).
_LOAD_OPTIONS = ("compare_with", "bits", "pass_threshold", "use_mask")


@cache
def _sweep_logits_of_case(case: tuple, thresholds: tuple, seed: int, load: tuple) -> tuple[torch.Tensor, dict]:
    with tempfile.TemporaryDirectory() as folder:
        tiny_classifier(*case).save_pretrained(folder)
        return _sweep_logits(folder, threshold_encoding(case[4], seed), thresholds, **dict(load))


def _sweep(case: tuple, thresholds: tuple, seed: int, mistake: str | None = None) -> dict:
    """The reference sweep on the tiny classifier of ``case`` (or what ``mistake`` of THRESHOLD_MISTAKES gives);
    the models are loaded once per set of load options, whatever the reduction."""
    options = THRESHOLD_MISTAKES[mistake] if mistake else {}
    load = tuple(sorted((key, value) for key, value in options.items() if key in _LOAD_OPTIONS))
    reference, logits = _sweep_logits_of_case(case, thresholds, seed, load)
    return {threshold: _reduced(logits[threshold], reference, options.get("reduce", "max"))
            for threshold in thresholds}


def _close(values: dict, sweep: dict) -> bool:
    return all(abs(values[t] - sweep[t]) <= 1e-5 + 1e-4 * abs(sweep[t]) for t in sweep)


def _difference(report: CheckReport, value, threshold, description: str) -> float | None:
    """The learner's difference for one threshold as a float, or None and a FIX line that says what it should be."""
    from behind_pipeline.checks._core import as_tensor

    if value is None:
        report.fail(f"{description}: the value for threshold {threshold} is None: put the largest absolute logit "
                    "difference there (a number)")
        return None
    tensor = as_tensor(value)
    if tensor is not None and tensor.numel() > 1:
        report.fail(f"{description}: the value for threshold {threshold} holds {tensor.numel()} numbers: give one, "
                    "the largest absolute difference over every logit of the batch (.abs().max() over the whole "
                    "tensor, not per row)")
        return None
    return report.scalar(value, f"the value for threshold {threshold}")


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
            strings = any(isinstance(key, str) for key in result)
            report.fail(f"{description}: the keys should be the thresholds {list(thresholds)}, got {list(result)}"
                        + (" (strings: use the numbers themselves)" if strings else ""))
            return report
        values = {}
        for key, value in result.items():
            values[float(key)] = _difference(report, value, key, description)
            if values[float(key)] is None:
                return report
        if _close(values, expected):
            report.ok(f"{description}: " + ", ".join(f"{t}: {expected[t]:.2e}" for t in thresholds))
            continue
        named = named_mistakes(values, {text: _sweep(case, thresholds, seed, text) for text in THRESHOLD_MISTAKES},
                               _close)
        report.fail(f"{description}: got " + ", ".join(f"{t}: {values[t]:.2e}" for t in thresholds)
                    + ", expected " + ", ".join(f"{t}: {expected[t]:.2e}" for t in thresholds) + ": "
                    + (named[0] if named else "for each threshold load the model with BitsAndBytesConfig("
                       "load_in_8bit=True, llm_int8_threshold=threshold) and take max |logits - fp32 logits|"))
        return report
    return report
