"""The report every exercise checker returns, safe calls into a learner's code, and the comparisons checkers share."""

import json
import os
import traceback
from functools import cache

import torch

NOT_DONE_HINT = "still `...`: replace it with your answer"
# `make grade` (tools/grade.py) sets this to a JSON-lines file for each notebook it runs; unset, nothing is written.
CHECK_LOG_VARIABLE = "BTP_CHECK_LOG"


class CheckReport:
    """Lines of ``ok`` / ``FIX`` for one exercise; shown as the cell's output in the notebook."""

    def __init__(self, exercise: str):
        self.exercise = exercise
        self.lines: list[str] = []
        self.failures = 0

    def ok(self, message: str) -> None:
        self.lines.append(f"  ok   {message}")

    def fail(self, message: str) -> None:
        self.failures += 1
        self.lines.append(f"  FIX  {message}")

    def expect(self, condition, ok_message: str, fail_message: str) -> bool:
        """Record one expectation; return whether it held, so a checker can stop early."""
        if condition:
            self.ok(ok_message)
        else:
            self.fail(fail_message)
        return bool(condition)

    def answered(self, value, name: str) -> bool:
        """False (and a FIX line) while the learner's answer is still the ``...`` stub or ``None``."""
        if value is Ellipsis or value is None:
            self.fail(f"{name} is {NOT_DONE_HINT}" if value is Ellipsis else f"{name} is None: {NOT_DONE_HINT}")
            return False
        return True

    def call(self, function, *args, name: str | None = None, **kwargs):
        """Call the learner's function; on an exception or a ``None`` result, record why and return ``Ellipsis``."""
        name = name or getattr(function, "__name__", "your function")
        if not self.answered(function, name):
            return Ellipsis
        try:
            result = function(*args, **kwargs)
        except Exception as error:  # a learner's bug must become a message, not a crashed notebook
            where = traceback.extract_tb(error.__traceback__)[-1]
            self.fail(f"{name}(...) raised {type(error).__name__}: {error} (line {where.lineno})")
            return Ellipsis
        if result is None or result is Ellipsis:
            self.fail(f"{name}(...) returned {result!r}: replace the `...` in its body with your code")
            return Ellipsis
        return result

    def tensor(self, value, name: str, shape: tuple | None = None, dtype=torch.float64) -> torch.Tensor | None:
        """The one way a checker turns a learner's answer into a tensor: the tensor, or None and a FIX line.

        Lists, NumPy arrays and tensors of any dtype are accepted; ``shape`` (when given) must match exactly.
        Never raises.
        """
        if not self.answered(value, name):
            return None
        tensor = as_tensor(value, dtype=dtype)
        if tensor is None:
            self.fail(f"{name} should be a tensor (or numbers in nested lists), got {type(value).__name__}")
            return None
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            self.fail(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
            return None
        return tensor

    def scalar(self, value, name: str) -> float | None:
        """A learner's single number as a float (a Python number, a 0-d tensor or array), or None and a FIX line."""
        tensor = self.tensor(value, name, shape=())
        return None if tensor is None else tensor.item()

    @property
    def passed(self) -> bool:
        return self.failures == 0 and bool(self.lines)

    def __repr__(self) -> str:
        verdict = "all checks passed" if self.passed else f"{self.failures} thing(s) to fix"
        return "\n".join([f"{self.exercise}: {verdict}", *self.lines])

    def record(self) -> dict:
        """The report as data for `make grade`: the exercise, whether it passed, and each FIX message."""
        failures = [line.removeprefix("  FIX  ") for line in self.lines if line.startswith("  FIX  ")]
        return {"exercise": self.exercise, "passed": self.passed, "failures": failures}


def log_check_cell(result) -> None:
    """IPython ``post_run_cell`` callback: append the cell's CheckReport, if it returned one, to the check log.

    The hook is the cell's result rather than ``__repr__`` (which runs again for every display of the report) or
    the report's creation (a checker may replace a half-built report, as chapter 2's ``_never_raises`` does): so
    one check cell, however often it shows its report, writes exactly one record. ``cell`` is the cell's code,
    from which ``make grade`` reads which checker ran.
    """
    path = os.environ.get(CHECK_LOG_VARIABLE)
    report = getattr(result, "result", None)
    if not path or not isinstance(report, CheckReport):
        return
    record = report.record() | {"cell": getattr(getattr(result, "info", None), "raw_cell", None)}
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def watch_check_cells(shell=None) -> bool:
    """Register :func:`log_check_cell` with the running IPython (once) when the check log is asked for."""
    if not os.environ.get(CHECK_LOG_VARIABLE):
        return False
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None:
        return False
    if log_check_cell not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", log_check_cell)
    return True


def as_tensor(value, dtype=torch.float64) -> torch.Tensor | None:
    """A learner's result as a tensor, or None when it cannot be one (a dict, ragged lists, strings...)."""
    if value is None or value is Ellipsis:
        return None
    try:
        return torch.as_tensor(value, dtype=dtype).detach()
    except (TypeError, ValueError, RuntimeError):
        return None


def allclose(value, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    """Same shape and values within ``atol``; anything that is not a tensor is simply not equal. Never raises."""
    tensor = as_tensor(value, dtype=torch.float64)
    return (tensor is not None and tensor.shape == expected.shape
            and bool(torch.allclose(tensor, expected.double(), atol=atol)))


def tensor_of_shape(report: CheckReport, value, shape: tuple, name: str) -> bool:
    """Record whether the learner returned a tensor of the expected shape (checked before its values)."""
    if not isinstance(value, torch.Tensor):
        report.fail(f"{name} should be a torch.Tensor, got {type(value).__name__}")
        return False
    return report.expect(tuple(value.shape) == tuple(shape), f"{name} has shape {tuple(shape)}",
                         f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")


@cache
def course_tokenizer():
    """The course classifier's tokenizer, loaded once for all checkers."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import classifier_id

    return AutoTokenizer.from_pretrained(classifier_id())


@cache
def course_encoder():
    """The plain all-MiniLM-L6-v2 body in eval mode, loaded once for all checkers."""
    from transformers import AutoModel

    from behind_pipeline.models import encoder_id

    return AutoModel.from_pretrained(encoder_id()).eval()


# In a kernel started by `make grade`, every check cell's report goes to the check log as well as to the screen.
watch_check_cells()
