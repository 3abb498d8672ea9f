"""Checkers for the exercises of chapter 20: how many replicas a load needs, what is wrong with a Serve config, and
a client that retries when the service says it is overloaded.

Each checker tries several cases, each one telling a typical mistake from the right answer, and never raises:
whatever the learner returns becomes an ``ok`` or a ``FIX`` line, an error in the learner's code is reported at the
learner's line (``describe_error``).
"""

import copy
import math
from dataclasses import fields

import httpx

from behind_pipeline.checks._core import CheckReport, describe_error
from behind_pipeline.service.settings import ServiceSettings

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: replicas for a peak load, from a measured throughput


def reference_replicas(peak_rps: float, replica_rps: float, utilisation: float = 0.7, min_replicas: int = 1) -> int:
    """The fewest replicas that serve ``peak_rps`` with each replica busy at most ``utilisation`` of its measured
    ``replica_rps``, and never fewer than ``min_replicas``."""
    needed = peak_rps / (replica_rps * utilisation)
    return max(min_replicas, math.ceil(round(needed, 9)))  # round first: 0.7 * 100 / 70 must give 1, not 2


# (peak_rps, replica_rps, utilisation, min_replicas): each case tells one mistake from the right answer
REPLICA_CASES = [
    (100.0, 60.0, 0.7, 1),  # 100 / 42 = 2.38: 3 replicas (rounding gives 2, the floor gives 2)
    (100.0, 60.0, 1.0, 1),  # at full utilisation 1.67: 2 (forgetting the utilisation is what gives this)
    (350.0, 50.0, 0.7, 1),  # exactly 10: 10 (floor + 1 gives 11)
    (5.0, 60.0, 0.7, 2),  # a small load still gets min_replicas (for availability)
    (0.0, 60.0, 0.7, 1),  # no traffic: min_replicas, not 0
    (1000.0, 60.0, 0.5, 1),  # 33.3: 34
    (63.0, 90.0, 0.7, 1),  # exactly 1, but 1.0000000000000002 in floats: a bare math.ceil gives 2
    (100.0, 60.0, 0.7, 2),  # 3: min_replicas is a floor, not replicas added on top (that gives 4)
    (71.4, 50.0, 0.7, 1),  # 2.04: 3 (rounding the quotient to 1 decimal before math.ceil gives 2)
]


def _replica_mistake(answers: dict) -> str:
    """The likely mistake behind wrong answers, named only when it explains every case the learner got wrong."""
    guesses = {
        "rounded to the nearest whole number instead of up (math.ceil): 2.38 replicas need 3":
            lambda p, r, u, m: max(m, round(p / (r * u))),
        "took the floor (int() or //) instead of rounding up: the load left over needs a replica too":
            lambda p, r, u, m: max(m, int(p / (r * u))),
        "left out the utilisation: a replica run at 100% of its measured throughput has no headroom for a burst":
            lambda p, r, u, m: max(m, math.ceil(p / r)),
        "ignored min_replicas: a quiet hour still needs at least min_replicas running":
            lambda p, r, u, m: math.ceil(round(p / (r * u), 9)),
        "added one to the floor: on an exact multiple (350 / 35 = 10) that is one replica too many":
            lambda p, r, u, m: max(m, int(p / (r * u)) + 1),
        "rounded up float noise: 63 / (90 * 0.7) is 1.0000000000000002 in floats, so math.ceil gives 2; round the "
        "quotient (to 9 decimals, say) before math.ceil":
            lambda p, r, u, m: max(m, math.ceil(p / (r * u))),
        "added min_replicas on top of the count: it is a floor (max(min_replicas, ...)), not extra replicas":
            lambda p, r, u, m: m - 1 + max(1, math.ceil(round(p / (r * u), 9))),
        "multiplied by the utilisation instead of dividing by it: headroom means more replicas, not fewer":
            lambda p, r, u, m: max(m, math.ceil(round(p * u / r, 9))),
    }
    for message, guess in guesses.items():  # a guess must give every answer, the right ones too
        if all(guess(*case) == answer for case, answer in answers.items()):
            return message
    return ""


