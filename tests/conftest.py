"""Shared fixtures: the corpus splits and the course classifier are loaded once per test session."""

import sys

import pytest

from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root

sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(scope="session")
def splits():
    from behind_pipeline.data import load_rotten_tomatoes

    return load_rotten_tomatoes()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from behind_pipeline.models import classifier_id

    return AutoTokenizer.from_pretrained(classifier_id())


@pytest.fixture(scope="session")
def classifier():
    import torch
    from transformers import AutoModelForSequenceClassification

    from behind_pipeline.models import classifier_id
    from behind_pipeline.runtime import NUM_THREADS

    torch.set_num_threads(NUM_THREADS)
    return AutoModelForSequenceClassification.from_pretrained(classifier_id()).eval()
