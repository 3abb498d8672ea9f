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
