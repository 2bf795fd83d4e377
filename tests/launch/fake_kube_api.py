"""A tiny in-process stand-in for the Kubernetes API server, on loopback.

No kube-apiserver can run on the build machines (no container engine, no apiserver package), so
the client tests talk HTTP to this instead: the real kubeflow-training SDK and the real
kubernetes Python client build the requests and parse the responses; only the server side is
emulated, and only the endpoints gbcosface.launch.client uses:

  POST/GET/DELETE  /apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}]
  POST/GET/DELETE  /api/v1/namespaces/{ns}/configmaps[/{name}]
  GET              /api/v1/namespaces/{ns}/pods/{name}          (phase only)
  GET              /api/v1/namespaces/{ns}/pods/{name}/log      (tailLines, timestamps, follow)

Status codes and bodies follow the API's conventions (201 on create, 409 AlreadyExists, 404
NotFound with a Status object). The job's status is driven by the test through `script`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from kubernetes import client as k8s

JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
CMS = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)(/log)?$")


def condition(ctype: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": "True", "reason": reason or f"PyTorchJob{ctype}", "message": message,
            "lastTransitionTime": "2026-11-28T00:00:00Z", "lastUpdateTime": "2026-11-28T00:00:00Z"}


class FakeCluster:
    """State of the fake API server plus a record of every request."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.pod_phase: dict[tuple[str, str], str] = {}
        # Log of each pod: list of (timestamp, line). `log_sessions` lets a test end a followed
        # stream early once (a container restart) and serve the rest on the next request.
        self.pod_logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.follow_cut_after: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.get_job_count = 0
        # script(job, n) -> conditions for the n-th GET of a job (None: leave unchanged).
        self.script: Callable[[dict[str, Any], int], list[dict[str, Any]] | None] | None = None
        self.get_delay = 0.0  # seconds to stall each job GET (released early by `release`)
        self.release = threading.Event()
        self.follow_interval = 0.05
        self.lock = threading.Lock()

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and re.search(pattern, p))


def _go_bool(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter as the API server (Go's strconv.ParseBool) reads it; the Python
    client sends `True`."""
    return query.get(name, ["false"])[0] in ("1", "t", "T", "true", "TRUE", "True")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        c = self.cluster
        with c.lock:
            c.requests.append((method, url.path, query))
        if m := JOBS.match(url.path):
            return self._objects(method, c.jobs, m.group(1), m.group(2), "pytorchjobs", job=True)
        if m := CMS.match(url.path):
            return self._objects(method, c.configmaps, m.group(1), m.group(2), "configmaps")
        if (m := POD.match(url.path)) and method == "GET":
            key = (m.group(1), m.group(2))
            if m.group(3):
                return self._log(key, query)
            if key not in c.pod_phase:
                return self._send(404, _status(404, "NotFound", f'pods "{key[1]}" not found'))
            return self._send(200, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": key[1], "namespace": key[0]},
                                    "status": {"phase": c.pod_phase[key]}})
        self._send(404, _status(404, "NotFound", f"no route {method} {url.path}"))

    def _objects(self, method: str, store: dict, ns: str, name: str | None, plural: str, job: bool = False) -> None:
        c = self.cluster
        if method == "POST" and name is None:
            body = self._body()
            key = (ns, body["metadata"]["name"])
            with c.lock:
                if key in store:
                    return self._send(409, _status(409, "AlreadyExists", f'{plural} "{key[1]}" already exists'))
                body["metadata"].setdefault("namespace", ns)
                body["metadata"]["uid"] = f"uid-{len(c.requests)}"
                store[key] = body
            return self._send(201, body)
        key = (ns, name)
        if method == "GET" and name:
            if job:
                if c.get_delay:
                    c.release.wait(c.get_delay)
                with c.lock:
                    c.get_job_count += 1
                    n = c.get_job_count
            with c.lock:
                obj = store.get(key)
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            if job and c.script is not None:
                conditions = c.script(obj, n)
                if conditions is not None:
                    obj.setdefault("status", {})["conditions"] = conditions
            return self._send(200, obj)
        if method == "DELETE" and name:
            with c.lock:
                obj = store.pop(key, None)
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        self._send(405, _status(405, "MethodNotAllowed", method))

    def _log(self, key: tuple[str, str], query: dict[str, list[str]]) -> None:
        c = self.cluster
        lines = c.pod_logs.get(key)
        if lines is None:
            return self._send(404, _status(404, "NotFound", f'pods "{key[1]}" not found'))
        stamps = _go_bool(query, "timestamps")
        tail = query.get("tailLines")
        selected = lines[-int(tail[0]):] if tail else list(lines)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # no Content-Length: the body ends when the connection closes (HTTP/1.0)
        follow = _go_bool(query, "follow")
        cut = c.follow_cut_after.pop(key, None) if follow else None
        for i, (ts, text) in enumerate(selected):
            if cut is not None and i == cut:
                return  # the stream ends early, as when the container restarts
            self.wfile.write(((f"{ts} " if stamps else "") + text + "\n").encode())
            self.wfile.flush()
            if follow:
                time.sleep(c.follow_interval)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")


class FakeApiServer:
    """Context manager: a FakeCluster served on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.cluster = FakeCluster()
        handler = type("Handler", (_Handler,), {"cluster": self.cluster})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def configuration(self) -> k8s.Configuration:
        cfg = k8s.Configuration()
        cfg.host = self.url
        cfg.retries = False  # a refused request must surface at once, not after urllib3 retries
        return cfg

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cluster.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
