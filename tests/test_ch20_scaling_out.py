"""Chapter 20: a Ray Serve start that never gets ready, the config files, the comparison's table, and checkers
that accept right answers and name the typical wrong ones.

Ray Serve's parity with pipeline(), its refusals, its batching, its clean stop and the two-machine launch are
asserted in notebooks/20_scaling_out.ipynb (nbval), not a second time here.
"""

import copy
import math
import time

import pytest
import torch

from behind_pipeline.checks.ch20_scaling_out import (
    CONFIG_CASES,
    FakeResponse,
    check_config_problems,
    check_post_with_retries,
    check_replicas_needed,
    reference_problems,
    reference_replicas,
    reference_retry,
)

from checker_asserts import ODD_ANSWERS, assert_rejected, assert_reported, failures

ray_app = pytest.importorskip("behind_pipeline.service.ray_app")

# ---------------------------------------------------------------------------------------------------------------
# Ray Serve on loopback


# Ray Serve's parity with pipeline(), its refusals against chapter 18's, concurrent texts sharing forward passes
# and a stop that leaves no process are asserted once, in the chapter's notebook (nbval runs it in `make test` and
# `make check CH=20`): starting Ray costs about 40 s, so the unit tests do not start it a second time. What the
# notebook does not show is checked here: a start that never gets ready.


def test_a_start_that_never_gets_ready_is_stopped_in_bounded_time():
    """A replica asking for 4 CPUs on a 2-CPU Ray is never placed: the start gives up after its timeout, and
    stops what it started."""
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="not ready within"):
        ray_app.start_ray_serve(replicas=1, threads=4, timeout_s=20)
    assert time.monotonic() - began < 20 + ray_app.STOP_TIMEOUT_S + 15


def test_the_port_chosen_for_serve_avoids_the_ports_ray_takes_for_itself(monkeypatch):
    from ray._private import ray_constants
    from ray.serve._private import constants as serve_constants

    from behind_pipeline import runtime

    assert ray_app.RAY_OWN_PORTS == {ray_constants.DEFAULT_PORT, ray_constants.DEFAULT_DASHBOARD_PORT,
                                     ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT,
                                     serve_constants.DEFAULT_HTTP_PORT, serve_constants.DEFAULT_GRPC_PORT}
    drawn = iter([52365, 8265, 40123])  # what the kernel hands out, one bind after the other

    class Probe:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(drawn)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(runtime.socket, "socket", Probe)
    assert runtime.free_port(avoid=ray_app.RAY_OWN_PORTS) == 40123


# ---------------------------------------------------------------------------------------------------------------
# The config files


def test_the_serve_config_is_valid_for_this_machine():
    config = ray_app.read_config()
    assert reference_problems(config, 2, 1) == set()
    options = ray_app.deployment_options(config)
    assert options["autoscaling_config"]["max_replicas"] * options["ray_actor_options"]["num_cpus"] <= 2
    assert options["user_config"]["threads"] == options["ray_actor_options"]["num_cpus"]


def test_deployment_options_fix_replicas_and_share_the_cores():
    config = ray_app.read_config()
    options = ray_app.deployment_options(config, replicas=2, threads=1)
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    assert options["ray_actor_options"]["num_cpus"] == options["user_config"]["threads"] == 1
    assert "name" not in options
    assert ray_app.read_config() == config  # the file's config is not changed by building options


def test_the_serve_config_is_one_serve_accepts():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(ray_app.read_config()) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(ray_app.read_config())


def test_the_accelerate_config_says_what_the_two_launch_lines_say():
    from behind_pipeline import scale_out

    config = scale_out.read_accelerate_config()
    command = scale_out.machine_command(1, 29500, scale_out.distributed.OUTPUT_DIR / "two_machines.json")

    def flag(name):
        return command[command.index(f"--{name}") + 1]

    assert config["num_machines"] == int(flag("num_machines")) == scale_out.MACHINES
    assert config["num_processes"] == int(flag("num_processes"))
    assert config["main_process_ip"] == flag("main_process_ip")
    assert config["rdzv_backend"] == flag("rdzv_backend") and config["same_network"] and "--same_network" in command
    assert config["distributed_type"] == "MULTI_GPU" and "--multi_gpu" in command and "--cpu" not in command
    assert int(flag("machine_rank")) == 1


