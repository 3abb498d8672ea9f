"""Which checkpoint each chapter loads: the local copies by default, Hub ids when ``BTP_ONLINE=1``.

Chapters pass these ids straight to ``from_pretrained`` / ``pipeline``, exactly as they would pass a Hub id,
so the loading code a reader sees is the real one.
"""

import os

from behind_pipeline import assets, paths, trained_once

HUB_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
# A reader online gets a ready-made sentiment model from the Hub. It is a DistilBERT, so the chapters that
# rebuild BERT's layers by hand keep using the local encoder's architecture only in offline mode.
HUB_CLASSIFIER_ID = "distilbert-base-uncased-finetuned-sst-2-english"
# Chapter 8's text generator: a tiny GPT-2 trained on Hamlet by `make prepare` (behind_pipeline/tiny_gpt.py),
# or the real GPT-2 from the Hub online.
HUB_GENERATOR_ID = "gpt2"
GENERATOR_DIR = paths.GENERATOR_DIR  # defined with the other folders in paths.py


def encoder_id() -> str:
    """all-MiniLM-L6-v2: the extracted wheel folder offline, its Hub id online."""
    if paths.is_online():
        return HUB_ENCODER_ID
    return str(assets.ensure_encoder())


def classifier_id() -> str:
    """The course's fresh/rotten classifier written by ``make prepare`` (or a Hub classifier online)."""
    if "BTP_CLASSIFIER_ID" in os.environ:
        return os.environ["BTP_CLASSIFIER_ID"]
    if paths.is_online():
        return HUB_CLASSIFIER_ID
    if trained_once.is_training(paths.CLASSIFIER_DIR):
        wait_for_classifier_training()  # `make lab`'s background training, or `make prepare` in another terminal
    if not (paths.CLASSIFIER_DIR / trained_once.WEIGHTS_FILE).exists():
        train_classifier_on_first_need()  # a notebook opened before any training of it started
    return str(paths.CLASSIFIER_DIR)


# Where `make lab` writes the log of the classifier's training it starts in the background.
LAB_TRAINING_LOG = paths.CACHE_DIR / "prepare-lab.log"
POLL_SECONDS = 2.0


def wait_for_classifier_training() -> None:
    """Wait while another process holds the classifier's training lock, showing the log of `make lab`'s background
    training as it grows (its progress bar writes a line about every 30 s)."""
    import time

    print("Waiting for the course classifier: another process is training it or checking that it is current "
          f"(`make lab` trains it in the background, about 3 minutes on 2 cores; log: "
          f"{os.path.relpath(LAB_TRAINING_LOG, paths.PROJECT_ROOT)}).", flush=True)
    shown = 0
    while True:
        training = trained_once.is_training(paths.CLASSIFIER_DIR)  # read before the log: its last lines show too
        if LAB_TRAINING_LOG.exists():
            text = LAB_TRAINING_LOG.read_bytes()[shown:]
            shown += len(text)
            print(text.decode(errors="replace").replace("\r", "\n"), end="", flush=True)
        if not training:
            return
        time.sleep(POLL_SECONDS)


def train_classifier_on_first_need() -> None:
    """Run ``make prepare``'s training in a child process and show its log: the chapter that first needs the course
    classifier waits for it. A child process, so the notebook keeps the seed and threads its ``setup_chapter`` set;
    a training that starts elsewhere meanwhile holds the training lock, so the child waits for it and then finds the
    model current instead of training a second one beside it."""
    import subprocess
    import sys

    print("The course classifier is being trained, once (about 3 minutes on 2 cores; `make prepare` does the "
          "same). This cell goes on when it is ready.", flush=True)
    child = subprocess.Popen([sys.executable, "-m", "behind_pipeline.prepare"], cwd=paths.PROJECT_ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})  # its lines as they come
    log = []
    for line in child.stdout:  # the progress bar's updates too: text mode ends a line at each carriage return
        log.append(line)
        print(line, end="", flush=True)
    if child.wait() != 0 or not (paths.CLASSIFIER_DIR / trained_once.WEIGHTS_FILE).exists():
        raise RuntimeError("Training the course classifier failed (its log is above): run `make prepare` in the "
                           "project folder to see why, then restart the kernel.\n" + "".join(log[-20:]))


def generator_id() -> str:
    """The text generator of chapter 8: the tiny GPT-2 written by ``make prepare``, trained here on first need (or
    ``gpt2`` from the Hub online).

    ``BTP_GENERATOR_ID`` overrides it, as ``BTP_CLASSIFIER_ID`` does for the classifier (the online-mode test passes
    a local stand-in for ``gpt2`` that way).
    """
    if "BTP_GENERATOR_ID" in os.environ:
        return os.environ["BTP_GENERATOR_ID"]
    if paths.is_online():
        return HUB_GENERATOR_ID
    if not (GENERATOR_DIR / "model.safetensors").exists():
        # `make lab` opens the book before the generator exists: chapter 8 trains it on first need.
        from behind_pipeline import tiny_gpt

        tiny_gpt.ensure_generator(show=False)
    return str(GENERATOR_DIR)


def describe(model_id: str) -> str:
    """A printable name for a model id that never shows this machine's folders."""
    if os.path.isdir(model_id):
        return "local:" + os.path.relpath(model_id, paths.PROJECT_ROOT)
    return model_id
