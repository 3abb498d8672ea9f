"""The report every exercise checker returns, safe calls into a learner's code, and the comparisons checkers share."""

import dis
import json
import os
import sysconfig
import traceback
from functools import cache
from pathlib import Path

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
            self.fail(f"{name}(...) raised {describe_error(error)}")
            return Ellipsis
        if result is None or result is Ellipsis:
            if result is None and not is_stub(function):
                self.fail(f"{name}(...) returned None: its body runs but returns nothing; does every path through "
                          "it end with `return ...`?")
            else:
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

    def tensor_answer(self, function, *args, name: str, what: str, shape: tuple | None = None) -> torch.Tensor | None:
        """The learner's answer to one case as a tensor: ``function(*args)`` through :meth:`call`, then
        :meth:`tensor` under the name ``what``. None when either wrote a FIX line (the call raised or returned
        nothing; the answer is no tensor, or not of ``shape``): the case loops of chapters 3, 8, 10, 13 and 16 stop
        there."""
        answer = self.call(function, *args, name=name)
        return None if answer is Ellipsis else self.tensor(answer, what, shape=shape)

    def collection(self, value, kind: type, message: str):
        """``kind(value)`` (``list``, ``set``) for a learner's answer, or None and the FIX line ``message``: a value
        that is not iterable, or an iterable that raises while it is read (a generator), never escapes the
        checker."""
        try:
            return kind(value)
        except Exception:
            self.fail(message)
            return None

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


# Where a learner's code is not: the Python installation (standard library, site-packages) and this package (the
# checkers and the book's helpers, which the learner calls but does not write).
_NOT_LEARNER_DIRS = tuple(sorted({str(Path(sysconfig.get_paths()[key]).resolve()) for key in
                                  ("stdlib", "platstdlib", "purelib", "platlib")} | {
                                     str(Path(__file__).resolve().parents[1])}))


def is_learner_file(filename: str) -> bool:
    """Whether a traceback frame's file is the learner's: a notebook cell (``<ipython-input-...>`` or ipykernel's
    ``/tmp/ipykernel_<pid>/<hash>.py``) or any file outside the Python installation and ``behind_pipeline``."""
    if filename.startswith("<"):
        return filename.startswith("<ipython-input")
    path = str(Path(filename).resolve())
    parts = Path(path).parts
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not any(path == folder or path.startswith(folder + os.sep) for folder in _NOT_LEARNER_DIRS)


def learner_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``error``'s traceback in the learner's own code, or None when it has none."""
    frames = traceback.extract_tb(error.__traceback__)
    return next((frame for frame in reversed(frames) if is_learner_file(frame.filename)), None)


def is_stub(function) -> bool:
    """Whether ``function``'s body is still a stub (``...`` or ``pass``): its code does nothing but return None."""
    code = getattr(function, "__code__", None)
    if code is None:
        return False
    ops = [i.opname for i in dis.get_instructions(code) if i.opname not in ("RESUME", "NOP", "CACHE")]
    return ops in (["LOAD_CONST", "RETURN_VALUE"], ["RETURN_CONST"])


