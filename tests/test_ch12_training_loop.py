"""Chapter 12: Trainer with the loop's settings follows the loop's schedule, the data-parallel step, and the checkers.

The Trainer-versus-loop test trains a tiny BERT (2 layers of width 32) for a few steps: the schedule does not depend
on the model. The two-process parity itself is asserted in the chapter (nbval executes it); here the single-process
path of the same function and the launcher trap are tested.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    PrinterCallback,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from behind_pipeline import distributed
from behind_pipeline.checks.ch12_training_loop import (
    ACCUMULATION_CASES,
    SCHEDULE_CASES,
    check_accumulated_step,
    check_clip_gradients,
    check_cosine_warmup_lr,
    library_rates,
)
from behind_pipeline.paths import PROJECT_ROOT
from behind_pipeline.trainer_setup import (
    logged_learning_rates,
    tokenize_split,
    trainer_like_loop,
    trainer_on_loop_batches,
    training_losses,
)
from behind_pipeline.training import TrainingSettings, train_classifier

from checker_asserts import ODD_ANSWERS, assert_accepted, assert_rejected, assert_reported, failures
from tiny_models import tiny_bert_classifier


def tiny_bert(tokenizer, seed=0):
    """Width 32, 2 layers, dropout on: a classifier to train in milliseconds."""
    return tiny_bert_classifier(tokenizer.vocab_size, hidden=32, layers=2, seed=seed, train_mode=True)


# --- Trainer with the loop's settings --------------------------------------------------------------------------


def test_trainer_like_loop_follows_the_loops_schedule(splits, tokenizer, tmp_path):
    sample = splits["train"].select(range(22))
    # 6 steps, warmup 0.25 x 6 = 1.5: the loop rounds down to 1, Trainer would round a float share up to 2.
    settings = TrainingSettings(batch_size=4, learning_rate=1e-3, warmup_fraction=0.25, seed=0)
    history = train_classifier(tiny_bert(tokenizer), tokenizer, sample["text"], sample["label"], settings)
    trainer = trainer_like_loop(tiny_bert(tokenizer), tokenizer, tokenize_split(sample, tokenizer), settings,
                                tmp_path)
    assert not any(isinstance(callback, PrinterCallback) for callback in trainer.callback_handler.callbacks)
    assert trainer.args.optim.value == "adamw_torch" and trainer.args.train_sampling_strategy == "group_by_length"
    assert trainer.args.warmup_steps == 1 and trainer.args.max_grad_norm == settings.max_grad_norm
    trainer.train()
    rates = logged_learning_rates(trainer.state.log_history)
    assert len(rates) == len(history.learning_rates) == 6
    assert rates == pytest.approx(history.learning_rates, abs=1e-15)
    assert rates[1] == pytest.approx(1e-3)  # one warmup step: the peak at step 1
    assert len(training_losses(trainer.state.log_history)) == 6


def test_trainer_on_the_loops_batches_takes_the_loops_steps_with_dropout_off(splits, tokenizer, tmp_path):
    sample = splits["train"].select(range(24))
    settings = TrainingSettings(batch_size=4, learning_rate=1e-3, max_steps=3, seed=1)

    def no_dropout():
        model = tiny_bert(tokenizer)
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model

    loop = no_dropout()
    train_classifier(loop, tokenizer, sample["text"], sample["label"], settings)
    trainer = trainer_on_loop_batches(no_dropout(), tokenizer, sample, settings, tmp_path)
    assert trainer.args.train_sampling_strategy == "sequential"
    trainer.train()
    start, trained = dict(no_dropout().named_parameters()), dict(trainer.model.named_parameters())
    for name, weight in loop.named_parameters():
        assert torch.allclose(weight, trained[name], atol=1e-6), name
    assert any(not torch.equal(weight, start[name]) for name, weight in loop.named_parameters())
    # Trainer's own length grouping (or another seed's order) gives other batches: other weights.
    grouped = trainer_like_loop(no_dropout(), tokenizer, tokenize_split(sample, tokenizer), settings, tmp_path)
    grouped.train()
    other = dict(grouped.model.named_parameters())
    assert any(not torch.allclose(weight, other[name], atol=1e-6) for name, weight in loop.named_parameters())


def test_trainer_on_loop_batches_refuses_what_would_cut_other_batches(splits, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="whole batches"):
        trainer_on_loop_batches(tiny_bert(tokenizer), tokenizer, splits["train"].select(range(10)),
                                TrainingSettings(batch_size=4), tmp_path)


def test_trainer_like_loop_stops_at_max_steps(splits, tokenizer, tmp_path):
    sample = splits["train"].select(range(40))
    settings = TrainingSettings(batch_size=4, max_steps=3, seed=0)
    trainer = trainer_like_loop(tiny_bert(tokenizer), tokenizer, tokenize_split(sample, tokenizer), settings,
                                tmp_path)
    trainer.train()
    assert trainer.state.global_step == 3


def test_log_history_readers_skip_evaluations_and_summaries():
    log = [{"loss": 0.7, "learning_rate": 0.0, "step": 1}, {"loss": 0.6, "learning_rate": 1e-4, "step": 2},
           {"eval_loss": 0.65, "step": 2}, {"train_loss": 0.65, "step": 2}]
    assert training_losses(log) == [0.7, 0.6]
    assert logged_learning_rates(log) == [0.0, 1e-4]


# --- the data-parallel step -----------------------------------------------------------------------------------


@pytest.fixture
def one_process_accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def test_data_parallel_step_in_one_process_equals_the_plain_step(one_process_accelerator):
    examples = distributed.step_examples()
    state, losses, sizes = distributed.data_parallel_step(one_process_accelerator, *examples)
    plain, loss = distributed.single_process_step(examples)
    assert sizes == [distributed.GLOBAL_BATCH] and losses == pytest.approx([loss], abs=1e-6)
    assert max((state[name] - plain[name]).abs().max().item() for name in plain) < 1e-6
    before = distributed.step_classifier(examples[2]).state_dict()
    assert max((plain[name] - before[name]).abs().max().item() for name in plain) > 1e-5  # the step moved


def test_data_parallel_gradients_in_one_process_equal_the_plain_gradients(one_process_accelerator):
    examples = distributed.step_examples()
    averaged = distributed.data_parallel_gradients(one_process_accelerator, *examples)
    plain, _ = distributed.single_process_gradients(examples)
    assert averaged.keys() == plain.keys() and len(plain) > 100  # every parameter has a gradient
    assert max((averaged[name] - plain[name]).abs().max().item() for name in plain) < 1e-6
    # the gradients are taken before clipping: a clipped copy would differ (their norm is above MAX_GRAD_NORM)
    norm = torch.linalg.vector_norm(torch.cat([gradient.flatten() for gradient in plain.values()]))
    assert norm > distributed.MAX_GRAD_NORM


def test_gradients_of_four_and_four_reviews_average_to_the_gradient_of_eight():
    """What the all-reduce relies on, in one process: equal shares, mean of the means = mean of all."""
    texts, labels, id2label = distributed.step_examples()
    whole, _ = distributed.single_process_gradients((texts, labels, id2label))
    first, _ = distributed.single_process_gradients((texts[:4], labels[:4], id2label))
    second, _ = distributed.single_process_gradients((texts[4:], labels[4:], id2label))
    assert max(((first[name] + second[name]) / 2 - whole[name]).abs().max().item() for name in whole) < 1e-6
    # and a different split of unequal size does not: the plain mean weighs the smaller share more
    small, _ = distributed.single_process_gradients((texts[:2], labels[:2], id2label))
    large, _ = distributed.single_process_gradients((texts[2:], labels[2:], id2label))
    assert max(((small[name] + large[name]) / 2 - whole[name]).abs().max().item() for name in whole) > 1e-4


def test_gather_for_metrics_drops_nothing_in_one_process(one_process_accelerator):
    result = distributed.uneven_gather(one_process_accelerator)
    assert result["gather"] == result["gather_for_metrics"] == list(range(7))


def test_the_cpu_flag_starts_one_process_whatever_num_processes_says():
    output = distributed.OUTPUT_DIR / "test_cpu_flag.json"
    result = distributed.launch(distributed.CPU_FLAG, output, count_only=True)
    assert "--num_processes" in distributed.CPU_FLAG and result["num_processes"] == 1


def test_launch_command_shows_a_command_a_reader_can_type():
    command = distributed.launch_command(distributed.TWO_PROCESSES, PROJECT_ROOT / ".cache" / "x.json")
    assert command[:5] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    assert command[-4:] == ["--output", ".cache/x.json", "--examples", ".cache/x_examples.json"]  # no machine folder
    assert distributed.launch_command(distributed.CPU_FLAG, PROJECT_ROOT / "y.json", count_only=True)[-1] == (
        "--count-only")


def test_examples_file_round_trips(tmp_path):
    path = tmp_path / "examples.json"
    distributed.write_examples(path)
    texts, labels, id2label = distributed.read_examples(path)
    assert (texts, labels, id2label) == distributed.step_examples() and len(texts) == distributed.GLOBAL_BATCH


# --- exercise 1: the cosine schedule ---------------------------------------------------------------------------


def cosine_warmup_lr(step, peak, warmup_steps, total_steps):
    if step < warmup_steps:
        return peak * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=[case[-1] for case in SCHEDULE_CASES])
def test_the_checkers_rates_are_the_librarys_at_every_step(case):
    peak, warmup_steps, total_steps, _ = case
    rates = library_rates(peak, warmup_steps, total_steps)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=peak)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    library = []
    for _ in rates:
        library.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates == library  # exactly: the same float operations
    assert len(rates) == total_steps + 1
    if warmup_steps < total_steps:  # a run that is all warmup ends at the peak, not at 0
        assert rates[total_steps] == pytest.approx(0.0, abs=1e-15)


def test_the_linear_schedules_last_step_runs_at_peak_over_decay_steps_not_at_zero():
    """The chapter's correction: the factor reaches 0 one step after the last step run."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=3e-4)
    schedule = get_linear_schedule_with_warmup(optimizer, 1, 10)
    rates = []
    for _ in range(10):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[-1] == pytest.approx(3e-4 / 9) and rates[-1] > 0 and schedule.get_last_lr()[0] == 0.0


