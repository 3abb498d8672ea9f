"""The service's figures (chapter 18), measured over HTTP on loopback and written to ``results/bench.json``.

    make bench-service                                  # the real measurement, then the tables re-rendered
    python -m behind_pipeline.service.bench --tiny --output /tmp/bench.json   # seconds: checks the file's shape

For fp32 and for the dynamic-int8 model it starts a real server (``local.start_server``) and measures, each
``repeats`` times (mean, standard deviation and every run are stored):

- latency: one client sends requests of ``BATCH`` (8) reviews one after another; median and p95 per request;
- throughput under ``CLIENTS`` (16) concurrent httpx clients, each sending one review per request, with
  micro-batching (the default settings) and with one-by-one serving (``BTP_SERVICE_MAX_BATCH=1``), in reviews
  per second; and the server's busy share (forward-pass seconds from ``/health`` over the wall-clock time), so
  that the time the model computed is told apart from HTTP, JSON and the clients' own work;
- the same load from Debian's ``wrk`` (compiled, so the load generator takes little of the 2 cores), when it is
  installed (``make bench-service`` installs it with apt-get; otherwise those runs are skipped with a message);
- head-of-line blocking: how long a one-review request waits while a request of 64 long reviews is served, on the
  default server (passes of at most ``max_batch`` texts and ``max_batch_tokens`` padded tokens) and on one whose
  passes hold all 64 (``NO_TOKEN_BUDGET``: ``max_batch`` 64, an unbounded budget). On movie reviews the count
  closes the default server's passes before the budget does (the keys ``token_budget`` and ``no_token_budget``
  name the two servers, not which limit closed a pass);
- the same model's in-process ceiling: ``predict_logits`` over the same reviews in batches of 32, no HTTP.

Only the ``"service"`` key of the results file is rewritten: the rest of the file (``make bench``'s own sections)
is read and written back as it was.
"""

import argparse
import asyncio
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np

from behind_pipeline.measure import latency_summary
from behind_pipeline.paths import BENCH_FILE
from behind_pipeline.results import write_section
from behind_pipeline.service.local import start_servers

SECTION = "service"
BATCH = 8  # reviews per request in the latency measurement
CLIENTS = 16  # concurrent clients in the throughput measurement
IN_PROCESS_BATCH = 32  # the ceiling: the same model over the same reviews, batches of 32, no HTTP
# (latency requests, throughput requests per client, in-process repeats)
SIZES = {"full": {"latency_requests": 100, "requests_per_client": 24, "repeats": 3, "wrk_seconds": 10,
                  "head_of_line_probes": 10},
         "tiny": {"latency_requests": 3, "requests_per_client": 2, "repeats": 1, "wrk_seconds": 1,
                  "head_of_line_probes": 2}}
WRK_SCRIPT = Path(__file__).with_name("wrk_predict.lua")
# Head-of-line blocking: the long request's size, and the server without a token budget (the old behaviour).
LONG_REQUEST_TEXTS = 64
NO_TOKEN_BUDGET = {"BTP_SERVICE_MAX_BATCH": "64", "BTP_SERVICE_MAX_BATCH_TOKENS": str(10**9)}
MODELS = {"fp32": {}, "int8": {"BTP_SERVICE_INT8": "1"}}
TINY_MODELS = ("int8",)  # the tiny run checks the file's shape: one model is enough
ONE_BY_ONE = {"BTP_SERVICE_MAX_BATCH": "1"}


def request_summary(seconds: list[float]) -> dict:
    """Median and p95 of request times in milliseconds (one decimal, ``measure.latency_summary``) and their count."""
    return {**latency_summary(seconds, digits=1), "requests": len(seconds)}


def request_latencies(url: str, texts: list[str], batch: int, requests: int, warmup: int = 3) -> list[float]:
    """Seconds per ``POST /predict`` of ``batch`` texts, sent one after another on one kept-alive connection."""
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for number in range(warmup + requests):
            start = (number * batch) % max(1, len(texts) - batch)
            began = time.perf_counter()
            response = http.post("/predict", json={"texts": texts[start:start + batch]})
            elapsed = time.perf_counter() - began
            response.raise_for_status()
            if number >= warmup:
                latencies.append(elapsed)
    return latencies


