"""How an item fails: transient (retry it) or permanent (record it), timeouts, and redaction.

A throttled or reset S3 request, a worker killed for memory, a lost node: the item is fine, the
moment was not. Those are retried within the run and, if they still fail, recorded as ``failed``
with ``retryable=True`` so a resume tries them again. Corrupt media, a decoder that runs past its
timeout, a rule's rejection: retrying changes nothing, so they are final (``retryable=False``).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# S3 error codes that mean "try again later", not "this object is bad".
TRANSIENT_S3_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestTimeout", "RequestTimeTimeout", "InternalError", "ServiceUnavailable", "ServiceUnavailableException",
    "500", "502", "503", "504",
}


class ItemTimeout(Exception):
    """An item (or one ffmpeg/PyAV call) ran past its limit: the media makes the decoder spin."""

    def __init__(self, seconds: float | None = None, what: str = ""):
        self.seconds, self.what = seconds, what
        super().__init__(f"timeout after {seconds:g} s{f' ({what})' if what else ''}" if seconds else "timeout")


def is_transient(exc: BaseException) -> bool:
    """True for errors of the moment (network, throttling, a dead worker), False for the item's own."""
    # Imported here: botocore and Ray are dependencies, but a CLI that only lists a source
    # should not pay for importing Ray.
    import botocore.exceptions as be
    import ray.exceptions as rex
    import urllib3.exceptions as ue
    from boto3.exceptions import RetriesExceededError

    if isinstance(exc, ItemTimeout):
        return False
    if isinstance(exc, be.ClientError):
        err = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return str(err.get("Code", "")) in TRANSIENT_S3_CODES or status in TRANSIENT_S3_CODES
    transient = (
        be.EndpointConnectionError, be.ConnectionClosedError, be.ReadTimeoutError, be.ConnectTimeoutError,
        be.ResponseStreamingError, be.IncompleteReadError,
        RetriesExceededError,  # a download cut short on every attempt
        ue.ProtocolError, ue.ReadTimeoutError, ue.IncompleteRead,
        rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, rex.OutOfMemoryError, rex.RaySystemError,
    )
    if isinstance(exc, transient):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


@contextmanager
def deadline(seconds: float | None, what: str = "") -> Iterator[None]:
    """Raise ItemTimeout in this thread when the block runs longer than ``seconds``.

    In the main thread (Ray tasks) a SIGALRM timer interrupts sleeps and blocking reads too; in
    other threads (Ray actors) a watchdog raises the exception asynchronously, which lands at the
    next Python bytecode: PyAV and PySceneDetect return to Python between frames, so a decode
    loop that never ends is still stopped. Nested deadlines keep the outer one's timer.
    """
    if not seconds or seconds <= 0:
        yield
        return
    if threading.current_thread() is threading.main_thread() and _alarm_free():
        with _alarm(seconds, what):
            yield
        return
    with _watchdog(seconds, what):
        yield


_alarm_depth = 0


def _alarm_free() -> bool:
    return _alarm_depth == 0 and signal.getitimer(signal.ITIMER_REAL)[0] == 0


@contextmanager
def _alarm(seconds: float, what: str) -> Iterator[None]:
    global _alarm_depth

    fired = [False]

    def on_alarm(signum, frame):
        fired[0] = True  # remembered: a library may wrap the exception in its own
        raise ItemTimeout(seconds, what)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    _alarm_depth += 1
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except ItemTimeout:
        raise
    except BaseException:
        # A library caught our exception and raised its own (onnxruntime wraps it in its error):
        # the cause is still the timeout.
        if fired[0]:
            raise ItemTimeout(seconds, what) from None
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _alarm_depth -= 1


class _AsyncTimeout(ItemTimeout):
    """Raised asynchronously (no arguments can travel): the context manager restores the message."""


@contextmanager
def _watchdog(seconds: float, what: str) -> Iterator[None]:
    tid = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(_AsyncTimeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except _AsyncTimeout:
        raise ItemTimeout(seconds, what) from None
    except BaseException:
        if state["fired"]:  # wrapped by a library (onnxruntime re-raises its own error type)
            raise ItemTimeout(seconds, what) from None
        raise
    finally:
        with lock:
            state["done"] = True
            timer.cancel()
            if state["fired"]:  # fired but maybe not delivered yet: never let it escape the block
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)


# -- credentials never reach a ledger, a log or a report --------------------------------------------
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_PATTERNS = [
    re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@"),  # user:password@ in a URL
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+"),  # presigned URLs
    re.compile(r"(?i)(aws_secret_access_key|aws_session_token)(\s*[=:]\s*)\S+"),
]


def describe(exc: BaseException, limit: int = 400) -> str:
    """One line for a ledger reason: the exception type and its message's telling line (a
    wrapped traceback's last line, not its first), capped."""
    if isinstance(exc, ItemTimeout):
        return str(exc)
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = (lines[-1] if lines and lines[0].startswith("Traceback") else lines[0]) if lines else ""
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."


def redact(text: str | None) -> str | None:
    """``text`` without credentials: URL passwords, presigned signatures, secret values in the env."""
    if not text:
        return text
    out = _PATTERNS[0].sub("***@", text)
    out = _PATTERNS[1].sub(r"\1***", out)
    out = _PATTERNS[2].sub(r"\1\2***", out)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            out = out.replace(value, "***")
    return out