# The two-machine launch and its gradients against one process: asserted in the chapter's notebook.


# ---------------------------------------------------------------------------------------------------------------
# The comparison's table (the figures come from make bench-ray)


def _section(failed=0):
    figures = {"label": "Ray Serve, 1 replica", "replicas": 1, "threads_per_replica": 2,
               "latency_batch_8": {"median_ms": 40.0, "median_ms_sd": 1.0, "p95_ms": 50.0, "p95_ms_sd": 2.0},
               "throughput": {"texts_per_second": 90.0, "texts_per_second_sd": 3.0,
                              "runs": [{"failed": failed}]},
               "start_seconds": {"mean": 9.5, "sd": 0.5}, "memory_mib": {"mean": 1200.0, "sd": 10.0}}
    return {"date": "2026-12-06", "run": "full", "versions": {"ray": "2.60.0"},
            "settings": {"batch": 8, "clients": 16, "repeats": 3, "max_batch_size": 32,
                         "batch_wait_timeout_s": 0.005},
            "systems": {"ray_1": figures}}


def test_the_table_shows_every_figure_with_its_spread():
    from behind_pipeline.service.ray_bench import table_lines

    row = table_lines(_section())[-1]
    for figure in ("1 x 2", "9.5 ± 0.5", "1200 ± 10", "40.0 ± 1.0 / 50.0 ± 2.0", "90.0 ± 3.0"):
        assert figure in row, row
    assert "failed" not in row
    assert "(2 failed)" in table_lines(_section(failed=2))[-1]
    assert table_lines({}) == ["Not measured yet: run `make bench-ray`."]


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: replicas for a peak load


def test_replicas_checker_accepts_the_reference_and_an_integer_division():
    assert check_replicas_needed(reference_replicas).passed

    def with_fractions(peak_rps, replica_rps, utilisation=0.7, min_replicas=1):
        from fractions import Fraction

        needed = Fraction(peak_rps) / (Fraction(replica_rps) * Fraction(str(utilisation)))
        return max(min_replicas, math.ceil(needed))

    assert check_replicas_needed(with_fractions).passed


def test_replicas_checker_rejects_rounding_to_the_nearest():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: max(m, round(p / (r * u)))), "rounded")


def test_replicas_checker_rejects_the_floor():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: max(m, int(p / (r * u)))), "floor")


def test_replicas_checker_rejects_no_headroom():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: max(m, math.ceil(p / r))), "utilisation")


def test_replicas_checker_rejects_ignoring_the_minimum():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: math.ceil(round(p / (r * u), 9))), "min_replicas")


def test_replicas_checker_rejects_floor_plus_one():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: max(m, int(p / (r * u)) + 1)), "exact multiple")


def test_replicas_checker_rejects_a_bare_ceil_of_float_noise():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: max(m, math.ceil(p / (r * u)))), "float noise")


def test_replicas_checker_rejects_min_replicas_added_on_top():
    answer = lambda p, r, u=0.7, m=1: m - 1 + max(1, math.ceil(round(p / (r * u), 9)))  # noqa: E731
    assert_rejected(check_replicas_needed(answer), "on top")


def test_replicas_checker_rejects_rounding_too_coarsely_before_the_ceil():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: max(m, math.ceil(round(p / (r * u), 1)))), "71.4")


def test_replicas_checker_rejects_a_float_count():
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: float(reference_replicas(p, r, u, m))), "int")


def test_replicas_checker_rejects_a_bare_ceil_that_divides_twice():
    """p / r / u is noisy on other cases than p / (r * u): 245 / 50 / 0.7 is 7.000000000000001."""
    assert_rejected(check_replicas_needed(lambda p, r, u=0.7, m=1: max(m, math.ceil(p / r / u))), "245",
                    "float noise")