def test_check_cosine_warmup_lr_accepts_the_solution():
    assert_accepted(check_cosine_warmup_lr, cosine_warmup_lr,
                    lambda *args: torch.tensor(cosine_warmup_lr(*args), dtype=torch.float64))


def schedule_variant(kind):
    def rate(step, peak, warmup_steps, total_steps):
        if step < warmup_steps:
            if kind == "no_max_1":
                return peak * step / warmup_steps
            return peak * (step + (kind == "warmup_from_one")) / max(1, warmup_steps)
        if kind == "no_max_1":
            progress = (step - warmup_steps) / (total_steps - warmup_steps)
        elif kind == "cosine_over_whole_run":
            progress = step / max(1, total_steps)
        else:
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "quarter_wave":
            return peak * math.cos(math.pi / 2 * progress)
        if kind == "unshifted_cosine":
            return peak * math.cos(math.pi * progress)
        if kind == "linear_decay":
            return peak * max(0.0, 1 - progress)
        return peak * 0.5 * (1 + math.cos(math.pi * progress))

    return rate


@pytest.mark.parametrize(("kind", "says"), [("warmup_from_one", "one step ahead"),
                                            ("cosine_over_whole_run", "starts at the end of the warmup"),
                                            ("quarter_wave", "quarter wave"), ("unshifted_cosine", "shift and halve"),
                                            ("linear_decay", "linear decay"), ("no_max_1", "max(1, ...)")])
