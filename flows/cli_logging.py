"""Terminal vs log file for CLI runs: an expected stop reads like one.

When a gate stops the flow (or a lease, a policy or a source refuses it), Prefect logs the
exception with its traceback from the task, then again from the flow: 40 lines before the one
message the user needs. In the terminal those records are dropped; the CLI prints the gate's
message and failing ids itself. Everything, tracebacks included, goes to a log file whose path
the CLI prints.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Exceptions that end a run on purpose, with a message written for people.
STOP_NAMES = ("GateFailed", "OutputError", "SourceError", "PolicyError", "LeaseHeld", "LeaseLost")


def log_dir() -> Path:
    return Path(os.environ.get("REELFLOW_LOG_DIR") or Path.home() / ".cache" / "reelflow" / "logs")


class _ExpectedStopFilter(logging.Filter):
    """Drops records about an expected stop: its traceback, and Prefect's 'Finished in state Failed'."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in STOP_NAMES:
            return False
        if record.levelno >= logging.ERROR:
            msg = record.getMessage()
            return not any(name in msg for name in STOP_NAMES)
        return True


@contextmanager
def run_log(command: str) -> Iterator[Path]:
    """During the block: every log record (INFO and up) goes to a new log file, and the terminal
    skips the tracebacks of expected stops. Yields the log file's path."""
    directory = log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{command}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
    root = logging.getLogger()
    stop_filter = _ExpectedStopFilter()
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for h in consoles:
        h.addFilter(stop_filter)
    root.addHandler(file_handler)
    try:
        yield path
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        for h in consoles:
            h.removeFilter(stop_filter)
