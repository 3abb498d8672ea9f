"""What every checker test asserts about a report: right answers pass, and a wrong one fails with FIX lines naming
the mistake."""


def failures(report) -> list[str]:
    """The report's FIX lines: what the checker tells the learner to change."""
    return [line for line in report.lines if line.strip().startswith("FIX")]


def assert_rejected(report, *words: str) -> None:
    """The report failed, and its FIX lines mention every one of ``words`` (case-insensitive)."""
    assert not report.passed, report
    text = " ".join(failures(report)).lower()
    assert all(word.lower() in text for word in words), report


def assert_accepted(checker, *answers) -> list:
    """``checker`` passes each of ``answers``; a failure names the answer and shows its report. Returns the reports,
    for tests that also read their ok lines."""
    reports = []
    for answer in answers:
        report = checker(answer)
        assert report.passed, (getattr(answer, "__name__", repr(answer)), report)
        reports.append(report)
    return reports


def _blank(*args):
    ...


def _raises(*args):
    raise KeyError("a learner's bug")


def _odd_answers() -> dict:
    """Answers of the wrong kind that every checker must report (never raise on), by name."""
    import numpy as np
    import torch

    return {
        "the untouched stub": Ellipsis,
        "None": None,
        "a blank function": _blank,
        "a function that raises": _raises,
        "a float64 tensor": lambda *args: torch.zeros(2, dtype=torch.float64),
        "a float64 matrix": lambda *args: torch.zeros(3, 3, dtype=torch.float64),
        "a tensor with several elements": lambda *args: torch.ones(4, 4),
        "a list": lambda *args: [0.5, 0.5],
        "a list of lists": lambda *args: [[1.0, 2.0], [3.0]],
        "a NumPy array": lambda *args: np.zeros((2, 2)),
        "a dict": lambda *args: {"label": "fresh"},
        "a string": lambda *args: "0.5",
        "an int": lambda *args: 1,
        "nan": lambda *args: float("nan"),
        "a pair of Nones": lambda *args: (None, None),
    }


ODD_ANSWERS = _odd_answers()


def assert_reported(report) -> None:
    """An odd answer: the checker said no with at least one FIX line, and did not raise to get there."""
    assert not report.passed and failures(report), report
