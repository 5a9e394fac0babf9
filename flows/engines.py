"""Start the engines a local run needs side by side instead of one after another, and stop them
in an order that costs nothing.

Before a run does any work it waits for three things that do not depend on each other: Prefect's
temporary API server (a uvicorn subprocess), a local Ray (GCS, raylet and pre-started workers) and
the Great Expectations context the gates use (imports). Started in sequence, as the flow would on
its own, they add up; here Ray starts in the calling thread while the others start in threads.

Prefect's server is launched by ``launch_prefect_server`` before the CLI imports the flow: the
same command Prefect's own ``SubprocessASGIServer`` runs, without importing that class, whose
module (``prefect.server.api.server``, ~2.9 s) the client process does not otherwise need. The
server then starts while the CLI imports Prefect, Ray and the stages (BENCHMARKS.md, 2026-12-07:
a run with nothing to curate).

At the end of a run, ``running`` sends Prefect's queued logs and events while the server is still
up, then stops it. Left to the interpreter's exit, the server stopped first and Prefect's log
handler then waited 5 s for a server that was gone, on every run.

Nothing here is required for correctness: a run that skips ``running`` starts each engine on
first use (Prefect its own temporary server), as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _prefect_needs_temporary_server() -> bool:
    """True when no Prefect API is configured and Prefect would start its own (ephemeral) one."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    """A temporary Prefect API server in a subprocess, for this process's flow runs."""

    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def launch(cls) -> PrefectServer:
        import prefect
        from prefect.settings import get_current_settings

        port = _free_port()
        # As prefect.server.api.server.SubprocessASGIServer runs it (Prefect 3.8): no UI, the
        # ephemeral server's settings, this process's Prefect settings (the same database).
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
        args = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "error", "--lifespan", "on"]
        # Its own stdout: a server that outlives a crashed parent must not hold the parent's pipes.
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return cls(port, proc)

    def wait_ready(self, timeout_s: float) -> None:
        """Until the server answers its health check; relaunched on another port if this one was
        taken between choosing and binding it (uvicorn exits with 3)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        # One client for every poll: ``httpx.get`` builds a new client, and with it an SSL context
        # (the CA bundle parsed again), each time: ~3 s of CPU over a start-up, taken from the
        # imports and Ray's start on a 2-core machine.
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code == 3:
                    relaunched = PrefectServer.launch()
                    self.port, self.process = relaunched.port, relaunched.process
                    continue
                if code is not None:
                    raise RuntimeError(f"Prefect's temporary server exited with code {code} before it was ready")
                try:
                    healthy = client.get(f"{self.url}/health").status_code == 200
                except httpx.HTTPError:  # not listening yet: poll again
                    healthy = False
                if healthy:
                    return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_server: PrefectServer | None = None


def launch_prefect_server() -> PrefectServer | None:
    """Launch this process's temporary Prefect server (once) when no Prefect API is configured;
    returns it, or None where an API is configured. Returns at once: ``start_engines`` waits."""
    global _server
    if not _prefect_needs_temporary_server():
        return None
    if _server is None or _server.process.poll() is not None:
        _server = PrefectServer.launch()
        atexit.register(_server.stop)
    return _server


def _startup_timeout() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def _warm_gates() -> None:
    from reelflow.curation import gates

    gates.warm_up()


def start_engines(ray_address: str | None = None, server: PrefectServer | None = None,
                  warm_curation: bool = True) -> dict[str, float]:
    """Start Ray (or connect to ``ray_address``), wait for ``server`` (``launch_prefect_server``)
    and warm the gates' GX context, concurrently. Returns seconds until each was up.

    ``warm_curation``: have Ray's idle workers import the curation stages (``warm_workers``). A
    training run leaves it off: its Ray Train workers are fresh actor processes that gain nothing
    from it, and the imports (scikit-learn, scipy) took ~9 s of CPU from the first stage's start."""
    from reelflow.curation.pipeline import ensure_ray, warm_workers

    t0 = time.perf_counter()
    ready: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            ready[name] = time.perf_counter() - t0
        except BaseException as e:  # re-raised in the caller's thread below
            errors.append(e)

    jobs: list[tuple[str, Callable[[], None]]] = [("gx", _warm_gates)]
    if server is not None:
        jobs.insert(0, ("prefect", lambda: server.wait_ready(_startup_timeout())))
    def ray_up() -> None:
        ensure_ray(ray_address)
        if warm_curation:
            warm_workers()

    threads = [threading.Thread(target=run, args=job, name=f"start-{job[0]}", daemon=True) for job in jobs]
    for t in threads:
        t.start()
    run("ray", ray_up)  # ray.init wants the main thread (signal handlers)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    log.info("engines up: %s", ", ".join(f"{k} {v:.1f} s" for k, v in ready.items()))
    return ready


def flush_prefect() -> None:
    """Send Prefect's queued logs and events now, while its API is up."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=5)


@contextmanager
def running(ray_address: str | None = None, server: PrefectServer | None = None,
            warm_curation: bool = True) -> Iterator[dict[str, float]]:
    """The engines for a block of flow runs: started side by side (``server`` from
    ``launch_prefect_server``, launched now if not given), Prefect's client pointed at the server,
    and on the way out its logs and events sent while it still answers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = server or launch_prefect_server()
    ready = start_engines(ray_address, server, warm_curation)
    api = temporary_settings(updates={PREFECT_API_URL: server.url}) if server is not None else nullcontext()
    with api:
        try:
            yield ready
        finally:
            try:
                flush_prefect()
            except Exception as e:  # noqa: BLE001 - losing a log line must not fail a finished run
                log.warning("could not send Prefect's last logs: %s", e)
