"""Checkers for the exercises of chapter 12 (the training loop): a cosine schedule, clipping and accumulation by hand.

Each one compares the learner's code with the library (``get_cosine_schedule_with_warmup``'s rates, proven equal
in the tests; ``torch.nn.utils.clip_grad_norm_``) or with one large batch, on cases chosen to expose one mistake
each: the boundary steps of the schedule, a gradient norm exactly at the limit, micro-batches of unequal sizes.
"""

import math

import torch
import torch.nn.functional as F

from behind_pipeline.checks._core import CheckReport, is_stub, named_mistakes

# --- Exercise 1: a cosine schedule with warmup by hand ------------------------------------------------------------

# (peak learning rate, warmup steps, total steps, what the case exposes)
SCHEDULE_CASES = [
    (3e-4, 1, 10, "the chapter's small run"),
    (2e-4, 15, 158, "all of train in batches of 64"),
    (1.0, 0, 5, "no warmup: the first step runs at the peak"),
    (0.5, 4, 4, "warmup as long as the run"),
    (1.0, 1, 1, "a single step"),
    (1.0, 3, 10, "a peak of 1: the schedule's factor itself"),
]


def _cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The factor of ``get_cosine_schedule_with_warmup`` (``num_cycles=0.5``), as transformers 5 writes it."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def library_rates(peak: float, warmup_steps: int, total_steps: int) -> list[float]:
    """The learning rate ``get_cosine_schedule_with_warmup`` gives for steps 0 .. total_steps.

    Its factor on a ``LambdaLR`` as the library builds it; the tests check the rates against
    ``get_cosine_schedule_with_warmup`` itself (importing it here would cost each exercise notebook seconds).
    """
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=peak)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _cosine_factor(step, warmup_steps, total_steps))
    rates = []
    for _ in range(total_steps + 1):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return rates


def _schedule_mistakes(peak, warmup_steps, total_steps, steps) -> dict[str, list[float]]:
    def rate(step, kind=""):
        if step < warmup_steps:
            return peak * (step + (kind == "ahead")) / max(1, warmup_steps)
        span = max(1, total_steps if kind == "whole" else total_steps - warmup_steps)
        progress = (step if kind == "whole" else step - warmup_steps) / span
        if kind == "quarter":
            return peak * math.cos(math.pi / 2 * progress)
        if kind == "unshifted":
            return peak * math.cos(math.pi * progress)
        if kind == "linear":
            return peak * max(0.0, 1 - progress)
        return peak * 0.5 * (1 + math.cos(math.pi * progress))

    mistakes = {}
    if warmup_steps >= total_steps:  # the cosine part is the single step total_steps, at progress 0 / max(1, 0)
        mistakes["the run is all warmup: at step total_steps the warmup has just ended and the library runs it at "
                  "the peak (progress = (step - warmup) / max(1, total - warmup) = 0), not at 0"] = [
            rate(step) if step < warmup_steps else 0.0 for step in steps]
    return mistakes | {
        "warmup is one step ahead: step 0 runs at 0, step i of the warmup at i / warmup_steps of the peak": [
            rate(step, "ahead") for step in steps],
        "the cosine runs over the whole run: it starts at the end of the warmup, progress = (step - warmup) / "
        "(total - warmup)": [rate(step, "whole") for step in steps],
        "that is a quarter wave, cos(pi/2 * progress): half a wave is (1 + cos(pi * progress)) / 2": [
            rate(step, "quarter") for step in steps],
        "cos(pi * progress) alone runs from +1 to -1: shift and halve it, (1 + cos(pi * progress)) / 2, to end at 0":
            [rate(step, "unshifted") for step in steps],
        "that is the linear decay of the chapter, not a cosine": [rate(step, "linear") for step in steps],
    }


