"""Checkers for the exercises of chapter 14 (LoRA): a merge by hand, LoRA for GPT-2's Conv1D, the trainable count.

Each one compares the learner's code with what the chapter's :class:`behind_pipeline.lora.LoRALinear` computes, on
layers that are not square (so ``in`` and ``out`` cannot be swapped unnoticed), with ``alpha / r`` different from 1
and from ``alpha`` (so a missing or wrong scale shows), and with factors that are not zero (so the update counts).
"""

import torch
from torch import nn

from behind_pipeline.checks._core import CheckReport, describe_error
from behind_pipeline.lora import LoRALinear, add_lora

# --- Exercise 1: merge a LoRA layer by hand ----------------------------------------------------------------------

# (in_features, out_features, r, alpha, bias, what the case exposes)
MERGE_CASES = [
    (12, 20, 4, 8, True, "a wide layer, alpha / r = 2"),
    (20, 6, 2, 10, True, "a narrow layer, alpha / r = 5"),
    (9, 9, 3, 1, False, "a square layer without bias, alpha / r = 1/3"),
    (16, 5, 1, 4, True, "rank 1"),
]


def trained_lora_linear(in_features: int, out_features: int, r: int, alpha: float, bias: bool = True,
                        seed: int = 0) -> LoRALinear:
    """A ``LoRALinear`` as after training: random frozen weight and bias, random non-zero A and B."""
    generator = torch.Generator().manual_seed(seed)
    base = nn.Linear(in_features, out_features, bias=bias)
    layer = LoRALinear(base, r, alpha)
    with torch.no_grad():
        base.weight.copy_(torch.randn(out_features, in_features, generator=generator))
        if bias:
            base.bias.copy_(torch.randn(out_features, generator=generator))
        layer.lora_A.copy_(torch.randn(r, in_features, generator=generator))
        layer.lora_B.copy_(torch.randn(out_features, r, generator=generator))
    return layer


def _merged_weights_with_mistakes(layer: LoRALinear) -> dict[str, torch.Tensor]:
    W, A, B = layer.base.weight.detach(), layer.lora_A.detach(), layer.lora_B.detach()
    mistakes = {
        "the update is added without its scale: W + B @ A, but LoRA adds (alpha / r) * B @ A": W + B @ A,
        "the update is scaled by alpha; the scale is alpha / r": W + layer.alpha * (B @ A),
        "the update is scaled by r / alpha; the scale is alpha / r": W + (layer.r / layer.alpha) * (B @ A),
        "the base weight is missing: the merged weight is W + (alpha / r) * B @ A, not the update alone":
            layer.scaling * (B @ A),
    }
    if W.shape[0] == W.shape[1]:
        mistakes["the update is transposed: nn.Linear's weight is (out, in), so it is B @ A"] = (
            W + layer.scaling * (B @ A).T)
    return mistakes


