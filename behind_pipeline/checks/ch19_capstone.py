"""Checkers for the exercises of chapter 19 (the ticket router): per-queue thresholds, a cost-weighted operating
point, and a drift alarm on the queue mix of a window of routed items.

Each compares the learner's function with a reference computed here, on small hand-made cases chosen to expose one
mistake each: precision that dips below the target and recovers (a scan cannot stop at the first drop), precision
exactly at the target (a threshold must be kept there), tied confidences (a threshold routes a whole tie or none of
it), four queues as well as three, a queue nobody is predicted into, costs that make "route nothing" the cheapest,
and, for the drift alarm (a chi-square goodness-of-fit test, checked against :func:`scipy.stats.chisquare`), a
p-value between 0.01 and 0.05, a queue empty in the reference and the window, a queue the reference never saw, rare
queues expecting about one item (rounded or pooled expected counts), and counts given as floats (a division made in
place on the caller's counts).

A wrong answer is named only by a mistake that gives the same answer on the failing case *and* on every case the
learner passed before it (for the drift alarm, whose answer is one bit, also on the later cases the learner answers);
where no mistake, or more than one, fits, the report shows the case's inputs, the answer and the expected value
instead of guessing a reason."""

import functools
import math
import warnings

import numpy as np
import scipy.stats
import torch

from behind_pipeline.capstone.triage import threshold_for_precision, threshold_for_precision_bound, triage_curve
from behind_pipeline.checks._core import CheckReport, as_tensor, is_stub

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


# --- Exercise 3: a drift alarm on the queue mix ------------------------------------------------------------------


def alarm_p_value(reference_counts, window_counts) -> float:
    """The chi-square goodness-of-fit p-value of the window's queue counts against the reference's shares
    (:func:`scipy.stats.chisquare`, degrees of freedom = queues - 1), over the queues the reference saw: 0.0 when
    the window holds a queue the reference never saw, 1.0 when fewer than two queues are left to compare."""
    reference = np.asarray(reference_counts, dtype=np.float64).reshape(-1)
    window = np.asarray(window_counts, dtype=np.float64).reshape(-1)
    if np.any((reference == 0) & (window > 0)):
        return 0.0
    seen = reference > 0
    if seen.sum() < 2:
        return 1.0
    expected = window.sum() * reference[seen] / reference.sum()
    return float(scipy.stats.chisquare(window[seen], expected).pvalue)


def alarm_reference(reference_counts, window_counts, alpha: float = 0.01) -> bool:
    """Whether the window's queue mix differs from the reference's: the p-value below ``alpha``."""
    return alarm_p_value(reference_counts, window_counts) < alpha


def alarm_statistic(reference_counts, window_counts) -> float:
    """The chi-square statistic of :func:`alarm_p_value` (inf for a queue the reference never saw)."""
    reference = np.asarray(reference_counts, dtype=np.float64).reshape(-1)
    window = np.asarray(window_counts, dtype=np.float64).reshape(-1)
    if np.any((reference == 0) & (window > 0)):
        return math.inf
    seen = reference > 0
    expected = window.sum() * reference[seen] / reference.sum()
    return float((((window[seen] - expected) ** 2) / expected).sum())


# (reference counts, window counts, alpha, what the case exposes); each case is the first on which one typical
# mistake answers wrong (tests/test_ch19_capstone.py proves it for each), so the mistake can be named.
ALARM_CASES = [
    ([60, 40], [1, 1], 0.01, "a window of two items, one per queue: no alarm (too few items to tell)"),
    ([800, 150, 50], [0, 0, 40], 0.01, "40 items all in the third queue, which holds 5% of the reference: alarm"),
    ([500, 400, 100], [20, 70, 10], 0.01, "a window of 100 whose mix moved from the first queue to the second: alarm"),
    ([340, 330, 330], [34, 33, 33], 0.01, "a window of 100 with exactly the reference's mix: no alarm"),
    ([500, 400, 100], [52, 38, 10], 0.01, "queues of unequal size, a window close to their mix: no alarm"),
    ([5000, 4000, 1000], [55, 35, 10], 0.01, "a large reference, a window of 100 near its mix: no alarm"),
    ([500, 400, 100], [56, 42, 2], 0.01, "a window that lost most of its third-queue items, p between 0.01 and 0.05, "
     "alpha 0.01: no alarm"),
    ([300, 300, 300, 100], [45, 20, 25, 10], 0.01, "four queues, p = 0.0086 with 3 degrees of freedom: alarm"),
    ([500, 400, 100], [56, 42, 2], 0.05, "the window that lost its third-queue items, at alpha 0.05: alarm"),
    ([500, 400, 0, 100], [20, 70, 0, 10], 0.01,
     "a queue neither the reference nor the window holds, and a large shift elsewhere: alarm"),
    ([500, 400, 0, 100], [60, 39, 0, 1], 0.01,
     "a queue neither holds is left out of the degrees of freedom too (2, not 3): alarm"),
    ([500, 400, 100, 0], [45, 45, 8, 2], 0.01, "two items in a queue the reference never saw: alarm"),
    ([100, 900], [20, 80], 0.01,
     "two queues, a window of 100 with twice the reference's share of the first queue: alarm"),
    ([450, 450, 50, 50], [15, 2, 2, 2], 0.01,
     "a window of 21 items, two rare queues expecting 1.05 items each (every queue a term of its own, the expected "
     "counts not rounded): no alarm"),
    ([500, 500], [121, 79], 0.01, "two equal queues, a window of 200 split 121 to 79: alarm (with k degrees of "
     "freedom, 2, the p-value would be 0.0122, above alpha)"),
    ([300, 300, 300, 100], [40, 20, 30, 10], 0.05, "four queues, a moderate shift, alpha 0.05: no alarm"),
]