def test_check_cosine_warmup_lr_rejects_and_names_the_mistake(kind, says):
    assert_rejected(check_cosine_warmup_lr(schedule_variant(kind)), says)


@pytest.mark.parametrize("answer", [lambda *args: [0.1], lambda *args: "0.1", lambda *args: {"lr": 1},
                                    lambda *args: torch.ones(2), lambda *args: 1 / 0])
def test_check_cosine_warmup_lr_reports_odd_answers(answer):
    assert not check_cosine_warmup_lr(answer).passed


# --- exercise 2: clipping -------------------------------------------------------------------------------------


def clip_gradients(parameters, max_norm):
    gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
    norm = torch.sqrt(sum((gradient.double() ** 2).sum() for gradient in gradients))
    scale = min(1.0, max_norm / (norm.item() + 1e-6))
    for gradient in gradients:
        gradient.mul_(scale)
    return norm.item()


def test_check_clip_gradients_accepts_the_solution_and_the_library():
    assert_accepted(check_clip_gradients, clip_gradients, torch.nn.utils.clip_grad_norm_)


def clipping_variant(kind):
    def clip(parameters, max_norm):
        if kind == "generator_read_twice":
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in parameters if p.grad is not None))
            for p in parameters:
                if p.grad is not None:
                    p.grad.mul_(min(1.0, max_norm / (norm.item() + 1e-6)))
            return norm.item()
        parameters = [p for p in parameters if p.grad is not None or kind == "keeps_none"]
        if kind == "keeps_none":
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in parameters))
        else:
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in parameters))
        if kind == "per_tensor":
            for p in parameters:
                p.grad.mul_(min(1.0, max_norm / (p.grad.norm().item() + 1e-6)))
            return norm.item()
        if kind == "always_scale":
            for p in parameters:
                p.grad.mul_(max_norm / norm.item())
            return norm.item()
        if kind == "inf_norm":
            largest = max(p.grad.abs().max().item() for p in parameters)
            for p in parameters:
                p.grad.mul_(min(1.0, max_norm / largest))
            return largest
        if kind == "not_in_place":
            return norm.item()
        scale = min(1.0, max_norm / (norm.item() + 1e-6))
        for p in parameters:
            p.grad.mul_(scale)
        return min(norm.item(), max_norm) if kind == "norm_after" else norm.item()

    return clip


