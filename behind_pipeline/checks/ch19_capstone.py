"""Checkers for the exercises of chapter 19 (the ticket router): per-queue thresholds, a cost-weighted operating
point, and a drift monitor over a stream of routed items.

Each compares the learner's function with a reference computed here, on small hand-made cases chosen to expose one
mistake each: precision that dips below the target and recovers (a scan cannot stop at the first drop), precision
exactly at the target (a threshold must be kept there), tied confidences (a threshold routes a whole tie or none of
it), four queues as well as three, a queue nobody is predicted into, costs that make "route nothing" the cheapest,
and, for the drift monitor, a confidence exactly at the threshold or at 1.0, a last window shorter than the
others, and items predicted into a queue but not routed.

A wrong answer is named only by a mistake that gives the same answer on the failing case *and* on every case the
learner passed before it; where no mistake, or more than one, fits, the report shows the case's inputs, the answer
and the expected value instead of guessing a reason.
"""

import functools
import math

import numpy as np
import torch

from behind_pipeline.capstone import drift_monitor, threshold_for_precision, threshold_for_precision_bound, triage_curve
from behind_pipeline.checks._core import CheckReport, is_stub

# --- shared -----------------------------------------------------------------------------------------------------


def _probs(rows) -> np.ndarray:
    """Rows of (confidence, predicted queue) over ``queues`` queues as probabilities; the rest spread evenly."""
    return np.asarray(rows, dtype=np.float64)


def _row(confidence: float, predicted: int, queues: int) -> list[float]:
    rest = (1 - confidence) / (queues - 1)
    return [confidence if queue == predicted else rest for queue in range(queues)]


def _given(values, number: int):
    """The same values as a NumPy array, a tensor or nested lists, in turn: a checker must accept all three."""
    return [np.asarray(values), torch.as_tensor(values), np.asarray(values).tolist()][number % 3]


def _routing(probs, threshold: float) -> np.ndarray:
    return np.asarray(probs).max(axis=1) >= threshold


def _the_mistake(mistakes_per_case: list[dict[str, tuple[bool, bool]]]) -> str | None:
    """The one mistake that explains the failing case (the last dict) and agrees with the expected answer on every
    earlier case (which the learner passed), or None when no mistake or several fit: then the caller shows the inputs,
    the answer and the expected value instead of guessing.

    Each dict maps a message to ``(explains, agrees)``: ``explains`` when the mistake's answer differs from the
    expected one and equals the learner's, ``agrees`` when the mistake's answer equals the expected one.
    """
    *passed, failing = mistakes_per_case
    fitting = [message for message, (explains, _) in failing.items()
               if explains and all(case[message][1] for case in passed)]
    return fitting[0] if len(fitting) == 1 else None


# --- Exercise 1: one threshold per queue ------------------------------------------------------------------------