@pytest.mark.parametrize("digits", [2, 3])
def test_replicas_checker_rejects_rounding_to_a_few_decimals(digits):
    def rounded(p, r, u=0.7, m=1):
        return max(m, math.ceil(round(p / (r * u), digits)))

    assert_rejected(check_replicas_needed(rounded), "100.01", "too few decimals")


@pytest.mark.parametrize(("utilisation", "min_replicas"), [(0.8, 1), (0.6, 1), (1.0, 1), (0.7, 0)])
def test_replicas_checker_rejects_a_wrong_default(utilisation, min_replicas):
    def with_defaults(peak_rps, replica_rps, utilisation=utilisation, min_replicas=min_replicas):
        return reference_replicas(peak_rps, replica_rps, utilisation, min_replicas)

    assert_rejected(check_replicas_needed(with_defaults), "the defaults are utilisation=0.7 and min_replicas=1")


def test_replicas_checker_accepts_other_ways_past_float_noise():
    from decimal import Decimal

    def with_epsilon(peak_rps, replica_rps, utilisation=0.7, min_replicas=1):
        return max(min_replicas, math.ceil(peak_rps / (replica_rps * utilisation) - 1e-9))

    def with_decimals(peak_rps, replica_rps, utilisation=0.7, min_replicas=1):
        needed = Decimal(str(peak_rps)) / (Decimal(str(replica_rps)) * Decimal(str(utilisation)))
        return max(min_replicas, math.ceil(needed))

    assert check_replicas_needed(with_epsilon).passed
    assert check_replicas_needed(with_decimals).passed


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: a Serve config validator


def _without(problem):
    def answer(config, cpus_per_node, nodes):
        return reference_problems(config, cpus_per_node, nodes) - {problem}

    return answer


def test_config_checker_accepts_the_reference_and_a_list():
    assert check_config_problems(reference_problems).passed
    assert check_config_problems(lambda c, cpus, nodes: sorted(reference_problems(c, cpus, nodes))).passed


def test_config_checker_rejects_counting_total_cpus():
    def total_cpus(config, cpus_per_node, nodes):
        found = reference_problems(config, cpus_per_node, nodes) - {"does_not_fit"}
        deployment = config["applications"][0]["deployments"][0]
        most = deployment.get("autoscaling_config", {}).get("max_replicas", deployment.get("num_replicas", 1))
        if most * deployment["ray_actor_options"]["num_cpus"] > cpus_per_node * nodes:
            found.add("does_not_fit")
        return found

    assert_rejected(check_config_problems(total_cpus), "does_not_fit", "per node")


def test_config_checker_rejects_ignoring_initial_replicas():
    def min_max_only(config, cpus_per_node, nodes):
        found = reference_problems(config, cpus_per_node, nodes) - {"replica_bounds"}
        autoscaling = config["applications"][0]["deployments"][0].get("autoscaling_config")
        if autoscaling and autoscaling["min_replicas"] > autoscaling["max_replicas"]:
            found.add("replica_bounds")
        return found

    assert_rejected(check_config_problems(min_max_only), "initial_replicas")


@pytest.mark.parametrize("problem", ["replicas_and_autoscaling", "oversubscribed", "batching"])
def test_config_checker_rejects_a_missing_rule(problem):
    assert_rejected(check_config_problems(_without(problem)), f"missed {problem}")


def test_config_checker_rejects_a_validator_that_changes_the_config():
    def pops(config, cpus_per_node, nodes):
        found = reference_problems(copy.deepcopy(config), cpus_per_node, nodes)
        config["applications"][0]["deployments"][0].pop("user_config", None)
        return found

    assert_rejected(check_config_problems(pops), "changed the config")


