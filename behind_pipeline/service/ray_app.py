"""The course classifier on Ray Serve (chapter 20): chapter 18's request checks behind a FastAPI ingress.

    make serve-ray                                            # the app of ray_serve.yaml on http://127.0.0.1:8000
    python -m behind_pipeline.service.ray_app --replicas 2 --port 8001

The ingress (``@serve.ingress``) reads the body with chapter 18's limits (``read_body``), parses it with chapter
18's ``parse_request`` (so a bad request gets the same status and the same JSON body), tokenizes each request on its
own account, and sends each text on its own to a method under ``@serve.batch``: its ``max_batch_size`` then counts
texts per forward pass, as chapter 18's ``max_batch`` does, and ``batch_wait_timeout_s`` is chapter 18's
``max_wait_ms`` in seconds. Both sit in the deployment's ``user_config`` (``ray_serve.yaml``): Ray passes it to
``reconfigure``, so a new config changes them without restarting a replica.

:func:`start_ray_serve` runs this module as a child process on a free loopback port (for the chapter, the tests and
the benchmark) with Ray's files in ``.cache/ray`` and nothing under the home folder, and stops it with every process
Ray started.
"""

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from ray import serve
from ray.serve.batching import _validate_batch_wait_timeout_s, _validate_max_batch_size

from behind_pipeline.paths import CACHE_DIR, PROJECT_ROOT
from behind_pipeline.service.app import (
    RequestRefused,
    add_error_handlers,
    answer,
    error_responses,
    load_model,
    parse_request,
    read_body,
    refusal,
)
from behind_pipeline.service.schemas import PredictResponse
from behind_pipeline.service.settings import ServiceSettings

CONFIG_FILE = Path(__file__).with_name("ray_serve.yaml")
# Ray's session folders (logs, sockets, object spilling). Unix socket paths must stay under 107 characters, so this
# folder's path must be short; RAY_TMPDIR moves it elsewhere.
RAY_TEMP_DIR = Path(os.environ.get("RAY_TMPDIR", CACHE_DIR / "ray"))
RAY_HOME = CACHE_DIR / "ray-home"  # HOME for Ray's processes: nothing lands under the reader's home folder
RAY_CPUS = 2  # the cores Ray may schedule replicas on (this book's machine has 2)
# Set for every Ray process: no usage statistics sent, no Docker warning, Serve logs to files only, and longer
# waits for a slow proxy.
RAY_VARIABLES = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
                       "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "RAY_SERVE_LOG_TO_STDERR": "0",
                       # Serve's controller waits this long for a proxy to say it is ready (5 s by default; after
                       # three misses it kills the proxy, which a 2-core machine under heavy load did)
                       "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
                       "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}
RAY_INIT_ATTEMPTS = 2  # a second try when the raylet misses Ray's 30 s start-up window on a busy machine
# Ray's default ports (ray._private.ray_constants: GCS, dashboard, dashboard agent; Serve's HTTP and gRPC): the
# HTTP port chosen for Serve avoids them (tests/test_ch20_scaling_out.py compares this set with Ray's constants).
RAY_OWN_PORTS = frozenset({6379, 8265, 52365, 8000, 9000})
START_TIMEOUT_S = 240  # Ray, its controller and proxy, then each replica imports torch and loads the model
STOP_TIMEOUT_S = 60
WARM_UP_TEXT = "A warm-up review: the first real request must not pay for lazy initialisation."

app = FastAPI(title="Behind the Pipeline: review classifier on Ray Serve", version="2.0",
              description="The course's fresh/rotten classifier on Ray Serve, batched with @serve.batch "
                          "(chapter 20); the same requests, answers and refusals as chapter 18's service.")
add_error_handlers(app)