def per_queue_reference(probs, labels, target: float) -> list[float]:
    """For each queue q, the lowest threshold whose precision among the items *predicted* q reaches ``target``."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    predicted = probs.argmax(axis=1)
    thresholds = []
    for queue in range(probs.shape[1]):
        mine = predicted == queue
        thresholds.append(threshold_for_precision(triage_curve(probs[mine], labels[mine]), target)
                          if mine.any() else math.inf)
    return thresholds


def _per_queue_case(seed: int, queues: int, size: int, grid: bool = True):
    """Random items where the surer an item, the likelier it is right; confidences on a 0.05 grid (ties)."""
    rng = np.random.default_rng(seed)
    predicted = rng.integers(0, queues, size)
    confidence = rng.uniform(1 / queues + 0.05, 1.0, size)
    confidence = np.round(confidence / 0.05) * 0.05 if grid else confidence
    right = rng.uniform(0, 1, size) < confidence
    labels = np.where(right, predicted, (predicted + rng.integers(1, queues, size)) % queues)
    return _probs([_row(c, p, queues) for c, p in zip(confidence, predicted, strict=True)]), labels


# (probabilities, labels, target, what the case exposes)
PER_QUEUE_CASES = [
    (_probs([_row(c, q, 3) for c, q in [(0.95, 0), (0.9, 0), (0.85, 0), (0.8, 0), (0.7, 0), (0.65, 0), (0.6, 0),
                                        (0.55, 0), (0.9, 1), (0.6, 1), (0.8, 2), (0.7, 2)]]),
     np.array([0, 0, 1, 2, 0, 0, 0, 0, 1, 1, 2, 0]), 0.7,
     "queue 0's precision falls below 0.7 from threshold 0.85 down to 0.65, then recovers (0.75 at 0.55): the "
     "lowest threshold reaching the target lies past the dip"),
    (_probs([_row(c, q, 3) for c, q in [(0.9, 0), (0.8, 0), (0.7, 0), (0.6, 0), (0.95, 1), (0.85, 1), (0.5, 1),
                                        (0.9, 2), (0.6, 2)]]),
     np.array([0, 0, 1, 0, 1, 2, 1, 2, 2]), 0.75,
     "precision exactly 0.75 (3 of 4) at the lowest threshold of queue 0: at the target counts as reaching it"),
    (_probs([_row(c, q, 3) for c, q in [(0.9, 0), (0.9, 0), (0.8, 0), (0.95, 1), (0.7, 1), (0.7, 1), (0.6, 2)]]),
     np.array([0, 1, 0, 1, 1, 0, 2]), 0.9,
     "tied confidences: a threshold routes both items at 0.9 (or 0.7), never one of them"),
    (_probs([_row(c, q, 3) for c, q in [(0.9, 0), (0.8, 0), (0.99, 1), (0.9, 1), (0.8, 1), (0.7, 1)]]),
     np.array([0, 0, 1, 1, 0, 0]), 0.95,
     "no item is predicted as queue 2: its threshold is inf (route nothing there)"),
    (*_per_queue_case(3, 4, 400), 0.9, "four queues, 400 items with ties"),
    (*_per_queue_case(4, 3, 300), 0.8, "three queues, 300 items, target 0.8"),
]


def _per_queue_mistakes(probs, labels, target) -> dict[str, list[float]]:
    probs, labels = np.asarray(probs), np.asarray(labels)
    queues, predicted = probs.shape[1], probs.argmax(axis=1)

    def strict(curve, target):
        reaching = np.flatnonzero(curve["precision"] > target)
        return float(curve["threshold"][reaching[-1]]) if len(reaching) else math.inf

    def highest(curve, target):
        reaching = np.flatnonzero(curve["precision"] >= target)
        return float(curve["threshold"][reaching[0]]) if len(reaching) else math.inf

    def first_drop(curve, target):
        below = np.flatnonzero(curve["precision"] < target)
        stop = below[0] if len(below) else len(curve["precision"])
        return float(curve["threshold"][stop - 1]) if stop > 0 else math.inf

    def per_queue(select, choose):
        out = []
        for queue in range(queues):
            mine = select(queue)
            out.append(choose(triage_curve(probs[mine], labels[mine]), target) if mine.any() else math.inf)
        return out

    def untied(mine_probs, mine_labels):
        order = np.argsort(-mine_probs.max(axis=1), kind="stable")
        confidences = mine_probs.max(axis=1)[order]
        correct = (mine_probs.argmax(axis=1) == mine_labels)[order]
        precision = np.cumsum(correct) / np.arange(1, len(order) + 1)
        reaching = np.flatnonzero(precision >= target)
        return float(confidences[reaching[-1]]) if len(reaching) else math.inf

    return {
        "one threshold for every queue: compute each queue's curve on the items predicted into that queue":
            [threshold_for_precision(triage_curve(probs, labels), target)] * queues,
        "items were grouped by their gold label: a router only knows the predicted queue, so group by that":
            per_queue(lambda queue: labels == queue, threshold_for_precision),
        "precision exactly at the target was refused: 'reaches the target' means precision >= target":
            per_queue(lambda queue: predicted == queue, strict),
        "that is the highest threshold reaching the target: take the lowest (the largest coverage)":
            per_queue(lambda queue: predicted == queue, highest),
        "that is the chapter's bound rule (the Wilson lower bound of precision reaching the target, "
        "threshold_for_precision_bound): this exercise asks the measured precision, the share of routed items "
        "that are right, to reach it": per_queue(lambda queue: predicted == queue, threshold_for_precision_bound),
        "the scan stopped at the first threshold whose precision is below the target: precision does not only "
        "fall as the threshold drops (it can dip and recover), so look at every threshold and keep the lowest that "
        "reaches the target": per_queue(lambda queue: predicted == queue, first_drop),
        "a tie was split: a threshold routes every item with that confidence, so compute precision per group of "
        "equal confidences": [untied(probs[predicted == q], labels[predicted == q]) if (predicted == q).any()
                              else math.inf for q in range(queues)],
    }


NO_THRESHOLD_HINT = ("use math.inf (a threshold nothing reaches) for a queue with no threshold, because no item is "
                     "predicted into it or none reaches the target")


def _same_thresholds(got: torch.Tensor, expected: list[float]) -> bool:
    want = torch.tensor(expected, dtype=torch.float64)
    both_inf = torch.isinf(got) & torch.isinf(want)
    # 1e-6: a float32 computation of the same threshold is the same answer
    return bool(torch.all(both_inf | torch.isclose(got, want, rtol=0, atol=1e-6)))


def check_per_queue_thresholds(per_queue_thresholds) -> CheckReport:
    """``per_queue_thresholds(probs, labels, target)`` -> one threshold per queue (``inf``: route nothing there)."""
    report = CheckReport("Per-queue thresholds")
    mistakes_per_case = []
    for number, (probs, labels, target, description) in enumerate(PER_QUEUE_CASES):
        expected = per_queue_reference(probs, labels, target)
        got = report.call(per_queue_thresholds, _given(probs, number), _given(labels, number + 1), target,
                          name="per_queue_thresholds")
        if got is Ellipsis:
            empty = [queue for queue in range(probs.shape[1]) if not (probs.argmax(axis=1) == queue).any()]
            if empty and report.lines and "raised" in report.lines[-1]:
                # The cases before it (all passed) had an item in every queue: the empty one is the likely cause.
                report.fail(f"{description}: this is the first case where a queue gets no item (queue {empty[0]}): "
                            "its items are an empty array, and an empty curve has no threshold to index; give such a "
                            "queue math.inf before computing anything for it")
            return report
        if isinstance(got, list | tuple) and any(value is None for value in got):
            queue = next(index for index, value in enumerate(got) if value is None)
            report.fail(f"{description}: entry {queue} is None: {NO_THRESHOLD_HINT}")
            return report
        values = report.tensor(got, "the thresholds", shape=(probs.shape[1],))
        if values is None:
            return report
        if bool(torch.isnan(values).any()):
            queue = int(torch.isnan(values).nonzero()[0, 0])
            report.fail(f"{description}: entry {queue} is NaN (the mean of an empty selection?): {NO_THRESHOLD_HINT}")
            return report
        mistakes_per_case.append({
            message: (not _same_thresholds(torch.tensor(wrong, dtype=torch.float64), expected)
                      and _same_thresholds(values, wrong), _same_thresholds(torch.tensor(wrong, dtype=torch.float64),
                                                                             expected))
            for message, wrong in _per_queue_mistakes(probs, labels, target).items()})
        if _same_thresholds(values, expected):
            report.ok(f"{description}: {[round(value, 4) for value in expected]}")
            continue
        message = _the_mistake(mistakes_per_case)
        report.fail(f"{description}: {message}" if message else
                    f"{description}: got {_rounded(values.tolist())}, expected {_rounded(expected)}; "
                    f"{_per_queue_inputs(probs, labels, values.tolist(), expected, number)}")
        return report
    return report


def _rounded(values) -> list:
    return [value if math.isinf(value) else round(value, 4) for value in values]


def _per_queue_inputs(probs, labels, got, expected, number: int) -> str:
    """The inputs of the first queue whose threshold is wrong: its items as (confidence, gold label) pairs."""
    queue = next(q for q, (a, b) in enumerate(zip(got, expected, strict=True))
                 if not _same_thresholds(torch.tensor([a], dtype=torch.float64), [b]))
    probs, labels = np.asarray(probs), np.asarray(labels)
    mine = probs.argmax(axis=1) == queue
    if mine.sum() > 12:
        return (f"queue {queue} has {int(mine.sum())} items: the inputs are PER_QUEUE_CASES[{number}] in "
                "behind_pipeline.checks.ch19_capstone (probs, labels, target)")
    pairs = [(round(float(c), 4), int(y)) for c, y in zip(probs[mine].max(axis=1), labels[mine], strict=True)]
    return f"the items predicted into queue {queue}, as (confidence, gold label): {pairs}"


# --- Exercise 2: the cheapest operating point -------------------------------------------------------------------


def routing_cost(probs, labels, threshold: float, error_cost: float, human_cost: float) -> float:
    """error_cost per wrongly routed item + human_cost per item sent to a person, at ``threshold``."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    routed = _routing(probs, threshold)
    wrong = routed & (probs.argmax(axis=1) != labels)
    return float(error_cost * wrong.sum() + human_cost * (~routed).sum())


