"""Exercise checkers, one module per chapter (``ch01_tokenizer``, ...), built on :mod:`._core`.

A checker takes the learner's answer, never raises, and returns a :class:`CheckReport` that says what is right,
what is still missing (an untouched ``...``) and what is wrong and why. ``report.passed`` is what tests use.
"""

from behind_pipeline.checks._core import CheckReport

__all__ = ["CheckReport"]
