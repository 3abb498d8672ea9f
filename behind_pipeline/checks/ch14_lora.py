"""Checkers for the exercises of chapter 14 (LoRA): a merge by hand, DoRA by hand, the trainable count.

Each one compares the learner's code with the library or with what the chapter's
:class:`behind_pipeline.lora.LoRALinear` computes, on layers that are not square (so ``in`` and ``out`` cannot be
swapped unnoticed), with ``alpha / r`` different from 1, from ``alpha`` and from ``alpha // r`` (so a missing or
wrong scale shows), and with factors that are not zero (so the update counts). DoRA is compared with peft's own
``use_dora=True`` layer, outputs and gradients.
"""

import operator
from contextlib import contextmanager

import torch
from torch import nn

from behind_pipeline.checks._core import NOT_DONE_HINT, CheckReport, describe_error, named_mistakes
from behind_pipeline.lora import LoRALinear, add_lora

# --- Exercise 1: merge a LoRA layer by hand ----------------------------------------------------------------------

# (in_features, out_features, r, alpha, bias, what the case exposes)
MERGE_CASES = [
    (12, 20, 4, 10, True, "a wide layer, alpha / r = 2.5 (not a whole number)"),
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
        f"the scale is alpha // r, integer division ({layer.alpha} // {layer.r} = {layer.alpha // layer.r}): use "
        "alpha / r": W + (layer.alpha // layer.r) * (B @ A),
        "the update is missing: the merged weight is W alone; add (alpha / r) * B @ A": W,
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
        trainable_before = {name: p.requires_grad for name, p in layer.named_parameters()}
        merged = report.call(merge_lora, layer, name="merge_lora")
        if merged is Ellipsis:
            return report
        if not isinstance(merged, nn.Linear):
            report.fail(f"{description}: merge_lora should return an nn.Linear (a plain layer), got "
                        f"{type(merged).__name__}")
            return report
        changed = [name for name, value in layer.state_dict().items() if not torch.equal(value, before[name])]
        changed += [f"{name}.requires_grad" for name, p in layer.named_parameters()
                    if p.requires_grad != trainable_before[name]]
        if changed:
            report.fail(f"{description}: merge_lora changed the LoRA layer it was given ({', '.join(changed)}): "
                        "build a new nn.Linear, leave the original as it was")
            return report
        wrong_dtype = [name for name, p in merged.named_parameters() if p.dtype != layer.base.weight.dtype]
        if wrong_dtype:
            verb = "are" if len(wrong_dtype) > 1 else "is"
            report.fail(f"{description}: the merged layer's {' and '.join(wrong_dtype)} {verb} "
                        f"{merged.get_parameter(wrong_dtype[0]).dtype}, the LoRA layer's {verb} "
                        f"{layer.base.weight.dtype} (a float64 layer cannot take float32 inputs): cast back with "
                        ".to(layer.base.weight.dtype)")
            return report
        if (merged.in_features, merged.out_features) != (d_in, d_out):
            report.fail(f"{description}: the merged nn.Linear says in_features={merged.in_features}, "
                        f"out_features={merged.out_features}; the layer maps {d_in} -> {d_out}: build it as "
                        "nn.Linear(base.in_features, base.out_features)")
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
        named = named_mistakes(merged.weight.detach(), _merged_weights_with_mistakes(layer),
                               lambda weight, wrong: torch.allclose(weight.double(), wrong.double(), atol=1e-5),
                               layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A)
        if named:
            report.fail(f"{description}: {named[0]}")
            return report
        try:
            with torch.no_grad():
                got = merged(x)
        except Exception as error:  # a learner's layer must become a message, not a crashed notebook
            report.fail(f"{description}: calling the merged layer on x raised {describe_error(error)}")
            return report
        diff = (got.double() - expected.double()).abs().max().item()
        if not report.expect(diff < 1e-4, f"{description} ({d_in} -> {d_out}, r={r}, alpha={alpha}): merged layer "
                             "equals the LoRA layer", f"{description}: the merged layer's output differs from the "
                             f"LoRA layer's by up to {diff:.2e}"):
            return report
    return report


# --- Exercise 2: DoRA, magnitude and direction ----------------------------------------------------------------------

# (in_features, out_features, r, alpha, bias, what the case exposes)
DORA_CASES = [
    (12, 20, 4, 10, True, "a widening layer, alpha / r = 2.5 (not a whole number)"),
    (20, 6, 2, 8, True, "a narrowing layer, alpha / r = 4"),
    (9, 9, 3, 3, False, "a square layer without bias, alpha = r"),
    (16, 5, 1, 2, True, "rank 1"),
]
DORA_PARTS = {"lora_A": "(r, in)", "lora_B": "(out, r)", "magnitude": "(out,)"}


class _OneLayer(nn.Module):
    """A model that is one linear layer named ``proj``: what ``get_peft_model`` needs to wrap it."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.proj = base

    def forward(self, x):
        return self.proj(x)


def peft_dora_layer(base: nn.Linear, r: int, alpha: float):
    """peft's DoRA around a copy of ``base`` (``LoraConfig(use_dora=True)``): (model, A, B, magnitude) parameters."""
    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], use_dora=True, lora_dropout=0.0)
    model = get_peft_model(_OneLayer(copy.deepcopy(base)), config)
    layer = model.base_model.model.proj
    return (model, layer.lora_A["default"].weight, layer.lora_B["default"].weight,
            layer.lora_magnitude_vector["default"].weight)