def check_replicas_needed(replicas_needed) -> CheckReport:
    report = CheckReport("Exercise 1 (replicas for a peak load)")
    answers = {}
    for case in REPLICA_CASES:
        answer = report.call(replicas_needed, *case, name="replicas_needed")
        if answer is Ellipsis:
            return report
        if isinstance(answer, bool) or not isinstance(answer, int):
            report.fail(f"replicas_needed{case} returned {answer!r} ({type(answer).__name__}): a replica count is "
                        "a whole number (int); math.ceil returns one")
            return report
        answers[case] = answer
    wrong = [case for case, answer in answers.items() if answer != reference_replicas(*case)]
    for case in wrong:
        report.fail(f"replicas_needed{case} returned {answers[case]}, expected {reference_replicas(*case)}")
    if wrong:
        mistake = _replica_mistake(answers)
        if mistake:
            report.fail(f"likely mistake: you {mistake}")
    else:
        report.ok(f"the right count in all {len(REPLICA_CASES)} cases (rounded up, with headroom and the minimum)")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: a Serve config validator

PROBLEMS = ("replica_bounds", "replicas_and_autoscaling", "does_not_fit", "oversubscribed", "batching")

# What Ray Serve 2.60 autoscales with for num_replicas="auto" (AutoscalingConfig.default()); the fields an
# autoscaling_config sets override these
RAY_AUTO_DEFAULTS = {"min_replicas": 1, "max_replicas": 100}
# The threads a replica's forward pass uses when neither user_config nor the application's settings say (2)
SERVICE_THREADS = next(field.default for field in fields(ServiceSettings) if field.name == "threads")


def _deployment(config: dict) -> dict:
    return config["applications"][0]["deployments"][0]


def _service_threads(config: dict) -> int:
    """The torch threads a replica runs when user_config does not say: the application's ``args["settings"]``
    (chapter 18's ServiceSettings), else ServiceSettings' default."""
    settings = config["applications"][0].get("args", {}).get("settings", {})
    return settings.get("threads", SERVICE_THREADS)


def reference_problems(config: dict, cpus_per_node: int, nodes: int) -> set[str]:
    """The checker's reference: the names (from PROBLEMS) of everything wrong with the config's one deployment."""
    deployment = _deployment(config)
    found = set()
    autoscaling = deployment.get("autoscaling_config")
    replicas = deployment.get("num_replicas")
    if autoscaling is not None and isinstance(replicas, int):
        found.add("replicas_and_autoscaling")
    if replicas == "auto":  # Ray's own autoscaling defaults, under whatever autoscaling_config sets
        autoscaling = {**RAY_AUTO_DEFAULTS, **(autoscaling or {})}
    if autoscaling is not None:
        low, high = autoscaling.get("min_replicas", 1), autoscaling.get("max_replicas", 1)
        start = autoscaling.get("initial_replicas", low)
        if not 0 <= low <= start <= high or high < 1:
            found.add("replica_bounds")
        most = high
    else:
        most = replicas if isinstance(replicas, int) else 1
    cpus = deployment.get("ray_actor_options", {}).get("num_cpus", 1)
    per_node = math.floor(cpus_per_node / cpus) if cpus > 0 else most
    if most > per_node * nodes:  # a replica lives on one node: whole replicas per node, not total CPUs
        found.add("does_not_fit")
    user = deployment.get("user_config", {})
    if user.get("threads", _service_threads(config)) > cpus:  # left out: reconfigure keeps the service's setting
        found.add("oversubscribed")
    if "max_batch_size" in user:
        size = user["max_batch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            found.add("batching")
    if "batch_wait_timeout_s" in user and not 0 <= user["batch_wait_timeout_s"] <= 1:
        found.add("batching")
    return found


def _base_config() -> dict:
    return {"applications": [{"name": "classifier", "import_path": "behind_pipeline.service.ray_app:build",
                              "deployments": [{"name": "Classifier",
                                               "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1,
                                                                      "max_replicas": 2},
                                               "ray_actor_options": {"num_cpus": 1},
                                               "user_config": {"max_batch_size": 32, "batch_wait_timeout_s": 0.005,
                                                               "threads": 1}}]}]}


def _variant(changes: dict, drop: tuple = ()) -> dict:
    """The book's config with ``changes`` merged into its deployment, and the keys in ``drop`` removed: a name
    (``"autoscaling_config"``) or a path (``("autoscaling_config", "initial_replicas")``)."""
    config = copy.deepcopy(_base_config())
    deployment = _deployment(config)
    for key in drop:
        if isinstance(key, tuple):
            deployment[key[0]].pop(key[1])
        else:
            deployment.pop(key)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(deployment.get(key), dict):
            deployment[key] = {**deployment[key], **value}
        else:
            deployment[key] = value
    return config


def _with_settings(config: dict, settings: dict) -> dict:
    config["applications"][0]["args"] = {"settings": settings}
    return config