def _validator(no_lower_bound=False, no_max_rule=False, initial_default_one=False, indexes_keys=False,
               float_batch_ok=False, int_batch_only=False, negative_wait_ok=False, strict_wait=False,
               auto_ignored=False, threads_default_one=False, zero_min_refused=False, floor_division=False,
               keys_present=False, auto_defaults_only_alone=False, zero_replicas_ok=False):
    """A validator written the checker's way but for one typical mistake, switched on by name."""

    def config_problems(config, cpus_per_node, nodes):
        deployment = config["applications"][0]["deployments"][0]
        if indexes_keys:  # what a learner writes who never saw a key left out
            _ = deployment["ray_actor_options"]["num_cpus"], deployment["user_config"]["threads"]
        found = set()
        autoscaling = deployment.get("autoscaling_config")
        replicas = deployment.get("num_replicas")
        if keys_present:  # a key set to null (left empty in the YAML) counted as set
            if "autoscaling_config" in deployment and "num_replicas" in deployment and replicas != "auto":
                found.add("replicas_and_autoscaling")
        elif autoscaling is not None and replicas is not None and not (auto_ignored and replicas == "auto"):
            if isinstance(replicas, int) or auto_ignored:
                found.add("replicas_and_autoscaling")
        if isinstance(replicas, int) and replicas < 1 and not zero_replicas_ok:
            found.add("replica_bounds")
        if replicas == "auto" and not auto_ignored and not (auto_defaults_only_alone and autoscaling is not None):
            autoscaling = {"min_replicas": 1, "max_replicas": 100, **(autoscaling or {})}
        if autoscaling is not None:
            low, high = autoscaling.get("min_replicas", 1), autoscaling.get("max_replicas", 1)
            start = autoscaling.get("initial_replicas", 1 if initial_default_one else low)
            in_order = (low <= start <= high) if no_lower_bound else (0 <= low <= start <= high)
            if not in_order or (high < 1 and not no_max_rule) or (zero_min_refused and low == 0):
                found.add("replica_bounds")
            most = high
        else:
            most = replicas if isinstance(replicas, int) else 1
        cpus = deployment.get("ray_actor_options", {}).get("num_cpus", 1)
        per_node = cpus_per_node // cpus if floor_division else math.floor(round(cpus_per_node / cpus, 9))
        if most > per_node * nodes:
            found.add("does_not_fit")
        user = deployment.get("user_config", {})
        settings = config["applications"][0].get("args", {}).get("settings", {})
        if user.get("threads", 1 if threads_default_one else settings.get("threads", 2)) > cpus:
            found.add("oversubscribed")
        size = user.get("max_batch_size", 1)
        if int_batch_only:
            whole = isinstance(size, int)
        elif float_batch_ok:
            whole = isinstance(size, int | float)
        else:
            whole = isinstance(size, int) or (isinstance(size, float) and size.is_integer())
        if isinstance(size, bool) or not whole or size < 1:
            found.add("batching")
        wait = user.get("batch_wait_timeout_s", 0.5)
        if strict_wait:
            wrong_wait = not 0 < wait < 1
        else:
            wrong_wait = wait > 1 if negative_wait_ok else not 0 <= wait <= 1
        if wrong_wait:
            found.add("batching")
        return found

    return config_problems


def test_config_validator_without_mistakes_is_the_reference():
    assert check_config_problems(_validator()).passed


@pytest.mark.parametrize(("mistake", "named"), [
    ("no_lower_bound", "0 <= min_replicas"),
    ("no_max_rule", "max_replicas >= 1"),
    ("initial_default_one", "initial_replicas defaults to min_replicas"),
    ("indexes_keys", "KeyError"),
    ("float_batch_ok", "not 8.5"),
    ("int_batch_only", "8.0"),
    ("negative_wait_ok", "between 0 and 1 s"),
    ("strict_wait", "both ends allowed"),
    ("auto_ignored", '"auto"'),
    ("threads_default_one", "ServiceSettings' 2"),
    ("zero_min_refused", "0 <= min_replicas"),
    ("floor_division", "2 // 0.1 is 19.0"),
    ("keys_present", "null is as good as left out"),
    ("auto_defaults_only_alone", "under what autoscaling_config sets"),
    ("zero_replicas_ok", "num_replicas is at least 1"),
])
def test_config_checker_rejects_a_typical_mistake(mistake, named):
    assert_rejected(check_config_problems(_validator(**{mistake: True})), named)