def random_linear(in_features: int, out_features: int, bias: bool, seed: int) -> nn.Linear:
    """An ``nn.Linear`` with random weight (and bias): rows of different norms, as in a trained layer."""
    generator = torch.Generator().manual_seed(seed)
    base = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        base.weight.copy_(torch.randn(out_features, in_features, generator=generator)
                          * torch.linspace(0.5, 2.0, out_features)[:, None])
        if bias:
            base.bias.copy_(torch.randn(out_features, generator=generator))
    return base


def _dora_outputs_with_mistakes(x, base, A, B, magnitude, alpha, r) -> dict[str, torch.Tensor]:
    """What typical wrong DoRA layers compute, in float64, keyed by the message that names the mistake."""
    x, W, A, B, m = (t.detach().double() for t in (x, base.weight, A, B, magnitude))
    b = torch.zeros(W.shape[0], dtype=torch.float64) if base.bias is None else base.bias.detach().double()

    def dora(scale, norm_of=None, rescale_bias=False, norm_dim=1, with_bias=True):
        adapted = W + scale * B @ A  # (out, in)
        norm = (adapted if norm_of is None else norm_of).norm(dim=norm_dim)
        return m / norm * (x @ adapted.T) + (m / norm if rescale_bias else 1) * b * with_bias

    mistakes = {
        "the scale is alpha // r, integer division (10 // 4 = 2): use alpha / r": dora(alpha // r),
        "the update is not scaled: multiply B A by alpha / r": dora(1.0),
        "the update is scaled by alpha; the scale is alpha / r": dora(alpha),
        "the norm is that of W alone; DoRA divides by the norm of the adapted weight W + (alpha / r) B A":
            dora(alpha / r, norm_of=W),
        "the bias is rescaled too: DoRA rescales x W'^T, then adds the base layer's bias as it is":
            dora(alpha / r, rescale_bias=True),
        "the magnitude is never applied: this is plain LoRA, W x + (alpha / r) B A x + b":
            x @ (W + alpha / r * B @ A).T + b,
        "the bias is missing: add the base layer's bias b (as it is) after rescaling x W'^T":
            dora(alpha / r, with_bias=False),
        "the norm is that of the whole matrix (one number); DoRA takes one norm per output row, norm(dim=1)":
            m / (W + alpha / r * B @ A).norm() * (x @ (W + alpha / r * B @ A).T) + b,
        "the scale alpha / r is missing inside the norm: divide by the norm of W + (alpha / r) B A, the same "
        "matrix as the numerator": dora(alpha / r, norm_of=W + B @ A),
    }
    if W.shape[0] == W.shape[1]:
        mistakes["the norm is taken over dim 0 (one per input column); nn.Linear's weight is (out, in), so the "
                 "norm of each output row is norm(dim=1)"] = dora(alpha / r, norm_dim=0)
    return mistakes


def _named_mistake(report, description, got, expected, x, base, A, B, magnitude, alpha, r) -> bool:
    """Record a FIX line naming the typical mistake that computes ``got`` (and not ``expected``), if one does."""
    named = named_mistakes(got, _dora_outputs_with_mistakes(x, base, A, B, magnitude, alpha, r),
                           lambda output, wrong: torch.allclose(output, wrong, atol=1e-4), expected)
    if named:
        report.fail(f"{description}: {named[0]}")
    return bool(named)


def _dora_parts(report, module, base, d_in, d_out, r, description):
    """The learner's ``lora_A``, ``lora_B``, ``magnitude`` parameters, checked for shape and trainability."""
    parts = {}
    for name, shape_text in DORA_PARTS.items():
        value = getattr(module, name, None)
        if not isinstance(value, nn.Parameter):
            report.fail(f"{description}: DoRALinear needs an nn.Parameter named {name}, shaped {shape_text} "
                        "(the check copies peft's values into lora_A, lora_B and magnitude)")
            return None
        parts[name] = value
    expected = {"lora_A": (r, d_in), "lora_B": (d_out, r), "magnitude": (d_out,)}
    for name, shape in expected.items():
        if tuple(parts[name].shape) != shape:
            hint = (": one norm per output row of W (out, in), so norm(dim=1)"
                    if name == "magnitude" and tuple(parts[name].shape) == (d_in,) else "")
            report.fail(f"{description}: {name} has shape {tuple(parts[name].shape)}, expected {shape}{hint}")
            return None
    wrong_dtype = [name for name, value in parts.items() if value.dtype != base.weight.dtype]
    if wrong_dtype:
        report.fail(f"{description}: {' and '.join(wrong_dtype)} is {parts[wrong_dtype[0]].dtype}, the base "
                    f"weight {base.weight.dtype}: keep the parameters in the weight's dtype (a float64 tensor would "
                    "meet the model's float32 ones)")
        return None
    own = {id(p) for p in parts.values()}
    base_ids = {id(p): name for name, p in base.named_parameters()}
    extra = [(name, p) for name, p in module.named_parameters() if p.requires_grad and id(p) not in own]
    still_trained = [base_ids[id(p)] for _, p in extra if id(p) in base_ids]
    if still_trained:
        report.fail(f"{description}: the base layer's {' and '.join(still_trained)} still require gradients: "
                    "freeze W (and b); only A, B and the magnitude learn")
        return None
    if extra:
        report.fail(f"{description}: {', '.join(name for name, _ in extra)} also require gradients: only lora_A, "
                    "lora_B and magnitude learn (a copy made with nn.Parameter(...) is trainable unless "
                    "requires_grad=False)")
        return None
    frozen = [name for name, value in parts.items() if not value.requires_grad]
    if frozen:
        report.fail(f"{description}: {' and '.join(frozen)} must be trainable (requires_grad=True)")
        return None
    return parts


def _forward(report, module, x, d_out, what, description):
    """The learner's layer called on ``x``, as a float64 tensor, or None and a FIX line saying what went wrong."""
    try:
        got = module(x)
    except Exception as error:  # a learner's bug must become a message, not a crashed notebook
        report.fail(f"{description}: calling the layer on x raised {describe_error(error)}")
        return None
    if got is None:
        report.fail(f"{description}: the layer returned None when called on x: does forward end with `return ...`?")
        return None
    return report.tensor(got, what, shape=tuple(x.shape[:-1]) + (d_out,))


def check_dora_linear(DoRALinear) -> CheckReport:  # noqa: N803 (the learner's class)
    """``DoRALinear(base, r, alpha)`` computes what peft's ``use_dora=True`` layer does, outputs and gradients."""
    report = CheckReport("DoRA: magnitude and direction")
    if isinstance(DoRALinear, type) and not {"__init__", "forward"} & set(vars(DoRALinear)):
        report.fail(f"DoRALinear is {NOT_DONE_HINT} (its __init__ and forward)")
        return report
    for seed, (d_in, d_out, r, alpha, bias, description) in enumerate(DORA_CASES):
        base = random_linear(d_in, d_out, bias, seed)
        torch.manual_seed(seed)
        module = report.call(DoRALinear, base, r, alpha, name="DoRALinear")
        if module is Ellipsis:
            return report
        if not isinstance(module, nn.Module):
            report.fail(f"DoRALinear(base, r, alpha) should build an nn.Module, got {type(module).__name__}")
            return report
        parts = _dora_parts(report, module, base, d_in, d_out, r, description)
        if parts is None:
            return report
        A, B, magnitude = parts["lora_A"], parts["lora_B"], parts["magnitude"]
        # At the start: B zero, A random, the magnitude equal to the norms of W's rows, the output the base's.
        if not bool((B == 0).all()):
            report.fail(f"{description}: lora_B must start at zero, so that the layer equals the base layer "
                        "before training")
            return report
        if bool((A == 0).all()):
            report.fail(f"{description}: lora_A starts at zero too: then no gradient ever reaches A or B; "
                        "initialise A at random (e.g. nn.init.kaiming_uniform_)")
            return report
        row_norms = base.weight.detach().norm(dim=1)  # (out,)
        if not torch.allclose(magnitude.detach(), row_norms, atol=1e-5):
            wrong = ("it starts at ones" if bool((magnitude == 1).all()) else
                     "it starts at the norms of W's columns (dim=0)" if d_in == d_out and torch.allclose(
                         magnitude.detach(), base.weight.detach().norm(dim=0), atol=1e-5) else
                     "it starts elsewhere")
            report.fail(f"{description}: the magnitude must start at the norm of each output row of W, "
                        f"base.weight.norm(dim=1); {wrong}")
            return report
        x = torch.randn(2, 5, d_in, generator=torch.Generator().manual_seed(50 + seed))  # (batch, seq, in)
        start = _forward(report, module, x, d_out, "the output at the start", description)
        if start is None:
            return report
        with torch.no_grad():
            diff = (start - base(x).double()).abs().max().item()
        if not diff <= 1e-5:  # NaN too
            if not _named_mistake(report, description, start, base(x).detach().double(), x, base, A, B, magnitude,
                                  alpha, r):
                report.fail(f"{description}: at the start the output differs from the base layer's by {diff:.2e}")
            return report
        # As after training: the same random A, B and magnitude in the learner's layer and in peft's.
        peft_model, peft_A, peft_B, peft_magnitude = peft_dora_layer(base, r, alpha)
        generator = torch.Generator().manual_seed(200 + seed)
        with torch.no_grad():
            values = (torch.randn(r, d_in, generator=generator), torch.randn(d_out, r, generator=generator) / r,
                      row_norms * torch.empty(d_out).uniform_(0.5, 1.5, generator=generator))
            for mine, theirs, value in zip((A, B, magnitude), (peft_A, peft_B, peft_magnitude), values,
                                           strict=True):
                mine.copy_(value)
                theirs.copy_(value)
        got = _forward(report, module, x, d_out, "the output", description)
        if got is None:
            return report
        expected = peft_model(x).detach().double()
        if not torch.allclose(got, expected, atol=1e-4):
            if _named_mistake(report, description, got, expected, x, base, A, B, magnitude, alpha, r):
                return report
            diff = (got - expected).abs().max().item()
            report.fail(f"{description}: with trained A, B and magnitude the output differs from peft's DoRA "
                        f"(use_dora=True) by up to {diff:.2e}")
            return report
        # Gradients, as peft computes them: the norm is a constant in the backward pass.
        module.zero_grad()
        try:
            module(x).pow(2).mean().backward()
        except Exception as error:  # a forward that only fails with gradients on, or a broken backward
            report.fail(f"{description}: a training step through the DoRA layer raised {describe_error(error)}")
            return report
        peft_model(x).pow(2).mean().backward()
        for name, mine, theirs in zip(DORA_PARTS, (A, B, magnitude), (peft_A, peft_B, peft_magnitude), strict=True):
            if mine.grad is None:
                report.fail(f"{description}: {name} gets no gradient: is it part of the output, outside "
                            "torch.no_grad()?")
                return report
            if not torch.allclose(mine.grad.double(), theirs.grad.double(), rtol=1e-3, atol=1e-5):
                report.fail(f"{description}: the gradient of {name} differs from peft's. Is the norm "
                            "detached? DoRA (section 4.3) and peft treat ||W + (alpha / r) B A|| as a constant "
                            "in the backward pass: .detach() it")
                return report
        report.ok(f"{description} ({d_in} -> {d_out}, r={r}, alpha={alpha}): starts as the base layer, then "
                  "matches peft's DoRA in output and gradients")
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
        "'dense' counted once per layer: it names three layers in each (attention.output.dense, "
        "intermediate.dense, output.dense)":
            lora - (layers * r * 2 * (hidden + intermediate) if "dense" in targets else 0) + head,
        "the pooler counted without 'dense' among the targets: add_lora wraps pooler.dense only when 'dense' is "
        "a target": lora + (r * 2 * hidden if "dense" not in targets else 0) + head,
    }


