"""A writer lease on an OUTPUT (local directory or ``s3://bucket/prefix``): one live run per OUTPUT.

The lease is one small JSON object, ``<OUTPUT>/_lease.json``, only ever changed by
compare-and-swap, so two runs can never both believe they hold it:

* S3: conditional writes -- ``If-None-Match: *`` to create, ``If-Match: <etag>`` to renew, take
  over or delete.
* local: ``os.link`` of a fully written temp file to create (never a half-written lease), and
  everything else under ``flock`` on the sidecar ``_lease.lock``, comparing the file's bytes.

A holder renews ``expires`` from a daemon thread. A holder that dies (SIGKILL, lost node) stops
renewing, and once ``expires`` has passed the next run takes the lease over (at once when the
holder ran on the same host and its pid is gone). Expiry compares wall
clocks of different hosts, so ``ttl_s`` must be well above their clock skew.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from reelflow.curation.storage import Storage, is_s3, join, split_s3

LEASE_NAME = "_lease.json"
log = logging.getLogger(__name__)
# A conditional request that lost: someone else changed (412, 409 while a write is in flight)
# or deleted (404) the lease since we last read it.
_CAS_LOST = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _describe(holder: dict) -> str:
    return (f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')}, lease valid until {holder.get('expires_iso', '?')})")


class LeaseHeld(Exception):
    """Another live run holds the OUTPUT."""

    def __init__(self, output: str, holder: dict):
        super().__init__(output, holder)  # both in args, so the exception pickles (Prefect, Ray)
        self.output, self.holder = output, holder

    def __str__(self) -> str:
        return (f"OUTPUT {self.output} is being written by {_describe(self.holder)}; "
                "wait for it to finish or use another OUTPUT")


class LeaseLost(Exception):
    """This run no longer holds its lease; stop writing."""


class _LocalCAS:
    def __init__(self, uri: str):
        self.path = Path(uri)
        self.lock = self.path.with_name("_lease.lock")

    @contextmanager
    def _locked(self):
        with open(self.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # flock, not lockf: it also excludes threads of one process
            yield

    def _tmp(self, data: bytes) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lease.", dir=self.path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        return tmp

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, _md5(data)

    def put(self, data: bytes, version: str | None) -> str | None:
        """Write ``data`` if the lease is absent (version None) or still is ``version``; its new version."""
        tmp = self._tmp(data)
        try:
            if version is None:
                os.link(tmp, self.path)  # atomic, and fails if a lease exists
            else:
                # Only the link above works without the lock, and it fails while the file exists.
                with self._locked():
                    cur = self.read()
                    if cur is None or cur[1] != version:
                        return None
                    os.replace(tmp, self.path)
        except FileExistsError:
            return None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return _md5(data)

    def delete(self, version: str) -> bool:
        with self._locked():
            cur = self.read()
            if cur is None or cur[1] != version:
                return False
            self.path.unlink()
        return True


class _S3CAS:
    def __init__(self, storage: Storage, uri: str):
        self.client, (self.bucket, self.key) = storage.client, split_s3(uri)

    def _call(self, op: str, **kw):
        from botocore.exceptions import ClientError

        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=self.key, **kw)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _CAS_LOST:
                return None
            raise

    def read(self) -> tuple[bytes, str] | None:
        r = self._call("get_object")
        return None if r is None else (r["Body"].read(), r["ETag"])

    def put(self, data: bytes, version: str | None) -> str | None:
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        r = self._call("put_object", Body=data, ContentType="application/json", **cond)
        return r and r["ETag"]

    def delete(self, version: str) -> bool:
        return self._call("delete_object", IfMatch=version) is not None


def _cas(storage: Storage, output: str) -> _LocalCAS | _S3CAS:
    uri = join(output, LEASE_NAME)
    return _S3CAS(storage, uri) if is_s3(uri) else _LocalCAS(uri)


def _parse(data: bytes) -> dict:
    # A document not written by us (ours are never partial) means nobody valid holds the lease.
    unreadable = {"run_id": "<unreadable lease>", "expires": 0.0}
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            return unreadable
        float(doc.get("expires", 0))  # an expiry that is not a number is unreadable too
    except (ValueError, TypeError):
        return unreadable
    return doc


def read_lease(storage: Storage, output: str) -> dict | None:
    """The current lease document of ``output`` (live or expired), or None."""
    cur = _cas(storage, output).read()
    return None if cur is None else _parse(cur[0])


@dataclass(eq=False)
class WriterLease:
    """Exclusive, expiring, heart-beaten right to write into ``output``.

    A lease is ours if it carries our token, or our run_id from this very process (a Prefect retry
    of the flow creating a new WriterLease): both take it over; an older object of the same run
    then finds it lost at its next heartbeat. ``heartbeat_s <= 0`` disables renewal.
    """

    storage: Storage
    output: str
    run_id: str
    ttl_s: float = 60.0
    heartbeat_s: float | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex, init=False)
    lost_reason: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.heartbeat_s is None:
            self.heartbeat_s = self.ttl_s / 4
        self.uri = join(self.output, LEASE_NAME)
        self._cas = _cas(self.storage, self.output)
        self._host, self._pid = socket.gethostname(), os.getpid()
        self._version: str | None = None  # etag (S3) or md5 (local) of what we last wrote
        self._expires = 0.0
        self._started = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mu = threading.Lock()  # renew() from the heartbeat and from the caller

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def _doc(self) -> tuple[bytes, float]:
        expires = time.time() + self.ttl_s
        return json.dumps({
            "run_id": self.run_id, "host": self._host, "pid": self._pid, "token": self.token,
            "output": self.output, "started": self._started, "renewed": _iso(time.time()),
            "expires": expires, "expires_iso": _iso(expires),
        }).encode(), expires

    def _ours(self, h: dict) -> bool:
        return h.get("token") == self.token or (h.get("run_id"), h.get("host"), h.get("pid")) == (
            self.run_id, self._host, self._pid)

    def _holder_died(self, h: dict) -> bool:
        """A holder on this host whose process is gone (a SIGKILLed run): no need to wait for
        its lease to expire. On another host only expiry can tell."""
        if h.get("host") != self._host or not str(h.get("pid", "")).isdigit():
            return False
        try:
            os.kill(int(h["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def acquire(self) -> WriterLease:
        """Take the lease, or raise LeaseHeld naming the live holder. No-op if already held."""
        if self._version is not None:
            return self
        self._started = _iso(time.time())
        for _ in range(10):  # each pass either settles or saw the lease change under it
            data, expires = self._doc()
            version = self._cas.put(data, None)
            if version is None:
                cur = self._cas.read()
                if cur is None:
                    continue  # released between our create and read
                holder = _parse(cur[0])
                live = float(holder.get("expires", 0)) >= time.time() and not self._holder_died(holder)
                if not self._ours(holder) and live:
                    raise LeaseHeld(self.output, holder)
                version = self._cas.put(data, cur[1])  # expired: at most one taker wins
                if version is None:
                    continue
            self._version, self._expires, self.lost_reason = version, expires, None
            if self.heartbeat_s and self.heartbeat_s > 0:
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
                self._thread.start()
            return self
        raise RuntimeError(f"lease on {self.output} kept changing under us; try again")

    def renew(self) -> None:
        """Extend the lease now; raise LeaseLost if someone else has taken it."""
        with self._mu:
            if self.lost_reason:
                raise LeaseLost(self.lost_reason)
            if self._version is None:
                raise LeaseLost(f"the lease on {self.output} is not held")
            data, expires = self._doc()
            version = self._cas.put(data, self._version)
            if version is None:
                cur = self._cas.read()
                holder = None if cur is None else _parse(cur[0])
                if holder is not None and holder.get("token") == self.token:
                    # Our own write whose reply was lost, then retried by botocore into a 412.
                    self._version, self._expires = cur[1], float(holder["expires"])
                    return
                who = "deleted" if holder is None else f"taken over by {_describe(holder)}"
                self.lost_reason = f"run {self.run_id} lost the writer lease on OUTPUT {self.output}: {who}"
                self._version = None
                raise LeaseLost(self.lost_reason)
            self._version, self._expires = version, expires

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except LeaseLost as e:
                log.error("%s", e)
                return
            except Exception as e:  # transient (network): try again; check() notices expiry
                log.warning("lease heartbeat for %s failed: %s", self.output, e)

    def check(self) -> None:
        """Raise LeaseLost unless we still hold an unexpired lease; call before committing writes."""
        if self.lost_reason:
            raise LeaseLost(self.lost_reason)
        if self._version is None:
            raise LeaseLost(f"the lease on {self.output} is not held")
        if time.time() > self._expires:  # renewals failed: another run may have taken over
            raise LeaseLost(f"the lease on {self.output} expired at {_iso(self._expires)} without renewal")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        version, self._version = self._version, None
        if version is not None and not self._cas.delete(version):
            log.warning("lease on %s was no longer ours at release", self.output)

    def __enter__(self) -> WriterLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