def _minimal() -> dict:
    """A deployment with nothing but its name: every setting at its default."""
    return {"applications": [{"name": "classifier", "import_path": "behind_pipeline.service.ray_app:build",
                              "deployments": [{"name": "Classifier"}]}]}


# (what the case is, config, cpus_per_node, nodes)
CONFIG_CASES = [
    ("the book's config on 2 cores", _variant({}), 2, 1),
    ("initial_replicas above max_replicas", _variant({"autoscaling_config": {"initial_replicas": 3}}), 4, 1),
    ("min_replicas above max_replicas", _variant({"autoscaling_config": {"min_replicas": 3}}), 8, 1),
    ("num_replicas and autoscaling together", _variant({"num_replicas": 2}), 2, 1),
    ("6 replicas of 1 CPU on 2 nodes of 2 CPUs", _variant({"autoscaling_config": {"max_replicas": 6}}), 2, 2),
    ("3 replicas of 2 CPUs on 2 nodes of 3 CPUs (6 CPUs, but one replica a node)",
     _variant({"autoscaling_config": {"max_replicas": 3}, "ray_actor_options": {"num_cpus": 2},
               "user_config": {"threads": 2}}), 3, 2),
    ("a fixed num_replicas that fits", _variant({"num_replicas": 4}, drop=("autoscaling_config",)), 2, 2),
    ("a fixed num_replicas that does not fit", _variant({"num_replicas": 5}, drop=("autoscaling_config",)), 2, 2),
    ("4 threads on 1 CPU", _variant({"user_config": {"threads": 4}}), 2, 1),
    ("max_batch_size 0", _variant({"user_config": {"max_batch_size": 0}}), 2, 1),
    ("a 5 s batch wait", _variant({"user_config": {"batch_wait_timeout_s": 5.0}}), 2, 1),
    ("two problems at once", _variant({"autoscaling_config": {"min_replicas": 0, "initial_replicas": 3},
                                        "user_config": {"threads": 2}}), 2, 1),
    ("a negative min_replicas", _variant({"autoscaling_config": {"min_replicas": -1, "initial_replicas": 1}}), 2, 1),
    ("max_replicas 0 (min and initial 0 too)",
     _variant({"autoscaling_config": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 0}}), 2, 1),
    ("no initial_replicas, min_replicas 2: it starts at 2",
     _variant({"autoscaling_config": {"min_replicas": 2, "max_replicas": 3}},
              drop=(("autoscaling_config", "initial_replicas"),)), 4, 1),
    ("scale to zero (min_replicas 0) is allowed",
     _variant({"autoscaling_config": {"min_replicas": 0, "initial_replicas": 0}}), 2, 1),
    ("a deployment with nothing but its name: 1 CPU, and the service's 2 threads", _minimal(), 2, 1),
    ("no threads in user_config, 1 in the application's settings",
     _with_settings(_variant({}, drop=(("user_config", "threads"),)), {"threads": 1}), 2, 1),
    ("no threads in user_config: the service's 2 on 1 CPU", _variant({}, drop=(("user_config", "threads"),)), 2, 1),
    ('num_replicas "auto" with its autoscaling_config', _variant({"num_replicas": "auto"}), 2, 1),
    ('num_replicas "auto" alone: Ray\'s max_replicas 100',
     _variant({"num_replicas": "auto"}, drop=("autoscaling_config",)), 8, 2),
    ("max_batch_size 8.0 (a float)", _variant({"user_config": {"max_batch_size": 8.0}}), 2, 1),
    ("a negative batch wait", _variant({"user_config": {"batch_wait_timeout_s": -0.01}}), 2, 1),
    ("no batch wait (0 s) is allowed",
     _variant({"user_config": {"batch_wait_timeout_s": 0}}), 2, 1),
    ("a 1 s batch wait", _variant({"user_config": {"batch_wait_timeout_s": 1}}), 2, 1),
]

HINTS = {
    "does_not_fit": "a replica runs on one node: count whole replicas per node (cpus_per_node // num_cpus) times "
                    "the nodes, not the total CPUs divided by num_cpus; and with no autoscaling_config the count "
                    "is num_replicas (\"auto\": up to max_replicas, 100 unless autoscaling_config says)",
    "replica_bounds": "autoscaling needs 0 <= min_replicas <= initial_replicas <= max_replicas and max_replicas >= "
                      "1 (initial_replicas defaults to min_replicas; min_replicas and max_replicas to 1; with "
                      "num_replicas \"auto\", Ray's defaults are min 1, max 100)",
    "replicas_and_autoscaling": "a deployment takes an integer num_replicas or autoscaling_config, not both "
                                "(num_replicas \"auto\" with an autoscaling_config is allowed)",
    "oversubscribed": "a replica's torch threads above its ray_actor_options num_cpus fight for cores Ray gave to "
                      "others; threads left out of user_config are the service's own setting (the application's "
                      f"args settings, else ServiceSettings' {SERVICE_THREADS})",
    "batching": "max_batch_size, when set, is a whole number (an int, not 8.0) of at least 1, and "
                "batch_wait_timeout_s, when set, is between 0 and 1 s, both ends allowed",
}