@pytest.mark.parametrize(("kind", "says"), [
    ("per_tensor", "its own norm"), ("always_scale", "scaled up"), ("inf_norm", "largest absolute entry"),
    ("not_in_place", "did not change"), ("norm_after", "before"), ("generator_read_twice", "generator"),
    ("keeps_none", "grad is None"),
])
def test_check_clip_gradients_rejects_and_names_the_mistake(kind, says):
    assert_rejected(check_clip_gradients(clipping_variant(kind)), says)


def test_check_clip_gradients_tests_a_norm_exactly_at_the_limit_and_a_view():
    from behind_pipeline.checks.ch12_training_loop import CLIPPING_CASES, _parameters_with_gradients

    at_limit = [case for case in CLIPPING_CASES if case[0] == case[1]]
    assert at_limit
    parameters = _parameters_with_gradients(*at_limit[0][:1], seed=0)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in parameters if p.grad is not None]))
    assert math.isclose(norm.item(), at_limit[0][1], rel_tol=1e-6)
    assert not parameters[0].grad.is_contiguous()


@pytest.mark.parametrize("answer", [lambda parameters, max_norm: "big", lambda parameters, max_norm: [1.0, 2.0],
                                    lambda parameters, max_norm: torch.ones(3), lambda parameters, max_norm: 1 / 0])
def test_check_clip_gradients_reports_odd_answers(answer):
    assert not check_clip_gradients(answer).passed


# --- exercise 3: accumulation ---------------------------------------------------------------------------------


def accumulated_step(model, optimizer, micro_batches):
    total = sum(len(labels) for _, labels in micro_batches)
    for inputs, labels in micro_batches:
        (F.cross_entropy(model(inputs), labels) * len(labels) / total).backward()
    optimizer.step()
    optimizer.zero_grad()


def test_check_accumulated_step_accepts_the_solution():
    assert check_accumulated_step(accumulated_step).passed
    assert any(len(set(sizes)) > 1 for sizes, _ in ACCUMULATION_CASES)  # unequal sizes are tested


def accumulation_variant(kind):
    def step(model, optimizer, micro_batches):
        total = sum(len(labels) for _, labels in micro_batches)
        for inputs, labels in micro_batches:
            if kind == "zero_each":
                optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), labels)
            scale = {"unscaled": 1.0, "mean_of_means": 1.0 / len(micro_batches)}.get(kind, len(labels) / total)
            (loss * scale).backward()
            if kind == "step_each":
                optimizer.step()
                optimizer.zero_grad()
        if kind != "step_each":
            optimizer.step()
        if kind != "no_zero_grad":
            optimizer.zero_grad()

    return step


@pytest.mark.parametrize(("kind", "says"), [
    ("unscaled", "without scaling"), ("mean_of_means", "unequal"), ("step_each", "after each micro-batch"),
    ("zero_each", "throws away"), ("no_zero_grad", "zero_grad() after the step"),
])
def test_check_accumulated_step_rejects_and_names_the_mistake(kind, says):
    assert_rejected(check_accumulated_step(accumulation_variant(kind)), says)


def test_check_accumulated_step_reports_a_function_that_raises():
    assert not check_accumulated_step(lambda model, optimizer, micro_batches: micro_batches[9]).passed


@pytest.mark.parametrize("check", [check_cosine_warmup_lr, check_clip_gradients, check_accumulated_step])
def test_blank_answers_are_reported_not_raised(check):
    def blank(*args):
        ...

    for answer, hint in ((Ellipsis, "still `...`"), (blank, "returned None")):
        assert_rejected(check(answer), hint)


