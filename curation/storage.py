"""One small file API over local paths and ``s3://bucket/key`` URIs (boto3).

Every stage reads and writes through this, so an OUTPUT on S3 behaves like a local directory:
atomic writes (temp + rename locally; a single PUT is atomic on S3), listing by prefix, and a
local cache for media that must be opened by ffmpeg/PyAV.

The S3 endpoint is part of the config, not only of the environment, because Ray workers of an
already-running cluster do not see environment variables set in the driver after they started.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"not an s3 URI (no bucket): {uri!r}")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/' for S3 and os.path for local paths."""
    base = str(base)
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + str(p).strip("/")
        return out
    return str(Path(base, *parts))


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None
    region: str | None = None
    # botocore's attempts per request (adaptive backoff on throttling). What still fails is the
    # item's transient failure, retried by the item retries and then on resume.
    max_attempts: int = 8

    @classmethod
    def from_env(cls) -> "S3Config":
        # AWS_ENDPOINT_URL is boto3's own variable; reading it here lets us pass it on to Ray workers.
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            max_attempts=int(os.environ.get("AWS_MAX_ATTEMPTS") or 8),
        )


@lru_cache(maxsize=8)
def _client(cfg: S3Config):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region,
        config=Config(retries={"max_attempts": cfg.max_attempts, "mode": "adaptive"}),
    )


class Storage:
    def __init__(self, s3: S3Config | None = None):
        self.s3 = s3 or S3Config.from_env()

    @property
    def client(self):
        return _client(self.s3)

    # -- reading -----------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            b, k = split_s3(uri)
            return self.client.get_object(Bucket=b, Key=k)["Body"].read()
        return Path(uri).read_bytes()

    def open_stream(self, uri: str):
        """A binary file object read front to back (an S3 object's body streams as it is read)."""
        if is_s3(uri):
            b, k = split_s3(uri)
            return self.client.get_object(Bucket=b, Key=k)["Body"]
        return open(uri, "rb")

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            from botocore.exceptions import ClientError

            b, k = split_s3(uri)
            try:
                self.client.head_object(Bucket=b, Key=k)
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return Path(uri).exists()

    def size(self, uri: str) -> int:
        if is_s3(uri):
            b, k = split_s3(uri)
            return int(self.client.head_object(Bucket=b, Key=k)["ContentLength"])
        return Path(uri).stat().st_size

    def list(self, prefix: str) -> list[str]:
        """All files under a directory or key prefix, recursively, sorted."""
        return sorted(self.iter_files(prefix))

    def iter_files(self, prefix: str) -> Iterator[str]:
        """The files under a directory or key prefix, recursively, streamed as they are listed (an
        S3 prefix in key order, a directory folder by folder, names sorted): a prefix of millions
        of keys never has to be held at once."""
        if is_s3(prefix):
            b, k = split_s3(prefix)
            if k and not k.endswith("/"):
                k += "/"
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=k):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        yield f"s3://{b}/{obj['Key']}"
            return
        if not Path(prefix).is_dir():
            return
        # os.walk does not descend into links to folders; a link to a file is listed (is_file
        # follows it), a dangling one is not: what rglob + is_file gave.
        for folder, dirs, names in os.walk(prefix):
            dirs.sort()
            for name in sorted(names):
                path = str(Path(folder, name))
                if os.path.isfile(path):
                    yield path

    def iter_level(self, prefix: str) -> Iterator[tuple[list[str], list[str]]]:
        """One level of a directory or key prefix, in pages: ``(files, sub-folders)``, a folder as
        a prefix to list further (S3: the common prefixes of a ``/``-delimited listing)."""
        if is_s3(prefix):
            b, k = split_s3(prefix)
            if k and not k.endswith("/"):
                k += "/"
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=k, Delimiter="/")
            for page in pages:
                files = [f"s3://{b}/{o['Key']}" for o in page.get("Contents", []) if not o["Key"].endswith("/")]
                dirs = [f"s3://{b}/{c['Prefix'].rstrip('/')}" for c in page.get("CommonPrefixes", [])]
                yield files, dirs
            return
        if not Path(prefix).is_dir():
            return
        files, dirs = [], []
        with os.scandir(prefix) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    dirs.append(str(Path(e.path)))
                elif e.is_file():
                    files.append(str(Path(e.path)))
        yield sorted(files), sorted(dirs)

    # -- writing -----------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            b, k = split_s3(uri)
            self.client.put_object(Bucket=b, Key=k, Body=data)
            return
        _atomic_write_local(Path(uri), data)

    def upload_file(self, local: str | Path, uri: str) -> None:
        if is_s3(uri):
            b, k = split_s3(uri)
            self.client.upload_file(str(local), b, k)
            return
        dst = Path(uri)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dst)

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            b, k = split_s3(uri)
            self.client.delete_object(Bucket=b, Key=k)
        else:
            Path(uri).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if is_s3(prefix):
            for uri in self.list(prefix):
                self.delete(uri)
        else:
            shutil.rmtree(prefix, ignore_errors=True)

    # -- media ---------------------------------------------------------------------------------
    def localize(self, uri: str, cache_dir: str | Path | None = None) -> Path:
        """A local path for ``uri``: the file itself, or a cached download of an S3 object."""
        if not is_s3(uri):
            return Path(uri)
        cache = Path(cache_dir or Path(tempfile.gettempdir()) / "reelflow-cache")
        cache.mkdir(parents=True, exist_ok=True)
        b, k = split_s3(uri)
        # The ETag is part of the cache key: an object replaced under the same key is fetched anew.
        etag = self.client.head_object(Bucket=b, Key=k)["ETag"].strip('"')
        digest = hashlib.sha1(f"{uri}@{etag}".encode()).hexdigest()[:16]
        local = cache / f"{digest}-{basename(uri)}"
        if local.exists():
            os.utime(local)  # recently used: trim_cache evicts by access time
            return local
        tmp = local.with_name(f".{local.name}.part-{os.getpid()}")
        try:
            self.client.download_file(b, k, str(tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)  # a cut download never becomes a cache entry
            raise
        os.replace(tmp, local)
        return local


def _atomic_write_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_last_trim: dict[str, float] = {}
TRIM_EVERY_S = 10.0  # a scan stats every cached file: at most this often per worker and cache


def trim_cache(cache_dir: str | Path | None, max_bytes: int, force: bool = False) -> None:
    """Keep a worker's download cache under ``max_bytes``: least recently used files go first,
    and partial downloads of crashed workers (``.part-<pid>`` of a dead pid) go always. Called
    after every item, it scans at most every ``TRIM_EVERY_S`` seconds."""
    import time

    cache = Path(cache_dir) if cache_dir else None
    if cache is None or not cache.is_dir():
        return
    now = time.monotonic()
    if not force and now - _last_trim.get(str(cache), -TRIM_EVERY_S) < TRIM_EVERY_S:
        return
    _last_trim[str(cache)] = now
    files = []
    for p in cache.iterdir():
        try:
            st = p.stat()
        except FileNotFoundError:  # another worker evicted it
            continue
        if ".part-" in p.name:
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                p.unlink(missing_ok=True)
            continue
        files.append((st.st_atime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    for _, size, p in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        p.unlink(missing_ok=True)
        total -= size


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