def _same_rate(a: float, b: float, peak: float) -> bool:
    """Equal to a float32 rounding of the rate (1e-6 of the peak); every mistake above differs by over 1e-3."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=max(1e-12, 1e-6 * abs(peak)))


def check_cosine_warmup_lr(cosine_warmup_lr) -> CheckReport:
    """``cosine_warmup_lr(step, peak, warmup_steps, total_steps)`` equals the library's cosine schedule."""
    report = CheckReport("Warmup and cosine decay by hand")
    for peak, warmup_steps, total_steps, description in SCHEDULE_CASES:
        expected = library_rates(peak, warmup_steps, total_steps)
        steps = list(range(len(expected)))
        got = []
        for step in steps:
            value = report.call(cosine_warmup_lr, step, peak, warmup_steps, total_steps, name="cosine_warmup_lr")
            if value is Ellipsis:
                if any("ZeroDivisionError" in line for line in report.lines):
                    report.fail(f"{description}: with warmup_steps={warmup_steps} or total_steps == warmup_steps a "
                                "denominator is 0: the library divides by max(1, ...)")
                return report
            number = report.tensor(value, f"the rate at step {step}", shape=())
            if number is None:
                return report
            got.append(number.item())
        wrong = [step for step in steps if not _same_rate(got[step], expected[step], peak)]
        if not wrong:
            report.ok(f"{description} (peak {peak:g}, warmup {warmup_steps}, {total_steps} steps): "
                      f"equal at steps 0..{steps[-1]}")
            continue
        first = wrong[0]
        named = named_mistakes(got, _schedule_mistakes(peak, warmup_steps, total_steps, steps),
                               lambda rates, wrong_rates, peak=peak: all(
                                   _same_rate(a, b, peak) for a, b in zip(rates, wrong_rates, strict=True)))
        if named:
            report.fail(f"{description}: {named[0]}")
        else:
            report.fail(f"{description}: at step {first} got {got[first]:.9g}, the library gives "
                        f"{expected[first]:.9g} ({len(wrong)} of {len(steps)} steps differ)")
    return report


# --- Exercise 2: gradient clipping by hand ----------------------------------------------------------------------


