"""The ticket router's training: its recipe, the course classifier's head grown to three queues, and training once.

A router is trained once per fingerprint (:mod:`behind_pipeline.trained_once`) and saved under
``.cache/models/``; its class-weighted twin, the same run with the loss weighted by queue, is saved beside it.
The triage settings saved beside the served router's weights, and ``ensure_router``, are in ``triage.py``.
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from behind_pipeline import data, paths, runtime, trained_once, training
from behind_pipeline.data import QUEUE_NAMES
from behind_pipeline.trained_once import SUMMARY_FILE

ROUTER_NAME = "minilm-ticket-router"
# Raise it when a change to the training code changes what the router learns (trained_once.py says when).
RECIPE = 1
# Plot summaries run to thousands of characters; 128 tokens is far more than a review needs (the longest has 78)
# and enough text to recognise a plot summary.
MAX_LENGTH = 128


@dataclasses.dataclass(frozen=True)
class RouterRecipe:
    """How the router is trained: which train reviews, and the training loop's settings."""

    train_examples: int | None = 3000  # the first n of the train split shuffled with ``seed``; None: all of it
    epochs: int = 1
    batch_size: int = 32
    # A new head row has to grow from a random draw to outvote the two copied ones within one short epoch: on
    # validation, 1e-4 and 3e-4 never predicted *plot* in 94 steps; 5e-4 did.
    learning_rate: float = 5e-4
    seed: int = 0

    def settings(self) -> training.TrainingSettings:
        return training.TrainingSettings(epochs=self.epochs, batch_size=self.batch_size,
                                         learning_rate=self.learning_rate, max_length=MAX_LENGTH, seed=self.seed)


# What `python -m behind_pipeline.capstone` (and so `make prepare`) trains: the model the book serves.
PREPARED = RouterRecipe()


def training_subset(train_ds, train_examples: int | None, seed: int = 0):
    """The first ``train_examples`` rows of ``train_ds`` shuffled with ``seed`` (all rows, shuffled, for None)."""
    shuffled = train_ds.shuffle(seed=seed)
    return shuffled if train_examples is None else shuffled.select(range(min(train_examples, len(shuffled))))


def router_from(start_id: str):
    """The classifier at ``start_id`` with a 3-queue head: its body, and its two head rows for rotten and fresh.

    ``from_pretrained(..., num_labels=3, ignore_mismatched_sizes=True)`` keeps every weight of the body (and BERT's
    pooler, DistilBERT's ``pre_classifier``) and draws a new ``classifier`` layer; copying the old layer's rows 0
    and 1 into it keeps what the course classifier learned about rotten (0) and fresh (1). Row 2 (plot) starts
    from the random draw.
    """
    from transformers import AutoModelForSequenceClassification

    source = AutoModelForSequenceClassification.from_pretrained(start_id)
    router = AutoModelForSequenceClassification.from_pretrained(
        start_id, num_labels=len(QUEUE_NAMES), id2label=dict(enumerate(QUEUE_NAMES)),
        label2id={name: index for index, name in enumerate(QUEUE_NAMES)}, ignore_mismatched_sizes=True)
    with torch.no_grad():
        router.classifier.weight[:2] = source.classifier.weight
        router.classifier.bias[:2] = source.classifier.bias
    return router


def start_model_fingerprint(start_id: str) -> str:
    """What identifies the starting model: the course classifier's own fingerprint, or else its name."""
    summary = Path(start_id) / SUMMARY_FILE
    if summary.exists():
        return json.loads(summary.read_text()).get("fingerprint", start_id)
    from behind_pipeline.models import describe

    return describe(start_id)


def _training_settings(recipe: RouterRecipe, start_id: str) -> dict:
    return dataclasses.asdict(recipe) | {"max_length": MAX_LENGTH, "queues": QUEUE_NAMES,
                                         "start_model": start_model_fingerprint(start_id)}


def _training_data_digest(recipe: RouterRecipe) -> str:
    train_ds = training_subset(data.load_rotten_tomatoes_3class()["train"], recipe.train_examples, recipe.seed)
    return trained_once.data_digest(train_ds["text"], train_ds["label"])


def fingerprint(recipe: RouterRecipe, start_id: str) -> str:
    """16 hex digits over what shapes the router's weights (:mod:`behind_pipeline.trained_once`): ``RECIPE``, the
    recipe's settings, the starting model's fingerprint, the training items and the library versions."""
    return trained_once.fingerprint(RECIPE, _training_settings(recipe, start_id), _training_data_digest(recipe))


def router_dir(recipe: RouterRecipe = PREPARED, start_id: str | None = None) -> Path:
    """Where a recipe's router lives: ``minilm-ticket-router`` for the served one, a suffix for any other."""
    from behind_pipeline.models import classifier_id

    start_id = start_id or classifier_id()
    name = ROUTER_NAME
    if recipe != PREPARED:
        name += "-" + ("all" if recipe.train_examples is None else str(recipe.train_examples))
        name += f"-ep{recipe.epochs}-lr{recipe.learning_rate:g}-b{recipe.batch_size}-s{recipe.seed}"
    if Path(start_id).resolve() != paths.CLASSIFIER_DIR.resolve():
        # another starting model (online mode, the stand-in): never overwrite the served router
        name += "-from-" + hashlib.sha256(start_model_fingerprint(start_id).encode()).hexdigest()[:8]
    return paths.MODELS_DIR / name