def cheapest_reference(probs, labels, error_cost: float, human_cost: float) -> float:
    """The threshold (a distinct confidence, or inf) of least cost; among equal costs the lowest (most routed)."""
    candidates = [*sorted(set(np.asarray(probs, dtype=np.float64).max(axis=1).tolist())), math.inf]
    costs = [routing_cost(probs, labels, t, error_cost, human_cost) for t in candidates]
    return candidates[int(np.argmin(costs))]  # argmin returns the first: the lowest threshold among ties


# (probabilities, labels, error cost, human cost, what the case exposes)
COST_CASES = [
    (_probs([_row(c, q, 3) for c, q in [(0.95, 0), (0.9, 1), (0.8, 2), (0.7, 0), (0.6, 1), (0.5, 2)]]),
     np.array([0, 1, 0, 1, 1, 0]), 5.0, 1.0, "an error costs 5 human reviews"),
    (_probs([_row(c, q, 3) for c, q in [(0.9, 0), (0.8, 1), (0.7, 2), (0.6, 0)]]),
     np.array([1, 0, 0, 0]), 10.0, 1.0, "most items are wrong: the cheapest is to route nothing (inf)"),
    (_probs([_row(c, q, 3) for c, q in [(0.9, 0), (0.8, 1), (0.7, 2), (0.6, 0)]]),
     np.array([0, 0, 2, 1]), 1.0, 1.0, "equal costs and a tie between two thresholds: take the lowest"),
    (*_per_queue_case(5, 3, 300), 4.0, 1.0, "300 items with tied confidences, an error costs 4"),
    (*_per_queue_case(6, 4, 300, grid=False), 2.0, 0.5, "four queues, 300 items, costs 2 and 0.5"),
    (*_per_queue_case(7, 3, 500, grid=False), 3.0, 1.0, "500 items, confidences off any grid, costs 3 and 1"),
]


