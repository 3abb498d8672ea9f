"""Loaded by pytest before it collects tests or notebooks: point every cache inside the project first, so that a
plain `pytest` (not only `make test`) starts kernels that never write to the home folder."""

import behind_pipeline  # noqa: F401  (importing configures the cache folders)
