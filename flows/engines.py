"""Start the engines a local run needs side by side instead of one after another.

Before a run does any work it waits for three things that do not depend on each other: Prefect's
temporary API server (a uvicorn subprocess; ~8 s on the slow 2-core host), a local Ray (GCS,
raylet and pre-started workers; ~5 s) and the Great Expectations context the gates use (~4.5 s of
imports). Started in sequence, as the flow would on its own, they add up; here Ray starts in the
calling thread while the other two start in threads, and the run begins when all three are up.
Only Ray's start (subprocesses) overlaps fully: Prefect's server module and GX are Python imports,
and threads importing share one interpreter lock (measured: ~17.5 s in sequence, 15-16.6 s here).

Nothing here is required for correctness: a run that skips ``start_engines`` starts each engine on
first use, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _prefect_needs_temporary_server() -> bool:
    """True when no Prefect API is configured and Prefect would start its own (ephemeral) one."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


def _start_prefect_server() -> None:
    # The same singleton Prefect's client starts on first use (``get_client``): started here, the
    # flow finds it running and healthy.
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().start()


def _warm_gates() -> None:
    from reelflow.curation import gates

    gates.warm_up()


def start_engines(ray_address: str | None = None) -> dict[str, float]:
    """Start Ray (or connect to ``ray_address``), Prefect's temporary server (when no API is
    configured) and the gates' GX context, concurrently. Returns seconds until each was up."""
    from reelflow.curation.pipeline import ensure_ray

    t0 = time.perf_counter()
    ready: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            ready[name] = time.perf_counter() - t0
        except BaseException as e:  # re-raised in the caller's thread below
            errors.append(e)

    jobs = [("gx", _warm_gates)]
    if _prefect_needs_temporary_server():
        jobs.insert(0, ("prefect", _start_prefect_server))
    threads = [threading.Thread(target=run, args=job, name=f"start-{job[0]}", daemon=True) for job in jobs]
    for t in threads:
        t.start()
    run("ray", lambda: ensure_ray(ray_address))  # ray.init wants the main thread (signal handlers)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    log.info("engines up: %s", ", ".join(f"{k} {v:.1f} s" for k, v in ready.items()))
    return ready