async def _clients(url: str, texts: list[str], clients: int, requests_each: int) -> tuple[float, list, dict]:
    """Wall-clock seconds for ``clients`` concurrent clients, each sending ``requests_each`` one-text requests;
    their answers; and the server's forward-pass seconds and passes over that time (from ``/health``)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def client(number: int) -> list:
            answers = []
            for request in range(requests_each):
                text = texts[(number * requests_each + request) % len(texts)]
                response = await http.post("/predict", json={"texts": text})
                answers.append((text, response.status_code, response.json()))
            return answers

        await asyncio.gather(*(client(n) for n in range(clients)))  # warm-up: connections open, batches formed
        before = (await http.get("/health")).json()
        began = time.perf_counter()
        answers = await asyncio.gather(*(client(n) for n in range(clients)))
        seconds = time.perf_counter() - began
        after = (await http.get("/health")).json()
        server = {key: after[key] - before[key] for key in ("busy_seconds", "forward_passes")}
        return seconds, [answer for one_client in answers for answer in one_client], server


def run_async(coroutine):
    """``asyncio.run(coroutine)``, also from a notebook, whose own event loop is already running: then the
    coroutine runs in a fresh loop on a thread of its own, and this call waits for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def _busy(url: str) -> tuple[float, int]:
    health = httpx.get(f"{url}/health", timeout=10).json()
    return health["busy_seconds"], health["forward_passes"]


def concurrent_throughput(url: str, texts: list[str], clients: int, requests_each: int) -> dict:
    """Reviews per second under ``clients`` concurrent clients; how many answers were not a 200; and the server's
    busy share: seconds of forward passes over the wall-clock seconds (the rest is HTTP, JSON, queueing, clients)."""
    seconds, answers, server = run_async(_clients(url, texts, clients, requests_each))
    failed = sum(status != 200 for _, status, _ in answers)
    health = httpx.get(f"{url}/health", timeout=10).json()
    return {"texts_per_second": round(len(answers) / seconds, 1), "requests": len(answers), "failed": failed,
            "seconds": round(seconds, 3), "largest_batch": health["largest_batch"],
            "busy_share": round(min(1.0, server["busy_seconds"] / seconds), 3),
            "texts_per_pass": round(len(answers) / max(1, server["forward_passes"]), 2)}


def wrk_available(wrk: str | None) -> bool:
    import os

    return bool(wrk) and os.path.isfile(wrk) and os.access(wrk, os.X_OK)


def wrk_throughput(wrk: str, url: str, texts: list[str], clients: int, seconds: int) -> dict:
    """Requests (one review each) per second from ``wrk`` with ``clients`` connections over ``seconds``."""
    import json
    import re
    import subprocess
    import tempfile

    bodies = ",\n".join("[==[" + json.dumps({"texts": text}) + "]==]" for text in texts[:200])
    busy_before, _ = _busy(url)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("bodies = {" + bodies + "}\n" + WRK_SCRIPT.read_text())
    began = time.perf_counter()
    run = subprocess.run([wrk, "-t", "1", "-c", str(clients), "-d", f"{seconds}s", "--latency", "-s", script.name,
                          url], capture_output=True, text=True, timeout=seconds + 60)
    elapsed = time.perf_counter() - began
    Path(script.name).unlink()
    busy_after, _ = _busy(url)
    out = run.stdout

    def number(pattern: str, default=float("nan")) -> float:
        found = re.search(pattern, out)
        return float(found.group(1)) if found else default

    def ms(label: str) -> float:
        found = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not found:
            return float("nan")
        return round(float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)], 1)

    return {"texts_per_second": round(number(r"Requests/sec:\s+([\d.]+)"), 1),
            "median_ms": ms("50"), "p99_ms": ms("99"),
            "non_2xx": int(number(r"Non-2xx or 3xx responses:\s+(\d+)", 0)),
            "busy_share": round(min(1.0, (busy_after - busy_before) / elapsed), 3)}