def _cost_mistakes(probs, labels, error_cost, human_cost) -> dict[str, float]:
    confidences = sorted(set(np.asarray(probs).max(axis=1).tolist()))
    data_only = confidences[int(np.argmin([routing_cost(probs, labels, t, error_cost, human_cost)
                                           for t in confidences]))]
    costs = [routing_cost(probs, labels, t, error_cost, human_cost) for t in [*confidences, math.inf]]
    best = min(costs)
    highest = [*confidences, math.inf][max(i for i, c in enumerate(costs) if c == best)]
    grid = [t / 100 for t in range(101)] + [math.inf]
    grid_best = grid[int(np.argmin([routing_cost(probs, labels, t, error_cost, human_cost) for t in grid]))]
    return {
        "'route nothing' (threshold inf) was not a candidate: when errors are dear it can be the cheapest": data_only,
        "among thresholds of equal cost this is the highest: take the lowest (more items routed, same cost)": highest,
        "the threshold came from a grid: try the items' own confidences (and inf), where the cost changes":
            grid_best,
        "the human cost was left out: with errors only, sending items to a person costs nothing":
            cheapest_reference(probs, labels, error_cost, 0.0),
        "routing everything is not the cheapest here: count the routed items that are wrong (error_cost each) "
        "as well as the items sent to a person (human_cost each)": cheapest_reference(probs, labels, 0.0, human_cost),
    }


_NONE = object()  # what :func:`_none_kept` turns a learner's None into


def _none_kept(function):
    """``function`` with a None result passed on as ``_NONE``: a returned None is then the checker's to explain (a
    deliberate "no threshold"), not ``CheckReport.call``'s "returns nothing". A stub or a non-function is left as it
    is, so that ``call`` still says "replace the `...`"."""
    if not callable(function) or is_stub(function):
        return function

    @functools.wraps(function)
    def kept(*args, **kwargs):
        result = function(*args, **kwargs)
        return _NONE if result is None else result

    return kept


def _routes_the_same(probs, value: float, expected: np.ndarray) -> bool:
    """Whether ``value`` routes the ``expected`` items, with the confidences compared in float64 or, as a learner
    computing in float32 compares them, in float32 (float32(0.8) is above 0.8, so in float64 it would not route an
    item at 0.8)."""
    if np.array_equal(_routing(probs, value), expected):
        return True
    with np.errstate(over="ignore"):
        return np.array_equal(np.asarray(probs, dtype=np.float32).max(axis=1) >= np.float32(value), expected)


def check_cheapest_threshold(cheapest_threshold) -> CheckReport:
    """``cheapest_threshold(probs, labels, error_cost, human_cost)`` -> the threshold of least total cost."""
    report = CheckReport("Cost-weighted operating point")
    mistakes_per_case = []
    for number, (probs, labels, error_cost, human_cost, description) in enumerate(COST_CASES):
        expected = cheapest_reference(probs, labels, error_cost, human_cost)
        best = routing_cost(probs, labels, expected, error_cost, human_cost)
        got = report.call(_none_kept(cheapest_threshold), _given(probs, number), _given(labels, number), error_cost,
                          human_cost, name="cheapest_threshold")
        if got is Ellipsis:
            return report
        if got is _NONE:
            report.fail(f"{description}: cheapest_threshold(...) returned None: "
                        + ("here the cheapest is to route nothing, and the threshold that does it is math.inf (None "
                           "is not a threshold a router can compare with)" if math.isinf(expected) else
                           "return the threshold, a number (math.inf to route nothing); does every path end with "
                           "`return`?"))
            return report
        value = report.scalar(got, "the threshold")
        if value is None:
            return report
        # Any threshold that routes exactly the reference's items is right (between two confidences it is the same).
        if math.isnan(value):
            report.fail(f"{description}: the threshold is NaN")
            return report
        routes = {name: _routing(probs, threshold) for name, threshold in (("got", value), ("expected", expected))}
        mistakes_per_case.append({
            message: (not np.array_equal(_routing(probs, wrong), routes["expected"])
                      and np.array_equal(routes["got"], _routing(probs, wrong)),
                      np.array_equal(_routing(probs, wrong), routes["expected"]))
            for message, wrong in _cost_mistakes(probs, labels, error_cost, human_cost).items()})
        if _routes_the_same(probs, value, routes["expected"]):
            report.ok(f"{description}: threshold {expected:.4f}, cost {best:g}")
            continue
        message = _the_mistake(mistakes_per_case)
        report.fail(f"{description}: {message}" if message else
                    f"{description}: threshold {value:.4f} costs "
                    f"{routing_cost(probs, labels, value, error_cost, human_cost):g}; the cheapest ({expected:.4f}) "
                    f"costs {best:g} (error_cost {error_cost:g}, human_cost {human_cost:g}; the inputs are "
                    f"COST_CASES[{number}] in behind_pipeline.checks.ch19_capstone)")
        return report
    return report