def test_config_checker_rejects_unknown_names():
    assert_rejected(check_config_problems(lambda c, cpus, nodes: {"too_big"}), "unknown problem names")


@pytest.mark.parametrize("kind", [str, dict])
def test_config_checker_rejects_a_name_or_a_dict_for_a_set(kind):
    """set("batching") would be its letters and set({...}) its keys: both are named, not taken apart."""
    def answer(config, cpus_per_node, nodes):
        found = reference_problems(config, cpus_per_node, nodes)
        return ",".join(sorted(found)) if kind is str else {name: True for name in found}

    assert_rejected(check_config_problems(answer), f"returned {kind.__name__}", "return a set of problem names")


def test_config_cases_each_expect_what_they_describe():
    named = {what: reference_problems(config, cpus, nodes) for what, config, cpus, nodes in CONFIG_CASES}
    assert named["the book's config on 2 cores"] == set()
    assert named["3 replicas of 2 CPUs on 2 nodes of 3 CPUs (6 CPUs, but one replica a node)"] == {"does_not_fit"}
    assert named["two problems at once"] == {"replica_bounds", "oversubscribed"}
    assert named["20 replicas of 0.1 CPU on 2 CPUs: all fit (2 // 0.1 is 19.0 in floats)"] == {"oversubscribed"}
    assert named["num_replicas 0 (Ray refuses it; scale to zero is min_replicas 0)"] == {"replica_bounds"}


def test_config_cases_agree_with_rays_own_validation():
    """Ray Serve refuses a case's config (its schema, or the autoscaling config it builds, merged with its own
    defaults for num_replicas "auto") exactly when the reference finds replica_bounds or replicas_and_autoscaling."""
    from ray.serve._private.config import handle_num_replicas_auto
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    def ray_refuses(config):
        deployment = config["applications"][0]["deployments"][0]
        try:
            ServeDeploySchema.model_validate(config)
            if deployment.get("num_replicas") == "auto":
                handle_num_replicas_auto(64, deployment.get("autoscaling_config"))
            elif deployment.get("autoscaling_config") is not None:
                AutoscalingConfig(**deployment["autoscaling_config"])
        except ValueError:  # pydantic's ValidationError is a ValueError
            return True
        return False

    refused = {what for what, config, cpus, nodes in CONFIG_CASES if ray_refuses(config)}
    found = {what for what, config, cpus, nodes in CONFIG_CASES
             if reference_problems(config, cpus, nodes) & {"replica_bounds", "replicas_and_autoscaling"}}
    assert refused == found
    assert len(refused) >= 5


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: retries with Retry-After


def test_retry_checker_accepts_the_reference():
    assert check_post_with_retries(reference_retry).passed


def _retry(retry_statuses=(429, 503), use_header=True, sleep_after_last=False, extra_attempt=False,
           header_as_text=False):
    def post_with_retries(send, body, max_attempts=4, backoff_s=0.1, sleep=time.sleep):
        attempts = max_attempts + 1 if extra_attempt else max_attempts
        response = None
        for attempt in range(attempts):
            response = send(body)
            last = attempt == attempts - 1
            if response.status_code not in retry_statuses or (last and not sleep_after_last):
                return response
            header = response.headers.get("Retry-After") if use_header else None
            if header is not None:
                sleep(header if header_as_text else float(header))
            else:
                sleep(backoff_s * 2**attempt)
        return response

    return post_with_retries


def test_retry_checker_rejects_retrying_a_bad_request():
    assert_rejected(check_post_with_retries(_retry(retry_statuses=range(400, 600))), "4xx other than 429")


def test_retry_checker_rejects_ignoring_retry_after():
    assert_rejected(check_post_with_retries(_retry(use_header=False)), "Retry-After")


