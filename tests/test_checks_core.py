"""The report every checker returns: a blank stub, a crash and a wrong value never raise, and never pass."""

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
