"""The service's figures (chapter 18), measured over HTTP on loopback and written to ``results/bench.json``.

    python -m behind_pipeline.service.bench            # the real measurement (about two minutes on 2 cores)
    python -m behind_pipeline.service.bench --tiny --output /tmp/bench.json   # seconds: checks the file's shape

For fp32 and for the dynamic-int8 model it starts a real server (``local.start_server``) and measures

- latency: one client sends requests of ``BATCH`` (8) reviews one after another; median and p95 per request;
- throughput under ``CLIENTS`` (16) concurrent clients, each sending one review per request, with micro-batching
  (the default settings) and with one-by-one serving (``BTP_SERVICE_MAX_BATCH=1``), in reviews per second;
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

from behind_pipeline.paths import PROJECT_ROOT
from behind_pipeline.service.local import start_servers

SECTION = "service"
RESULTS_FILE = PROJECT_ROOT / "results" / "bench.json"
BATCH = 8  # reviews per request in the latency measurement
CLIENTS = 16  # concurrent clients in the throughput measurement
IN_PROCESS_BATCH = 32  # the ceiling: the same model over the same reviews, batches of 32, no HTTP
# (latency requests, throughput requests per client, in-process repeats)
SIZES = {"full": {"latency_requests": 100, "requests_per_client": 24, "repeats": 3},
         "tiny": {"latency_requests": 3, "requests_per_client": 2, "repeats": 1}}
MODELS = {"fp32": {}, "int8": {"BTP_SERVICE_INT8": "1"}}
TINY_MODELS = ("int8",)  # the tiny run checks the file's shape: one model is enough
ONE_BY_ONE = {"BTP_SERVICE_MAX_BATCH": "1"}


def percentiles_ms(seconds: list[float]) -> dict:
    """Median and p95 of request times, in milliseconds (one decimal)."""
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "requests": len(seconds)}


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


async def _clients(url: str, texts: list[str], clients: int, requests_each: int) -> tuple[float, list]:
    """Wall-clock seconds for ``clients`` concurrent clients, each sending ``requests_each`` one-text requests."""
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
        began = time.perf_counter()
        answers = await asyncio.gather(*(client(n) for n in range(clients)))
        return time.perf_counter() - began, [answer for one_client in answers for answer in one_client]


def run_async(coroutine):
    """``asyncio.run(coroutine)``, also from a notebook, whose own event loop is already running: then the
    coroutine runs in a fresh loop on a thread of its own, and this call waits for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def concurrent_throughput(url: str, texts: list[str], clients: int, requests_each: int) -> dict:
    """Reviews per second under ``clients`` concurrent clients; also how many answers were not a 200."""
    seconds, answers = run_async(_clients(url, texts, clients, requests_each))
    failed = sum(status != 200 for _, status, _ in answers)
    health = httpx.get(f"{url}/health", timeout=10).json()
    return {"texts_per_second": round(len(answers) / seconds, 1), "requests": len(answers), "failed": failed,
            "seconds": round(seconds, 3), "largest_batch": health["largest_batch"]}


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


def measure_model(env: dict, texts: list[str], sizes: dict) -> dict:
    """Latency at BATCH and throughput with and without micro-batching for one model (fp32 or int8)."""
    # Both servers load side by side; an idle server costs memory, not CPU, so each is measured alone.
    micro, single = start_servers([env, env | ONE_BY_ONE])
    with micro, single:
        latency = percentiles_ms(request_latencies(micro.url, texts, BATCH, sizes["latency_requests"]))
        batched = concurrent_throughput(micro.url, texts, CLIENTS, sizes["requests_per_client"])
        one_by_one = concurrent_throughput(single.url, texts, CLIENTS, sizes["requests_per_client"])
    ceiling = in_process_throughput(env, texts[:CLIENTS * sizes["requests_per_client"]], IN_PROCESS_BATCH,
                                    sizes["repeats"])
    return {
        f"latency_batch_{BATCH}": latency,
        "throughput_micro_batching": batched,
        "throughput_one_by_one": one_by_one,
        f"in_process_batch_{IN_PROCESS_BATCH}_texts_per_second": ceiling,
        "micro_batching_vs_one_by_one": round(batched["texts_per_second"] / one_by_one["texts_per_second"], 2),
        "micro_batching_vs_in_process": round(batched["texts_per_second"] / ceiling, 2),
    }


def measure_service(tiny: bool = False) -> dict:
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
        "models": {name: measure_model(env, texts, sizes) for name, env in MODELS.items()
                   if not tiny or name in TINY_MODELS},
    }
    torch.set_num_threads(defaults.threads)
    return section


def write_section(section: dict, path: Path = RESULTS_FILE) -> None:
    """Replace only the ``"service"`` key of the results file (a dict of sections): ``make bench``'s own writer."""
    from behind_pipeline.bench import write_section as write_bench_section

    write_bench_section(path, section, key=SECTION)


def summary_lines(section: dict) -> list[str]:
    """The figures as a few printable lines, one per model."""
    lines = []
    for name, figures in section["models"].items():
        latency = figures[f"latency_batch_{BATCH}"]
        lines.append(
            f"{name}: batch {BATCH} p50 {latency['p50_ms']:.1f} ms p95 {latency['p95_ms']:.1f} ms | "
            f"{CLIENTS} clients: micro-batching {figures['throughput_micro_batching']['texts_per_second']:.1f}/s, "
            f"one by one {figures['throughput_one_by_one']['texts_per_second']:.1f}/s "
            f"({figures['micro_batching_vs_one_by_one']:.2f}x), in-process batch {IN_PROCESS_BATCH} "
            f"{figures[f'in_process_batch_{IN_PROCESS_BATCH}_texts_per_second']:.1f}/s "
            f"({figures['micro_batching_vs_in_process']:.0%})")
    return lines


def main(argv: list[str] | None = None) -> int:
    from behind_pipeline.paths import configure_environment

    configure_environment()
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the in-process model loads quietly
    transformers.utils.logging.set_verbosity_error()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few requests only: checks the file, not the speed")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="the results file (default: %(default)s)")
    args = parser.parse_args(argv)
    section = measure_service(tiny=args.tiny)
    write_section(section, args.output)
    print("\n".join(summary_lines(section)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