def test_bf16_autocast_runs_on_the_cpu_with_trainer(tokenizer, tmp_path):
    """The chapter's claim: mixed precision is not GPU-only; Trainer's bf16 on a CPU autocasts, weights stay fp32."""
    from transformers import Trainer, TrainingArguments

    model = tiny_bert(tokenizer)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True,
                                                          report_to="none"))
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.accelerator.device.type == "cpu"
    batch = tokenizer(["a good film", "bad"], padding=True, return_tensors="pt")
    with torch.inference_mode(), trainer.accelerator.autocast():
        logits = model(**batch).logits
    assert logits.dtype == torch.bfloat16 and model.classifier.weight.dtype == torch.float32


# --- found by trying the checkers as a skeptical instructor ------------------------------------------------------


# --- exercise 1 ---------------------------------------------------------------------------------------------------


def cosine_in_float32(step, peak, warmup_steps, total_steps):
    """The schedule written with torch: float32 tensors, within 1.3e-7 x peak of the library at every step."""
    if step < warmup_steps:
        return torch.tensor(peak * step / max(1, warmup_steps))
    progress = torch.tensor((step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * 0.5 * (1 + torch.cos(math.pi * progress))


@pytest.mark.parametrize("answer", [cosine_in_float32, lambda *args: torch.tensor(cosine_warmup_lr(*args)),
                                    lambda *args: np.float32(cosine_warmup_lr(*args))],
                         ids=["torch float32", "float32 tensor of the solution", "numpy float32"])
def test_check_cosine_warmup_lr_accepts_float32_rates(answer):
    report = check_cosine_warmup_lr(answer)
    assert report.passed, report


def test_check_cosine_warmup_lr_names_no_warmup_mistake_where_the_run_is_all_warmup():
    """Returning 0 at step total_steps is wrong only where warmup == total (the library runs that step at the
    peak); the report must say that, not "the cosine runs over the whole run", which this answer does not do."""
    def zero_at_the_end(step, peak, warmup_steps, total_steps):
        return 0.0 if step >= total_steps else cosine_warmup_lr(step, peak, warmup_steps, total_steps)

    report = check_cosine_warmup_lr(zero_at_the_end)
    assert_rejected(report, "peak")
    assert "whole run" not in repr(report), report


def test_check_cosine_warmup_lr_shows_a_difference_the_learner_can_see():
    """The cosine reaching 0 a step early: the FIX line must not print the same number twice."""
    def early_zero(step, peak, warmup_steps, total_steps):
        if step < warmup_steps:
            return peak * step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
        return peak * 0.5 * (1 + math.cos(math.pi * progress))

    report = check_cosine_warmup_lr(early_zero)
    assert not report.passed
    for line in failures(report):
        if " got " in line and "the library gives" in line:
            got = line.split(" got ")[1].split(",")[0]
            library = line.split("the library gives ")[1].split(" ")[0]
            assert got != library, line


# --- exercise 2 ---------------------------------------------------------------------------------------------------


def clip_trainable_only(parameters, max_norm):
    """Skips frozen parameters by requires_grad: breaks on a trainable parameter the loss did not reach."""
    gradients = [parameter.grad for parameter in parameters if parameter.requires_grad]
    norm = torch.sqrt(sum((gradient ** 2).sum() for gradient in gradients))
    for gradient in gradients:
        gradient.mul_(min(1.0, max_norm / (norm.item() + 1e-6)))
    return norm


def clip_without_epsilon(parameters, max_norm):
    """max_norm / norm in Python floats: ZeroDivisionError when every gradient is 0."""
    gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
    norm = math.sqrt(sum((gradient ** 2).sum().item() for gradient in gradients))
    for gradient in gradients:
        gradient.mul_(min(1.0, max_norm / norm))
    return norm


def clipping_variant_2(kind):
    def clip(parameters, max_norm):
        gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
        squares = sum((gradient ** 2).sum() for gradient in gradients)
        norm = {"sum_of_norms": sum(gradient.norm() for gradient in gradients), "no_sqrt": squares,
                "rms": (squares / sum(gradient.numel() for gradient in gradients)).sqrt()}.get(kind, squares.sqrt())
        for gradient in gradients:
            if kind == "by_value":
                gradient.clamp_(-max_norm, max_norm)
            else:
                gradient.mul_(min(1.0, max_norm / (norm.item() + 1e-6)))
        return norm

    return clip


@pytest.mark.parametrize(("answer", "says"), [
    (clip_trainable_only, "requires_grad"), (clip_without_epsilon, "1e-6"),
    (clipping_variant_2("sum_of_norms"), "sum of each tensor's norm"), (clipping_variant_2("no_sqrt"), "square root"),
    (clipping_variant_2("rms"), "root mean square"), (clipping_variant_2("by_value"), "clip_grad_value_"),
], ids=["requires_grad", "no_epsilon", "sum_of_norms", "no_sqrt", "rms", "by_value"])
def test_check_clip_gradients_rejects_and_names_the_mistake_2(answer, says):
    assert_rejected(check_clip_gradients(answer), says)


@pytest.mark.parametrize("kind", ["always_scale", "inf_norm"])
def test_check_clip_gradients_never_raises_on_zero_gradients(kind):
    """The mistake classifier divides by the gradient norm and by the largest entry: both are 0 in a zero case."""
    def clip(parameters, max_norm):
        parameters = [p for p in parameters if p.grad is not None]
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in parameters))
        for p in parameters:
            if kind == "always_scale":
                p.grad.mul_(max_norm / (norm + 1e-6))
            else:
                p.grad.mul_(min(1.0, max_norm / (p.grad.abs().max().item() + 1e-6)))
        return norm

    assert_reported(check_clip_gradients(clip))


