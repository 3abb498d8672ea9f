"""Loaded by pytest before it collects tests or notebooks: point every cache inside the project first, so that a
plain `pytest` (not only `make test`) starts kernels that never write to the home folder."""

from behind_pipeline.paths import configure_environment

configure_environment()

# nbval compares the outputs of cells tagged depends-on-cpu only on the kind of CPU that stored them.
pytest_plugins = ["behind_pipeline.nbval_cpu"]
