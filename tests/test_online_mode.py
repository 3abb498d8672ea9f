"""Online mode (``BTP_ONLINE=1``) loads a DistilBERT classifier from the Hub: the chapters must run with one.

The test cannot reach the Hub, so it uses a local stand-in with every difference that matters
(``tools/online_stand_in.py``: DistilBERT architecture, NEGATIVE/POSITIVE labels, no training summary, random
weights) and passes its folder the way a Hub id is passed, through ``BTP_CLASSIFIER_ID``.

The question is whether every cell runs with such a model, not what it prints (a random model's numbers): each
chapter runs on every 8th row of each split (``FEWER_ROWS``), so its loops over the test split cost an eighth.
nbval runs the same chapters on the full splits with the course classifier and compares what they print; the
stand-in only ever sees the cut.
"""

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from behind_pipeline.head import logits_by_hand
from behind_pipeline.pipeline_by_hand import classify
from behind_pipeline.predict import predict_logits

from notebook_files import ROOT
from online_stand_in import make_generator_stand_in, make_stand_in

TEXTS = ["A gorgeous, moving film.", "Dull, long and far too loud; I left early.", "ok"]
# Every chapter of Part I that loads the classifier (classifier_id()): each reaches into it in its own way.
CHAPTERS_USING_THE_CLASSIFIER = ("00_start_here", "01_tokenizer", "02_model", "03_head", "04_softmax",
                                 "05_pipeline_by_hand", "06_batching", "07_other_heads")


# Put before a chapter's first cell: every notebook loads the reviews through data.load_rotten_tomatoes.
ROW_STRIDE = 8
FEWER_ROWS = f"""\
import datasets

import behind_pipeline.data

_all_rows = behind_pipeline.data.load_rotten_tomatoes
behind_pipeline.data.load_rotten_tomatoes = lambda: datasets.DatasetDict(
    {{name: split.select(range(0, len(split), {ROW_STRIDE})) for name, split in _all_rows().items()}})
"""


def run_online(name: str, monkeypatch, variable: str, folder: str, fewer_rows: bool = True) -> None:
    """Execute notebooks/``name``.ipynb with ``variable`` (the kernel inherits it, as it would BTP_ONLINE=1) naming
    the stand-in's folder. Cells that raise on purpose (pitfalls) are allowed to; any other error fails the test."""
    monkeypatch.setenv(variable, folder)
    path = ROOT / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    if fewer_rows:
        nb.cells.insert(0, nbformat.v4.new_code_cell(FEWER_ROWS))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()


@pytest.fixture(scope="module")
def stand_in():
    folder = make_stand_in()
    return str(folder), AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(
        folder).eval()


def test_the_stand_in_differs_from_the_course_classifier_where_the_hub_model_does(stand_in, classifier):
    _, _, distilbert = stand_in
    assert distilbert.config.model_type == "distilbert" != classifier.config.model_type
    assert not hasattr(distilbert, "bert") and set(distilbert.config.label2id) == {"NEGATIVE", "POSITIVE"}


def test_hand_built_head_and_pipeline_match_the_library_on_a_distilbert(stand_in):
    folder, tokenizer, distilbert = stand_in
    encoding = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        library = distilbert(**encoding).logits
        by_hand = logits_by_hand(distilbert.base_model(**encoding).last_hidden_state, distilbert)
    assert torch.allclose(by_hand, library, atol=1e-6)
    assert torch.allclose(predict_logits(distilbert, tokenizer, TEXTS, batch_size=2), library, atol=1e-6)
    expected = pipeline("text-classification", model=folder)(TEXTS)
    got = classify(TEXTS, tokenizer, distilbert)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, expected, strict=True)) < 1e-6


@pytest.mark.parametrize("name", CHAPTERS_USING_THE_CLASSIFIER)
def test_chapter_runs_with_a_hub_like_distilbert_classifier(name, stand_in, monkeypatch):
    folder, _, _ = stand_in
    run_online(name, monkeypatch, "BTP_CLASSIFIER_ID", folder)


def test_chapter_8_runs_with_a_hub_like_generator(monkeypatch):
    """Online, chapter 8 loads `gpt2`: a longer context, another width, no training summary (a random stand-in)."""
    # Chapter 8 reads Hamlet, not the reviews: nothing to cut.
    run_online("08_text_generation", monkeypatch, "BTP_GENERATOR_ID", str(make_generator_stand_in()), fewer_rows=False)
