"""Fine-tune the course's sentiment classifier once: all-MiniLM-L6-v2 + a fresh/rotten head.

``python -m behind_pipeline.prepare`` (``make prepare``) trains on the whole train split for one epoch with the
book's training loop (:mod:`behind_pipeline.training`, opened up in chapter 12), evaluates on validation and test
with the book's prediction path, and saves model and tokenizer together with ``save_pretrained``. Later chapters
load the folder like any Hub checkpoint.

The summary beside the weights records a fingerprint of the settings and of the code that produced them: the
command does nothing while they are unchanged, and trains again as soon as they change.
"""

import dataclasses
import hashlib
import inspect
import json
import shutil
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from behind_pipeline import batching, data, models, paths, predict, runtime, training

# Batch 64 at twice the learning rate trains as fast as batch 32 on 2 cores and scored higher on validation.
SETTINGS = training.TrainingSettings(epochs=1, batch_size=64, learning_rate=2e-4, warmup_fraction=0.1, seed=0)
SUMMARY_FILE = "training_summary.json"


def fingerprint() -> str:
    """A short hash of the settings and of the source of every function that shapes the trained weights."""
    # The split, the batching, the loop and this file's training function; editing the prose elsewhere in those
    # modules does not retrain.
    shaping = (data.movie_bucket, data.load_rotten_tomatoes, batching.length_grouped_batches,
               training.train_classifier, train)
    sources = [inspect.getsource(function) for function in shaping]
    sources.append(json.dumps(dataclasses.asdict(SETTINGS), sort_keys=True))
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]


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
        "padding_share": round(history.padding_tokens / (history.padding_tokens + history.real_tokens), 4),
        "final_loss": round(sum(history.losses[-20:]) / len(history.losses[-20:]), 4),
        "validation_accuracy": round(predict.accuracy(classifier, tokenizer, splits["validation"]), 4),
        "test_accuracy": round(predict.accuracy(classifier, tokenizer, splits["test"]), 4),
        "fingerprint": fingerprint(),
    }
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    classifier.save_pretrained(partial)  # safetensors is the default format
    tokenizer.save_pretrained(partial)
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(output_dir, ignore_errors=True)
    partial.rename(output_dir)
    return summary


def is_current(summary_path=paths.CLASSIFIER_DIR / SUMMARY_FILE) -> bool:
    """True when the saved classifier was trained by this code with these settings."""
    if not summary_path.exists():
        return False
    return json.loads(summary_path.read_text()).get("fingerprint") == fingerprint()


def main() -> None:
    paths.configure_environment()
    summary_path = paths.CLASSIFIER_DIR / SUMMARY_FILE
    if is_current(summary_path):
        summary_path.touch()  # newer than the sources again, so make stops asking
        print(f"classifier in {paths.CLASSIFIER_DIR.relative_to(paths.PROJECT_ROOT)} is current: nothing to do")
        return
    runtime.setup_chapter(SETTINGS.seed)
    # The summary stays beside the weights; `make runtimes` copies it into results/ for the README.
    print(json.dumps(train(), indent=2))


if __name__ == "__main__":
    main()
