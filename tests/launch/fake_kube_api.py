"""A tiny in-process stand-in for the Kubernetes API server, on loopback.

No kube-apiserver can run on the build machines (no container engine, no apiserver package), so
the client tests talk HTTP to this instead: the real kubeflow-training SDK and the real
kubernetes Python client build the requests and parse the responses; only the server side is
emulated, and only the endpoints gbcosface.launch.client uses:

  POST/GET/DELETE  /apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}]
  POST/GET/DELETE  /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs[/{name}]
  POST/GET/DELETE  /api/v1/namespaces/{ns}/configmaps[/{name}]
  PATCH            /api/v1/namespaces/{ns}/configmaps/{name}    (merges `metadata`, e.g. ownerReferences)
  GET              /api/v1/namespaces/{ns}/pods?labelSelector=k=v,...   (equality selectors)
  GET              /api/v1/namespaces/{ns}/pods/{name}          (the stored pod, or a phase only)
  GET              /api/v1/namespaces/{ns}/pods/{name}/log      (tailLines, timestamps, follow)
  GET              /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs?labelSelector=k=v,...
  GET              /api/v1/namespaces/{ns}/events               (fieldSelector: equality on involvedObject.kind,
                                                                 .name, .uid, reason, type)
  GET              /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}

Status codes and bodies follow the API's conventions (201 on create with a uid, 409 AlreadyExists,
404 NotFound with a Status object). With `delete_lag` = n, a deleted object stays n more GETs with a
deletionTimestamp (finalizers, the garbage collector) and a create of its name meanwhile answers 409. A job's status is driven by the test through `script`; pods
(with the labels the operators set: training.kubeflow.org/job-name for PyTorchJobs,
jobset.sigs.k8s.io/jobset-name for TrainJobs) and events are put in `pods` and `events`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from kubernetes import client as k8s

JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
CMS = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)(/log)?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
PVC = re.compile(r"^/api/v1/namespaces/([^/]+)/persistentvolumeclaims/([^/]+)$")


def condition(ctype: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": "True", "reason": reason or f"PyTorchJob{ctype}", "message": message,
            "lastTransitionTime": "2026-11-28T00:00:00Z", "lastUpdateTime": "2026-11-28T00:00:00Z"}


def pod(name: str, labels: dict[str, str], phase: str = "Pending", container: str = "pytorch",
        waiting: tuple[str, str] | None = None, last_terminated: tuple[str, int] | None = None,
        terminated: tuple[str, int] | None = None, unschedulable: str | None = None, restarts: int = 0,
        created: str = "2026-11-28T00:00:00Z", scheduled: str | None = None, uid: str | None = None) -> dict[str, Any]:
    """A pod object as the API returns it, with the status fields the stuck-pod check reads.
    `scheduled`: the time of PodScheduled=True (the scheduler bound it; spec.nodeName is set)."""
    cs: dict[str, Any] = {"name": container, "ready": False, "restartCount": restarts, "image": "img",
                          "imageID": "", "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    elif terminated:
        cs["state"] = {"terminated": {"reason": terminated[0], "exitCode": terminated[1]}}
    elif phase == "Running":
        cs["state"] = {"running": {"startedAt": created}}
    if last_terminated:
        cs["lastState"] = {"terminated": {"reason": last_terminated[0], "exitCode": last_terminated[1]}}
    conditions = []
    spec: dict[str, Any] = {"containers": [{"name": container, "image": "img"}]}
    if unschedulable is not None:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": unschedulable, "lastTransitionTime": created})
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled})
        spec["nodeName"] = "gpu-node-1"
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if unschedulable is None:
        status["containerStatuses"] = [cs]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "creationTimestamp": created, "uid": uid or f"pod-uid-{name}"},
            "spec": spec, "status": status}


def event(name: str, reason: str, message: str, stamp: str = "2026-11-28T00:00:05Z", *, kind: str = "Pod",
          uid: str | None = None, type: str = "Warning", new_api: bool = False, count: int = 1,
          last: str | None = None, component: str = "kubelet") -> dict[str, Any]:
    """A core/v1 Event about object `name` as the API server returns it, in one of its two shapes:
    - the legacy recorder's (the kubelet's): firstTimestamp `stamp`, lastTimestamp `last` (or `stamp`),
      count, eventTime null;
    - `new_api`: written through events.k8s.io/v1 (kube-scheduler, Trainer v2.3's controller):
      eventTime `stamp` (microseconds), and once repeated series.count / series.lastObservedTime `last`;
      firstTimestamp, lastTimestamp and count null.
    A pod's uid defaults to what `pod()` gives a pod of that name."""
    obj = {"kind": kind, "name": name, "namespace": "ns1",
           "uid": uid or (f"pod-uid-{name}" if kind == "Pod" else None)}
    ev: dict[str, Any] = {"apiVersion": "v1", "kind": "Event",
                          "metadata": {"name": f"{name}.{zlib.crc32((stamp + message).encode()):08x}",
                                       "creationTimestamp": stamp.split(".")[0].rstrip("Z") + "Z"},
                          "involvedObject": {k: v for k, v in obj.items() if v}, "reason": reason,
                          "message": message, "type": type}
    if new_api:
        ev.update({"eventTime": stamp if "." in stamp else stamp.replace("Z", ".000000Z"), "firstTimestamp": None,
                   "lastTimestamp": None, "reportingComponent": component, "reportingInstance": f"{component}-0",
                   "action": "Scheduling" if reason == "FailedScheduling" else "Reconciling"})
        if count > 1:
            ev["series"] = {"count": count, "lastObservedTime": last or stamp}
    else:
        ev.update({"firstTimestamp": stamp, "lastTimestamp": last or stamp, "count": count, "eventTime": None,
                   "source": {"component": component}})
    return ev


class FakeCluster:
    """State of the fake API server plus a record of every request."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}  # PyTorchJobs
        self.trainjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.pod_phase: dict[tuple[str, str], str] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}  # full pod objects (listed by labels)
        self.events: dict[str, list[dict[str, Any]]] = {}  # namespace -> events
        self.pvcs: dict[tuple[str, str], dict[str, Any]] = {}
        self.forbidden: set[str] = set()  # path regexes answered 403 (RBAC the caller lacks)
        self.delete_lag = 0  # GETs a deleted object stays (with a deletionTimestamp) before it is gone
        self._dying: dict[tuple[int, tuple[str, str]], int] = {}  # (id(store), key) -> GETs left
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
        if any(re.search(f, url.path) for f in c.forbidden):
            return self._send(403, _status(403, "Forbidden", f"forbidden: {method} {url.path}"))
        if m := JOBS.match(url.path):
            return self._objects(method, c.jobs, m.group(1), m.group(2), "pytorchjobs", job=True)
        if m := TRAINJOBS.match(url.path):
            return self._objects(method, c.trainjobs, m.group(1), m.group(2), "trainjobs", job=True)
        if m := CMS.match(url.path):
            return self._objects(method, c.configmaps, m.group(1), m.group(2), "configmaps")
        if (m := PODS.match(url.path)) and method == "GET":
            selector = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if "=" in kv)
            with c.lock:
                items = [p for (ns, _), p in sorted(c.pods.items()) if ns == m.group(1)
                         and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
            return self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        if (m := EVENTS.match(url.path)) and method == "GET":
            wanted = [v.split("=", 1) for v in query.get("fieldSelector", [""])[0].split(",") if "=" in v]

            def field(e: dict[str, Any], path: str) -> Any:
                for part in path.split("."):
                    e = (e or {}).get(part)
                return e or ""

            items = [e for e in c.events.get(m.group(1), []) if all(field(e, k) == v for k, v in wanted)]
            return self._send(200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items})
        if (m := PVC.match(url.path)) and method == "GET":
            pvc = c.pvcs.get((m.group(1), m.group(2)))
            if pvc is None:
                return self._send(404, _status(404, "NotFound", f'persistentvolumeclaims "{m.group(2)}" not found'))
            return self._send(200, pvc)
        if (m := POD.match(url.path)) and method == "GET":
            key = (m.group(1), m.group(2))
            if m.group(3):
                return self._log(key, query)
            if key in c.pods:
                return self._send(200, c.pods[key])
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
                body["metadata"].setdefault("creationTimestamp", "2026-11-28T00:00:00Z")
                store[key] = body
            return self._send(201, body)
        if method == "GET" and name is None:
            query = parse_qs(urlparse(self.path).query)
            selector = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if "=" in kv)
            with c.lock:
                items = [o for (n, _), o in sorted(store.items()) if n == ns
                         and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
            return self._send(200, {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items})
        key = (ns, name)
        if method == "GET" and name:
            if job:
                if c.get_delay:
                    c.release.wait(c.get_delay)
                with c.lock:
                    c.get_job_count += 1
                    n = c.get_job_count
            with c.lock:
                dying = (id(store), key)
                if dying in c._dying:
                    c._dying[dying] -= 1
                    if c._dying[dying] < 0:
                        del c._dying[dying]
                        store.pop(key, None)
                obj = store.get(key)
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            if job and c.script is not None:
                conditions = c.script(obj, n)
                if conditions is not None:
                    obj.setdefault("status", {})["conditions"] = conditions
            return self._send(200, obj)
        if method == "PATCH" and name and not job:
            body = self._body()
            with c.lock:
                obj = store.get(key)
                if obj is not None:
                    obj.setdefault("metadata", {}).update(body.get("metadata") or {})
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            return self._send(200, obj)
        if method == "DELETE" and name:
            with c.lock:
                if c.delete_lag and key in store:
                    obj = store[key]
                    obj["metadata"].setdefault("deletionTimestamp", "2026-11-28T01:00:00Z")
                    c._dying.setdefault((id(store), key), c.delete_lag)
                else:
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

    def do_PATCH(self) -> None:  # noqa: N802
        self._route("PATCH")


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