def train_router(recipe: RouterRecipe, start_id: str, output_dir: Path, description: str = "ticket router") -> dict:
    """Fine-tune the router with the book's training loop and save it (safetensors) with a summary beside it."""
    from transformers import AutoTokenizer

    from behind_pipeline.runtime import NUM_THREADS, seed_everything

    seed_everything(recipe.seed)
    torch.set_num_threads(NUM_THREADS)
    splits = data.load_rotten_tomatoes_3class()
    train_ds = training_subset(splits["train"], recipe.train_examples, recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(start_id)
    router = router_from(start_id)
    started = time.perf_counter()
    history = training.train_classifier(router, tokenizer, train_ds["text"], train_ds["label"], recipe.settings(),
                                        description=f"fine-tuning the {description}")
    train_seconds = time.perf_counter() - started
    summary = {
        "recipe": dataclasses.asdict(recipe),
        "train_examples": len(train_ds),
        "train_counts": {name: int(np.sum(np.asarray(train_ds["label"]) == index))
                         for index, name in enumerate(QUEUE_NAMES)},
        "train_seconds": round(train_seconds, 1),
        "cpu": runtime.cpu_model(),  # what train_seconds was measured on
        "steps": len(history.losses),
        "final_loss": round(sum(history.losses[-20:]) / len(history.losses[-20:]), 4),
        "fingerprint": fingerprint(recipe, start_id),
    }

    def write_files(folder):
        router.save_pretrained(folder)  # safetensors is the default format
        tokenizer.save_pretrained(folder)

    return trained_once.save(output_dir, write_files, summary)


def is_current(folder: Path, recipe: RouterRecipe, start_id: str) -> bool:
    return trained_once.is_current(folder, fingerprint(recipe, start_id))


class ClassWeightedLoss(torch.nn.Module):
    """A classifier whose loss weighs each queue's items by ``weights``; the training loop reads ``.loss``.

    ``cross_entropy(..., weight=w)`` averages ``w[y_i] * loss_i`` over the batch divided by the sum of the
    ``w[y_i]``, so a weight of 2 counts an item twice. Everything else (logits, parameters) is the classifier's.
    """

    def __init__(self, classifier, weights: torch.Tensor):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))

    def forward(self, labels=None, **inputs):
        output = self.classifier(**inputs)
        if labels is not None:
            output.loss = torch.nn.functional.cross_entropy(output.logits, labels, weight=self.weights)
        return output


def balanced_class_weights(labels, num_labels: int = len(QUEUE_NAMES)) -> torch.Tensor:
    """scikit-learn's ``class_weight="balanced"``: n / (queues x items of the queue), so each queue weighs alike."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_labels)
    return torch.as_tensor(len(np.asarray(labels).reshape(-1)) / (num_labels * counts), dtype=torch.float32)


def class_weighted_fingerprint(recipe: RouterRecipe, start_id: str) -> str:
    """The router's fingerprint with one more setting: the loss weighted by :func:`balanced_class_weights`."""
    settings = _training_settings(recipe, start_id) | {"loss": "cross-entropy, class_weight balanced"}
    return trained_once.fingerprint(RECIPE, settings, _training_data_digest(recipe))


def train_class_weighted_router(recipe: RouterRecipe, start_id: str, output_dir: Path) -> dict:
    """:func:`train_router`'s run with one change, the loss weighted by :func:`balanced_class_weights`.

    The data, the starting weights, the batches and the settings are the same.
    """
    from transformers import AutoTokenizer

    from behind_pipeline.runtime import NUM_THREADS, seed_everything

    seed_everything(recipe.seed)
    torch.set_num_threads(NUM_THREADS)
    train_ds = training_subset(data.load_rotten_tomatoes_3class()["train"], recipe.train_examples, recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(start_id)
    router = router_from(start_id)
    weights = balanced_class_weights(train_ds["label"])
    history = training.train_classifier(ClassWeightedLoss(router, weights), tokenizer, train_ds["text"],
                                        train_ds["label"], recipe.settings(),
                                        description="fine-tuning the class-weighted router")
    summary = {"recipe": dataclasses.asdict(recipe), "class_weights": [round(float(w), 4) for w in weights],
               "train_examples": len(train_ds), "steps": len(history.losses),
               "fingerprint": class_weighted_fingerprint(recipe, start_id)}

    def write_files(folder):
        router.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return trained_once.save(output_dir, write_files, summary)


def class_weighted_router_dir(recipe: RouterRecipe = PREPARED, start_id: str | None = None) -> Path:
    """Where the class-weighted twin of ``router_dir(recipe, start_id)``'s router lives: beside it."""
    plain = router_dir(recipe, start_id)
    return plain.with_name(plain.name + "-class-weighted")


def ensure_class_weighted_router(recipe: RouterRecipe = PREPARED, start_id: str | None = None) -> Path:
    """The class-weighted twin of ``ensure_router(recipe)``'s router, trained once and cached beside it."""
    from behind_pipeline.models import classifier_id

    start_id = start_id or classifier_id()
    folder = class_weighted_router_dir(recipe, start_id)
    trained_once.ensure(folder, class_weighted_fingerprint(recipe, start_id),
                        lambda: train_class_weighted_router(recipe, start_id, folder))
    return folder


def router_summary(folder: Path) -> dict:
    return json.loads((Path(folder) / SUMMARY_FILE).read_text())
