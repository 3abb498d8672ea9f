"""Chapter 14: LoRA by hand equals peft, and the checkers accept the solutions and reject typical wrong answers.

Models here are tiny random BERTs (2 layers of width 16): what is tested (shapes, scale, freezing, parity with
peft) does not depend on the size.
"""

import copy
import inspect
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import BertForSequenceClassification

from behind_pipeline.checks.ch14_lora import (
    check_dora_linear,
    check_lora_trainable_parameters,
    check_merge_lora,
)
from behind_pipeline.lora import LoRALinear, add_lora, copy_from_peft, parameter_counts

from checker_asserts import assert_rejected, failures
from tiny_models import tiny_bert_classifier


def tiny_bert(seed=0, num_labels=2):
    return tiny_bert_classifier(60, layers=2, intermediate=24, max_positions=20, num_labels=num_labels, seed=seed)




# --- the chapter's code ---------------------------------------------------------------------------------------------


def test_lora_linear_starts_equal_to_its_base_and_scales_by_alpha_over_r():
    torch.manual_seed(0)
    base = nn.Linear(6, 10)
    layer = LoRALinear(base, r=2, alpha=6)
    x = torch.randn(3, 4, 6)
    assert torch.equal(layer(x), base(x))
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert [name for name, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    assert bool((layer.lora_A != 0).any())
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 3.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_add_lora_wraps_the_targets_in_every_layer_and_keeps_the_head_trainable():
    model = tiny_bert()
    wrapped = add_lora(model, r=4, alpha=8, targets=("query", "value"))
    assert len(wrapped) == 4 and all(name.endswith(("query", "value")) for name in wrapped)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all("lora_" in name or name.startswith("classifier.") for name in trainable)
    assert parameter_counts(model)[0] == 4 * 4 * (16 + 16) + 16 * 2 + 2


def test_hand_lora_counts_and_computes_what_peft_does():
    base = tiny_bert()
    hand = copy.deepcopy(base)
    add_lora(hand, r=4, alpha=8)
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    assert parameter_counts(peft_model)[0] == parameter_counts(hand)[0]
    with torch.no_grad():  # as if trained: every factor and the head away from their start
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
    assert copy_from_peft(hand, peft_model) == 4 * 2 + 2
    input_ids = torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine, plain = peft_model(input_ids).logits, hand(input_ids).logits, base(input_ids).logits
    assert torch.allclose(theirs, mine, atol=1e-5)
    assert not torch.allclose(theirs, plain, atol=1e-3)  # the update is not zero: the parity means something


# --- Exercise 1: merge ---------------------------------------------------------------------------------------------


def merge_lora(layer):
    base = layer.base
    merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
    with torch.no_grad():
        merged.weight.copy_(base.weight + layer.scaling * (layer.lora_B @ layer.lora_A))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
    return merged


def merge_with(weight_of, keep_bias=True):
    def merge(layer):
        base = layer.base
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(weight_of(layer))
            if base.bias is not None:
                merged.bias.copy_(base.bias if keep_bias else torch.zeros_like(base.bias))
        return merged
    return merge


def test_merge_checker_accepts_the_solution():
    assert check_merge_lora(merge_lora).passed


@pytest.mark.parametrize("mistake, weight_of, words", [
    ("without_scale", lambda layer: layer.base.weight + layer.lora_B @ layer.lora_A, ["without its scale"]),
    ("scale_alpha", lambda layer: layer.base.weight + layer.alpha * (layer.lora_B @ layer.lora_A), ["by alpha"]),
    ("scale_r_over_alpha", lambda layer: layer.base.weight + layer.r / layer.alpha * (layer.lora_B @ layer.lora_A),
     ["r / alpha"]),
    ("update_only", lambda layer: layer.scaling * (layer.lora_B @ layer.lora_A), ["base weight is missing"]),
])
def test_merge_checker_names_the_wrong_weight(mistake, weight_of, words):
    assert_rejected(check_merge_lora(merge_with(weight_of)), *words)


def test_merge_checker_rejects_a_transposed_update_on_a_square_layer():
    def transposed(layer):
        update = layer.lora_B @ layer.lora_A
        return layer.base.weight + layer.scaling * (update.T if update.shape[0] == update.shape[1] else update)
    assert_rejected(check_merge_lora(merge_with(transposed)), "transposed")


def test_merge_checker_rejects_a_lost_bias():
    assert_rejected(check_merge_lora(merge_with(lambda layer: layer.base.weight + layer.scaling * (
        layer.lora_B @ layer.lora_A), keep_bias=False)), "bias")


def test_merge_checker_rejects_a_merge_in_place():
    def in_place(layer):
        with torch.no_grad():
            layer.base.weight += layer.scaling * (layer.lora_B @ layer.lora_A)
        return layer.base
    assert_rejected(check_merge_lora(in_place), "changed the lora layer")


@pytest.mark.parametrize("answer", [None, ..., lambda layer: layer.base.weight, lambda layer: 1 / 0,
                                    lambda layer: [1, 2]])
def test_merge_checker_reports_instead_of_raising(answer):
    assert not check_merge_lora(answer).passed


# --- Exercise 2: DoRA ------------------------------------------------------------------------------------------------


class DoRALinear(nn.Module):
    """The solution, with switches for the typical mistakes the checker must name."""

    def __init__(self, base, r, alpha, scale=None, b_start=0.0, freeze=True, a_zero=False, magnitude_start=None,
                 norm_of_w_alone=False, detach=True, rescale_bias=False, norm_dim=1):
        super().__init__()
        self.base = base.requires_grad_(not freeze)
        d_out, d_in = base.weight.shape
        self.scaling = alpha / r if scale is None else scale(alpha, r)
        self.lora_A = nn.Parameter(torch.zeros(r, d_in) if a_zero else torch.empty(r, d_in))
        self.lora_B = nn.Parameter(torch.full((d_out, r), b_start))
        if not a_zero:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        start = base.weight.detach().norm(dim=norm_dim) if magnitude_start is None else magnitude_start(base)
        self.magnitude = nn.Parameter(start.clone())
        self.options = norm_of_w_alone, detach, rescale_bias, norm_dim

    def forward(self, x):
        norm_of_w_alone, detach, rescale_bias, norm_dim = self.options
        adapted = self.base.weight + self.scaling * self.lora_B @ self.lora_A  # (out, in)
        norm = (self.base.weight if norm_of_w_alone else adapted).norm(dim=norm_dim)
        norm = norm.detach() if detach else norm
        bias = 0 if self.base.bias is None else self.base.bias
        scale = self.magnitude / norm
        return scale * (x @ adapted.T) + (scale if rescale_bias else 1) * bias


class DoRALinearWrittenAsPeftDoes(nn.Module):
    """A correct answer in peft's form: base output plus (m / n - 1) W x + (m / n) s B A x."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.magnitude = nn.Parameter(base.weight.detach().norm(dim=1))

    def forward(self, x):
        delta = self.scaling * self.lora_B @ self.lora_A
        scale = self.magnitude / (self.base.weight + delta).norm(dim=1).detach()
        plain = x @ self.base.weight.T
        return self.base(x) + (scale - 1) * plain + scale * (x @ self.lora_A.T @ self.lora_B.T) * self.scaling


def test_dora_checker_accepts_the_solution_in_either_form():
    assert check_dora_linear(DoRALinear).passed
    assert check_dora_linear(DoRALinearWrittenAsPeftDoes).passed


@pytest.mark.parametrize("mistake, options, words", [
    ("b_starts_non_zero", {"b_start": 0.01}, ["lora_B must start at zero"]),
    ("a_starts_at_zero_too", {"a_zero": True}, ["lora_A starts at zero"]),
    ("forgets_to_freeze_w", {"freeze": False}, ["freeze W"]),
    ("magnitude_starts_at_ones", {"magnitude_start": lambda base: torch.ones(base.out_features)},
     ["magnitude must start", "ones"]),
    ("magnitude_of_columns", {"norm_dim": 0}, ["shape", "norm(dim=1)"]),
    ("integer_division", {"scale": lambda alpha, r: alpha // r}, ["alpha // r", "integer division"]),
    ("no_scale", {"scale": lambda alpha, r: 1.0}, ["not scaled"]),
    ("scale_alpha", {"scale": lambda alpha, r: alpha}, ["scaled by alpha"]),
    ("norm_of_w_alone", {"norm_of_w_alone": True}, ["norm is that of W alone"]),
    ("bias_rescaled", {"rescale_bias": True}, ["bias is rescaled"]),
    ("norm_not_detached", {"detach": False}, ["gradient", "detach"]),
])
def test_dora_checker_names_the_mistake(mistake, options, words):
    def build(base, r, alpha):
        return DoRALinear(base, r, alpha, **options)
    assert_rejected(check_dora_linear(build), *words)


def test_dora_checker_names_column_norms_on_a_square_layer():
    class ColumnNormsOnSquareLayers(DoRALinear):  # right shapes on non-square layers, dim 0 where it fits
        def __init__(self, base, r, alpha):
            square = base.in_features == base.out_features
            super().__init__(base, r, alpha, norm_dim=0 if square else 1)
            if square:
                with torch.no_grad():
                    self.magnitude.copy_(base.weight.norm(dim=1))
    assert_rejected(check_dora_linear(ColumnNormsOnSquareLayers), "dim 0", "norm(dim=1)")


def test_dora_checker_rejects_plain_lora_with_a_magnitude_it_never_uses():
    class PlainLoRA(DoRALinear):
        def forward(self, x):
            return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T
    assert_rejected(check_dora_linear(PlainLoRA), "magnitude is never applied")


def test_dora_checker_names_missing_parameters():
    class NoMagnitude(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base = base.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.randn(r, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

        def forward(self, x):
            return self.base(x)
    assert_rejected(check_dora_linear(NoMagnitude), "magnitude", "(out,)")


@pytest.mark.parametrize("answer", [None, ..., lambda base, r, alpha: 1 / 0, lambda base, r, alpha: base,
                                    lambda base, r, alpha: "layer"])
def test_dora_checker_reports_instead_of_raising(answer):
    assert not check_dora_linear(answer).passed


class ForwardWithADoubleInput(DoRALinear):
    def forward(self, x):
        return self.base(x) + self.scaling * (x.double() @ self.lora_A.T) @ self.lora_B.T  # float64 meets float32


def test_a_forward_that_raises_gets_one_line_naming_the_learners_line_and_the_dtype():
    report = check_dora_linear(ForwardWithADoubleInput)
    line = inspect.getsourcelines(ForwardWithADoubleInput)[1] + 2
    assert_rejected(report, f"(line {line} of your forward)", "float64 (double) tensor met a float32 one")
    assert len(failures(report)) == 1 and "still `...`" not in repr(report), report


class ForwardUnderNoGrad(DoRALinear):
    def forward(self, x):
        with torch.no_grad():  # nothing learns: the output has no gradient
            return super().forward(x)


def test_a_training_step_that_raises_is_reported_not_raised():
    report = check_dora_linear(ForwardUnderNoGrad)
    assert_rejected(report, "a training step through the DoRA layer raised RuntimeError",
                    "not under torch.no_grad()")


# --- Exercise 3: the trainable count ---------------------------------------------------------------------------------


def count(config, r, targets, mistake=None):
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    shapes = {"query": [(h, h)], "key": [(h, h)], "value": [(h, h)], "dense": [(h, h), (h, i), (i, h)]}
    if mistake == "all_square":
        shapes["dense"] = [(h, h)] * 3
    per_pair = (lambda a, b: r * a * b) if mistake == "r_in_out" else (
        (lambda a, b: r * a) if mistake == "one_factor" else (lambda a, b: r * (a + b)))
    layers = 1 if mistake == "one_layer" else layers
    lora = layers * sum(per_pair(a, b) for t in targets for a, b in shapes.get(t, []))
    pooler = per_pair(h, h) if "dense" in targets and mistake != "no_pooler" else 0
    head = 0 if mistake == "no_head" else h * config.num_labels + config.num_labels
    return lora + pooler + head


def test_count_checker_accepts_the_solution_and_a_float_or_tensor_answer():
    assert check_lora_trainable_parameters(count).passed
    assert check_lora_trainable_parameters(lambda *args: float(count(*args))).passed
    assert check_lora_trainable_parameters(lambda *args: torch.tensor(count(*args))).passed


@pytest.mark.parametrize("mistake, words", [
    ("r_in_out", ["r * in * out"]),
    ("no_head", ["head is missing"]),
    ("one_factor", ["only one factor"]),
    ("one_layer", ["counted one layer"]),
    ("all_square", ["intermediate"]),
    ("no_pooler", ["pooler"]),
])
def test_count_checker_names_the_mistake(mistake, words):
    assert_rejected(check_lora_trainable_parameters(lambda *args: count(*args, mistake=mistake)), *words)


@pytest.mark.parametrize("answer", [None, ..., lambda *args: "74498", lambda *args: [1, 2],
                                    lambda *args: 1 / 0])
def test_count_checker_reports_instead_of_raising(answer):
    assert not check_lora_trainable_parameters(answer).passed


# --- QLoRA ----------------------------------------------------------------------------------------------------------


def test_qlora_quantizes_the_encoder_keeps_the_head_in_fp32_and_trains_what_lora_trains(tmp_path):
    from behind_pipeline.lora import qlora_classifier

    tiny_bert().save_pretrained(tmp_path)
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    qlora = qlora_classifier(copy.deepcopy(config), model_id=str(tmp_path))
    types = {type(module).__name__ for module in qlora.modules()}
    assert "Linear4bit" in types  # the encoder's linear layers are 4-bit
    head = qlora.base_model.model.classifier.modules_to_save["default"]
    assert type(head) is nn.Linear and head.weight.requires_grad  # the head is not quantized: it learns
    plain = get_peft_model(tiny_bert(), copy.deepcopy(config))
    assert parameter_counts(qlora)[0] == parameter_counts(plain)[0]
    qlora.train()
    input_ids = torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(1))
    qlora(input_ids=input_ids, labels=torch.tensor([0, 1, 1])).loss.backward()
    query = qlora.base_model.model.bert.encoder.layer[0].attention.self.query
    assert query.lora_B["default"].weight.grad.abs().max() > 0  # the gradient crossed the 4-bit layers


# --- found by trying the checkers as a skeptical instructor ---------------------------------------------------------


def test_merge_checker_names_integer_division_of_alpha_by_r():
    assert_rejected(check_merge_lora(merge_with(
        lambda layer: layer.base.weight + (layer.alpha // layer.r) * (layer.lora_B @ layer.lora_A))),
        "alpha // r", "integer division")


def test_merge_checker_names_a_merge_that_forgets_the_update():
    assert_rejected(check_merge_lora(lambda layer: copy.deepcopy(layer.base)), "update is missing")


def _weight_in_float64(layer):
    merged = copy.deepcopy(layer.base)  # the bias stays float32
    merged.weight = nn.Parameter(layer.base.weight.double() + layer.scaling * (layer.lora_B @ layer.lora_A).double())
    return merged


@pytest.mark.parametrize("answer", [lambda layer: merge_lora(layer).double(), _weight_in_float64],
                         ids=["whole_layer_float64", "weight_float64"])
def test_merge_checker_names_a_float64_merge_instead_of_raising(answer):
    assert_rejected(check_merge_lora(answer), "float64")


def test_merge_checker_reports_a_merged_layer_whose_forward_raises():
    class Broken(nn.Linear):
        def forward(self, x):
            raise ValueError("a learner's bug")

    def merge(layer):
        merged = Broken(layer.base.in_features, layer.base.out_features, bias=layer.base.bias is not None)
        merged.load_state_dict(merge_lora(layer).state_dict())
        return merged
    assert_rejected(check_merge_lora(merge), "ValueError")


def test_merge_checker_rejects_in_and_out_features_swapped():
    def swapped(layer):
        right = merge_lora(layer)
        merged = nn.Linear(layer.base.out_features, layer.base.in_features, bias=layer.base.bias is not None)
        merged.weight, merged.bias = right.weight, right.bias  # computes the right thing, says the wrong sizes
        return merged
    assert_rejected(check_merge_lora(swapped), "in_features")


def test_merge_checker_rejects_a_merge_that_freezes_the_given_layer():
    def freezes(layer):
        layer.requires_grad_(False)  # "the adapter is merged, nothing learns any more": but layer is not ours
        return merge_lora(layer)
    assert_rejected(check_merge_lora(freezes), "changed the lora layer", "lora_B")


class TrainableCopyOfW(DoRALinear):
    """Freezes the base, then keeps its own copy of W as an nn.Parameter: trainable, so the full W learns."""

    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.weight = nn.Parameter(base.weight.detach().clone())

    def forward(self, x):
        adapted = self.weight + self.scaling * self.lora_B @ self.lora_A
        bias = 0 if self.base.bias is None else self.base.bias
        return self.magnitude / adapted.norm(dim=1).detach() * (x @ adapted.T) + bias


class TrainableCopyOfBias(DoRALinear):
    """Adds the bias from its own nn.Parameter copy: trainable."""

    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone())

    def forward(self, x):
        adapted = self.base.weight + self.scaling * self.lora_B @ self.lora_A
        out = self.magnitude / adapted.norm(dim=1).detach() * (x @ adapted.T)
        return out if self.bias is None else out + self.bias


@pytest.mark.parametrize("answer", [TrainableCopyOfW, TrainableCopyOfBias])
def test_dora_checker_rejects_trainable_parameters_beyond_a_b_and_the_magnitude(answer):
    assert_rejected(check_dora_linear(answer), "also require gradients", "only lora_a, lora_b and magnitude")


def test_dora_checker_accepts_a_frozen_copy_of_the_base_layer():
    class FrozenCopy(DoRALinear):  # leaves the caller's layer as it was: a valid answer
        def __init__(self, base, r, alpha):
            super().__init__(copy.deepcopy(base), r, alpha)
    assert check_dora_linear(FrozenCopy).passed


def test_dora_checker_names_a_float64_magnitude_instead_of_raising():
    def build(base, r, alpha):
        return DoRALinear(base, r, alpha, magnitude_start=lambda base: base.weight.detach().double().norm(dim=1))
    assert_rejected(check_dora_linear(build), "magnitude", "float64")


class DoRAWithoutBias(DoRALinear):
    def forward(self, x):
        adapted = self.base.weight + self.scaling * self.lora_B @ self.lora_A
        return self.magnitude / adapted.norm(dim=1).detach() * (x @ adapted.T)


class DoRAWithOneNorm(DoRALinear):
    def forward(self, x):
        adapted = self.base.weight + self.scaling * self.lora_B @ self.lora_A
        bias = 0 if self.base.bias is None else self.base.bias
        return self.magnitude / adapted.norm().detach() * (x @ adapted.T) + bias


class DoRAUnscaledNorm(DoRALinear):
    def forward(self, x):
        adapted = self.base.weight + self.scaling * self.lora_B @ self.lora_A
        norm = (self.base.weight + self.lora_B @ self.lora_A).norm(dim=1).detach()  # alpha / r left out here only
        bias = 0 if self.base.bias is None else self.base.bias
        return self.magnitude / norm * (x @ adapted.T) + bias


@pytest.mark.parametrize("answer, words", [
    (DoRAWithoutBias, ["bias is missing"]),
    (DoRAWithOneNorm, ["whole matrix", "norm(dim=1)"]),
    (DoRAUnscaledNorm, ["missing inside the norm"]),
])
def test_dora_checker_names_more_mistakes(answer, words):
    assert_rejected(check_dora_linear(answer), *words)


def test_dora_checker_rejects_a_start_that_is_nan():
    class NaNUntilTrained(DoRALinear):  # right once B is not zero, NaN at the start
        def forward(self, x):
            out = super().forward(x)
            return out if bool((self.lora_B != 0).any()) else out * float("nan")
    assert_rejected(check_dora_linear(NaNUntilTrained), "at the start")


def test_count_checker_rejects_an_answer_that_builds_the_model():
    def builds(config, r, targets):
        model = BertForSequenceClassification(config)
        add_lora(model, r, 2 * r, targets)
        return parameter_counts(model)[0]
    assert_rejected(check_lora_trainable_parameters(builds), "without building")


def test_count_checker_says_a_fractional_count_is_not_whole():
    assert_rejected(check_lora_trainable_parameters(lambda *args: count(*args) + 0.4), "not a whole number")


def _dense_once(config, r, targets):
    h, layers = config.hidden_size, config.num_hidden_layers
    without = count(config, r, [t for t in targets if t != "dense"])
    return without + (layers * r * 2 * h + r * 2 * h if "dense" in targets else 0)


def _pooler_always(config, r, targets):
    return count(config, r, targets) + (0 if "dense" in targets else r * 2 * config.hidden_size)


@pytest.mark.parametrize("answer, words", [
    (_dense_once, ["attention.output.dense", "intermediate.dense"]),
    (_pooler_always, ["pooler", "only when 'dense'"]),
])
def test_count_checker_names_more_mistakes(answer, words):
    assert_rejected(check_lora_trainable_parameters(answer), *words)


def test_count_checker_reports_an_int_too_large_for_a_float():
    assert not check_lora_trainable_parameters(lambda *args: 10 ** 400).passed