async def _head_of_line(url: str, long_texts: list[str], short: str, probes: int) -> list[float]:
    """Seconds a one-review request takes when it arrives just after a request of ``long_texts``, per probe."""
    waits = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for _ in range(probes):
            long_request = asyncio.create_task(http.post("/predict", json={"texts": long_texts}))
            await asyncio.sleep(0.02)  # the long request is being served
            began = time.perf_counter()
            response = await http.post("/predict", json={"texts": short})
            waits.append(time.perf_counter() - began)
            response.raise_for_status()
            (await long_request).raise_for_status()
    return waits


def head_of_line(url: str, texts: list[str], probes: int) -> dict:
    """A short request's latency behind a request of LONG_REQUEST_TEXTS of the longest reviews: median and max."""
    long_texts = sorted(texts, key=len)[-LONG_REQUEST_TEXTS:]
    waits = np.asarray(run_async(_head_of_line(url, long_texts, min(texts, key=len), probes))) * 1000
    return {"short_request_median_ms": round(float(np.median(waits)), 1),
            "short_request_max_ms": round(float(waits.max()), 1), "probes": probes}


def repeated(measure, repeats: int, keys: tuple[str, ...]) -> dict:
    """Run ``measure()`` ``repeats`` times: for each of ``keys`` its mean and standard deviation, and every run."""
    runs = [measure() for _ in range(repeats)]
    summary = {}
    for key in keys:
        values = np.asarray([run[key] for run in runs], dtype=float)
        summary[key] = round(float(values.mean()), 2)
        summary[f"{key}_sd"] = round(float(values.std(ddof=1)) if repeats > 1 else 0.0, 2)
    return summary | {"repeats": repeats, "runs": runs}


def in_process_throughput(env: dict, texts: list[str], batch_size: int, repeats: int) -> float:
    """Reviews per second of the served model called directly (``predict_logits``), best of ``repeats``."""
    import torch

    from behind_pipeline.predict import predict_logits
    from behind_pipeline.service.app import load_model
    from behind_pipeline.service.settings import ServiceSettings

    settings = ServiceSettings(int8=env.get("BTP_SERVICE_INT8") == "1")
    tokenizer, classifier, _ = load_model(settings)
    predict_logits(classifier, tokenizer, texts[:batch_size], batch_size=batch_size)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        predict_logits(classifier, tokenizer, texts, batch_size=batch_size)
        best = min(best, time.perf_counter() - began)
    torch.set_num_threads(settings.threads)
    return round(len(texts) / best, 1)


