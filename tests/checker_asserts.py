"""What every checker test asserts about a report: the checker said no, and its FIX lines name the mistake."""


def failures(report) -> list[str]:
    """The report's FIX lines: what the checker tells the learner to change."""
    return [line for line in report.lines if line.strip().startswith("FIX")]


def assert_rejected(report, *words: str) -> None:
    """The report failed, and its FIX lines mention every one of ``words`` (case-insensitive)."""
    assert not report.passed, report
    text = " ".join(failures(report)).lower()
    assert all(word.lower() in text for word in words), report