# --- Exercise 3: a drift monitor ---------------------------------------------------------------------------------


def drift_reference(probs, threshold: float, window: int, bins: int) -> list[dict]:
    """The package's monitor: consecutive windows (the last may be shorter), coverage, queue mix, histogram."""
    return drift_monitor(probs, threshold, window, bins)


def _stream(rows: list[tuple[float, int]], queues: int = 3) -> np.ndarray:
    return _probs([_row(confidence, predicted, queues) for confidence, predicted in rows])


def _random_stream(seed: int, size: int, queues: int) -> np.ndarray:
    """Random items whose confidences stay clear of every bin edge of 10 bins (a value on an edge is a float
    question, not a monitoring one)."""
    rng = np.random.default_rng(seed)
    confidence = np.floor(rng.uniform(1 / queues + 0.05, 1.0, size) * 100) / 100 + 0.005
    return _stream(list(zip(confidence.tolist(), rng.integers(0, queues, size).tolist(), strict=True)), queues)


# (probs, threshold, window, bins, what the case exposes); confidences 0.25, 0.5, 0.75 and 1 are exact binary
# fractions, so with 4 bins they sit exactly on an edge: the lower bin edge belongs to the bin, 1.0 to the last.
DRIFT_CASES = [
    (_stream([(0.9, 0), (0.6, 1), (0.8, 1), (0.4, 2)]), 0.7, 2, 4,
     "two windows of two items, each half routed"),
    (_stream([(0.75, 0), (0.8, 1), (0.7, 1), (0.9, 0)]), 0.75, 4, 4,
     "a confidence exactly at the threshold is routed (>=), and 0.75 falls in the bin [0.75, 1]"),
    (_stream([(1.0, 0), (0.6, 1), (0.55, 1), (0.9, 2)]), 0.95, 2, 4,
     "a confidence of exactly 1.0 is counted in the last bin"),
    (_stream([(0.9, 0), (0.6, 1), (0.55, 1), (0.85, 2), (0.65, 0)]), 0.8, 2, 4,
     "five items in windows of two: the last window holds one item and is reported"),
    (_stream([(0.9, 0), (0.4, 1), (0.45, 1), (0.5, 2), (0.95, 2), (0.6, 1)]), 0.85, 3, 4,
     "the queue mix counts every item of the window by its predicted queue, routed or not"),
    (_stream([(0.3, 0), (0.6, 3), (0.65, 3), (0.9, 2), (0.55, 1), (0.35, 3)], queues=4), 0.5, 6, 4,
     "four queues, one window"),
    (_stream([(0.9, 0), (0.6, 1), (0.8, 1)]), 0.7, 10, 4, "a window longer than the stream: one window of three"),
    (_random_stream(0, 500, 3), 0.8, 64, 10, "500 items, windows of 64, ten bins"),
    (_random_stream(1, 300, 4), 0.6, 100, 10, "four queues, 300 items, windows of 100"),
]


