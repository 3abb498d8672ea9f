"""Triage for the ticket router: per-queue scores, the triage curve, the threshold rules, routes and drift.

An item goes to its predicted queue when its calibrated confidence is at least a threshold, and to a person
otherwise. The temperature, the threshold and the token window are saved beside the router's weights
(``triage.json``) for the service; :func:`ensure_router` keeps them current with the router they belong to.
"""

import hashlib
import inspect
import json
import math
from pathlib import Path

import numpy as np
import torch

from behind_pipeline import data, predict, trained_once
from behind_pipeline.capstone.router import (
    MAX_LENGTH,
    PREPARED,
    RouterRecipe,
    fingerprint,
    router_dir,
    router_summary,
    train_router,
)
from behind_pipeline.data import QUEUE_NAMES

TARGET_PRECISION = 0.95


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
# The served router: trained once (router.py) with current triage settings beside its weights. It needs both
# modules, so it lives here, above router.py.


def ensure_router(recipe: RouterRecipe = PREPARED, start_id: str | None = None) -> Path:
    """The router's folder, trained first if it is missing or was trained with other settings, data or versions."""
    from behind_pipeline.models import classifier_id

    start_id = start_id or classifier_id()
    folder = router_dir(recipe, start_id)
    trained_once.ensure(folder, fingerprint(recipe, start_id), lambda: train_router(recipe, start_id, folder))
    if not triage_is_current(folder):
        write_triage(folder)
    return folder