def _parameters_with_gradients(gradient_norm: float, seed: int) -> list[torch.nn.Parameter]:
    """Parameters of several shapes whose gradients have the given joint norm; one frozen (grad None)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    parameters = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    # Gradients of different sizes per tensor (so clipping each by its own norm differs), the first one a
    # non-contiguous view (a transposed tensor), as gradients of transposed weights can be.
    gradients = [torch.randn(3, 4, generator=generator).t(), torch.randn(3, generator=generator) * 2,
                 torch.randn(2, 2, 2, generator=generator) * 3]
    norm = torch.linalg.vector_norm(torch.cat([gradient.flatten() for gradient in gradients]))
    for parameter, gradient in zip(parameters, gradients, strict=True):
        parameter.grad = gradient.mul_(gradient_norm / norm)
    frozen = torch.nn.Parameter(torch.randn(5, generator=generator), requires_grad=False)  # no gradient, skipped
    # trainable but not reached by the loss (an unused head, a pooler): requires_grad True and grad None, skipped too
    unused = torch.nn.Parameter(torch.randn(2, generator=generator))
    return [parameters[0], frozen, parameters[1], parameters[2], unused]


def _copy(parameters):
    copies = []
    for parameter in parameters:
        copy = torch.nn.Parameter(parameter.detach().clone(), requires_grad=parameter.requires_grad)
        copy.grad = None if parameter.grad is None else parameter.grad.clone()  # keeps the strides
        copies.append(copy)
    return copies


# (joint gradient norm, max_norm, pass a generator instead of a list, what the case exposes)
CLIPPING_CASES = [
    (5.0, 1.0, False, "gradients 5 times too large"),
    (0.3, 1.0, False, "gradients below the limit are left alone"),
    (2.0, 2.0, False, "a norm exactly at the limit"),
    (12.5, 0.5, True, "parameters given as a generator (model.parameters()), as the loop passes them"),
    (0.0, 1.0, False, "all gradients 0: the norm is 0, and the 1e-6 keeps max_norm / (norm + 1e-6) finite"),
]


def _norm_mistakes(gradients: list[torch.Tensor]) -> dict[str, float]:
    """Norms a learner computes instead of the 2-norm of all gradients together, by the mistake that gives each."""
    flat = torch.cat([gradient.double().reshape(-1) for gradient in gradients])
    return {
        "the squared norm: take the square root of the sum of squares": flat.pow(2).sum().item(),
        "the sum of each tensor's norm: the norm of all gradients together is sqrt of the sum of every tensor's "
        "squared norm": sum(torch.linalg.vector_norm(gradient.double()).item() for gradient in gradients),
        "the root mean square: add the squares up, do not average them": flat.pow(2).mean().sqrt().item(),
        "the largest absolute entry (the max norm): use the 2-norm": flat.abs().max().item(),
    }


def check_clip_gradients(clip_gradients) -> CheckReport:
    """``clip_gradients(parameters, max_norm)`` equals ``torch.nn.utils.clip_grad_norm_`` (gradients and norm)."""
    report = CheckReport("Gradient clipping by hand")
    for seed, (gradient_norm, max_norm, as_generator, description) in enumerate(CLIPPING_CASES):
        mine = _parameters_with_gradients(gradient_norm, seed)
        reference = _copy(mine)
        before = _copy(mine)
        expected_norm = torch.nn.utils.clip_grad_norm_(reference, max_norm).item()
        given = (parameter for parameter in mine) if as_generator else list(mine)
        returned = report.call(clip_gradients, given, max_norm, name="clip_gradients")
        if returned is Ellipsis:
            if any("NoneType" in line for line in report.lines):
                report.fail("a parameter has no gradient (grad is None): a frozen one, or a trainable one "
                            "(requires_grad=True) the loss did not reach: skip it by `p.grad is None`, not by "
                            "`p.requires_grad`, as clip_grad_norm_ does")
            elif gradient_norm == 0 and any("ZeroDivisionError" in line for line in report.lines):
                report.fail(f"{description}: divide by norm + 1e-6, as the statement says, not by the norm")
            return report
        norm = report.tensor(returned, "the returned norm", shape=())
        if norm is None:
            return report
        if mine[1].grad is not None or mine[4].grad is not None:
            report.fail(f"{description}: a parameter without a gradient (frozen) got one: skip grad None")
            return report
        trained = [index for index, parameter in enumerate(mine) if parameter.grad is not None]
        close = all(torch.allclose(mine[i].grad, reference[i].grad, rtol=1e-5, atol=1e-7) for i in trained)
        unchanged = all(torch.equal(mine[i].grad, before[i].grad) for i in trained)
        if close and math.isclose(norm.item(), expected_norm, rel_tol=1e-5):
            report.ok(f"{description}: norm {expected_norm:.4f}, gradients equal clip_grad_norm_'s")
            continue
        wrong_norm = named_mistakes(norm.item(), _norm_mistakes([before[i].grad for i in trained]),
                                    lambda answer, value: math.isclose(answer, value, rel_tol=1e-4), expected_norm)
        if wrong_norm:
            report.fail(f"{description}: the returned norm, {norm.item():.4f}, is {wrong_norm[0]}")
            continue
        if close:
            clipped_norm = min(expected_norm, max_norm)
            hint = ("the norm after clipping: return the norm before it" if math.isclose(
                norm.item(), clipped_norm, rel_tol=1e-4) and clipped_norm != expected_norm else
                f"returned {norm.item():.4f}, clip_grad_norm_ returns the norm before clipping, {expected_norm:.4f}")
            report.fail(f"{description}: right gradients, wrong norm: {hint}")
            continue
        own_norms = [torch.linalg.vector_norm(before[i].grad).item() for i in trained]
        per_tensor = all(torch.allclose(mine[i].grad, before[i].grad * min(1.0, max_norm / (own + 1e-6)), rtol=1e-5,
                                        atol=1e-7) for i, own in zip(trained, own_norms, strict=True))
        always = gradient_norm > 0 and all(torch.allclose(
            mine[i].grad, before[i].grad * max_norm / gradient_norm, rtol=1e-5, atol=1e-7) for i in trained)
        largest = max(before[i].grad.abs().max().item() for i in trained)
        by_largest = largest > 0 and all(torch.allclose(
            mine[i].grad, before[i].grad * min(1.0, max_norm / largest), rtol=1e-5, atol=1e-7) for i in trained)
        by_value = all(torch.allclose(mine[i].grad, before[i].grad.clamp(-max_norm, max_norm), rtol=1e-5, atol=1e-7)
                       for i in trained)
        if by_value and not unchanged:
            report.fail(f"{description}: each entry was clamped to [-max_norm, max_norm] (clip_grad_value_): "
                        "multiply all gradients by one factor, min(1, max_norm / (norm + 1e-6))")
        elif unchanged and gradient_norm > max_norm:
            report.fail(f"{description}: the gradients did not change: scale each parameter's .grad in place"
                        + (" (a generator can be read only once: make a list first)" if as_generator else ""))
        elif per_tensor and not by_largest:
            report.fail(f"{description}: each tensor was clipped by its own norm: use the norm of all gradients "
                        "together, sqrt of the sum of every squared entry")
        elif always and gradient_norm < max_norm:
            report.fail(f"{description}: gradients below the limit were scaled up: scale only when the norm "
                        "exceeds max_norm")
        elif by_largest:
            report.fail(f"{description}: that is the largest absolute entry (the max norm): use the 2-norm")
        else:
            report.fail(f"{description}: the gradients differ from clip_grad_norm_'s")
    return report


# --- Exercise 3: gradient accumulation by hand ------------------------------------------------------------------


def small_model(seed: int = 0) -> torch.nn.Module:
    """4 inputs, 3 labels; logits out (``F.cross_entropy(model(x), y)`` is the loss)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