def check_merge_lora(merge_lora) -> CheckReport:
    """``merge_lora(layer)`` returns an ``nn.Linear`` computing what the ``LoRALinear`` does; ``layer`` unchanged."""
    report = CheckReport("Merge a LoRA layer by hand")
    for seed, (d_in, d_out, r, alpha, bias, description) in enumerate(MERGE_CASES):
        layer = trained_lora_linear(d_in, d_out, r, alpha, bias, seed)
        x = torch.randn(3, 5, d_in, generator=torch.Generator().manual_seed(100 + seed))  # (batch, seq, in)
        with torch.no_grad():
            expected = layer(x)
        before = {name: value.clone() for name, value in layer.state_dict().items()}
        merged = report.call(merge_lora, layer, name="merge_lora")
        if merged is Ellipsis:
            return report
        if not isinstance(merged, nn.Linear):
            report.fail(f"{description}: merge_lora should return an nn.Linear (a plain layer), got "
                        f"{type(merged).__name__}")
            return report
        changed = [name for name, value in layer.state_dict().items() if not torch.equal(value, before[name])]
        if changed:
            report.fail(f"{description}: merge_lora changed the LoRA layer it was given ({', '.join(changed)}): "
                        "build a new nn.Linear, leave the original as it was")
            return report
        if tuple(merged.weight.shape) != (d_out, d_in):
            report.fail(f"{description}: the merged weight has shape {tuple(merged.weight.shape)}, expected "
                        f"{(d_out, d_in)} (out, in), as nn.Linear stores it")
            return report
        if bias and (merged.bias is None or not torch.allclose(merged.bias.detach(), layer.base.bias, atol=1e-6)):
            report.fail(f"{description}: the merged layer must keep the base layer's bias")
            return report
        if not bias and merged.bias is not None and merged.bias.detach().abs().max() > 0:
            report.fail(f"{description}: the base layer has no bias, the merged layer got a non-zero one")
            return report
        weight = merged.weight.detach().double()
        for message, wrong in _merged_weights_with_mistakes(layer).items():
            if torch.allclose(weight, wrong.double(), atol=1e-5) and not torch.allclose(
                    wrong.double(), (layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A).double(),
                    atol=1e-5):
                report.fail(f"{description}: {message}")
                return report
        with torch.no_grad():
            got = merged(x)
        diff = (got.double() - expected.double()).abs().max().item()
        if not report.expect(diff < 1e-4, f"{description} ({d_in} -> {d_out}, r={r}, alpha={alpha}): merged layer "
                             "equals the LoRA layer", f"{description}: the merged layer's output differs from the "
                             f"LoRA layer's by up to {diff:.2e}"):
            return report
    return report


# --- Exercise 2: LoRA for GPT-2's Conv1D ----------------------------------------------------------------------------

# (in_features, out_features, r, alpha, what the case exposes)
CONV1D_CASES = [
    (8, 24, 2, 4, "GPT-2's attention projection in small: one input, three outputs (query, key, value)"),
    (24, 10, 4, 16, "a narrowing layer, alpha / r = 4"),
    (6, 14, 3, 3, "alpha = r: a scale of exactly 1"),
    (10, 7, 1, 8, "rank 1"),
    (12, 9, 4, 10, "alpha / r = 2.5, a scale that is not a whole number"),
]


def conv1d_layer(in_features: int, out_features: int, seed: int):
    """GPT-2's ``Conv1D(nf=out, nx=in)``: weight (in, out), ``y = x @ weight + bias``; random values, no zeros."""
    from transformers.pytorch_utils import Conv1D

    generator = torch.Generator().manual_seed(seed)
    base = Conv1D(out_features, in_features)
    with torch.no_grad():
        base.weight.copy_(torch.randn(in_features, out_features, generator=generator))
        base.bias.copy_(torch.randn(out_features, generator=generator))
    return base


def _factors(report, module, base, d_in, d_out, r, description):
    """The learner's trainable (A side, B side) tensors, recognised by their sizes, or None and a FIX line."""
    base_ids = {id(parameter) for parameter in base.parameters()}
    trainable = [p for p in module.parameters() if p.requires_grad and id(p) not in base_ids]
    frozen_base = [name for name, p in base.named_parameters() if p.requires_grad]
    if frozen_base:
        report.fail(f"{description}: the base layer's {' and '.join(frozen_base)} still require gradients: "
                    "freeze W (and b), only the low-rank factors learn")
        return None
    sizes = sorted(p.numel() for p in trainable)
    if sizes != sorted([r * d_in, r * d_out]):
        report.fail(f"{description}: expected exactly two trainable tensors of {r * d_in} (A, r x in) and "
                    f"{r * d_out} (B, out x r) numbers, got sizes {sizes}")
        return None
    a_side = next(p for p in trainable if p.numel() == r * d_in)
    b_side = next(p for p in trainable if p.numel() == r * d_out)
    return a_side, b_side


def _oriented(tensor, rows, cols):
    """``tensor`` as a (rows, cols) matrix, whichever of the two orientations the learner stored it in."""
    return tensor if tuple(tensor.shape) == (rows, cols) else tensor.reshape(cols, rows).T


