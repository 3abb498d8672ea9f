"""Fine-tune the course's sentiment classifier once: all-MiniLM-L6-v2 + a fresh/rotten head.

``python -m behind_pipeline.prepare`` (``make prepare``) trains on the whole train split for one epoch with a
plain PyTorch loop (Part II opens this loop up), evaluates on validation and test, and saves model and tokenizer
together with ``save_pretrained``. Later chapters load the folder like any Hub checkpoint. With the checkpoint
already present the command does nothing. Same seed, same thread count, same data order: the same weights.
"""

import json
import shutil
import sys
import time

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from behind_pipeline import data, models, paths, runtime

SEED = 0
EPOCHS = 1
BATCH_SIZE = 32
LEARNING_RATE = 1e-4
WARMUP_FRACTION = 0.1
MAX_LENGTH = 128  # the longest review is 78 tokens: nothing is truncated
SUMMARY_FILE = "training_summary.json"


def batches(split, tokenizer, batch_size: int, generator: torch.Generator | None = None):
    """Tokenized batches with dynamic padding, shuffled when a generator is given."""
    order = torch.randperm(len(split), generator=generator) if generator is not None else torch.arange(len(split))
    for start in range(0, len(split), batch_size):
        rows = split[order[start:start + batch_size].tolist()]
        encoding = tokenizer(rows["text"], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        yield encoding, torch.tensor(rows["label"])


@torch.no_grad()
def accuracy(classifier, tokenizer, split, batch_size: int = 64) -> float:
    classifier.eval()
    correct = 0
    for encoding, labels in batches(split, tokenizer, batch_size):
        correct += (classifier(**encoding).logits.argmax(-1) == labels).sum().item()
    return correct / len(split)


def train(output_dir=paths.CLASSIFIER_DIR) -> dict:
    runtime.seed_everything(SEED)
    torch.set_num_threads(runtime.NUM_THREADS)
    splits = data.load_rotten_tomatoes()
    encoder_id = models.encoder_id()
    tokenizer = AutoTokenizer.from_pretrained(encoder_id)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        encoder_id, num_labels=len(data.LABEL_NAMES), id2label=data.ID2LABEL, label2id=data.LABEL2ID
    )
    steps = EPOCHS * -(-len(splits["train"]) // BATCH_SIZE)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=LEARNING_RATE)
    schedule = get_linear_schedule_with_warmup(optimizer, int(WARMUP_FRACTION * steps), steps)
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    classifier.train()
    # In a terminal the bar redraws often; in a CI log every redraw is a line, so redraw every 30 s there.
    redraw_seconds = 0.1 if sys.stderr.isatty() else 30
    progress = tqdm(total=steps, desc="fine-tuning MiniLM on fresh/rotten", unit="batch", mininterval=redraw_seconds)
    with progress:
        for _ in range(EPOCHS):
            for encoding, labels in batches(splits["train"], tokenizer, BATCH_SIZE, generator):
                loss = classifier(**encoding, labels=labels).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                progress.set_postfix(loss=f"{loss.item():.3f}")
                progress.update()
    train_seconds = time.perf_counter() - started
    summary = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_examples": len(splits["train"]),
        "epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "seed": SEED,
        "train_seconds": round(train_seconds, 1),
        "validation_accuracy": round(accuracy(classifier, tokenizer, splits["validation"]), 4),
        "test_accuracy": round(accuracy(classifier, tokenizer, splits["test"]), 4),
    }
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    classifier.save_pretrained(partial)  # safetensors is the default format
    tokenizer.save_pretrained(partial)
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    partial.rename(output_dir)
    return summary


def main() -> None:
    if (paths.CLASSIFIER_DIR / SUMMARY_FILE).exists():
        print(f"classifier already prepared in {paths.CLASSIFIER_DIR.relative_to(paths.PROJECT_ROOT)}: nothing to do")
        return
    runtime.setup_chapter(SEED)
    # The summary stays beside the weights; `make runtimes` copies it into results/ for the README.
    print(json.dumps(train(), indent=2))


if __name__ == "__main__":
    main()
