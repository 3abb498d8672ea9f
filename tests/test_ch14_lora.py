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
from transformers import BertConfig, BertForSequenceClassification

from behind_pipeline.checks.ch14_lora import (
    check_lora_conv1d,
    check_lora_trainable_parameters,
    check_merge_lora,
)
from behind_pipeline.lora import LoRALinear, add_lora, copy_from_peft, parameter_counts

from checker_asserts import assert_rejected, failures


def tiny_bert(seed=0, num_labels=2):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=20, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()




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


# --- Exercise 2: LoRA for Conv1D -------------------------------------------------------------------------------------


class LoRAConv1D(nn.Module):
    def __init__(self, base, r, alpha, scale=None, b_start=0.0, freeze=True, a_zero=False):
        super().__init__()
        self.base = base.requires_grad_(not freeze)
        d_in, d_out = base.weight.shape
        self.scaling = alpha / r if scale is None else scale(alpha, r)
        self.lora_A = nn.Parameter(torch.zeros(r, d_in) if a_zero else torch.empty(r, d_in))
        self.lora_B = nn.Parameter(torch.full((d_out, r), b_start))
        if not a_zero:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


class LoRAConv1DFactorsStoredTheOtherWay(nn.Module):
    """A correct answer with A stored (in, r) and B stored (r, out), as a Conv1D-minded learner might."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        d_in, d_out = base.weight.shape
        self.scaling = alpha / r
        self.a = nn.Parameter(torch.randn(d_in, r) / math.sqrt(d_in))
        self.b = nn.Parameter(torch.zeros(r, d_out))

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.a) @ self.b


def test_conv1d_checker_accepts_the_solution_in_either_orientation():
    assert check_lora_conv1d(LoRAConv1D).passed
    assert check_lora_conv1d(LoRAConv1DFactorsStoredTheOtherWay).passed


@pytest.mark.parametrize("mistake, options, words", [
    ("b_starts_non_zero", {"b_start": 0.01}, ["must start at zero"]),
    ("scale_alpha", {"scale": lambda alpha, r: alpha}, ["scaled by alpha"]),
    ("no_scale", {"scale": lambda alpha, r: 1.0}, ["not scaled"]),
    ("integer_division", {"scale": lambda alpha, r: alpha // r}, ["integer division"]),
    ("forgets_to_freeze_w", {"freeze": False}, ["freeze w"]),
    ("a_starts_at_zero_too", {"a_zero": True}, ["a starts at zero"]),
])
def test_conv1d_checker_names_the_mistake(mistake, options, words):
    def build(base, r, alpha):
        return LoRAConv1D(base, r, alpha, **options)
    assert_rejected(check_lora_conv1d(build), *words)


def test_conv1d_checker_rejects_an_update_built_with_the_conv1d_orientation_of_w():
    class Transposed(LoRAConv1D):  # B A shaped (out, in) but added as if it were Conv1D's (in, out): crashes
        def forward(self, x):
            return self.base(x) + self.scaling * x @ (self.lora_B @ self.lora_A)
    assert not check_lora_conv1d(Transposed).passed


@pytest.mark.parametrize("answer", [None, ..., lambda base, r, alpha: 1 / 0, lambda base, r, alpha: base,
                                    lambda base, r, alpha: "layer"])
def test_conv1d_checker_reports_instead_of_raising(answer):
    assert not check_lora_conv1d(answer).passed


class ForwardWithADoubleInput(LoRAConv1D):
    def forward(self, x):
        return self.base(x) + self.scaling * (x.double() @ self.lora_A.T) @ self.lora_B.T  # float64 meets float32


def test_a_forward_that_raises_gets_one_line_naming_the_learners_line_and_the_dtype():
    report = check_lora_conv1d(ForwardWithADoubleInput)
    line = inspect.getsourcelines(ForwardWithADoubleInput)[1] + 2
    assert_rejected(report, f"(line {line} of your forward)", "float64 (double) tensor met a float32 one")
    assert len(failures(report)) == 1 and "still `...`" not in repr(report), report


class ForwardUnderNoGrad(LoRAConv1D):
    def forward(self, x):
        with torch.no_grad():  # nothing learns: the output has no gradient
            return super().forward(x)


def test_a_training_step_that_raises_is_reported_not_raised():
    report = check_lora_conv1d(ForwardUnderNoGrad)
    assert_rejected(report, "a training step through LoRAConv1D(...)(x) raised RuntimeError",
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
