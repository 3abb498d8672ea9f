"""The reference page "From the guides to transformers 5": run a guide's idiom and keep what it raised or logged.

Each entry of ``book/from_the_guides.ipynb`` runs the old idiom through :func:`raised` (the exception's type and
message, as the reader would see them, with this machine's folders left out) or :func:`logged` (what it returned,
and the warnings and log lines it printed on the way), so nbval compares the exact text the pinned stack gives:

    >>> raised(lambda: int("ten"))
    "ValueError: invalid literal for int() with base 10: 'ten'"
    >>> raised(lambda: 1)
    'no error'
"""

import logging
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from behind_pipeline import paths

NO_ERROR = "no error"
LOGGERS = ("transformers", "datasets", "huggingface_hub", "torch")


def without_folders(text: str) -> str:
    """``text`` with the virtual environment's, the project's and the temporary folders replaced by short names."""
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    folders = ((site, "<site-packages>"), (paths.PROJECT_ROOT, "<project>"), (tempfile.gettempdir(), "<tmp>"))
    for folder, name in folders:
        text = text.replace(str(folder), name)
    return text


def raised(action: Callable[[], object]) -> str:
    """``"TypeError: ..."``: what ``action()`` raised, or ``"no error"`` when it ran (the old idiom works)."""
    try:
        action()
    except Exception as error:  # every kind of break is a finding of the page
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return without_folders(f"{type(error).__name__}: {message}")
    return NO_ERROR


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def logged(action: Callable[[], object], loggers: tuple[str, ...] = LOGGERS) -> tuple[object, list[str]]:
    """(what ``action()`` returned, every warning and log line it emitted), instead of letting them reach stderr.

    The libraries' own handlers are muted meanwhile, so the page shows each message once, as text nbval compares.
    """
    handler, saved = _Records(), {}
    for name in loggers:
        logger = logging.getLogger(name)
        saved[name] = (logger.propagate, logger.level, list(logger.handlers))
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = action()
    finally:
        for name, (propagate, level, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.propagate, logger.handlers = propagate, handlers
            logger.setLevel(level)
    messages = [without_folders(str(item.message)) for item in caught] + handler.messages
    return result, [without_folders(message) for message in messages]