def _alarm_mistakes(reference_counts, window_counts, alpha) -> dict[str, bool]:
    reference = np.asarray(reference_counts, dtype=np.float64)
    window = np.asarray(window_counts, dtype=np.float64)
    queues, size = len(reference), window.sum()
    shares = reference / reference.sum()

    def p_value(observed, expected, df):
        with np.errstate(divide="ignore", invalid="ignore"):
            statistic = float((((observed - expected) ** 2) / expected).sum())
        return float(scipy.stats.chi2.sf(statistic, df))  # nan stays nan: nan < alpha is False

    seen = reference > 0
    unseen = bool(np.any(~seen & (window > 0)))  # every answer but the one leaving it out returns True there
    expected_seen = size * reference[seen] / reference.sum()
    unseen_left_out = float(scipy.stats.chi2.sf(alarm_statistic(reference[seen], window[seen]), seen.sum() - 1))
    right = alarm_p_value(reference, window)
    return {
        "the alarm rang when the p-value was above alpha: a small p-value (below alpha) is the evidence of a change":
            not right < alpha,
        "the expected counts were the reference's shares: scale them to the window (expected = the window's size x "
        "each queue's reference share), so that counts are compared with counts": p_value(window, shares,
                                                                                           queues - 1) < alpha,
        "the window's shares were compared with the reference's shares: the test needs counts (the statistic of "
        "shares is the window's size times too small)": p_value(window / size, shares, queues - 1) < alpha,
        "the degrees of freedom were the number of queues: the counts add up to the window's size, which takes one "
        "away (queues - 1)": p_value(window, size * shares, queues) < alpha,
        "the roles were swapped: the window's counts are the observed ones, and the expected counts come from the "
        "reference's shares (times the window's size)": p_value(reference, reference.sum() * window / size,
                                                                queues - 1) < alpha,
        "the expected counts came from the window itself, so they equal the observed ones and the alarm never "
        "rings: take them from the reference's shares": False,
        "the expected counts were the window's size split evenly across the queues: take the reference's shares "
        "(the queues are not equally common)": p_value(window, np.full(queues, size / queues), queues - 1) < alpha,
        "alpha was not used (the answer is the one for alpha 0.05): compare the p-value with the alpha you are "
        "given": right < 0.05,
        "alpha was not used (the answer is the one for alpha 0.01): compare the p-value with the alpha you are "
        "given": right < 0.01,
        "a queue empty in both the reference and the window gave 0/0 = nan, and nan < alpha is False: leave such a "
        "queue out of the statistic and of the degrees of freedom": p_value(window, size * shares, queues - 1) < alpha,
        "a queue empty in both was left out of the statistic but still counted in the degrees of freedom: use the "
        "queues that are left, minus one": right < alpha if unseen else float(
            scipy.stats.chi2.sf(alarm_statistic(reference, window), queues - 1)) < alpha,
        "a queue the reference never saw was left out: items predicted into a queue the reference never had are a "
        "change, so raise the alarm": unseen_left_out < alpha,
        "the statistic came out smaller than Pearson's goodness of fit (a continuity (Yates) correction, 0.5 taken "
        "off each |observed - expected|? a test of independence, chi2_contingency, that treats the reference as a "
        "sample too?): the statistic is the plain sum of (observed - expected)^2 / expected, the reference's shares "
        "taken as exact": right < alpha if unseen else float(scipy.stats.chi2.sf(
            float(((np.abs(window[seen] - expected_seen) - 0.5) ** 2 / expected_seen).sum()), seen.sum() - 1)) < alpha,
        "that is a G-test (the log-likelihood ratio): the statistic asked is Pearson's chi-square, the sum of "
        "(observed - expected)^2 / expected": right < alpha if unseen else float(scipy.stats.power_divergence(
            window[seen], expected_seen, lambda_="log-likelihood").pvalue) < alpha,
        "scipy.stats.chisquare's ddof=1 took a second degree of freedom away (k - 2): its default, ddof=0, already "
        "gives k - 1": right < alpha if unseen else float(scipy.stats.chisquare(window[seen], expected_seen,
                                                                                 ddof=1).pvalue) < alpha,
        "the alarm rings only on a window that matches the reference almost exactly: chi2.cdf (1 - the p-value), or "
        "the statistic itself, was compared with alpha; the p-value is chi2.sf(statistic, k - 1)":
            right < alpha if unseen else float(scipy.stats.chi2.cdf(alarm_statistic(reference, window),
                                                                    seen.sum() - 1)) < alpha,
        "the expected counts were not exactly the window's size x each queue's reference share, queue by queue "
        "(rounded to whole items? rare queues pooled into one? n - 1 for n?): here each rare queue expects 1.05 "
        "items and is a term of its own":
            right < alpha if unseen else p_value(window[seen], np.round(expected_seen), seen.sum() - 1) < alpha,
    }


