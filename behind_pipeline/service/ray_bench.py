"""Chapter 18's service against Ray Serve with 1 and 2 replicas, in one run on this machine (chapter 20).

    make bench-ray                                             # the measurement, then the tables re-rendered
    python -m behind_pipeline.service.ray_bench --tiny --output /tmp/bench.json   # checks the file's shape

Each system is started in turn, alone on the machine, with the 2 cores shared out so they are not oversubscribed
(chapter 18's service: 2 torch threads; Ray Serve: 1 replica with 2 threads, or 2 replicas with 1 thread each),
and measured over HTTP on loopback, each figure ``repeats`` times (mean, standard deviation and every run stored):

- start-up: seconds from starting the process to the first ``/health`` that answers 200;
- memory: proportional set size (PSS: shared pages split between the processes sharing them) of the process and
  every process under it (for Ray: GCS, raylet, controller, proxy, replicas), after the measurement;
- latency: one client sends requests of ``BATCH`` (8) reviews one after another; median and p95 per request;
- throughput: ``CLIENTS`` (16) concurrent httpx clients, each sending one review per request, in reviews per second.

Only the ``"ray"`` key of the results file is rewritten, through ``make bench``'s own writer.
"""

import argparse
import asyncio
import platform
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import httpx

from behind_pipeline.paths import BENCH_FILE
from behind_pipeline.service.bench import (
    BATCH,
    CLIENTS,
    markdown_table,
    repeated,
    request_latencies,
    request_summary,
    run_async,
    spread,
)

SECTION = "ray"
SYSTEMS = {  # name -> (what runs, replicas, torch threads per replica)
    "service": ("chapter 18's service (uvicorn, micro-batcher)", 0, 2),
    "ray_1": ("Ray Serve, 1 replica", 1, 2),
    "ray_2": ("Ray Serve, 2 replicas", 2, 1),
}
SIZES = {"full": {"latency_requests": 100, "requests_per_client": 24, "repeats": 3},
         "tiny": {"latency_requests": 3, "requests_per_client": 2, "repeats": 1}}
TINY_SYSTEMS = ("service", "ray_1")  # the tiny run checks the file's shape


async def _clients(url: str, texts: list[str], clients: int, requests_each: int) -> tuple[float, list[int]]:
    """Wall-clock seconds for ``clients`` concurrent clients each sending ``requests_each`` one-review requests
    (after one warm-up round), and every answer's status code."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async def client(number: int) -> list[int]:
            codes = []
            for request in range(requests_each):
                text = texts[(number * requests_each + request) % len(texts)]
                codes.append((await http.post("/predict", json={"texts": text})).status_code)
            return codes

        await asyncio.gather(*(client(n) for n in range(clients)))  # warm-up: connections open
        began = time.perf_counter()
        codes = await asyncio.gather(*(client(n) for n in range(clients)))
        return time.perf_counter() - began, [code for one in codes for code in one]


def client_throughput(url: str, texts: list[str], clients: int, requests_each: int) -> dict:
    """Reviews per second under ``clients`` concurrent one-review clients, and how many answers were not 200."""
    seconds, codes = run_async(_clients(url, texts, clients, requests_each))
    return {"texts_per_second": round(len(codes) / seconds, 1), "requests": len(codes),
            "failed": sum(code != 200 for code in codes), "seconds": round(seconds, 3)}


def process_tree_mib(pid: int) -> float:
    """PSS of process ``pid`` and every process under it, in MiB."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return round(total / 2**20, 1)


def start_system(name: str):
    """Start one system; return (server, url, start-up seconds). The server has ``stop()`` and ``process``."""
    from behind_pipeline.service.local import start_server
    from behind_pipeline.service.ray_app import start_ray_serve

    _, replicas, threads = SYSTEMS[name]
    began = time.perf_counter()
    if replicas == 0:
        server = start_server({"BTP_SERVICE_THREADS": str(threads)})
        return server, server.url, time.perf_counter() - began
    server = start_ray_serve(replicas=replicas, threads=threads)
    return server, server.url, server.start_seconds