def _drift_mistakes(probs, threshold, window, bins) -> dict[str, list[dict]]:
    probs = np.asarray(probs, dtype=np.float64)
    reference = drift_reference(probs, threshold, window, bins)

    def varied(change):
        return [{**entry, **change(entry, probs[start:start + window])}
                for entry, start in zip(reference, range(0, len(probs), window), strict=True)]

    def routed_mix(entry, chunk):
        routed = chunk[chunk.max(axis=1) >= threshold]
        counts = np.bincount(routed.argmax(axis=1), minlength=chunk.shape[1])
        return {"mix": (counts / max(len(routed), 1)).tolist()}

    whole = np.bincount(np.minimum((probs.max(axis=1) * bins).astype(int), bins - 1), minlength=bins).tolist()
    sliding = drift_reference(probs[:window], threshold, window, bins) if len(probs) >= window else reference
    for start in range(1, len(probs) - window + 1):
        sliding = sliding + drift_reference(probs[start:start + window], threshold, window, bins)
    last_short = len(probs) % window != 0 and len(reference) > 1
    return {
        "coverage used > threshold: an item exactly at the threshold is routed (confidence >= threshold)":
            varied(lambda entry, chunk: {"coverage": float((chunk.max(axis=1) > threshold).mean())}),
        "the last, shorter window was dropped: the stream's latest items must be reported too":
            reference[:-1] if last_short else reference,
        "the queue mix was taken among the routed items only: it is the share of all the window's items "
        "predicted into each queue": varied(routed_mix),
        "the queue mix holds counts: divide by the window's size to get shares": varied(
            lambda entry, chunk: {"mix": np.bincount(chunk.argmax(axis=1), minlength=chunk.shape[1]).tolist()}),
        "the histogram holds shares: it should count the window's items in each bin": varied(
            lambda entry, chunk: {"histogram": (np.asarray(entry["histogram"]) / len(chunk)).tolist()}),
        "a confidence of 1.0 got a bin of its own (bins + 1 counts): the last bin is closed, [1 - 1/bins, 1]":
            varied(lambda entry, chunk: {"histogram": np.bincount((chunk.max(axis=1) * bins).astype(int),
                                                                  minlength=bins + 1).tolist()}),
        "the histogram counts the whole stream so far: each window gets its own": varied(
            lambda entry, chunk: {"histogram": whole}),
        "the windows overlap (a window starting at every item): cut the stream into consecutive windows":
            sliding,
        "the last window's size is `window`, but it holds fewer items: size is the number of items in it":
            varied(lambda entry, chunk: {"size": window}),
        "the last window's shares were divided by `window`, but it holds fewer items: divide its coverage and mix by "
        "its own size": varied(lambda entry, chunk: {
            "coverage": float((chunk.max(axis=1) >= threshold).sum() / window),
            "mix": (np.bincount(chunk.argmax(axis=1), minlength=chunk.shape[1]) / window).tolist()}),
        "the mix has one share per queue that occurs in the window (np.unique): give one per column of probs, 0 for "
        "a queue nobody is predicted into (np.bincount(predicted, minlength=queues))": varied(
            lambda entry, chunk: {"mix": (np.unique(chunk.argmax(axis=1), return_counts=True)[1] / len(chunk))
                                  .tolist()}),
        "np.histogram without range=(0, 1) spreads the bins over the window's own lowest to highest confidence: "
        "the bins are fixed, [b/bins, (b+1)/bins)": varied(
            lambda entry, chunk: {"histogram": np.histogram(chunk.max(axis=1), bins=bins)[0].tolist()}),
        "the bin was found by rounding confidence x bins: bin b holds [b/bins, (b+1)/bins), so take the floor "
        "(int(confidence * bins))": varied(lambda entry, chunk: {"histogram": np.bincount(
            np.minimum(np.round(chunk.max(axis=1) * bins).astype(int), bins - 1), minlength=bins).tolist()}),
    }


# A share computed in float32 (a learner working on tensors) is within 1e-7 of the float64 one; shares of
# different counts differ by at least 1 / window, far more.
SHARE_TOLERANCE = 1e-6


def _same_report(got, expected: list[dict]) -> bool:
    if len(got) != len(expected):
        return False
    for mine, want in zip(got, expected, strict=True):
        if int(mine["size"]) != want["size"] or not math.isclose(float(mine["coverage"]), want["coverage"],
                                                                abs_tol=SHARE_TOLERANCE):
            return False
        for key in ("mix", "histogram"):
            values = np.asarray(mine[key], dtype=np.float64).reshape(-1)
            if values.shape != (len(want[key]),) or not np.allclose(values, want[key], rtol=0,
                                                                    atol=SHARE_TOLERANCE):
                return False
    return True


def _readable(report) -> str | None:
    """None when ``report`` is a list of dicts with the four keys; else what is wrong with it."""
    if not isinstance(report, list | tuple):
        return f"return a list with one dict per window, got {type(report).__name__}"
    for number, entry in enumerate(report):
        if not isinstance(entry, dict):
            return f"window {number} is a {type(entry).__name__}: make it a dict"
        missing = [key for key in ("size", "coverage", "mix", "histogram") if key not in entry]
        if missing:
            return f"window {number} has no {', '.join(repr(key) for key in missing)}"
        try:
            float(entry["coverage"]), int(entry["size"])
            np.asarray(entry["mix"], dtype=np.float64), np.asarray(entry["histogram"], dtype=np.float64)
        except (TypeError, ValueError):
            return f"window {number}: size and coverage must be numbers, mix and histogram lists of numbers"
    return None


