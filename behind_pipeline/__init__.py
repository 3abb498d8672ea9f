"""Shared helpers of "Behind the Pipeline": offline assets, data, setup, and the hand-built pieces.

Importing the package changes nothing outside it. The entry points (the Makefile, the root ``conftest.py``,
``setup_chapter`` and the command-line modules) call :func:`behind_pipeline.paths.configure_environment`,
which points every cache inside the project so nothing writes to ``~/.cache``.
"""

__version__ = "0.1.0"