def _alarm_value(got) -> bool | None:
    """The learner's answer as a bool (True, False, NumPy's or a one-element bool array or tensor), else None."""
    if isinstance(got, bool | np.bool_):
        return bool(got)
    if isinstance(got, np.ndarray) and got.dtype == np.bool_ and got.size == 1:
        return bool(got.item())
    if isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.numel() == 1:
        return bool(got.item())
    return None


def _as_alarm(report: CheckReport, got, reference_counts, window_counts, description: str) -> bool | None:
    """The learner's answer as a bool (True, False, NumPy's or a 0-d bool tensor), or None and a FIX line."""
    alarm = _alarm_value(got)
    if alarm is not None:
        return alarm
    number = as_tensor(got)
    kind = type(got).__name__
    if number is not None and number.numel() == 1:
        value = float(number.item())
        statistic, p_value = alarm_statistic(reference_counts, window_counts), alarm_p_value(reference_counts,
                                                                                             window_counts)
        if math.isclose(value, statistic, rel_tol=1e-6) and not math.isclose(value, p_value, abs_tol=1e-9):
            report.fail(f"{description}: that is the chi-square statistic ({value:.4f}): return the alarm, True when "
                        "its p-value is below alpha, else False")
        elif math.isclose(value, p_value, rel_tol=1e-6, abs_tol=1e-12):
            report.fail(f"{description}: that is the p-value ({value:.4g}): return the alarm, True when it is "
                        "below alpha, else False")
        else:
            report.fail(f"{description}: return True or False (the alarm), got the {kind} {value:.4g}")
        return None
    report.fail(f"{description}: return True or False (the alarm), got {kind}")
    return None


def _p_shown(p_value: float) -> str:
    """``= 0.0271`` or ``< 0.0001``: tiny p-values differ between machines in their last digits."""
    return f"= {p_value:.4f}" if p_value >= 1e-4 else "< 0.0001"


def _counts_given(values, number: int):
    """The counts as a NumPy array, a tensor, a list, or (counts held as floats, as a sum of one-hot rows gives them)
    a float64 array or tensor, in turn: a checker must accept all five, and only the float ones show a division made
    in place on the caller's counts (``/=`` on an int array raises instead), only a list an item deleted from it.
    The window's kind is 3 steps after the reference's, so every pair differs and the first case with a queue empty
    in both (the one a learner may delete) gives the window as a list."""
    return [np.asarray(values), torch.as_tensor(values), list(values), np.asarray(values, dtype=np.float64),
            torch.as_tensor(values, dtype=torch.float64)][number % 5]


def _counts_now(given) -> list | None:
    """What the caller's counts hold after the learner's call, as a list (None when they cannot be read)."""
    try:
        return given.tolist() if isinstance(given, np.ndarray | torch.Tensor) else list(given)
    except Exception:
        return None