def _show(report: list[dict]) -> str:
    return "; ".join(f"size {int(e['size'])}, coverage {float(e['coverage']):.4f}, mix "
                     f"{_rounded(np.asarray(e['mix'], dtype=np.float64).reshape(-1).tolist())}, histogram "
                     f"{_rounded(np.asarray(e['histogram'], dtype=np.float64).reshape(-1).tolist())}"
                     for e in report[:3]) + ("; ..." if len(report) > 3 else "")


def check_drift_monitor(drift_monitor) -> CheckReport:
    """``drift_monitor(probs, threshold, window, bins)`` -> one dict per consecutive window of the stream."""
    report = CheckReport("Drift monitor")
    mistakes_per_case = []
    for number, (probs, threshold, window, bins, description) in enumerate(DRIFT_CASES):
        expected = drift_reference(probs, threshold, window, bins)
        got = report.call(drift_monitor, _given(probs, number), threshold, window, bins, name="drift_monitor")
        if got is Ellipsis:
            return report
        problem = _readable(got)
        if problem:
            report.fail(f"{description}: {problem}")
            return report
        mistakes_per_case.append({message: (not _same_report(wrong, expected) and _same_report(got, wrong),
                                             _same_report(wrong, expected))
                                  for message, wrong in _drift_mistakes(probs, threshold, window, bins).items()})
        if _same_report(got, expected):
            report.ok(f"{description}: {len(expected)} window(s), coverage "
                      f"{[round(entry['coverage'], 4) for entry in expected]}")
            continue
        message = _the_mistake(mistakes_per_case)
        if message:
            report.fail(f"{description}: {message}")
        else:
            report.fail(f"{description}: got {len(got)} window(s): {_show(got)}; expected {len(expected)}: "
                        f"{_show(expected)} (threshold {threshold}, window {window}, bins {bins}; the inputs are "
                        f"DRIFT_CASES[{number}] in behind_pipeline.checks.ch19_capstone)")
        return report
    return report


# --- The previous exercise 3 (golden-file comparison), kept until the solutions use the drift monitor -----------------


def golden_reference(expected: list[dict], actual: list[dict], tolerance: float) -> list[int]:
    """Indices of the records whose label differs or one of whose probabilities moved by more than ``tolerance``."""
    return [index for index, (want, got) in enumerate(zip(expected, actual, strict=True))
            if want["label"] != got["label"]
            or max(abs(a - b) for a, b in zip(want["probs"], got["probs"], strict=True)) > tolerance]


def _record(label: str, probs: list[float], text: str = "") -> dict:
    return {"text": text, "label": label, "probs": probs}


_BASE = [_record("fresh", [0.25, 0.5, 0.25], "a"), _record("rotten", [0.75, 0.125, 0.125], "b"),
         _record("plot", [0.0625, 0.0625, 0.875], "c"), _record("fresh", [0.375, 0.5, 0.125], "d")]


def _moved(index: int, label: str | None = None, probs: list[float] | None = None,
           records: list[dict] | None = None) -> list[dict]:
    records = [dict(row) for row in (_BASE if records is None else records)]
    records[index] = {**records[index], **({"label": label} if label else {}), **({"probs": probs} if probs else {})}
    return records


# (expected, actual, tolerance, what the case exposes); the probabilities are exact binary fractions, so a move of
# exactly the tolerance is exactly the tolerance.
GOLDEN_CASES = [
    (_BASE, _moved(0), 0.0625, "nothing moved: no index"),
    (_BASE, _moved(1, label="fresh"), 0.0625, "a label changed with the same probabilities"),
    (_BASE, _moved(1, probs=[0.625, 0.25, 0.125]), 0.0625, "the top probability moved by 0.125, label unchanged"),
    (_BASE, _moved(0, probs=[0.3125, 0.4375, 0.25]), 0.25,
     "two probabilities moved by 0.0625, well within a tolerance of 0.25: no index"),
    (_BASE, _moved(2, probs=[0.0625, 0.0, 0.9375]), 0.125,
     "a small probability moved from 0.0625 to 0: an absolute move of 0.0625, within a tolerance of 0.125"),
    (_BASE, _moved(2, probs=[0.0625, 0.125, 0.8125]), 0.0625,
     "probabilities moved by exactly the tolerance (0.0625): within it, no index"),
    (_BASE, _moved(3, probs=[0.25, 0.5, 0.25]), 0.0625,
     "the last record's two smaller probabilities moved by 0.125, its top one and label unchanged"),
    (_BASE, _moved(0, label="rotten", probs=[0.5, 0.25, 0.25]), 0.125,
     "label and probabilities both changed: the record is listed once"),
    ([*_BASE, _record("plot", [0.125, 0.125, 0.75], "e")],
     [*_moved(1, probs=[0.625, 0.25, 0.125]), _record("plot", [0.125, 0.125, 0.75], "e")], 0.0625,
     "five records, the second moved by 0.125"),
    (_BASE, _moved(3, probs=[0.125, 0.5, 0.375]), 0.0625,
     "two probabilities swapped places (each moved by 0.25), label and top probability unchanged"),
    (_BASE, _moved(3, probs=[0.25, 0.5, 0.25], records=_moved(1, label="fresh")), 0.0625,
     "two records changed, the second and the last: both indices"),
]


