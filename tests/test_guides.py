"""The helpers of the reference page "From the guides to transformers 5": what they keep and what they hide."""

import logging
import sys
import warnings

from behind_pipeline import guides, paths


def test_raised_names_the_exception_and_its_message():
    assert guides.raised(lambda: int("ten")) == "ValueError: invalid literal for int() with base 10: 'ten'"
    assert guides.raised(lambda: {}["key"]) == "KeyError: key"  # a KeyError's message, not its repr
    assert guides.raised(lambda: 1) == guides.NO_ERROR


def test_raised_hides_the_folders_of_this_machine():
    def missing():
        raise OSError(f"no file in {paths.PROJECT_ROOT / '.cache' / 'x'} nor in {sys.prefix}/lib/python"
                      f"{sys.version_info.major}.{sys.version_info.minor}/site-packages/y")

    message = guides.raised(missing)
    assert message == "OSError: no file in <project>/.cache/x nor in <site-packages>/y"
    assert str(paths.PROJECT_ROOT) not in message


def test_logged_returns_the_result_with_every_warning_and_log_line():
    logger = logging.getLogger("transformers.some_module")
    handlers_before = list(logging.getLogger("transformers").handlers)

    def noisy():
        warnings.warn("an old keyword", FutureWarning, stacklevel=2)
        logger.warning("a log line")
        logger.info("too detailed to show")
        return 42

    result, messages = guides.logged(noisy)
    assert result == 42 and messages == ["an old keyword", "a log line"]
    assert logging.getLogger("transformers").handlers == handlers_before  # the library's handlers come back


def test_logged_of_a_quiet_call_is_empty():
    assert guides.logged(lambda: "x") == ("x", [])