@serve.deployment(name="Classifier", max_ongoing_requests=64)
@serve.ingress(app)
class Classifier:
    """One replica: the model, loaded once, and a batched forward pass. ``settings`` are chapter 18's limits."""

    def __init__(self, settings: dict | None = None):
        from behind_pipeline.paths import configure_environment

        configure_environment()  # each replica is a fresh process: caches in the project, offline
        self.settings = ServiceSettings(**(settings or {}))
        self.tokenizer, self.classifier, self.served = load_model(self.settings)
        self.num_labels = self.classifier.config.num_labels
        self.stats = {"forward_passes": 0, "texts": 0, "largest_batch": 0, "pid": os.getpid()}
        self._forward(self.tokenizer([WARM_UP_TEXT] * 2, truncation=True)["input_ids"])  # lazy init happens here
        self.stats.update(forward_passes=0, texts=0, largest_batch=0)

    def reconfigure(self, config: dict) -> None:
        """Ray calls this with the deployment's ``user_config`` at start and whenever the config changes."""
        size = config.get("max_batch_size", self.settings.max_batch)
        wait = config.get("batch_wait_timeout_s", self.settings.max_wait_ms / 1000)
        # The checks @serve.batch runs on its arguments; its setters run none, and int() alone would quietly turn
        # 8.5 or "8" into 8. A config that fails them fails its update, and the replica keeps its old values.
        _validate_max_batch_size(size)
        _validate_batch_wait_timeout_s(wait)
        self.logits_of_one.set_max_batch_size(int(size))
        self.logits_of_one.set_batch_wait_timeout_s(float(wait))
        torch.set_num_threads(int(config.get("threads", self.settings.threads)))

    def _forward(self, token_ids: list[list[int]]) -> torch.Tensor:
        padded = self.tokenizer.pad({"input_ids": token_ids}, return_tensors="pt")  # (texts, longest)
        with torch.inference_mode():
            logits = self.classifier(**padded).logits.float()  # (texts, labels)
        self.stats["forward_passes"] += 1
        self.stats["texts"] += len(token_ids)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(token_ids))
        return logits

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def logits_of_one(self, token_ids: list[list[int]]) -> list[torch.Tensor]:
        """Called with one text's token ids; Ray hands it a list of them (one per waiting call), at most
        ``max_batch_size``, and gives each caller its own row back."""
        logits = await asyncio.to_thread(self._forward, token_ids)  # the replica's event loop stays free
        return list(logits)

    @app.get("/health")
    async def health(self) -> dict:
        """200 once this replica is up (Ray routes traffic to a replica only after its ``__init__`` returned)."""
        return {"status": "ready", "model": self.served.model_dump(exclude_none=True), **self.stats}

    @app.post("/predict", response_model=PredictResponse, responses=error_responses(), response_model_exclude_none=True)
    async def predict(self, request: Request):
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            parsed = parse_request(body, request.headers.get("content-type", ""), self.settings, self.num_labels)
        except RequestRefused as refused:  # the same status and body as chapter 18's service
            return refusal(refused.status, refused.error, refused.detail)
        texts = [parsed.texts] if isinstance(parsed.texts, str) else parsed.texts
        try:  # tokenized on this request's own account: a text the tokenizer refuses fails no batch-mate
            token_ids = self.tokenizer(texts, truncation=True)["input_ids"]
        except Exception:
            return refusal(422, "untokenizable_text", "the tokenizer could not encode these texts")
        rows = await asyncio.gather(*(self.logits_of_one(ids) for ids in token_ids))  # each text joins a batch
        return answer(torch.stack(rows), self.classifier.config.id2label, parsed.top_k, self.served)


def build(args: dict) -> "serve.Application":
    """The application builder ``ray_serve.yaml`` names (``import_path``): ``args`` may hold ``settings``, chapter
    18's ``ServiceSettings`` fields (``max_chars``, ``max_texts``, ``model``...)."""
    return Classifier.bind(dict(args.get("settings") or {}))