def check_config_problems(config_problems) -> CheckReport:
    report = CheckReport("Exercise 2 (a Serve config validator)")
    all_right = True
    for what, config, cpus_per_node, nodes in CONFIG_CASES:
        given = copy.deepcopy(config)
        answer = report.call(config_problems, given, cpus_per_node, nodes, name="config_problems")
        if answer is Ellipsis:
            return report
        answer = report.collection(answer, set, f"config_problems returned {type(answer).__name__}: return a set "
                                                "of problem names")
        if answer is None:
            return report
        unknown = answer - set(PROBLEMS)
        if unknown:
            report.fail(f"{what}: unknown problem names {sorted(map(str, unknown))}; use names from {PROBLEMS}")
            return report
        if given != config:
            report.fail(f"{what}: config_problems changed the config it was given; a validator only reads")
            all_right = False
        expected = reference_problems(config, cpus_per_node, nodes)
        if answer != expected:
            all_right = False
            missed, extra = expected - answer, answer - expected
            report.fail(f"{what} ({cpus_per_node} CPUs x {nodes} nodes): returned {sorted(answer)}, expected "
                        f"{sorted(expected)}"
                        + "".join(f"; missed {name}: {HINTS[name]}" for name in sorted(missed))
                        + "".join(f"; {name} is not a problem here: {HINTS[name]}" for name in sorted(extra)))
    if all_right:
        report.ok(f"the right problems in all {len(CONFIG_CASES)} configs, and the configs left as they were")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: a client that retries on 503 / 429, waiting what Retry-After says


class FakeResponse:
    """What ``send`` returns in the checker: a response with httpx's ``status_code`` and ``headers`` (httpx's own
    Headers: names in any case, ``.get`` with a default)."""

    def __init__(self, status_code: int, retry_after: str | None = None):
        self.status_code = status_code
        self.headers = httpx.Headers({} if retry_after is None else {"Retry-After": retry_after})

    def __repr__(self) -> str:
        return f"<response {self.status_code}>"


class TooManySends(Exception):
    """Raised by the checker's ``send`` past any sensible number of attempts: a retry loop that never stops."""


def reference_retry(send, body, max_attempts: int = 4, backoff_s: float = 0.1, sleep=None):
    """The checker's reference: retry 503 and 429 only, waiting Retry-After (or the backoff, doubled each time)."""
    response = None
    for attempt in range(max_attempts):
        response = send(body)
        if response.status_code not in (429, 503) or attempt == max_attempts - 1:
            return response
        header = response.headers.get("Retry-After")
        sleep(float(header) if header is not None else backoff_s * 2**attempt)
    return response


# (what the case is, the statuses and Retry-After values the service answers with in turn, max_attempts)
RETRY_CASES = [
    ("a 200 at once", [(200, None)], 4),
    ("a 503 with Retry-After: 2, then a 200", [(503, "2"), (200, None)], 4),
    ("a 503 without Retry-After, twice, then a 200", [(503, None), (503, None), (200, None)], 4),
    ("a 429 with Retry-After: 1, then a 200", [(429, "1"), (200, None)], 4),
    ("a 422 (bad input: retrying cannot help)", [(422, None)], 4),
    ("a 413", [(413, None)], 4),
    ("503 every time, max_attempts 3", [(503, "1")] * 10, 3),
    ("503 every time, max_attempts 1", [(503, "1")] * 10, 1),
    ("a 503 without Retry-After, three times, then a 200", [(503, None)] * 3 + [(200, None)], 4),
    ("a 503 with Retry-After: 1, then one without, then a 200", [(503, "1"), (503, None), (200, None)], 4),
    ("a 503 with Retry-After: 0 (try again now), then a 200", [(503, "0"), (200, None)], 4),
    ("a 500 (a bug in the service: retrying does not fix it)", [(500, None), (200, None)], 4),
    ("a 503, then a 429, max_attempts 2", [(503, "1"), (429, "3"), (200, None)], 2),
]