def measure_model(env: dict, texts: list[str], sizes: dict, wrk: str | None = None) -> dict:
    """Latency at BATCH, throughput with and without micro-batching (httpx and wrk), head-of-line blocking with
    and without the token budget, and the in-process ceiling, for one model (fp32 or int8)."""
    repeats = sizes["repeats"]
    # The servers load side by side; an idle server costs memory, not CPU, so each is measured alone.
    micro, single, unbudgeted = start_servers([env, env | ONE_BY_ONE, env | NO_TOKEN_BUDGET])
    with micro, single, unbudgeted:
        latency = repeated(lambda: request_summary(request_latencies(micro.url, texts, BATCH,
                                                                    sizes["latency_requests"])),
                           repeats, ("median_ms", "p95_ms"))
        keys = ("texts_per_second", "busy_share")
        batched = repeated(lambda: concurrent_throughput(micro.url, texts, CLIENTS, sizes["requests_per_client"]),
                           repeats, keys)
        one_by_one = repeated(lambda: concurrent_throughput(single.url, texts, CLIENTS,
                                                            sizes["requests_per_client"]), repeats, keys)
        figures = {}
        if wrk_available(wrk):
            figures["wrk_micro_batching"] = repeated(
                lambda: wrk_throughput(wrk, micro.url, texts, CLIENTS, sizes["wrk_seconds"]), repeats,
                ("texts_per_second", "median_ms", "p99_ms", "busy_share"))
            figures["wrk_one_by_one"] = repeated(
                lambda: wrk_throughput(wrk, single.url, texts, CLIENTS, sizes["wrk_seconds"]), repeats,
                ("texts_per_second", "median_ms", "p99_ms", "busy_share"))
        hol_keys = ("short_request_median_ms", "short_request_max_ms")
        figures["head_of_line"] = {
            "token_budget": repeated(lambda: head_of_line(micro.url, texts, sizes["head_of_line_probes"]),
                                     repeats, hol_keys),
            "no_token_budget": repeated(lambda: head_of_line(unbudgeted.url, texts, sizes["head_of_line_probes"]),
                                        repeats, hol_keys)}
    ceiling = in_process_throughput(env, texts[:CLIENTS * sizes["requests_per_client"]], IN_PROCESS_BATCH,
                                    max(3, repeats))
    result = {
        f"latency_batch_{BATCH}": latency,
        "throughput_micro_batching": batched,
        "throughput_one_by_one": one_by_one,
        **figures,
        f"in_process_batch_{IN_PROCESS_BATCH}_texts_per_second": ceiling,
        "micro_batching_vs_one_by_one": round(batched["texts_per_second"] / one_by_one["texts_per_second"], 2),
        "micro_batching_vs_in_process": round(batched["texts_per_second"] / ceiling, 2),
    }
    if "wrk_micro_batching" in figures:
        result["wrk_micro_batching_vs_in_process"] = round(
            figures["wrk_micro_batching"]["texts_per_second"] / ceiling, 2)
    return result


def measure_service(tiny: bool = False, wrk: str | None = None) -> dict:
    """The whole ``"service"`` section: settings, machine, and each model's figures."""
    import torch

    from behind_pipeline.data import load_rotten_tomatoes
    from behind_pipeline.models import classifier_id, describe
    from behind_pipeline.service.settings import ServiceSettings

    sizes = SIZES["tiny" if tiny else "full"]
    texts = list(load_rotten_tomatoes()["test"]["text"])
    defaults = ServiceSettings()
    section = {
        "run": "tiny" if tiny else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "processor": platform.machine(),
                    "cpu_count": __import__("os").cpu_count(), "torch_threads": defaults.threads},
        "versions": {name: version(name) for name in ("torch", "transformers", "fastapi", "uvicorn", "httpx")},
        "model": describe(classifier_id()),
        "settings": {"batch": BATCH, "clients": CLIENTS, "in_process_batch": IN_PROCESS_BATCH,
                     "max_batch": defaults.max_batch, "max_wait_ms": defaults.max_wait_ms, **sizes},
        "wrk": wrk_version(wrk) if wrk_available(wrk) else None,
        "models": {name: measure_model(env, texts, sizes, wrk) for name, env in MODELS.items()
                   if not tiny or name in TINY_MODELS},
    }
    torch.set_num_threads(defaults.threads)
    return section


def wrk_version(wrk: str) -> str:
    import subprocess

    run = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    return (run.stdout + run.stderr).strip().splitlines()[0] if (run.stdout + run.stderr).strip() else "wrk"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the header, its rule, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def spread(figures: dict, key: str, digits: int = 1) -> str:
    """``mean ± sd`` of a repeated measurement (``repeated`` in the service bench), or the single value."""
    value = figures.get(key, float("nan"))
    sd = figures.get(f"{key}_sd")
    return f"{value:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{value:.{digits}f}"


def ratio_range(batched: dict, alone: dict) -> tuple[float, float] | None:
    """The lowest and highest throughput ratio over every pairing of the two measurements' runs (runs are not
    paired: each is a separate load), or None without stored runs."""
    top = [run["texts_per_second"] for run in batched.get("runs", [])]
    bottom = [run["texts_per_second"] for run in alone.get("runs", [])]
    if not top or not bottom or min(bottom) <= 0:
        return None
    return min(top) / max(bottom), max(top) / min(bottom)


def _range_text(bounds: tuple[float, float] | None) -> str:
    return f" ({bounds[0]:.2f}-{bounds[1]:.2f})" if bounds else ""


