"""A fault-injecting HTTP proxy in front of a local S3 API server (moto's), standard library only.

    with FaultyS3Proxy(s3_server) as proxy:            # s3_server: "http://127.0.0.1:PORT"
        s3 = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1")
        proxy.throttle("videos/a.mp4", times=2)        # the first 2 GET/HEADs answer 503 SlowDown
        proxy.truncate("videos/b.mp4")                 # GET bodies cut in half, then the connection closes
        proxy.reset("videos/c.mp4")                    # connection reset, no response at all
        ...
        proxy.counts[("throttle", "videos/a.mp4")]     # how many requests each rule hit
        proxy.clear()                                  # no more faults (counts are kept)

Every other request is forwarded as it came (method, path, query, headers, body) and the answer
relayed as it came (status, headers, body), so SigV4 signatures stay valid: the Host header is
passed on unchanged (the signature covers it). With an ``endpoint_url`` whose host is an IP
address (127.0.0.1) botocore uses path-style addressing (``/bucket/key``), so rules match
against ``/bucket/key`` paths; a rule matches when its substring occurs in the URL path (the
query string is not searched: a ListObjects ``?prefix=`` never matches a key rule).

Bodies are buffered whole (test objects are small). Each request is bounded in time: the
upstream connection has a timeout and an idle client connection is dropped after
``client_timeout`` seconds. The proxy listens on 127.0.0.1 only and refuses any upstream that is
not on 127.0.0.1/localhost.

What boto3/botocore 1.44 (urllib3 2.x) raise through it, with ``retries={"max_attempts": 1}``:
throttle -> ``botocore.exceptions.ClientError`` with ``Error.Code == "SlowDown"`` (HTTP 503; a
HEAD has no body, so its code is ``"503"``); truncate -> ``get_object`` succeeds and
``Body.read()`` raises ``botocore.exceptions.ResponseStreamingError`` (wrapping urllib3's
``ProtocolError``/``IncompleteRead``); reset -> ``botocore.exceptions.ConnectionClosedError``
(a ``HTTPClientError``/``ConnectionError`` subclass: "Connection was closed before we received a
valid response"). With retries on, botocore retries all three (SlowDown is a throttling error,
the other two are connection errors) except the truncated body, which fails after the response
was handed over (``download_file``/s3transfer retries that one itself).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Hop-by-hop headers (RFC 9110 7.6.1): not relayed; bodies are re-framed with Content-Length.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
}
_LOCAL_HOSTS = {"127.0.0.1", "localhost"}

SLOWDOWN_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<Resource>{resource}</Resource><RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
)

THROTTLE, TRUNCATE, RESET = "throttle", "truncate", "reset"


@dataclass
class Rule:
    kind: str
    key_substring: str
    times: int | None  # None: every matching request; else the first ``times`` matching requests
    methods: frozenset[str] | None  # None: any method

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        return self.key_substring in path


class FaultyS3Proxy:
    """A threaded HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and injects S3 faults."""

    def __init__(self, upstream: str, upstream_timeout: float = 15.0, client_timeout: float = 30.0):
        u = urlsplit(upstream)
        if u.scheme != "http" or u.hostname not in _LOCAL_HOSTS or u.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:PORT, not {upstream!r}")
        self.upstream = upstream
        self.upstream_host, self.upstream_port = "127.0.0.1", u.port
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.counts: dict[tuple[str, str], int] = {}
        self.log: list[tuple[str, str, str]] = []  # (method, path with query, outcome)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "FaultyS3Proxy":
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"proxy": self, "timeout": self.client_timeout})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"s3-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> "FaultyS3Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- fault rules ----------------------------------------------------------------------------
    def _add(self, kind: str, key_substring: str, times: int | None, methods) -> Rule:
        rule = Rule(kind, key_substring, times, frozenset(m.upper() for m in methods) if methods else None)
        with self._lock:
            self._rules.append(rule)
            self.counts.setdefault((kind, key_substring), 0)
        return rule

    def throttle(self, key_substring: str, times: int | None = None, methods=("GET", "HEAD")) -> Rule:
        """Answer ``503 SlowDown`` (S3's XML error) to matching requests: all of them when
        ``times`` is None, else the first ``times``; later ones are forwarded."""
        return self._add(THROTTLE, key_substring, times, methods)

    def truncate(self, key_substring: str, times: int | None = None, methods=("GET",)) -> Rule:
        """Forward matching requests, relay the status and headers (full Content-Length) but only
        the first half of the body, then close the connection."""
        return self._add(TRUNCATE, key_substring, times, methods)

    def reset(self, key_substring: str, times: int | None = None, methods=None) -> Rule:
        """Read the request, then reset the connection (TCP RST) without any response and without
        forwarding it. ``methods=None`` (default): any method, so writes can be reset too."""
        return self._add(RESET, key_substring, times, methods)

    def clear(self) -> None:
        """Remove every rule (``counts`` and ``log`` are kept)."""
        with self._lock:
            self._rules.clear()

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                    key = (rule.kind, rule.key_substring)
                    self.counts[key] = self.counts.get(key, 0) + 1
                    return rule
        return None

    def _record(self, method: str, target: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, target, outcome))


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultyS3Proxy  # set on the bound subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects
    server_version = "FaultyS3Proxy"

    def log_message(self, format, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(8)  # CRLF after each chunk
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _handle(self) -> None:
        method = self.command
        path = urlsplit(self.path).path
        body = self._read_body()
        rule = self.proxy._match(method, path)
        if rule is not None and rule.kind == RESET:
            self.proxy._record(method, self.path, "reset")
            self._reset_connection()
            return
        if rule is not None and rule.kind == THROTTLE:
            self.proxy._record(method, self.path, "503 SlowDown")
            self._send_slowdown(method, path)
            return
        try:
            status, reason, headers, data = self._forward(method, body)
        except (OSError, http.client.HTTPException) as e:
            self.proxy._record(method, self.path, f"502 upstream: {e!r}")
            self._send_simple(502, "Bad Gateway", f"upstream error: {e!r}".encode())
            return
        truncate = rule is not None and rule.kind == TRUNCATE and method != "HEAD" and len(data) > 0
        self.proxy._record(method, self.path, f"{status}" + (" truncated" if truncate else ""))
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() in _HOP_BY_HOP or k.lower() == "content-length":
                continue
            self.send_header(k, v)
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if method == "HEAD":
            # A HEAD answer carries the length of the body a GET would get.
            cl = next((v for k, v in headers if k.lower() == "content-length"), None)
            if cl is not None:
                self.send_header("Content-Length", cl)
        elif not no_body:
            self.send_header("Content-Length", str(len(data)))
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if no_body:
            return
        if truncate:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        self.wfile.write(data)

    def _forward(self, method: str, body: bytes):
        p = self.proxy
        conn = http.client.HTTPConnection(p.upstream_host, p.upstream_port, timeout=p.upstream_timeout)
        try:
            conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() in _HOP_BY_HOP or k.lower() in ("content-length", "expect"):
                    continue  # the body is already here: no 100-continue dance upstream
                conn.putheader(k, v)  # Host included, unchanged: the signature covers it
            if body or method in ("PUT", "POST") or "Content-Length" in self.headers:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _send_slowdown(self, method: str, path: str) -> None:
        rid = uuid.uuid4().hex[:16].upper()
        payload = SLOWDOWN_XML.format(resource=path, request_id=rid, host_id=uuid.uuid4().hex).encode()
        self.send_response_only(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", rid)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _send_simple(self, status: int, reason: str, payload: bytes) -> None:
        self.send_response_only(status, reason)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    def _reset_connection(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST, the client sees a reset connection."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop makefile's reference, so close() really closes now
            sock.close()
        except OSError:
            pass

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _handle