def bad_requests(settings: ServiceSettings) -> dict[str, tuple[bytes, str]]:
    """Chapter 18's bad inputs, built for ``settings``' limits: name -> (body, content type)."""
    over_long = b'"' + b"a" * (settings.max_chars + 1) + b'"'
    over_large = b'"' + b"a" * settings.max_body_bytes + b'"'
    too_many = b"[" + b", ".join([b'"ok"'] * (settings.max_texts + 1)) + b"]"
    as_json = "application/json"
    return {
        "empty text": (b'{"texts": ""}', as_json),
        "whitespace only": (b'{"texts": ["fine", " \\n\\t "]}', as_json),
        "text too long": (b'{"texts": ' + over_long + b"}", as_json),
        "too many texts": (b'{"texts": ' + too_many + b"}", as_json),
        "a number": (b'{"texts": 42}', as_json),
        "nested lists": (b'{"texts": [["nested"]]}', as_json),
        "malformed JSON": (b'{"texts": "unclosed', as_json),
        "unknown field": (b'{"texts": "ok", "topk": 2}', as_json),
        "invalid UTF-8": (b'{"texts": "caf\xe9"}', as_json),
        "wrong content type": (b"a review", "text/plain"),
        "top_k too large": (b'{"texts": "ok", "top_k": 3}', as_json),
        "body too large": (b'{"texts": ' + over_large + b"}", as_json),
        "nested 3000 deep": (b'{"texts": ' + b"[" * 3000 + b"]" * 3000 + b"}", as_json),
        "lone surrogate": (b'{"texts": ["\\ud800"]}', as_json),
    }


# ---------------------------------------------------------------------------------------------------------------
# Reading the config file, and running it on this machine


def read_config(path: Path = CONFIG_FILE) -> dict:
    """The Serve config file as a dict (``serve build`` / ``serve deploy`` format)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


def deployment_options(config: dict, replicas: int | None = None, threads: int | None = None) -> dict:
    """The config's options for the one deployment, as ``Classifier.options(...)`` takes them.

    ``replicas`` replaces autoscaling with a fixed number of replicas; ``threads`` sets each replica's torch
    threads and the CPUs it asks Ray for (so replicas x threads never oversubscribes the cores).
    """
    (application,) = config["applications"]
    (options,) = application["deployments"]
    options = {key: value for key, value in options.items() if key != "name"}
    options["user_config"] = dict(options.get("user_config", {}))
    options["ray_actor_options"] = dict(options.get("ray_actor_options", {}))
    if replicas is not None:
        options.pop("autoscaling_config", None)
        options["num_replicas"] = replicas
    if threads is not None:
        options["user_config"]["threads"] = threads
        options["ray_actor_options"]["num_cpus"] = threads
    return options


def ray_environment() -> dict:
    """The environment of every Ray process: the project's caches, Ray offline, HOME and temp inside .cache."""
    from behind_pipeline.paths import _CACHE_VARIABLES

    RAY_HOME.mkdir(parents=True, exist_ok=True)
    RAY_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    return {**{name: str(folder) for name, folder in _CACHE_VARIABLES.items()}, **RAY_VARIABLES,
            "HOME": str(RAY_HOME), "TMPDIR": str(RAY_TEMP_DIR), "RAY_TMPDIR": str(RAY_TEMP_DIR),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(PROJECT_ROOT)}


def run(config_file: Path, port: int, replicas: int | None, threads: int | None, cpus: int = RAY_CPUS) -> None:
    """Start Ray on this machine, deploy the config's application on ``port`` and serve until SIGTERM or SIGINT."""
    import ray

    config = read_config(config_file)
    (application,) = config["applications"]
    os.environ.update(ray_environment())
    started = time.perf_counter()
    for attempt in range(RAY_INIT_ATTEMPTS):
        try:
            # one node, on loopback. (Ray's C++ side still asks the kernel for a route to a public DNS server to
            # learn this machine's address: offline it logs a warning and falls back to the host name.)
            ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=str(RAY_TEMP_DIR), configure_logging=False,
                     log_to_driver=False, runtime_env={"env_vars": ray_environment()},
                     _node_ip_address="127.0.0.1")
            break
        except Exception as error:  # Ray gives its raylet 30 s to register: a busy machine can miss that
            ray.shutdown()
            if attempt == RAY_INIT_ATTEMPTS - 1 or "timed out during startup" not in str(error):
                raise
            print(f"ray.init failed ({error}); trying again", flush=True)
    http = config.get("http_options", {})
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), "port": port})
    deployment = Classifier.options(**deployment_options(config, replicas, threads))
    serve.run(deployment.bind(dict(application.get("args", {}).get("settings") or {})),
              name=application["name"], route_prefix=application.get("route_prefix", "/"))
    host = http.get("host", "127.0.0.1")
    print(f"READY http://{host}:{port} in {time.perf_counter() - started:.1f} s", flush=True)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    while not stopping:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