@contextmanager
def _models_built():
    """The class names of the transformers models built inside the ``with`` block (the list fills as they are)."""
    from transformers import PreTrainedModel

    built, original_init = [], PreTrainedModel.__init__

    def recording_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original_init(self, *args, **kwargs)

    PreTrainedModel.__init__ = recording_init
    try:
        yield built
    finally:
        PreTrainedModel.__init__ = original_init


def check_lora_trainable_parameters(lora_trainable_parameters) -> CheckReport:
    """``lora_trainable_parameters(config, r, targets)`` equals the count of a model built with ``add_lora``."""
    report = CheckReport("The trainable count, predicted")
    for hidden, layers, intermediate, labels, r, targets, description in COUNT_CASES:
        config = _bert_config(hidden, layers, intermediate, labels)
        expected = actual_trainable(config, r, targets)
        with _models_built() as built:
            got = report.call(lora_trainable_parameters, config, r, targets, name="lora_trainable_parameters")
        if built:
            report.fail(f"lora_trainable_parameters built a model ({built[0]}): the exercise asks for the count "
                        "from the config alone, without building one")
            return report
        if got is Ellipsis:
            return report
        value = report.tensor(got, "the count", shape=())
        if value is None:
            return report
        if value.item() == expected:
            report.ok(f"{description} (r={r}, {', '.join(targets)}): {expected:,} trainable parameters")
            continue
        if not float(value.item()).is_integer():
            report.fail(f"{description}: predicted {value.item():,}, not a whole number: a count of parameters is "
                        "an int (use // or int(...) where a / crept in)")
            return report
        named = named_mistakes(value.item(), _count_mistakes(hidden, layers, intermediate, labels, r, targets),
                               operator.eq, expected)
        if named:
            report.fail(f"{description}: {named[0]}")
        else:
            report.fail(f"{description}: predicted {value.item():,.0f}, the model has {expected:,} trainable "
                        "parameters")
        return report
    return report
