"""The report every checker returns: a blank stub, a crash and a wrong value never raise, and never pass."""

import inspect
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from behind_pipeline.checks import CheckReport


def test_untouched_stub_is_reported_not_raised():
    report = CheckReport("demo")
    assert report.call(Ellipsis, name="answer") is Ellipsis
    assert not report.passed and "still `...`" in repr(report)


def test_function_with_stub_body_returns_none():
    def learner(x):
        ...

    report = CheckReport("demo")
    assert report.call(learner, 1) is Ellipsis
    assert "returned None" in repr(report)


def test_function_with_stub_body_is_told_to_replace_the_stub():
    def learner(x):
        ...

    report = CheckReport("demo")
    report.call(learner, 1)
    assert "replace the `...`" in repr(report), report


def test_a_body_written_without_return_is_told_it_returns_nothing():
    def learner(x):
        doubled = x * 2  # noqa: F841 (the learner forgot `return doubled`)

    report = CheckReport("demo")
    assert report.call(learner, 1) is Ellipsis
    text = repr(report)
    assert "returns nothing" in text and "return ..." in text and "replace the `...`" not in text, text


def test_a_python_list_index_error_gets_no_shapes_hint():
    def learner(values):
        return [values[i] for i in range(len(values) + 1)]

    report = CheckReport("demo")
    report.call(learner, [1, 2])
    assert "IndexError" in repr(report) and "shapes do not fit" not in repr(report), report


def test_an_int_used_as_a_tensor_gets_no_dtype_hint():
    def learner(count):
        return count.dtype

    report = CheckReport("demo")
    report.call(learner, 3)
    assert "AttributeError" in repr(report) and "integer (or bool) tensor" not in repr(report), report


def test_exception_becomes_a_message():
    def learner(x):
        return 1 / 0

    report = CheckReport("demo")
    report.call(learner, 1)
    assert "ZeroDivisionError" in repr(report) and not report.passed


def test_all_expectations_met_passes():
    report = CheckReport("demo")
    report.expect(True, "fine", "broken")
    assert report.passed and repr(report).startswith("demo: all checks passed")


def test_empty_report_does_not_pass():
    assert not CheckReport("demo").passed


def test_allclose_never_raises_and_needs_the_same_shape():
    import torch

    from behind_pipeline.checks._core import allclose, as_tensor

    expected = torch.tensor([[0.25, 0.75]])
    assert allclose([[0.25, 0.75]], expected)
    assert not allclose([0.25, 0.75], expected)  # right values, wrong shape
    assert not allclose({"a": 1}, expected) and not allclose(Ellipsis, expected) and not allclose("x", expected)
    assert as_tensor([[1, 2], [3]]) is None  # ragged lists cannot be a tensor


def test_tensor_of_shape_names_what_is_wrong():
    import torch

    from behind_pipeline.checks._core import tensor_of_shape

    report = CheckReport("demo")
    assert not tensor_of_shape(report, [1, 2], (2,), "probs")
    assert not tensor_of_shape(report, torch.zeros(3), (2,), "probs")
    assert tensor_of_shape(report, torch.zeros(2), (2,), "probs")
    assert "should be a torch.Tensor" in repr(report) and "expected (2,)" in repr(report)


# --- an error inside a learner's answer names the learner's line, never torch's or the checker's -------------------


def _line_of(function, text: str) -> int:
    """The file line number of the line of ``function``'s source containing ``text``."""
    lines, start = inspect.getsourcelines(function)
    return start + next(number for number, line in enumerate(lines) if text in line)


def float_labels(logits, labels):
    return F.cross_entropy(logits, labels.float())  # raises inside torch/nn/functional.py


def double_input(x):
    layer = torch.nn.Linear(3, 4)
    return layer(x.double())  # raises inside torch/nn/modules/linear.py


def wrong_axis(x):
    return F.softmax(x, dim=2).argmax(dim=2)  # raises inside torch/nn/functional.py


def numpy_input(x):
    return torch.nn.Linear(3, 4)(x.numpy())


def numpy_clamp(x):
    return torch.clamp(x.numpy(), min=0)  # torch: "invalid combination of arguments - got (numpy.ndarray, ...)"


def scores_to_sklearn(x):
    from sklearn.metrics import f1_score

    return f1_score([0, 1], x.numpy() + 0.5, average="macro")  # raises in scikit-learn: labels against scores


def transposed(x):
    weight = torch.zeros(4, 3)
    return x @ weight


def no_hint(x):
    raise KeyError("queue")


@pytest.mark.parametrize(("learner", "marker", "hint"), [
    (float_labels, "F.cross_entropy", "torch.long"),
    (double_input, "layer(x.double())", "float64 (double) tensor met a float32 one"),
    (wrong_axis, "F.softmax", "that axis does not exist"),
    (numpy_input, "x.numpy()", "torch.as_tensor(array)"),
    (numpy_clamp, "torch.clamp", "torch.as_tensor(array)"),
    (scores_to_sklearn, "average=", "take the argmax over the classes"),
    (transposed, "x @ weight", "the shapes do not fit"),
    (no_hint, "raise KeyError", None),
])
def test_an_error_names_the_learners_line_and_a_hint(learner, marker, hint):
    report = CheckReport("demo")
    args = (torch.zeros(2, 3), torch.zeros(2)) if learner is float_labels else (torch.zeros(2, 3),)
    assert report.call(learner, *args) is Ellipsis
    text = repr(report)
    assert f"(line {_line_of(learner, marker)} of your {learner.__name__})" in text, text
    assert text.count("(line ") == 1, text
    if hint:
        assert hint in text, text
    else:
        assert text.rstrip().endswith(f"of your {learner.__name__})"), text