def _ratio_met(figures: dict, target: float = 1.5) -> bool:
    """Met only when every pairing of runs reaches the target, for the httpx clients and for wrk when it ran."""
    pairs = [("throughput_micro_batching", "throughput_one_by_one"), ("wrk_micro_batching", "wrk_one_by_one")]
    ranges = [ratio_range(figures[top], figures[bottom]) for top, bottom in pairs if top in figures]
    if not all(ranges):
        return figures["micro_batching_vs_one_by_one"] >= target
    return all(low >= target for low, _ in ranges)


SERVICE_TARGETS = {  # chapter 18's targets for the int8 model over HTTP on loopback
    "p95": ("p95 at batch 8 at most 40 ms", lambda f: f["latency_batch_8"]["p95_ms"] <= 40),
    "ratio": ("micro-batching at least 1.5x one-by-one in every pairing of runs (httpx clients and wrk; the ranges "
              "are in the tables above)", _ratio_met),
    "share": ("at least 80% of the in-process batch-32 throughput (httpx clients; wrk in brackets)",
              lambda f: f["micro_batching_vs_in_process"] >= 0.8),
}


def table_lines(service: dict) -> list[str]:
    """The service's figures (chapter 18): latency over HTTP, throughput with and without micro-batching (httpx
    clients and wrk, mean ± sd over the repeats), the server's busy share, head-of-line blocking, the targets."""
    models = service.get("models", {})
    if not models:
        return ["Not measured yet: run `make bench-service`."]
    first = next(iter(models.values()))
    latency_key = next((key for key in first if key.startswith("latency_batch_")), None)
    ceiling_key = next((key for key in first if key.startswith("in_process_batch_")), None)
    batch = latency_key.removeprefix("latency_batch_") if latency_key else "?"
    http, ceiling = [], []
    for name, figures in models.items():
        latency = figures.get(latency_key, {})
        batched, alone = figures["throughput_micro_batching"], figures["throughput_one_by_one"]
        wrk_batched, wrk_alone = figures.get("wrk_micro_batching"), figures.get("wrk_one_by_one")
        http.append([name, f"{spread(latency, 'median_ms')} / {spread(latency, 'p95_ms')}",
                     spread(batched, "texts_per_second"),
                     f"{batched['busy_share']:.0%}" if "busy_share" in batched else "",
                     spread(alone, "texts_per_second"),
                     f"{figures.get('micro_batching_vs_one_by_one', float('nan')):.2f}x"
                     + _range_text(ratio_range(batched, alone))])
        cells = [name, spread(wrk_batched, "texts_per_second") if wrk_batched else "not run",
                 spread(wrk_alone, "texts_per_second") if wrk_alone else "not run",
                 (f"{wrk_batched['texts_per_second'] / wrk_alone['texts_per_second']:.2f}x"
                  + _range_text(ratio_range(wrk_batched, wrk_alone))) if wrk_batched and wrk_alone else ""]
        if ceiling_key:
            cells += [f"{figures[ceiling_key]:.1f}", f"{figures.get('micro_batching_vs_in_process', float('nan')):.2f}"
                      + (f" ({figures['wrk_micro_batching_vs_in_process']:.2f})"
                         if "wrk_micro_batching_vs_in_process" in figures else "")]
        ceiling.append(cells)
    lines = markdown_table(["model", f"batch {batch} over HTTP: p50 / p95 (ms)", "micro-batching (reviews/s)", "busy",
                            "one by one (reviews/s)", "ratio (range over runs)"], http)
    lines += ["", *markdown_table(["model", "wrk micro-batching (reviews/s)", "wrk one by one (reviews/s)", "wrk ratio"]
                         + (["in-process (reviews/s)", "micro-batching / in-process"] if ceiling_key else []),
                         ceiling)]
    hol = [f"- {name}: a one-review request sent just after a request of the {LONG_REQUEST_TEXTS} longest reviews "
           f"waited {spread(figures['head_of_line']['no_token_budget'], 'short_request_median_ms', 0)} ms (median) "
           f"on a server whose passes hold up to {NO_TOKEN_BUDGET['BTP_SERVICE_MAX_BATCH']} texts with no token "
           f"budget, {spread(figures['head_of_line']['token_budget'], 'short_request_median_ms', 0)} ms on the "
           "default server (passes of at most max_batch texts and max_batch_tokens padded tokens)."
           for name, figures in models.items() if "head_of_line" in figures]
    targets = []
    if "int8" in models and latency_key == "latency_batch_8":
        for goal, met in SERVICE_TARGETS.values():
            try:
                targets.append(f"- {'met' if met(models['int8']) else '**not met**'}: {goal}")
            except KeyError:
                pass
    settings = service.get("settings", {})
    clients = settings.get("clients", "several")
    repeats = settings.get("repeats", 1)
    return [f"Requests over HTTP on loopback to `make serve`'s app; throughput with {clients} concurrent clients "
            f"sending one review per request, from Python (httpx) and from `wrk` "
            f"({service.get('wrk') or ('not installed: skipped' if 'wrk' in service else 'not run')})"
            + (f"; mean ± sd over {repeats} runs" if "texts_per_second_sd" in first["throughput_micro_batching"]
               else "; one run each") + ". Busy: the share "
            f"of the time the server's worker spent in forward passes. Measured {service.get('date', '')} "
            f"({service.get('run', '')} run).", "", *lines, "", *hol, *([""] if hol else []),
            *(["Targets (int8):", "", *targets, ""] if targets else [])]