def error_hint(error: BaseException) -> str | None:
    """A likely cause, in the book's words, for the errors learners meet most; None for any other error."""
    text = str(error)
    low = text.lower()
    # torch names a NumPy argument either way: "must be Tensor, not numpy.ndarray" (softmax) or "invalid
    # combination of arguments - got (numpy.ndarray, ...)" (clamp, and every function with several signatures).
    if "numpy.ndarray" in low and ("must be tensor" in low or "has no attribute" in low or "got (numpy.ndarray" in low):
        return ("a NumPy array reached a torch function: make it a tensor with torch.as_tensor(array) (and .float() "
                "before a model: NumPy's floats are float64)")
    if "can't handle a mix of" in low and "continuous" in low:
        return ("scikit-learn's metrics compare labels with labels, and these predictions are scores (logits or "
                "probabilities): take the argmax over the classes (axis=-1) first")
    if "expected np.ndarray (got tensor)" in low:
        return "torch.from_numpy takes a NumPy array, and this is already a tensor: use it as it is"
    if "numpy() on tensor that requires grad" in low:
        return "call .detach() before .numpy() (or compute under torch.no_grad())"
    if "'tensor' object has no attribute" in low:
        return ("a tensor is not a NumPy array: use the torch spelling (.to(dtype) for .astype, dim= for axis=) or "
                "convert with .numpy() first")
    if "target dtype" in low or ("scalar type long" in low and "found float" in low):
        return "class labels must be integers: pass them as a torch.long tensor (labels.long())"
    if ("dtype" in low or "scalar type" in low) and not isinstance(error, AttributeError):
        if "double" in low or "float64" in low:
            return ("a float64 (double) tensor met a float32 one: NumPy's floats are float64, torch's defaults and "
                    "a model's weights float32; convert with .float() (or dtype=torch.float32)")
        if any(word in low for word in ("long", "int", "byte", "bool")):
            return "an integer (or bool) tensor met a float one: convert with .float() before the arithmetic"
    if "with size 0" in low:  # NumPy's "index 0 is out of bounds for axis 0 with size 0": nothing to index
        return ("the array is empty (size 0 along that axis): an empty list, queue or selection reached an "
                "indexing line; handle the empty case before indexing")
    if "dimension out of range" in low or "axiserror" in type(error).__name__.lower() or (
            "axis" in low and "out of bounds" in low):
        return ("that axis does not exist: a (batch, classes) tensor has axes 0 and 1; argmax / softmax / sum over "
                "the classes is dim=-1 (axis=-1)")
    if any(words in low for words in ("shapes cannot be multiplied", "must match the size of tensor",
                                      "could not be broadcast", "is invalid for input of size", "size mismatch",
                                      "out of bounds for dimension", "index out of range")) and not (
            isinstance(error, IndexError) and "list index" in low):
        return ("the shapes do not fit: print the .shape of each tensor on that line; check the axis of argmax / "
                "softmax / sum (dim=-1 for the classes of (batch, classes) logits) and whether a matrix needs .T")
    if "does not require grad" in low:
        return ("backward() needs a result computed from tensors that require grad: not under torch.no_grad(), not "
                "from .detach()-ed or .item() values")
    return None


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message (line N of your f): hint``: the line is the learner's own code's, never a
    line inside torch, scikit-learn or the checker (left out when the learner's code is not in the traceback)."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if len(message) > 300:
        message = message[:297] + "..."
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    frame = learner_frame(error)
    if frame is not None:
        text += f" (line {frame.lineno} of your {frame.name})" if not frame.name.startswith("<") else (
            f" (line {frame.lineno} of your code)")
    hint = error_hint(error)
    return f"{text}: {hint}" if hint else text


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
        tensor = torch.as_tensor(value, dtype=dtype).detach()
        if tensor.layout != torch.strided:  # a sparse tensor holds the same numbers: grade them
            tensor = tensor.to_dense()
    except (TypeError, ValueError, RuntimeError, OverflowError, NotImplementedError):  # OverflowError: 10 ** 400
        return None
    # a tensor subclass (torch.masked's MaskedTensor) does not support the arithmetic a checker does with it
    return tensor if type(tensor) in (torch.Tensor, torch.nn.Parameter) else None


def allclose(value, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    """Same shape and values within ``atol``; anything that is not a tensor is simply not equal. Never raises."""
    tensor = as_tensor(value, dtype=torch.float64)
    return (tensor is not None and tensor.shape == expected.shape
            and bool(torch.allclose(tensor, expected.double(), atol=atol)))


_NOT_GIVEN = object()


def named_mistakes(answer, mistakes: dict, matches, expected=_NOT_GIVEN) -> list[str]:
    """The messages of ``mistakes`` (``{message: what that mistake returns}``) whose wrong value the learner's
    ``answer`` matches, in the dict's order, e.g. ``named_mistakes(0.5, {"a": 0.5, "b": 0.7, "c": 0.5}, lambda x, w:
    abs(x - w) < 1e-6)`` is ``["a", "c"]``. The checkers of chapters 2-4, 6, 7 and 10-17 name mistakes this way.

    ``matches(answer, wrong)`` compares. With ``expected`` given, a mistake whose wrong value ``matches(wrong,
    expected)`` gives the right answer in this case, so it is not named. Never raises: a comparison that raises (an
    answer of another type or shape than the mistake's) is no match.
    """
    named = []
    for message, wrong in mistakes.items():
        try:
            if matches(answer, wrong) and (expected is _NOT_GIVEN or not matches(wrong, expected)):
                named.append(message)
        except Exception:  # an answer of any type must not crash the checker
            continue
    return named


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
