"""An HTTP proxy on 127.0.0.1 between boto3 and the moto server that injects faults and counts requests.

Why: retries, resumption and refusal of changed objects can only be tested honestly against a real
network path that misbehaves the way real ones do: connection resets, 500/503 answers, bodies cut
short, a transfer that hangs until its process is killed.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}
ERROR_CODES = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}


@dataclass
class Fault:
    """Apply `action` to the next `times` requests that match `method` and contain `path_contains`.

    Actions: "reset" (TCP RST, no response), 500/503 (an S3 XML error), "truncate" (half the body,
    then the connection drops), "stall" (half the body, then hang until `release()`), or a callable
    run before the request is forwarded normally.
    """

    action: str | int | Callable[[], None]
    times: int = 1
    method: str | None = None
    path_contains: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    injected: list[tuple[str, str, str]] = field(default_factory=list)
    stalled: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(
        self,
        action: str | int | Callable[[], None],
        times: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        with self._lock:
            self.faults.append(Fault(action, times, method, path_contains))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self.injected.clear()

    def release(self) -> None:
        self._release.set()

    def count(self, method: str, path_contains: str = "", exclude: str | None = "list-type") -> int:
        with self._lock:
            return sum(
                1
                for m, p in self.requests
                if m == method and path_contains in p and (exclude is None or exclude not in p)
            )

    def take(self, method: str, path: str) -> str | int | Callable[[], None] | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    self.injected.append((method, path, str(fault.action)))
                    return fault.action
        return None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            h.send_error(501, "chunked request bodies are not supported by the test proxy")
            return
        body = h.rfile.read(length) if length else b""
        action = self.take(h.command, h.path)
        if action == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        if isinstance(action, int):
            code = ERROR_CODES.get(action, "InternalError")
            xml = (
                f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            )
            h.send_response_only(action)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(xml) if h.command != "HEAD" else 0))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(xml)
            return
        if callable(action):
            action()
        status, headers, data = self._forward(h, body)
        h.send_response_only(status)
        for name, value in headers:
            h.send_header(name, value)
        if h.command != "HEAD":
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command == "HEAD" or not data:
            return
        if action in ("truncate", "stall"):
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            if action == "stall":
                self.stalled.set()
                self._release.wait(120)
            h.close_connection = True
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return
        h.wfile.write(data)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(h.command, h.path, body=body if body else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in HOP_BY_HOP and (h.command == "HEAD" or k.lower() != "content-length")
            ]
            return resp.status, out, data
        finally:
            conn.close()