def _run_retry(function, answers, max_attempts, report: CheckReport, name: str):
    """Run the learner's retry against a scripted service; (response, bodies sent, waits) or Ellipsis."""
    sent, waits = [], []
    script = [FakeResponse(status, retry) for status, retry in answers]

    def send(body):
        sent.append(body)
        if len(sent) > 50:
            raise TooManySends(f"send was called {len(sent)} times")
        return script[min(len(sent), len(script)) - 1]

    def sleep(seconds):
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"sleep() takes seconds as a number, got {type(seconds).__name__} {seconds!r}: "
                            "the Retry-After header is text, convert it with float(...)")
        waits.append(float(seconds))

    body = {"texts": "A gorgeous, moving film."}
    sent_responses = []

    def send_and_keep(body):
        answer = send(body)
        sent_responses.append(answer)
        return answer

    try:
        response = function(send_and_keep, body, max_attempts=max_attempts, backoff_s=0.1, sleep=sleep)
    except TooManySends:
        report.fail(f"{name}: post_with_retries kept sending (over 50 times) with max_attempts={max_attempts}: "
                    "stop after max_attempts sends in all")
        return Ellipsis
    except Exception as error:
        report.fail(f"{name}: post_with_retries raised {describe_error(error)}")
        return Ellipsis
    if any(item is not body for item in sent):
        report.fail(f"{name}: send should get the body it was given, unchanged, on every attempt")
        return Ellipsis
    return response, len(sent), waits, sent_responses


def check_post_with_retries(post_with_retries) -> CheckReport:
    report = CheckReport("Exercise 3 (retries with Retry-After)")
    if not report.answered(post_with_retries, "post_with_retries") or not callable(post_with_retries):
        if post_with_retries is not Ellipsis and post_with_retries is not None:
            report.fail("post_with_retries should be a function")
        return report
    all_right = True
    for what, answers, max_attempts in RETRY_CASES:
        outcome = _run_retry(post_with_retries, answers, max_attempts, report, what)
        if outcome is Ellipsis:
            return report
        response, sends, waits, responses = outcome
        expected_waits = []
        expected = reference_retry(_scripted(answers, []), None, max_attempts, 0.1, expected_waits.append)
        expected_sends = len(expected_waits) + 1
        problems = []
        if response is None:
            problems.append("returned None: return the last response")
        elif not isinstance(response, FakeResponse) or response.status_code != expected.status_code:
            problems.append(f"returned {response!r}, expected the last response, {expected!r}")
        elif responses and response is not responses[-1]:
            problems.append(f"returned an earlier response, not the last one received ({responses[-1]!r}): the "
                            "caller must see the answer that ended the retries")
        if sends != expected_sends:
            problems.append(f"sent {sends} time(s), expected {expected_sends}"
                            + (": a 4xx other than 429 is the client's mistake; sending it again gets the same "
                               "answer" if answers[0][0] in (413, 422) and sends > 1 else "")
                            + (": max_attempts counts every send, the first one too" if sends == max_attempts + 1
                               else "")
                            + (": a 500 is a bug in the service, not a busy moment; only 429 and 503 say 'try "
                               "again later'" if answers[0][0] == 500 and sends > 1 else ""))
        if sends == expected_sends and [round(wait, 6) for wait in waits] != [round(w, 6) for w in expected_waits]:
            hint = ""
            if len(waits) == len(expected_waits) + 1:
                hint = ": no wait after the last attempt (nothing follows it)"
            elif any(header == "0" for _, header in answers[:sends]):
                hint = (": Retry-After: 0 means try again at once (wait 0 s); test the header with `is not None`, "
                        "not its truth value or the number's")
            elif any(header for _, header in answers[:sends]) and any(
                    header is None for _, header in answers[:sends - 1]):
                hint = (": the backoff counts every attempt (backoff_s * 2**attempt), also the ones that waited "
                        "what Retry-After said")
            elif any(header for _, header in answers[:sends]):
                hint = ": wait the seconds the Retry-After header says when there is one"
            else:
                hint = ": without Retry-After, wait backoff_s, then twice that, and so on (doubling, not adding)"
            problems.append(f"waited {waits}, expected {expected_waits}{hint}")
        if problems:
            all_right = False
            report.fail(f"{what}: " + "; ".join(problems))
    if all_right:
        report.ok(f"all {len(RETRY_CASES)} scripted services: retried only 429 and 503, waited what Retry-After said "
                  "(or the doubling backoff), stopped at max_attempts, returned the last response")
    return report


def _scripted(answers, sent):
    script = [FakeResponse(status, retry) for status, retry in answers]

    def send(body):
        sent.append(body)
        return script[min(len(sent), len(script)) - 1]

    return send
