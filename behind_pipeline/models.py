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
# Chapter 8's text generator: a tiny GPT-2 trained on Hamlet, shipped and copied by `make prepare` (tiny_gpt.py),
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
    if trained_once.is_training(paths.CLASSIFIER_DIR) or not _classifier_weights().exists():
        wait_or_train_classifier()  # `make lab` opens the book before the classifier exists
    return str(paths.CLASSIFIER_DIR)


def _classifier_weights():
    return paths.CLASSIFIER_DIR / trained_once.WEIGHTS_FILE


# Where `make lab` writes the log of the classifier's training it starts in the background.
LAB_TRAINING_LOG = paths.CACHE_DIR / "prepare-lab.log"
POLL_SECONDS = 2.0
FRESH_LOG_SECONDS = 120  # a lab log written this recently belongs to a training that is starting or running


def wait_or_train_classifier() -> None:
    """Make the course classifier exist, and show what happens meanwhile; the cell that first needs it waits.

    Without weights, ``make prepare``'s training runs in a child process (so the notebook keeps the seed and
    threads its ``setup_chapter`` set). When `make lab`'s background training is already running, or starts a
    moment later, it holds the training lock: the child waits for it and then finds the model current, so nothing
    trains twice. Meanwhile the cell shows the child's output and the background training's log as it grows.
    """
    import subprocess
    import sys

    child = None
    if not _classifier_weights().exists():
        print("The course classifier is not trained yet: it is trained once now, or `make lab`'s training of it is "
              "waited for (a few minutes on 2 cores). This cell goes on when it is ready.", flush=True)
        child = subprocess.Popen([sys.executable, "-m", "behind_pipeline.prepare"], cwd=paths.PROJECT_ROOT,
                                 text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})  # its lines as they come
    else:
        print("Waiting for the course classifier: another process is training it or checking that it is current.",
              flush=True)
    log = _follow(child)
    if child is not None and (child.returncode != 0 or not _classifier_weights().exists()):
        raise RuntimeError("Training the course classifier failed (its log is above): run `make prepare` in the "
                           "project folder to see why, then restart the kernel.\n" + "".join(log[-20:]))


def _follow(child) -> list[str]:
    """Print the child's lines and the lab log's new text until the child has exited and no process holds the
    classifier's training lock; returns the child's lines."""
    import queue
    import threading
    import time

    lines, log = queue.SimpleQueue(), []
    if child is not None:
        def read_child():  # text mode ends a line at each of the progress bar's carriage returns
            for line in child.stdout:
                lines.put(line)

        reader = threading.Thread(target=read_child, daemon=True)
        reader.start()
    fresh = LAB_TRAINING_LOG.exists() and time.time() - LAB_TRAINING_LOG.stat().st_mtime < FRESH_LOG_SECONDS
    shown = 0 if fresh or not LAB_TRAINING_LOG.exists() else LAB_TRAINING_LOG.stat().st_size
    while True:
        # read before printing: the last lines written before the lock was let go show too
        running = (child is not None and child.poll() is None) or trained_once.is_training(paths.CLASSIFIER_DIR)
        if child is not None and not running:
            reader.join()
        while not lines.empty():
            line = lines.get()
            log.append(line)
            print(line, end="", flush=True)
        if LAB_TRAINING_LOG.exists():
            text = LAB_TRAINING_LOG.read_bytes()[shown:]
            shown += len(text)
            print(text.decode(errors="replace").replace("\r", "\n"), end="", flush=True)
        if not running:
            return log
        time.sleep(POLL_SECONDS)


def generator_id() -> str:
    """The text generator of chapter 8: the tiny GPT-2 that ``make prepare`` copies from the shipped weights, copied
    on first need (or ``gpt2`` from the Hub online).

    ``BTP_GENERATOR_ID`` overrides it, as ``BTP_CLASSIFIER_ID`` does for the classifier (the online-mode test passes
    a local stand-in for ``gpt2`` that way).
    """
    if "BTP_GENERATOR_ID" in os.environ:
        return os.environ["BTP_GENERATOR_ID"]
    if paths.is_online():
        return HUB_GENERATOR_ID
    # `make lab` opens the book before the generator exists, and a folder from before the generator shipped holds
    # another one: chapter 8 copies the shipped one on first need (a few milliseconds once it is there).
    from behind_pipeline import tiny_gpt

    tiny_gpt.ensure_generator(show=False)
    return str(GENERATOR_DIR)


def describe(model_id: str) -> str:
    """A printable name for a model id that never shows this machine's folders."""
    if os.path.isdir(model_id):
        return "local:" + os.path.relpath(model_id, paths.PROJECT_ROOT)
    return model_id