def summary_lines(section: dict) -> list[str]:
    """The figures as a few printable lines, one per model."""
    lines = []
    for name, figures in section["models"].items():
        latency = figures[f"latency_batch_{BATCH}"]
        lines.append(
            f"{name}: batch {BATCH} p50 {latency['median_ms']:.1f} ms p95 {latency['p95_ms']:.1f} ms | "
            f"{CLIENTS} clients: micro-batching {figures['throughput_micro_batching']['texts_per_second']:.1f}"
            f" ± {figures['throughput_micro_batching']['texts_per_second_sd']:.1f}/s, "
            f"one by one {figures['throughput_one_by_one']['texts_per_second']:.1f}/s "
            f"({figures['micro_batching_vs_one_by_one']:.2f}x), in-process batch {IN_PROCESS_BATCH} "
            f"{figures[f'in_process_batch_{IN_PROCESS_BATCH}_texts_per_second']:.1f}/s "
            f"({figures['micro_batching_vs_in_process']:.0%})"
            + (f" | wrk: {figures['wrk_micro_batching']['texts_per_second']:.1f}"
               f" ± {figures['wrk_micro_batching']['texts_per_second_sd']:.1f}/s" if "wrk_micro_batching" in figures
               else " | wrk: not installed")
            + f" | short request behind {LONG_REQUEST_TEXTS} long ones: "
              f"{figures['head_of_line']['no_token_budget']['short_request_median_ms']:.0f} ms with passes of up to "
              f"{NO_TOKEN_BUDGET['BTP_SERVICE_MAX_BATCH']} and no token budget, "
              f"{figures['head_of_line']['token_budget']['short_request_median_ms']:.0f} ms on the default server")
    return lines


def main(argv: list[str] | None = None) -> int:
    from behind_pipeline.paths import configure_environment

    configure_environment()
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the in-process model loads quietly
    transformers.utils.logging.set_verbosity_error()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few requests only: checks the file, not the speed")
    parser.add_argument("--wrk", default="/usr/bin/wrk", help="wrk's path; runs without wrk are marked skipped")
    parser.add_argument("--output", type=Path, default=BENCH_FILE, help="the results file (default: %(default)s)")
    args = parser.parse_args(argv)
    if not wrk_available(args.wrk):
        print(f"SKIPPED: the wrk runs (no executable wrk at {args.wrk}); the httpx clients still run")
    section = measure_service(tiny=args.tiny, wrk=args.wrk)
    write_section(args.output, SECTION, section)  # only the service's key: the other sections stay
    print("\n".join(summary_lines(section)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
