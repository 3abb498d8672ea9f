"""Shared helpers of "Behind the Pipeline": offline assets, data, setup, and the hand-built pieces.

Importing the package first points every cache (Hugging Face, matplotlib, Jupyter) inside the project,
so nothing a chapter does writes to ``~/.cache``.
"""

from behind_pipeline import paths as _paths

_paths.configure_environment()

__version__ = "0.1.0"