# --- exercise 3 ---------------------------------------------------------------------------------------------------


def accumulation_variant_2(kind):
    def step(model, optimizer, micro_batches):
        total = sum(len(labels) for _, labels in micro_batches)
        if kind == "concatenated":  # one forward on the whole batch: no accumulation, no memory saved
            inputs = torch.cat([inputs for inputs, _ in micro_batches])
            labels = torch.cat([labels for _, labels in micro_batches])
            F.cross_entropy(model(inputs), labels).backward()
        elif kind == "one_backward":  # every micro-batch's graph kept until one backward at the end
            sum(F.cross_entropy(model(inputs), labels) * len(labels) / total
                for inputs, labels in micro_batches).backward()
        else:
            if kind == "eval_mode":
                model.eval()
            for inputs, labels in micro_batches:
                scale = {"divided_twice": len(labels) / total / len(micro_batches),
                         "integer_division": len(labels) // total}.get(kind, len(labels) / total)
                (F.cross_entropy(model(inputs), labels) * scale).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


@pytest.mark.parametrize(("kind", "says"), [
    ("concatenated", "each micro-batch"), ("one_backward", "backward"), ("eval_mode", "train"),
    ("divided_twice", "times"), ("integer_division", "did not move"),
])
def test_check_accumulated_step_rejects_and_names_the_mistake_2(kind, says):
    assert_rejected(check_accumulated_step(accumulation_variant_2(kind)), says)


def test_check_accumulated_step_does_not_blame_zero_grad_for_a_backward_outside_the_loop():
    def last_only(model, optimizer, micro_batches):
        total = sum(len(labels) for _, labels in micro_batches)
        for inputs, labels in micro_batches:
            loss = F.cross_entropy(model(inputs), labels) * len(labels) / total
        loss.backward()  # indented one level too little: only the last micro-batch
        optimizer.step()
        optimizer.zero_grad()

    report = check_accumulated_step(last_only)
    assert_rejected(report, "last micro-batch")


def test_check_accumulated_step_accepts_summed_losses_divided_by_the_total():
    def summed(model, optimizer, micro_batches):
        total = sum(len(labels) for _, labels in micro_batches)
        for inputs, labels in micro_batches:
            (F.cross_entropy(model(inputs), labels, reduction="sum") / total).backward()
        optimizer.step()
        optimizer.zero_grad()

    assert_accepted(check_accumulated_step, summed, accumulated_step)


@pytest.mark.parametrize("name", ["a float64 tensor", "a list", "a dict", "nan"])
def test_check_accumulated_step_does_not_say_none_for_a_value(name):
    report = check_accumulated_step(ODD_ANSWERS[name])
    assert_reported(report)
    assert "returned None" not in repr(report), report


@pytest.mark.parametrize("check", [check_cosine_warmup_lr, check_clip_gradients, check_accumulated_step])
@pytest.mark.parametrize("name", list(ODD_ANSWERS))
def test_odd_answers_are_reported_not_raised(check, name):
    assert_reported(check(ODD_ANSWERS[name]))