def check_lora_conv1d(LoRAConv1D) -> CheckReport:  # noqa: N803 (the learner's class)
    """``LoRAConv1D(base, r, alpha)`` wraps GPT-2's Conv1D: frozen base, B zero at start, scale alpha / r."""
    report = CheckReport("LoRA for GPT-2's Conv1D")
    for seed, (d_in, d_out, r, alpha, description) in enumerate(CONV1D_CASES):
        base = conv1d_layer(d_in, d_out, seed)
        torch.manual_seed(seed)
        module = report.call(LoRAConv1D, base, r, alpha, name="LoRAConv1D")
        if module is Ellipsis:
            return report
        if not isinstance(module, nn.Module):
            report.fail(f"LoRAConv1D(...) should build an nn.Module, got {type(module).__name__}")
            return report
        factors = _factors(report, module, base, d_in, d_out, r, description)
        if factors is None:
            return report
        a_side, b_side = factors
        x = torch.randn(2, 5, d_in, generator=torch.Generator().manual_seed(50 + seed))  # (batch, seq, in)
        with torch.no_grad():
            reference = base(x)
        start = report.call(module, x, name="LoRAConv1D(...)(x)")
        start = None if start is Ellipsis else report.tensor(start, "the output at the start", shape=(2, 5, d_out))
        if start is None:
            return report
        if not bool((b_side == 0).all()):
            report.fail(f"{description}: B (the out x r factor) must start at zero, so that the wrapped layer "
                        "equals the base layer before training")
            return report
        if bool((a_side == 0).all()):
            report.fail(f"{description}: A starts at zero too: then no gradient ever reaches A or B; initialise A "
                        "at random (e.g. nn.init.kaiming_uniform_)")
            return report
        diff = (start - reference.double()).abs().max().item()
        if not report.expect(diff < 1e-5, f"{description}: equals the base layer at the start",
                             f"{description}: at the start the output differs from the base layer by {diff:.2e}"):
            return report
        # Gradients: B must get one at the first step, the base none.
        module.zero_grad()
        try:
            module(x).pow(2).sum().backward()
        except Exception as error:  # a forward that only fails with gradients on, or a broken backward
            report.fail(f"{description}: a training step through LoRAConv1D(...)(x) raised {describe_error(error)}")
            return report
        if b_side.grad is None or not bool(b_side.grad.abs().max() > 0):
            report.fail(f"{description}: B gets no gradient at the first step: is the low-rank path part of the "
                        "output?")
            return report
        # Scale: with random factors, the output is base(x) + (alpha / r) * x A^T B^T.
        generator = torch.Generator().manual_seed(200 + seed)
        with torch.no_grad():
            a_side.copy_(torch.randn(a_side.shape, generator=generator))
            b_side.copy_(torch.randn(b_side.shape, generator=generator))
        a_matrix = _oriented(a_side.detach(), r, d_in)  # (r, in)
        b_matrix = _oriented(b_side.detach(), d_out, r)  # (out, r)
        update = (x @ a_matrix.T) @ b_matrix.T  # (batch, seq, out)
        for x_in, label in ((x, "a (batch, seq, in) input"), (x[0], "a (seq, in) input")):
            got = report.call(module, x_in, name="LoRAConv1D(...)(x)")
            got = None if got is Ellipsis else report.tensor(got, "the output",
                                                             shape=tuple(x_in.shape[:-1]) + (d_out,))
            if got is None:
                return report
            with torch.no_grad():
                expected = (base(x_in) + (alpha / r) * (update if x_in.dim() == 3 else update[0])).double()
                wrong_scales = {"the update is not scaled: multiply it by alpha / r": 1.0,
                                "the update is scaled by alpha; the scale is alpha / r": alpha,
                                "the update is scaled by r / alpha; the scale is alpha / r": r / alpha,
                                "the scale is alpha // r, integer division (10 // 4 = 2): use alpha / r": alpha // r}
            if torch.allclose(got, expected, atol=1e-4):
                continue
            for message, scale in wrong_scales.items():
                wrong = (base(x_in) + scale * (update if x_in.dim() == 3 else update[0])).double()
                if abs(scale - alpha / r) > 1e-9 and torch.allclose(got, wrong, atol=1e-4):
                    report.fail(f"{description}: {message}")
                    return report
            diff = (got - expected).abs().max().item()
            report.fail(f"{description}, {label}: with non-zero A and B the output differs from "
                        f"base(x) + (alpha / r) * x A^T B^T by up to {diff:.2e}")
            return report
        report.ok(f"{description} ({d_in} -> {d_out}, r={r}, alpha={alpha}): base frozen, starts equal to the "
                  "base, B learns first, update scaled by alpha / r")
    return report


# --- Exercise 3: the trainable count, predicted ----------------------------------------------------------------------


def _bert_config(hidden: int, layers: int, intermediate: int, num_labels: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=intermediate, max_position_embeddings=16, num_labels=num_labels)


# (hidden, layers, intermediate, num_labels, r, targets, what the case exposes)
COUNT_CASES = [
    (384, 6, 1536, 2, 8, ("query", "value"), "the chapter's setting"),
    (16, 3, 40, 3, 2, ("query", "key", "value"), "three projections, three labels"),
    (12, 2, 30, 2, 4, ("dense",), "'dense': the attention output, both feed-forward layers and the pooler"),
    (8, 4, 20, 5, 1, ("value",), "rank 1, five labels"),
    (10, 1, 24, 2, 3, ("query", "value", "dense"), "one layer, several targets"),
]


def actual_trainable(config, r: int, targets) -> int:
    """Trainable parameters after :func:`add_lora` on a randomly initialised BERT classifier with ``config``."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    add_lora(model, r, alpha=2 * r, targets=targets)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _count_mistakes(hidden, layers, intermediate, labels, r, targets) -> dict[str, int]:
    head = hidden * labels + labels

    def shapes():
        for target in targets:
            if target in ("query", "key", "value"):
                yield from [(hidden, hidden)] * layers
            if target == "dense":
                yield from [(hidden, hidden), (hidden, intermediate), (intermediate, hidden)] * layers
                yield hidden, hidden  # the pooler

    pairs = list(shapes())
    lora = sum(r * (d_in + d_out) for d_in, d_out in pairs)
    return {
        "counted r * in * out per layer: A is (r, in) and B is (out, r), so r * (in + out)":
            sum(r * d_in * d_out for d_in, d_out in pairs) + head,
        "the head is missing: the new classifier layer (hidden x labels + labels) is trainable too": lora,
        "the head's bias is missing (hidden x labels + labels)": lora + hidden * labels,
        "only one factor is counted: LoRA trains both A (r x in) and B (out x r)": lora // 2 + head,
        "counted one layer: every target name is wrapped in each of the encoder's layers":
            (lora // layers if layers else lora) + head,
        "every wrapped layer counted as hidden x hidden: the feed-forward layers are hidden -> intermediate and "
        "intermediate -> hidden": sum(r * 2 * hidden for _ in pairs) + head,
        "the pooler's dense layer is missing: its name ends in 'dense' too":
            lora - (r * 2 * hidden if "dense" in targets else 0) + head,
    }


def check_lora_trainable_parameters(lora_trainable_parameters) -> CheckReport:
    """``lora_trainable_parameters(config, r, targets)`` equals the count of a model built with ``add_lora``."""
    report = CheckReport("The trainable count, predicted")
    for hidden, layers, intermediate, labels, r, targets, description in COUNT_CASES:
        config = _bert_config(hidden, layers, intermediate, labels)
        expected = actual_trainable(config, r, targets)
        got = report.call(lora_trainable_parameters, config, r, targets, name="lora_trainable_parameters")
        if got is Ellipsis:
            return report
        value = report.tensor(got, "the count", shape=())
        if value is None:
            return report
        if value.item() == expected:
            report.ok(f"{description} (r={r}, {', '.join(targets)}): {expected:,} trainable parameters")
            continue
        for message, wrong in _count_mistakes(hidden, layers, intermediate, labels, r, targets).items():
            if wrong != expected and value.item() == wrong:
                report.fail(f"{description}: {message}")
                break
        else:
            report.fail(f"{description}: predicted {value.item():,.0f}, the model has {expected:,} trainable "
                        "parameters")
        return report
    return report
