"""A real uvicorn server on a free loopback port, for the tests, the chapter and the benchmark.

    server = start_server({"BTP_SERVICE_INT8": "1"})   # returns once /health says ready
    httpx.post(f"{server.url}/predict", json={"texts": "A gorgeous film."})
    server.stop()

The server is a child process: it is stopped by :meth:`LocalServer.stop`, by ``with start_server(...)``, when the
Python process that started it exits (``atexit``), and by the kernel if that process dies without cleaning up
(Linux's parent-death signal), so a notebook cell that fails halfway never leaves a server behind.
"""

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from behind_pipeline.paths import PROJECT_ROOT
from behind_pipeline.runtime import free_port

# uvicorn's pure-Python HTTP parser and asyncio's loop, named: `ray[serve]` (chapter 20) installs httptools and
# uvloop, which uvicorn's "auto" would otherwise pick, and chapter 18 was measured and tested without them.
UVICORN_STACK = ("--http", "h11", "--loop", "asyncio")
START_TIMEOUT_S = 120  # importing torch and loading the model on a busy 2-core machine
STOP_TIMEOUT_S = 20


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send SIGTERM to the server when the process that started it dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: atexit and stop() still apply


@dataclass
class LocalServer:
    """A running server: its ``url``, its settings (the ``BTP_SERVICE_*`` variables it got) and its process."""

    process: subprocess.Popen
    url: str
    env: dict = field(default_factory=dict)
    log: object = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after STOP_TIMEOUT_S); calling it twice is harmless."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.log = None
        atexit.unregister(self.stop)

    def log_text(self) -> str:
        """Everything the server wrote so far (its JSON request lines and any error)."""
        if self.log is None:
            return ""
        # pread leaves the file's offset alone: the server shares it and keeps appending at it
        descriptor = self.log.fileno()
        return os.pread(descriptor, os.fstat(descriptor).st_size, 0).decode(errors="replace")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_server(env: dict | None = None, timeout_s: float = START_TIMEOUT_S, wait_for: str = "/health") -> LocalServer:
    """Start ``uvicorn --factory behind_pipeline.service.app:app`` on a free loopback port; return once ready.

    ``env`` adds or overrides environment variables, e.g. ``{"BTP_SERVICE_MAX_BATCH": "1"}``. Raises
    RuntimeError (with the end of the server's log) if it exits or ``wait_for`` (readiness by default;
    ``"/health/live"`` for a server that is up but may never be ready) does not answer 200 within ``timeout_s``.
    """
    return start_servers([env or {}], timeout_s, wait_for)[0]


def start_servers(envs: list[dict], timeout_s: float = START_TIMEOUT_S, wait_for: str = "/health") -> list[LocalServer]:
    """Start one server per ``env`` at the same time (they load their models side by side); return once all are
    ready. If one fails, all are stopped and RuntimeError says why."""
    servers = [_launch(env) for env in envs]
    try:
        for server in servers:
            _wait_until_ready(server, timeout_s, wait_for)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def _launch(env: dict) -> LocalServer:
    env = {key: str(value) for key, value in env.items()}
    port = free_port()
    # The log goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server mid-request.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "behind_pipeline.service.app:app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log", *UVICORN_STACK],
        cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = LocalServer(process, f"http://127.0.0.1:{port}", env, log)
    atexit.register(server.stop)
    return server


def _wait_until_ready(server: LocalServer, timeout_s: float, wait_for: str = "/health") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.log.seek(0)
            tail = server.log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the server exited with code {server.process.returncode}: {tail}")
        try:
            if httpx.get(f"{server.url}{wait_for}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s")