def _later_alarms(queue_mix_alarm, first: int) -> list[bool | None]:
    """The learner's alarms on ``ALARM_CASES[first:]``, quietly (no report lines; None where it raises or answers
    something other than a bool): more evidence for naming the mistake, never a verdict."""
    alarms = []
    for number, (reference_counts, window_counts, alpha, _) in enumerate(ALARM_CASES[first:], start=first):
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                alarms.append(_alarm_value(queue_mix_alarm(_counts_given(reference_counts, number),
                                                           _counts_given(window_counts, number + 3), alpha)))
        except Exception:  # a learner's bug on a later case only means less evidence
            alarms.append(None)
    return alarms


def _the_alarm_mistake(mistakes_per_case: list[dict[str, bool]], alarms: list[bool | None], failing: int) -> str | None:
    """The one mistake whose alarm equals the learner's on the failing case (where it differs from the expected
    one), on every case before it (which the learner passed) and on every later case the learner answered whose
    reference holds items in every queue; None when no mistake, or several, fit. A single alarm is one bit, so the
    failing case alone would let many mistakes fit; later cases with an empty reference queue are left out because
    implementations of one mistake differ there (an early `return True` for a queue the reference never saw, or
    not)."""
    expected = [alarm_reference(*case[:3]) for case in ALARM_CASES]

    def fits(message: str) -> bool:
        if mistakes_per_case[failing][message] == expected[failing]:
            return False
        return all(alarm is None or mistakes_per_case[number][message] == alarm
                   for number, alarm in enumerate(alarms)
                   if number <= failing or 0 not in ALARM_CASES[number][0])

    fitting = [message for message in mistakes_per_case[failing] if fits(message)]
    return fitting[0] if len(fitting) == 1 else None


def check_queue_mix_alarm(queue_mix_alarm) -> CheckReport:
    """``queue_mix_alarm(reference_counts, window_counts, alpha)`` -> whether the window's queue mix moved."""
    report = CheckReport("Queue-mix drift alarm")
    alarms = []
    for number, (reference_counts, window_counts, alpha, description) in enumerate(ALARM_CASES):
        expected = alarm_reference(reference_counts, window_counts, alpha)
        given = {"reference_counts": _counts_given(reference_counts, number),
                 "window_counts": _counts_given(window_counts, number + 3)}
        got = report.call(queue_mix_alarm, *given.values(), alpha, name="queue_mix_alarm")
        if got is Ellipsis:
            if report.lines and "raised" in report.lines[-1]:
                if "sum of the observed frequencies" in report.lines[-1]:
                    report.fail(f"{description}: scipy.stats.chisquare refused expected values that do not add up "
                                "to the window's size: expected counts are the window's size x each queue's "
                                "reference share (neither the shares nor the reference's own counts)")
                elif 0 in reference_counts:
                    report.fail(f"{description}: this is the first case with a queue the reference never saw "
                                f"(reference {reference_counts}, window {window_counts}): give it no expected "
                                "count to divide by; leave it out when the window has none either, and raise the "
                                "alarm when the window has items there")
            return report
        changed = {name: now for name, now in ((name, _counts_now(value)) for name, value in given.items())
                   if now != list(ALARM_CASES[number][0 if name == "reference_counts" else 1])}
        if changed:
            name, now = next(iter(changed.items()))
            report.fail(f"{description}: queue_mix_alarm changed the {name} it was given, in place (they now read "
                        f"{now}): the caller may use them again (the chapter passes one reference_counts for every "
                        "window); work on a copy "
                        "(np.array(x, dtype=float) copies, np.asarray(x, dtype=float) does not when x already is a "
                        "float array)")
            return report
        alarm = _as_alarm(report, got, reference_counts, window_counts, description)
        if alarm is None:
            return report
        alarms.append(alarm)
        p_value = alarm_p_value(reference_counts, window_counts)
        if alarm == expected:
            report.ok(f"{description} (p {_p_shown(p_value)})")
            continue
        mistakes_per_case = [_alarm_mistakes(*case[:3]) for case in ALARM_CASES]
        message = _the_alarm_mistake(mistakes_per_case, alarms + _later_alarms(queue_mix_alarm, number + 1), number)
        report.fail(f"{description}: {message}" if message else
                    f"{description}: got {alarm}, expected {expected}: reference counts {reference_counts}, window "
                    f"counts {window_counts}, alpha {alpha}; the chi-square statistic is "
                    f"{alarm_statistic(reference_counts, window_counts):.4f}, its p-value {p_value:.4g}")
        return report
    return report