def test_retry_checker_rejects_a_wait_after_the_last_attempt():
    assert_rejected(check_post_with_retries(_retry(sleep_after_last=True)), "after the last attempt")


def test_retry_checker_rejects_one_attempt_too_many():
    assert_rejected(check_post_with_retries(_retry(extra_attempt=True)), "the first one too")


def test_retry_checker_rejects_the_header_passed_as_text():
    assert_rejected(check_post_with_retries(_retry(header_as_text=True)), "float(")


def test_retry_checker_rejects_a_loop_that_never_stops():
    def forever(send, body, max_attempts=4, backoff_s=0.1, sleep=time.sleep):
        while True:
            response = send(body)
            if response.status_code == 200:
                return response

    assert_rejected(check_post_with_retries(forever), "over 50 times")


def _retrying(wait):
    """A post_with_retries that sends until an answer other than 429 or 503, or max_attempts sends, and between two
    sends calls ``wait(response, attempt, backoff_s, sleep)``: the answers below differ only in how they wait."""
    def post_with_retries(send, body, max_attempts=4, backoff_s=0.1, sleep=time.sleep):
        for attempt in range(max_attempts):
            response = send(body)
            if response.status_code not in (429, 503) or attempt == max_attempts - 1:
                return response
            wait(response, attempt, backoff_s, sleep)

    return post_with_retries


def test_retry_checker_accepts_lower_case_header_names():
    def lower_case(response, attempt, backoff_s, sleep):
        header = response.headers.get("retry-after")  # httpx's headers ignore the case of names
        sleep(float(header) if header is not None else backoff_s * 2**attempt)

    assert check_post_with_retries(_retrying(lower_case)).passed


def _retry_variant(linear=False, any_5xx=False, first_response=False, own_backoff_counter=False,
                   zero_is_missing=False):
    def post_with_retries(send, body, max_attempts=4, backoff_s=0.1, sleep=time.sleep):
        responses, backoffs = [], 0
        for attempt in range(max_attempts):
            response = send(body)
            responses.append(response)
            retry = response.status_code in (429, 503) or (any_5xx and response.status_code >= 500)
            if not retry or attempt == max_attempts - 1:
                return responses[0] if first_response else response
            header = response.headers.get("Retry-After")
            if header is not None and not (zero_is_missing and float(header) == 0):
                sleep(float(header))
            else:
                step = backoffs if own_backoff_counter else attempt
                sleep(backoff_s * (step + 1) if linear else backoff_s * 2**step)
                backoffs += 1
        return response

    return post_with_retries


@pytest.mark.parametrize(("mistake", "named"), [
    ("linear", "doubling, not adding"),
    ("any_5xx", "a 500 is a bug"),
    ("first_response", "the last"),
    ("own_backoff_counter", "the backoff counts every attempt"),
    ("zero_is_missing", "Retry-After: 0"),
])
def test_retry_checker_rejects_a_typical_mistake(mistake, named):
    assert_rejected(check_post_with_retries(_retry_variant(**{mistake: True})), named)


def test_retry_variant_without_mistakes_passes():
    assert check_post_with_retries(_retry_variant()).passed


def test_retry_checker_rejects_retrying_only_503():
    assert_rejected(check_post_with_retries(_retry(retry_statuses=(503,))), "429")


def test_retry_checker_rejects_retrying_gateway_errors():
    assert_rejected(check_post_with_retries(_retry(retry_statuses=(429, 502, 503, 504))), "a 504 is not a busy moment")


def _backoff_variant(exponent_shift=0, jitter=False):
    import random

    draws = random.Random(0)

    def wait(response, attempt, backoff_s, sleep):
        header = response.headers.get("Retry-After")
        if header is not None:
            sleep(float(header))
        else:
            seconds = backoff_s * 2 ** (attempt + exponent_shift)
            sleep(seconds * draws.uniform(0.5, 1.5) if jitter else seconds)

    return _retrying(wait)