def test_an_error_in_a_notebook_cell_names_the_cells_line():
    """ipykernel names a cell's code ``<ipython-input-N-hash>`` (older) or ``/tmp/ipykernel_<pid>/<hash>.py``."""
    cell = "import torch\n\ndef forward(x):\n    scores = x.float()\n    return scores.argmax(dim=3)\n"
    for filename in ("<ipython-input-7-0123abcd>", "/tmp/ipykernel_12345/2718281828.py"):
        namespace: dict = {}
        exec(compile(cell, filename, "exec"), namespace)
        report = CheckReport("demo")
        report.call(namespace["forward"], torch.zeros(2, 3))
        assert "IndexError" in repr(report) and "(line 5 of your forward)" in repr(report), (filename, report)


def test_an_error_with_no_learner_line_names_no_line():
    report = CheckReport("demo")
    report.call(torch.nn.functional.softmax, torch.zeros(2, 3), dim=4, name="softmax")
    assert "IndexError" in repr(report) and "(line " not in repr(report), report


def test_a_multiline_library_message_is_cut_to_its_first_line():
    def learner(x):
        raise RuntimeError("first line\nsecond line")

    report = CheckReport("demo")
    report.call(learner, 1)
    assert "first line" in repr(report) and "second line" not in repr(report)


def test_library_and_checker_files_are_not_the_learners():
    from behind_pipeline.checks import _core

    assert not _core.is_learner_file(torch.nn.functional.__file__)
    assert not _core.is_learner_file(np.__file__)
    assert not _core.is_learner_file(inspect.__file__)
    assert not _core.is_learner_file(_core.__file__)
    assert not _core.is_learner_file("<frozen importlib._bootstrap>")
    assert _core.is_learner_file(__file__)
    assert _core.is_learner_file("<ipython-input-3-abcdef>")


# --- every chapter's checkers: an answer raising inside torch is reported at the learner's line -------------------