def _golden_mistakes(expected, actual, tolerance) -> dict[str, list[int]]:
    def gap(want, got):
        return max(abs(a - b) for a, b in zip(want["probs"], got["probs"], strict=True))

    pairs = list(enumerate(zip(expected, actual, strict=True)))
    return {
        "only the top probability was compared: every probability of a record can move":
            [i for i, (w, g) in pairs if w["label"] != g["label"]
             or abs(max(w["probs"]) - max(g["probs"])) > tolerance],
        "only labels were compared: a probability that moves past the tolerance is a change too":
            [i for i, (w, g) in pairs if w["label"] != g["label"]],
        "only probabilities were compared: a changed label is a change even when the numbers are close":
            [i for i, (w, g) in pairs if gap(w, g) > tolerance],
        "a move of exactly the tolerance was flagged: the tolerance is allowed, so flag only moves beyond it":
            [i for i, (w, g) in pairs if w["label"] != g["label"] or gap(w, g) >= tolerance],
        "the tolerance was not used: comparing probabilities with == (or after rounding) flags any move; a move "
        "within the tolerance is no change": [i for i, (w, g) in pairs if w["label"] != g["label"]
                                               or list(w["probs"]) != list(g["probs"])],
        "the tolerance was used relative to the probability: the golden files state an absolute one":
            [i for i, (w, g) in pairs if w["label"] != g["label"] or any(
                abs(a - b) > tolerance * abs(a) for a, b in zip(w["probs"], g["probs"], strict=True))],
        "probabilities were compared after sorting: a probability belongs to its queue, so compare them queue by "
        "queue": [i for i, (w, g) in pairs if w["label"] != g["label"] or max(
            abs(a - b) for a, b in zip(sorted(w["probs"]), sorted(g["probs"]), strict=True)) > tolerance],
        "the search stopped at the first changed record: list every record that changed":
            golden_reference(expected, actual, tolerance)[:1],
        "a record was listed twice when both its label and its probabilities changed: list each index once":
            [i for i, (w, g) in pairs if w["label"] != g["label"]] + [i for i, (w, g) in pairs
                                                                      if gap(w, g) > tolerance],
    }


def check_golden_mismatches(golden_mismatches) -> CheckReport:
    """``golden_mismatches(expected, actual, tolerance)`` -> sorted indices of the records that changed."""
    report = CheckReport("Golden-file comparison")
    mistakes_per_case = []
    for expected_records, actual_records, tolerance, description in GOLDEN_CASES:
        expected = golden_reference(expected_records, actual_records, tolerance)
        got = report.call(golden_mismatches, [dict(r) for r in expected_records], [dict(r) for r in actual_records],
                          tolerance, name="golden_mismatches")
        if got is Ellipsis:
            return report
        try:
            items = got.tolist() if isinstance(got, np.ndarray | torch.Tensor) else list(got)
        except TypeError:
            items = None
        if items is None or not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in items):
            kinds = sorted({type(i).__name__ for i in items}) if items is not None else [type(got).__name__]
            report.fail(f"{description}: return a list of record indices as integers, got {', '.join(kinds)}")
            return report
        indices = [int(index) for index in items]
        mistakes_per_case.append({message: (wrong != expected and indices == wrong, wrong == expected)
                                  for message, wrong in
                                  _golden_mistakes(expected_records, actual_records, tolerance).items()})
        if indices == expected:
            report.ok(f"{description}: {expected}")
            continue
        message = _the_mistake(mistakes_per_case)
        if message:
            report.fail(f"{description}: {message}")
        else:
            changed = [f"record {i}: label {w['label']!r} -> {g['label']!r}, probs {w['probs']} -> {g['probs']}"
                       for i, (w, g) in enumerate(zip(expected_records, actual_records, strict=True)) if w != g]
            report.fail(f"{description}: got {indices}, expected {expected}; tolerance {tolerance}, "
                        f"{'; '.join(changed) or 'no record changed'}")
        return report
    return report