@pytest.mark.parametrize(("variant", "named"), [
    ({"exponent_shift": 1}, "twice the expected one: the exponent is off by one"),
    ({"exponent_shift": -1}, "half the expected one"),
    ({"jitter": True}, "no random jitter"),
])
def test_retry_checker_names_a_backoff_mistake(variant, named):
    assert_rejected(check_post_with_retries(_backoff_variant(**variant)), named)


def test_retry_checker_rejects_time_sleep_and_stops_at_its_first_wait():
    def sleeps_itself(response, attempt, backoff_s, sleep):
        header = response.headers.get("Retry-After")
        time.sleep(float(header) if header is not None else backoff_s * 2**attempt)  # sleeps 2 s for real

    began = time.monotonic()
    report = check_post_with_retries(_retrying(sleeps_itself))
    assert_rejected(report, "sleep was never called", "time.sleep would wait for real")
    assert len(failures(report)) == 1, report  # it stopped after the first case instead of sleeping through all
    assert time.monotonic() - began < 6


def test_retry_checker_names_a_retry_that_never_waits():
    def no_wait(response, attempt, backoff_s, sleep):
        pass

    report = check_post_with_retries(_retrying(no_wait))
    assert_rejected(report, "sleep was never called")
    assert len(failures(report)) > 1  # it takes no time: every case is tried


def test_retry_checker_accepts_other_loops():
    def int_header(response, attempt, backoff_s, sleep):
        if "Retry-After" in response.headers:  # delay-seconds is a whole number of seconds
            sleep(int(response.headers["Retry-After"]))
        else:
            sleep(backoff_s * 2**attempt)

    def while_loop(send, body, max_attempts=4, backoff_s=0.1, sleep=time.sleep):
        attempt, response = 0, send(body)
        while response.status_code in {429, 503} and attempt + 1 < max_attempts:
            header = response.headers.get("retry-after")
            sleep(backoff_s * 2**attempt if header is None else float(header))
            attempt, response = attempt + 1, send(body)
        return response

    assert check_post_with_retries(_retrying(int_header)).passed
    assert check_post_with_retries(while_loop).passed


def test_fake_responses_read_like_httpx():
    response = FakeResponse(503, "2")
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.headers.get("retry-after") == "2" and FakeResponse(200).headers.get("Retry-After") is None


# ---------------------------------------------------------------------------------------------------------------
# Odd answers: reported, never raised


@pytest.mark.parametrize("name", ODD_ANSWERS)
@pytest.mark.parametrize("checker", [check_replicas_needed, check_config_problems, check_post_with_retries],
                         ids=lambda checker: checker.__name__)
def test_checkers_report_odd_answers(checker, name):
    assert_reported(checker(ODD_ANSWERS[name]))


def test_reconfigure_refuses_what_serve_batch_refuses_and_takes_8_0_as_8():
    """A user_config is checked as @serve.batch checks its arguments (its setters check nothing)."""
    from types import SimpleNamespace

    from behind_pipeline.service.settings import ServiceSettings

    recorded = {}
    batched = SimpleNamespace(set_max_batch_size=lambda size: recorded.update(size=size),
                              set_batch_wait_timeout_s=lambda wait: recorded.update(wait=wait))
    replica = SimpleNamespace(settings=ServiceSettings(), logits_of_one=batched)
    reconfigure = ray_app.Classifier.func_or_class.reconfigure
    threads = torch.get_num_threads()  # reconfigure sets this process's torch threads: put them back after
    try:
        reconfigure(replica, {"max_batch_size": 8.0, "batch_wait_timeout_s": 0, "threads": threads})
        assert recorded == {"size": 8, "wait": 0.0} and isinstance(recorded["size"], int)
        for wrong in ({"max_batch_size": 8.5}, {"max_batch_size": "8"}, {"max_batch_size": 0},
                      {"batch_wait_timeout_s": -0.1}):
            recorded.clear()
            with pytest.raises((TypeError, ValueError)):
                reconfigure(replica, wrong)
            assert recorded == {}, wrong  # nothing applied from a refused config
    finally:
        torch.set_num_threads(threads)
