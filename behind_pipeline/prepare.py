"""Fine-tune the course's sentiment classifier once: all-MiniLM-L6-v2 + a fresh/rotten head.

``python -m behind_pipeline.prepare`` (``make prepare``) trains on the whole train split for one epoch with the
book's training loop (:mod:`behind_pipeline.training`, opened up in chapter 12), evaluates on validation and test
with the book's prediction path, and saves model and tokenizer together with ``save_pretrained``. Later chapters
load the folder like any Hub checkpoint.

The summary beside the weights records a fingerprint of what shapes them (:mod:`behind_pipeline.trained_once`: the
settings, the training split, the library versions and ``RECIPE``): the command does nothing while they are
unchanged, and trains again as soon as one changes. Moving or re-wording code does not retrain.
"""

import dataclasses
import json
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from behind_pipeline import data, models, paths, predict, runtime, trained_once, training

# Batch 64 at twice the learning rate trains as fast as batch 32 on 2 cores and scored higher on validation.
SETTINGS = training.TrainingSettings(epochs=1, batch_size=64, learning_rate=2e-4, warmup_fraction=0.1, seed=0)
SUMMARY_FILE = trained_once.SUMMARY_FILE
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # pinned by its wheel's sha256 (assets.py)
# Raise it when a change to the training code (training.py, batching.py, train() below) changes what the model
# learns: the settings, data and library versions are in the fingerprint already.
RECIPE = 1


def fingerprint() -> str:
    """16 hex digits over what shapes the weights: ``RECIPE``, the settings, the training split, library versions."""
    train_split = data.load_rotten_tomatoes()["train"]
    settings = dataclasses.asdict(SETTINGS) | {"base_model": BASE_MODEL, "labels": data.LABEL_NAMES}
    return trained_once.fingerprint(RECIPE, settings, trained_once.data_digest(train_split["text"],
                                                                               train_split["label"]))


def train(output_dir=paths.CLASSIFIER_DIR) -> dict:
    runtime.seed_everything(SETTINGS.seed)
    torch.set_num_threads(runtime.NUM_THREADS)
    splits = data.load_rotten_tomatoes()
    encoder_id = models.encoder_id()
    tokenizer = AutoTokenizer.from_pretrained(encoder_id)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        encoder_id, num_labels=len(data.LABEL_NAMES), id2label=data.ID2LABEL, label2id=data.LABEL2ID
    )
    started = time.perf_counter()
    history = training.train_classifier(classifier, tokenizer, splits["train"]["text"], splits["train"]["label"],
                                        SETTINGS, description="fine-tuning MiniLM on fresh/rotten")
    train_seconds = time.perf_counter() - started
    summary = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_examples": len(splits["train"]),
        "epochs": SETTINGS.epochs, "batch_size": SETTINGS.batch_size, "learning_rate": SETTINGS.learning_rate,
        "seed": SETTINGS.seed,
        "train_seconds": round(train_seconds, 1),
        "cpu": runtime.cpu_model(),  # what train_seconds was measured on
        "padding_share": round(history.padding_tokens / (history.padding_tokens + history.real_tokens), 4),
        "final_loss": round(sum(history.losses[-20:]) / len(history.losses[-20:]), 4),
        "validation_accuracy": round(predict.split_accuracy(classifier, tokenizer, splits["validation"]), 4),
        "test_accuracy": round(predict.split_accuracy(classifier, tokenizer, splits["test"]), 4),
        "fingerprint": fingerprint(),
    }

    def write_files(folder):
        classifier.save_pretrained(folder)  # safetensors is the default format
        tokenizer.save_pretrained(folder)

    return trained_once.save(output_dir, write_files, summary)


def is_current(folder=paths.CLASSIFIER_DIR) -> bool:
    """True when the saved classifier was trained with these settings, on this split, by these library versions."""
    return trained_once.is_current(folder, fingerprint())


def main() -> None:
    paths.configure_environment()

    def train_and_show() -> dict:
        runtime.setup_chapter(SETTINGS.seed)
        # The summary stays beside the weights; `make runtimes` copies it into results/ for the README.
        summary = train()
        print(json.dumps(summary, indent=2))
        return summary

    if not trained_once.ensure(paths.CLASSIFIER_DIR, fingerprint(), train_and_show):
        print(f"classifier in {paths.CLASSIFIER_DIR.relative_to(paths.PROJECT_ROOT)} is current: nothing to do")


if __name__ == "__main__":
    main()