class CountingSGD(torch.optim.SGD):
    """SGD that counts its steps: accumulation takes exactly one."""

    def __init__(self, parameters, lr):
        super().__init__(parameters, lr=lr)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def _batch(sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(sum(sizes), 4, generator=generator) * 2
    labels = torch.randint(0, 3, (sum(sizes),), generator=generator)
    micro, start = [], 0
    for size in sizes:
        micro.append((inputs[start:start + size], labels[start:start + size]))
        start += size
    return inputs, labels, micro


def one_big_batch_step(model, inputs, labels, lr: float = 0.5) -> dict[str, torch.Tensor]:
    """The reference: one SGD step on the mean loss over all examples at once."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    optimizer.zero_grad()
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# (micro-batch sizes, what the case exposes)
ACCUMULATION_CASES = [
    ((4, 4, 4), "3 micro-batches of 4"),
    ((5, 2, 1), "micro-batches of 5, 2 and 1: unequal sizes"),
    ((6,), "a single micro-batch"),
]


def _accumulation_mistakes(sizes, seed, lr=0.5) -> dict[str, dict[str, torch.Tensor]]:
    inputs, labels, micro = _batch(sizes, seed)

    def run(scale, step_each=False, zero_each=False):
        model = small_model(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        for micro_inputs, micro_labels in micro:
            if zero_each:
                optimizer.zero_grad()
            (F.cross_entropy(model(micro_inputs), micro_labels) * scale(len(micro_labels))).backward()
            if step_each:
                optimizer.step()
                optimizer.zero_grad()
        if not step_each:
            optimizer.step()
        return {name: value.detach().clone() for name, value in model.state_dict().items()}

    return {
        "the micro-batch losses are added without scaling: the gradient is that many times too large": run(
            lambda size: 1.0),
        "each loss is divided by the number of micro-batches: exact only when they have equal sizes; weigh each "
        "by its share of the examples, len(micro-batch) / total": run(lambda size: 1.0 / len(sizes)),
        "the optimizer stepped after each micro-batch: accumulate all, then step once": run(
            lambda size: size / sum(sizes), step_each=True),
        "only the last micro-batch's gradient reached the step: zero_grad() before each micro-batch throws away "
        "the gradients of the earlier ones (or backward() ran once, after the loop, on the last loss): call "
        "backward() inside the loop and clear the gradients once, after the step": run(
            lambda size: size / sum(sizes), zero_each=True),
    }


def _same_parameters(got: dict, other: dict) -> bool:
    """Whether every parameter of ``got`` (a state dict) equals ``other``'s to 1e-6."""
    return all(torch.allclose(got[name], other[name], atol=1e-6) for name in got)


def _watch(model: torch.nn.Module) -> tuple[list, list]:
    """The batch size of every forward of ``model`` and one entry per backward that reaches its first parameter."""
    seen_sizes, backward_passes = [], []
    model.register_forward_pre_hook(lambda module, args: seen_sizes.append(
        args[0].shape[0] if args and hasattr(args[0], "shape") and args[0].dim() else None))
    next(model.parameters()).register_post_accumulate_grad_hook(lambda parameter: backward_passes.append(1))
    return seen_sizes, backward_passes


def _returns_true(function, *args) -> bool:
    """Call ``function``; True once it returns. It changes the model in place, so returning None is no blank."""
    function(*args)
    return True


def check_accumulated_step(accumulated_step) -> CheckReport:
    """``accumulated_step(model, optimizer, micro_batches)``: one step equal to one step on the whole batch."""
    report = CheckReport("Gradient accumulation by hand")
    for seed, (sizes, description) in enumerate(ACCUMULATION_CASES):
        inputs, labels, micro = _batch(sizes, seed)
        expected = one_big_batch_step(small_model(seed), inputs, labels)
        model = small_model(seed)
        initial = {name: value.detach().clone() for name, value in model.state_dict().items()}
        optimizer = CountingSGD(model.parameters(), lr=0.5)
        seen_sizes, backward_passes = _watch(model)
        if not report.answered(accumulated_step, "accumulated_step"):
            return report
        if report.call(_returns_true, accumulated_step, model, optimizer, list(micro),
                       name="accumulated_step") is Ellipsis:
            return report
        got = {name: value.detach() for name, value in model.state_dict().items()}
        diff = max((got[name] - expected[name]).abs().max().item() for name in expected)
        if optimizer.steps == 0 and all(parameter.grad is None for parameter in model.parameters()):
            report.fail("accumulated_step(...) returned None without computing anything: replace the `...` in its "
                        "body with your code" if is_stub(accumulated_step) else
                        "accumulated_step(...) neither computed a gradient nor called optimizer.step(): run forward "
                        "and backward on each micro-batch, then step")
            return report
        if optimizer.steps != 1 and diff >= 1e-6:
            mistakes = _accumulation_mistakes(sizes, seed)
            message = "the optimizer stepped after each micro-batch: accumulate all, then step once"
            report.fail(f"{description}: optimizer.step() was called {optimizer.steps} times: "
                        + (message if optimizer.steps == len(sizes) and _same_parameters(got, mistakes[message]) else
                           "call it once, after the last micro-batch"))
            continue
        if optimizer.steps != 1:
            report.fail(f"{description}: optimizer.step() was called {optimizer.steps} times, expected once")
            continue
        leftover = [parameter for parameter in model.parameters() if parameter.grad is not None
                    and parameter.grad.abs().max() > 0]
        if diff < 1e-6 and leftover:
            report.fail(f"{description}: right step, but the gradients are still there: zero_grad() after the step, "
                        "or the next step adds to them")
            continue
        if diff < 1e-6 and seen_sizes != list(sizes):
            report.fail(f"{description}: the model ran on batches of {seen_sizes} examples, not on each micro-batch "
                        f"{list(sizes)}: run forward and backward on each micro-batch (one forward on all of them is "
                        "the large batch accumulation is there to avoid)")
            continue
        if diff < 1e-6 and len(backward_passes) != len(sizes):
            report.fail(f"{description}: {len(backward_passes)} backward() for {len(sizes)} micro-batches: one "
                        "backward on the summed losses keeps every micro-batch's activations until the end; call "
                        "backward() on each micro-batch's scaled loss inside the loop")
            continue
        if diff < 1e-6 and not model.training:
            report.fail(f"{description}: the model was left in eval mode: training goes on after this step, leave it "
                        "in train mode (model.train(); eval mode turns dropout off)")
            continue
        if diff < 1e-6:
            report.ok(f"{description}: parameters equal one step on all {sum(sizes)} examples "
                      f"(max abs diff {diff:.1e}), one optimizer step")
            continue
        named = named_mistakes(got, _accumulation_mistakes(sizes, seed), _same_parameters)
        if named:
            report.fail(f"{description}: {named[0]}")
            continue
        moved = {name: got[name] - initial[name] for name in got}
        right = {name: expected[name] - initial[name] for name in got}
        ratio = (sum((moved[n] * right[n]).sum() for n in got) / sum((right[n] ** 2).sum() for n in got)).item()
        off_line = max((moved[n] - ratio * right[n]).abs().max().item() for n in got)
        if max(value.abs().max().item() for value in moved.values()) < 1e-9:
            report.fail(f"{description}: the step did not move the parameters: the gradients were 0 or cleared "
                        "at optimizer.step() (a loss scale of 0, as len(labels) // total gives, or zero_grad() "
                        "between backward() and step())")
        elif off_line < 1e-6:
            report.fail(f"{description}: the step is {ratio:.3g} times the step on the whole batch: scale each "
                        "micro-batch's mean loss by len(labels) / total, once")
        else:
            report.fail(f"{description}: parameters differ from one step on the whole batch by up to {diff:.2e}")
    return report