def measure_system(name: str, texts: list[str], sizes: dict) -> dict:
    """Start-up (one per repeat: a fresh start each time), memory, latency at BATCH and throughput of one system."""
    figures, starts, memories = {}, [], []
    for repeat in range(sizes["repeats"]):
        server, url, seconds = start_system(name)
        try:
            starts.append(round(seconds, 2))
            memories.append(process_tree_mib(server.process.pid))  # every start read at the same point: ready, idle
            if repeat == 0:  # the load figures come from the first start; the others measure start-up only
                figures[f"latency_batch_{BATCH}"] = repeated(
                    lambda url=url: request_summary(request_latencies(url, texts, BATCH, sizes["latency_requests"])),
                    sizes["repeats"], ("median_ms", "p95_ms"))
                figures["throughput"] = repeated(
                    lambda url=url: client_throughput(url, texts, CLIENTS, sizes["requests_per_client"]),
                    sizes["repeats"], ("texts_per_second",))
        finally:
            leftover = server.stop()
        if leftover:
            figures.setdefault("processes_left_after_stop", []).append(len(leftover))
    figures["start_seconds"] = summary(starts)
    figures["memory_mib"] = summary(memories)
    label, replicas, threads = SYSTEMS[name]
    return {"label": label, "replicas": max(1, replicas), "threads_per_replica": threads, **figures}


def summary(values: list[float]) -> dict:
    import numpy as np

    array = np.asarray(values, dtype=float)
    return {"mean": round(float(array.mean()), 2),
            "sd": round(float(array.std(ddof=1)), 2) if len(array) > 1 else 0.0, "runs": values}


def measure(tiny: bool = False) -> dict:
    """The whole ``"ray"`` section: settings, machine, versions and each system's figures."""
    from behind_pipeline.data import load_rotten_tomatoes
    from behind_pipeline.models import classifier_id, describe
    from behind_pipeline.service.ray_app import deployment_options, read_config

    sizes = SIZES["tiny" if tiny else "full"]
    texts = list(load_rotten_tomatoes()["test"]["text"])
    batching = deployment_options(read_config())["user_config"]
    return {
        "run": "tiny" if tiny else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "processor": platform.machine(),
                    "cpu_count": __import__("os").cpu_count()},
        "versions": {name: version(name) for name in ("ray", "torch", "transformers", "fastapi", "uvicorn")},
        "model": describe(classifier_id()),
        "settings": {"batch": BATCH, "clients": CLIENTS, "max_batch_size": batching["max_batch_size"],
                     "batch_wait_timeout_s": batching["batch_wait_timeout_s"], "memory_read": "after start-up",
                     **sizes},
        "systems": {name: measure_system(name, texts, sizes) for name in SYSTEMS
                    if not tiny or name in TINY_SYSTEMS},
    }


def table_lines(section: dict) -> list[str]:
    """The comparison as a Markdown table (mean ± sd over the repeats), with a line saying how it was measured."""
    systems = section.get("systems", {})
    if not systems:
        return ["Not measured yet: run `make bench-ray`."]
    settings = section["settings"]
    batch, clients = settings["batch"], settings["clients"]
    header = ["system", "replicas x threads", "start-up (s)", "memory, PSS (MiB)",
              f"batch {batch}: p50 / p95 (ms)", f"{clients} clients (reviews/s)"]
    repeats = settings["repeats"]
    memory = ("read once each start is ready" if settings.get("memory_read") == "after start-up"
              else "the first start's read after its load, the others' once ready")
    lines = [f"Measured {section['date']} ({section['run']} run, ray {section['versions']['ray']}), each system "
             f"alone on the machine; mean ± sd: start-up and memory over {repeats} fresh starts ({memory}), "
             f"latency and throughput over {repeats} rounds on the first start. Ray batches with max_batch_size "
             f"{settings['max_batch_size']} and batch_wait_timeout_s {settings['batch_wait_timeout_s']}.", ""]
    rows = []
    for figures in systems.values():
        latency = figures[f"latency_batch_{batch}"]
        start, memory = figures["start_seconds"], figures["memory_mib"]
        failed = figures["throughput"]["runs"] and sum(run["failed"] for run in figures["throughput"]["runs"])
        rows.append([
            figures["label"], f"{figures['replicas']} x {figures['threads_per_replica']}",
            f"{start['mean']:.1f} ± {start['sd']:.1f}", f"{memory['mean']:.0f} ± {memory['sd']:.0f}",
            f"{spread(latency, 'median_ms')} / {spread(latency, 'p95_ms')}",
            spread(figures["throughput"], "texts_per_second") + (f" ({failed} failed)" if failed else "")])
    return lines + markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    from behind_pipeline.paths import configure_environment
    from behind_pipeline.results import write_section

    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few requests only: checks the file, not the speed")
    parser.add_argument("--output", type=Path, default=BENCH_FILE, help="the results file (default: %(default)s)")
    args = parser.parse_args(argv)
    section = measure(tiny=args.tiny)
    write_section(args.output, SECTION, section)
    print("\n".join(table_lines(section)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