def _all_checkers():
    import importlib
    import pkgutil

    import behind_pipeline.checks as checks

    for info in sorted(pkgutil.iter_modules(checks.__path__), key=lambda module: module.name):
        if not info.name.startswith("ch"):
            continue
        module = importlib.import_module(f"behind_pipeline.checks.{info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("check_") and function.__module__ == module.__name__:
                yield pytest.param(function, id=f"{info.name}.{name}")


def raises_inside_torch(*args, **kwargs):
    """Any learner's function, class or method: it fails inside torch/nn/functional.py, as float labels do."""
    return F.cross_entropy(torch.zeros(2, 3), torch.zeros(2))  # the learner's line


# Checkers whose answer is not called as a function (a fitted model), so nothing of the learner's raises there.
NOT_CALLED = {"check_bigram_against_unigram"}


@pytest.mark.parametrize("check", list(_all_checkers()))
def test_every_checker_reports_an_error_inside_torch_at_the_learners_line(check):
    required = [p for p in inspect.signature(check).parameters.values() if p.default is inspect.Parameter.empty]
    report = check(*[raises_inside_torch] * len(required))
    text = repr(report)
    assert not report.passed, text
    if check.__name__ in NOT_CALLED:
        return
    line = _line_of(raises_inside_torch, "F.cross_entropy")
    raised = [entry for entry in report.lines if "raised RuntimeError" in entry]
    assert raised, text
    for entry in raised:
        assert "(line " not in entry or f"(line {line} of your raises_inside_torch)" in entry, entry
    # No line number from anywhere but the learner's code: torch's functional.py line is far beyond this file's.
    for number in re.findall(r"\(line (\d+)", text):
        assert int(number) == line, text


def test_collection_reports_an_answer_that_is_not_iterable_or_raises_while_read():
    def broken():
        yield 1
        raise KeyError("nope")  # a learner's generator that fails halfway

    report = CheckReport("demo")
    assert report.collection((x for x in [2, 1]), set, "return a set") == {1, 2}
    assert report.collection(3, list, "return a list") is None
    assert report.collection(broken(), list, "return a list") is None
    assert not report.passed and repr(report).count("return a list") == 2


def test_an_index_into_an_empty_array_is_told_it_is_empty_not_a_wrong_axis():
    import numpy as np

    from behind_pipeline.checks._core import error_hint

    try:
        np.zeros(0)[0]
    except IndexError as error:
        hint = error_hint(error)
    assert "empty" in hint and "dim=-1" not in hint
    try:
        np.zeros((2, 3)).argmax(axis=2)
    except Exception as error:  # a real wrong axis keeps its hint
        assert "axis does not exist" in error_hint(error)


# --- the two steps most checkers share: naming the mistake behind a wrong answer, one case's answer as a tensor ---


def _near(answer, wrong) -> bool:
    return abs(answer - wrong) < 1e-6


def test_named_mistakes_names_every_mistake_the_answer_matches_in_the_dicts_order():
    from behind_pipeline.checks._core import named_mistakes

    mistakes = {"forgot the bias": 0.25, "used the mean": 0.5, "divided by n": 0.25, "took the max": 0.9}
    assert named_mistakes(0.25, mistakes, _near) == ["forgot the bias", "divided by n"]
    assert named_mistakes(0.9, mistakes, _near) == ["took the max"]
    assert named_mistakes(0.3, mistakes, _near) == []
    assert named_mistakes(0.25, {}, _near) == []


def test_named_mistakes_leaves_out_a_mistake_that_gives_the_right_answer_here():
    from behind_pipeline.checks._core import named_mistakes

    # In this case "divided by n" gives the expected 0.25 too: an answer of 0.25 is right, not that mistake.
    mistakes = {"divided by n": 0.25, "used the mean": 0.5}
    assert named_mistakes(0.25, mistakes, _near, expected=0.25) == []
    assert named_mistakes(0.5, mistakes, _near, expected=0.25) == ["used the mean"]
    assert named_mistakes(0.25, mistakes, _near) == ["divided by n"]  # without expected, it is named


@pytest.mark.parametrize("answer", [float("nan"), "0.25", None, Ellipsis, [0.25, 0.5], {"value": 0.25},
                                    torch.zeros(3, 2), np.zeros(4)])
def test_named_mistakes_never_raises_on_an_answer_of_another_kind(answer):
    from behind_pipeline.checks._core import named_mistakes

    numbers = {"forgot the bias": 0.25, "used the mean": 0.5}
    tensors = {"the padding took part": torch.ones(2, 2), "the mask was inverted": torch.zeros(2, 2)}

    def same_tensor(value, wrong):
        return torch.allclose(torch.as_tensor(value, dtype=wrong.dtype), wrong)

    assert named_mistakes(answer, numbers, _near, expected=0.75) == []
    assert named_mistakes(answer, tensors, same_tensor) == []


def test_named_mistakes_compares_tensors_with_the_matcher_given():
    from behind_pipeline.checks._core import named_mistakes

    expected = torch.tensor([[0.1, 0.9]])
    mistakes = {"no softmax": torch.tensor([[-2.0, 2.0]]), "softmax over the batch": torch.tensor([[1.0, 1.0]])}

    def close(answer, wrong):
        return torch.allclose(answer, wrong, atol=1e-4)

    assert named_mistakes(torch.tensor([[-2.0, 2.00001]]), mistakes, close, expected) == ["no softmax"]
    assert named_mistakes(torch.tensor([[1.0, 1.0]]), mistakes, close, expected) == ["softmax over the batch"]
    assert named_mistakes(expected, mistakes, close, expected) == []
    assert named_mistakes(torch.ones(3), mistakes, close, expected) == []  # allclose raises on (3,) against (1, 2)


def _square(values):
    return [value * value for value in values]


def _ragged(values):
    return [[1.0, 2.0], [3.0]]


def _raises(values):
    raise ValueError("a bug in the learner's code")


def _nothing(values):
    return None


def _call_then_tensor(report, function, *args, shape):
    """What checkers did before ``tensor_answer``: ``call``, then ``tensor``; the helper must write the same lines."""
    answer = report.call(function, *args, name="square")
    return None if answer is Ellipsis else report.tensor(answer, "the squares", shape=shape)


@pytest.mark.parametrize("function", [_square, _ragged, _raises, _nothing, Ellipsis, None])
@pytest.mark.parametrize("shape", [None, (3,), (2, 2)])
def test_tensor_answer_writes_what_call_then_tensor_write(function, shape):
    helper, by_hand = CheckReport("demo"), CheckReport("demo")
    got = helper.tensor_answer(function, [1, 2, 3], name="square", what="the squares", shape=shape)
    want = _call_then_tensor(by_hand, function, [1, 2, 3], shape=shape)
    assert helper.lines == by_hand.lines and helper.failures == by_hand.failures
    assert (got is None) == (want is None)
    if want is not None:
        assert torch.equal(got, want)


def test_tensor_answer_returns_the_answer_as_float64_or_none_with_the_reason():
    report = CheckReport("demo")
    squares = report.tensor_answer(_square, [1, 2, 3], name="square", what="the squares", shape=(3,))
    assert squares.dtype == torch.float64 and squares.tolist() == [1.0, 4.0, 9.0] and not report.lines
    assert report.tensor_answer(_square, [1, 2, 3], name="square", what="the squares", shape=(2,)) is None
    assert report.tensor_answer(_raises, [1], name="square", what="the squares") is None
    assert report.tensor_answer(_ragged, [1], name="square", what="the squares") is None
    text = repr(report)
    assert "the squares has shape (3,), expected (2,)" in text
    assert "square(...) raised ValueError: a bug in the learner's code" in text
    assert "the squares should be a tensor" in text and report.failures == 3