@dataclass
class RayServer:
    """A running Ray Serve instance in a child process: its ``url``, its process and how long it took to start."""

    process: object
    url: str
    start_seconds: float = 0.0
    log: object = None
    pids: set = field(default_factory=set)

    def descendants(self) -> list:
        """Every process Ray started under this one (GCS, raylet, workers, replicas), alive now."""
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> list[int]:
        """SIGTERM (Serve and Ray shut down cleanly), SIGKILL to whatever is left after STOP_TIMEOUT_S; returns the
        process ids still alive afterwards (none, when the stop worked)."""
        import atexit

        import psutil

        self.pids |= {child.pid for child in self.descendants()}
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except Exception:
                self.process.kill()
                self.process.wait()
        leftover = [pid for pid in self.pids if psutil.pid_exists(pid) and _alive(pid)]
        for pid in leftover:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in self.pids):
            time.sleep(0.1)
        if self.log is not None:
            self.log.close()
            self.log = None
        atexit.unregister(self.stop)
        return leftover

    def log_text(self) -> str:
        if self.log is None:
            return ""
        descriptor = self.log.fileno()
        return os.pread(descriptor, os.fstat(descriptor).st_size, 0).decode(errors="replace")

    def memory_mib(self) -> float:
        """Proportional set size (shared pages split between the processes that share them) of this process and
        every process under it, in MiB: what the whole instance costs in memory."""
        import psutil

        total = 0
        for process in [psutil.Process(self.process.pid), *self.descendants()]:
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2**20

    def __enter__(self) -> "RayServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_ray_serve(replicas: int | None = 1, threads: int | None = None, config_file: Path = CONFIG_FILE,
                    timeout_s: float = START_TIMEOUT_S) -> RayServer:
    """Run this module in a child process on a free loopback port; return once a replica answers ``/health``.

    ``replicas=None`` keeps the config's autoscaling; ``threads`` defaults to the cores shared out between the
    replicas (2 cores: 2 threads for 1 replica, 1 each for 2). Raises RuntimeError with the end of the log if Ray
    exits or is not ready within ``timeout_s``.
    """
    import atexit
    import subprocess
    import tempfile

    import httpx

    from behind_pipeline.runtime import free_port
    from behind_pipeline.service.local import _die_with_parent

    if threads is None:
        threads = max(1, RAY_CPUS // (replicas or 1))
    # Not a port Ray takes for itself while it starts: a CI run once drew 52365, Ray's dashboard agent bound it
    # first, and Serve's proxy failed with "Failed to bind to address '127.0.0.1:52365'".
    port = free_port(avoid=RAY_OWN_PORTS)
    command = [sys.executable, "-m", "behind_pipeline.service.ray_app", "--config", str(config_file),
               "--port", str(port), "--threads", str(threads)]
    if replicas is not None:
        command += ["--replicas", str(replicas)]
    log = tempfile.TemporaryFile()
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **ray_environment()}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=False,
                               preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = RayServer(process, f"http://127.0.0.1:{port}", log=log)
    atexit.register(server.stop)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Ray Serve exited with code {process.returncode}: {server.log_text()[-3000:]}")
            if "READY" in server.log_text():
                try:
                    if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray Serve was not ready within {timeout_s:.0f} s: {server.log_text()[-3000:]}")
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.perf_counter() - began
    server.pids = {child.pid for child in server.descendants()}
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG_FILE, help="the Serve config file (%(default)s)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, help="a fixed number of replicas (default: the config's autoscaling)")
    parser.add_argument("--threads", type=int, help="torch threads (and Ray CPUs) per replica (default: the config's)")
    args = parser.parse_args(argv)
    run(args.config, args.port, args.replicas, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
