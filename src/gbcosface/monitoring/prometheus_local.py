"""A throw-away local Prometheus server for the demo and the tests.

Why: on one machine there is no prometheus-operator to turn the PodMonitor and PrometheusRule into
configuration, so this module writes the equivalent plain configuration (static targets, the
PrometheusRule's rule groups as a rules file) and runs the real ``prometheus`` binary against it.
The scrape job is called ``gbcosface`` here and in the cluster (the PodMonitor relabels ``job``),
so the alert expressions and dashboards work unchanged in both places.

Run it by hand (see docs/monitoring.md)::

    python -m gbcosface.monitoring.prometheus_local --targets 127.0.0.1:9400,127.0.0.1:9401
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from gbcosface.yaml_safe import read_yaml_file

JOB_NAME = "gbcosface"
#: The PrometheusRule shipped in this repository, relative to the repository root.
PROMETHEUS_RULE = Path("k8s/monitoring/prometheusrule.yaml")
INSTALL_HINT = (
    "install Prometheus with `make prometheus` (Debian: apt-get install -y prometheus); `make test` does it"
)


class PrometheusNotInstalled(RuntimeError):
    """``prometheus`` or ``promtool`` is not on PATH."""


def find_binary(name: str = "prometheus") -> str:
    """Path of ``prometheus``/``promtool``; raises with the install hint when absent."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusNotInstalled(f"`{name}` not found on PATH: {INSTALL_HINT}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_config(
    targets: Sequence[str],
    *,
    scrape_interval: str = "5s",
    rule_files: Sequence[str] = (),
    evaluation_interval: str | None = None,
) -> str:
    """Prometheus configuration text scraping ``targets`` (``host:port``) as job ``gbcosface``."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "scrape_configs": [
            {"job_name": JOB_NAME, "static_configs": [{"targets": list(targets)}]},
        ],
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    return yaml.safe_dump(config, sort_keys=False)


def extract_rule_groups(prometheus_rule: str | Path) -> dict[str, Any]:
    """The ``spec.groups`` of a PrometheusRule manifest, as a plain Prometheus rules document."""
    path = Path(prometheus_rule)
    docs = [d for d in read_yaml_file(path, all_documents=True) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        raise ValueError(f"{path}: expected exactly one PrometheusRule, found {len(rules)}")
    groups = rules[0].get("spec", {}).get("groups")
    if not groups:
        raise ValueError(f"{path}: PrometheusRule has no spec.groups")
    return {"groups": groups}


def write_rules_file(prometheus_rule: str | Path, out: str | Path) -> Path:
    """Write the PrometheusRule's groups to ``out`` for ``rule_files``/``promtool``."""
    out = Path(out)
    out.write_text(yaml.safe_dump(extract_rule_groups(prometheus_rule), sort_keys=False))
    return out


class PrometheusServer:
    """A ``prometheus`` process on loopback with its own config and storage directory.

    Why a class with ``query``: callers (tests, the demo) want to read values back, which means
    waiting for readiness and for the first scrapes; both are polling with deadlines here.
    """

    def __init__(
        self,
        targets: Sequence[str],
        workdir: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        scrape_interval: str = "1s",
        rules_from: str | Path | None = None,
        log_level: str = "warn",
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        rule_files = []
        if rules_from is not None:
            rule_files.append(str(write_rules_file(rules_from, self.workdir / "rules.yml")))
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(
            render_config(targets, scrape_interval=scrape_interval, rule_files=rule_files)
        )
        self.log_path = self.workdir / "prometheus.log"
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, ready_timeout_s: float = 60.0) -> PrometheusServer:
        """Start the process and wait until ``/-/ready`` answers; raises with the log tail if not."""
        binary = find_binary("prometheus")
        cmd = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            f"--log.level={self.log_level}",
        ]
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {ready_timeout_s}s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raises on an API error."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus API {path} failed: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; a list of ``{"metric": labels, "value": float}``."""
        data = self.api("query", query=expr)
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]

    def wait_for(
        self, expr: str, predicate: Any, timeout_s: float = 60.0, interval_s: float = 0.5
    ) -> list[dict]:
        """Poll ``expr`` until ``predicate(results)`` is true; returns those results or raises."""
        deadline = time.monotonic() + timeout_s
        results: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            results = self.query(expr)
            if predicate(results):
                return results
            time.sleep(interval_s)
        raise TimeoutError(f"{expr!r} did not satisfy the condition in {timeout_s}s; last result: {results}")

    def wait_for_rules_evaluated(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``/api/v1/rules`` until every loaded rule has been evaluated once; returns the groups."""
        deadline = time.monotonic() + timeout_s
        groups: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            groups = self.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(not r.get("lastEvaluation", "0001-").startswith("0001-") for r in rules):
                return groups
            time.sleep(0.5)
        raise TimeoutError(f"rules not evaluated within {timeout_s}s: {groups}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Terminate (then kill) the process; safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a local Prometheus in the foreground for a demo run's exporters (Ctrl-C or SIGTERM stops it)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--targets", default="127.0.0.1:9400,127.0.0.1:9401", help="comma-separated host:port"
    )
    parser.add_argument("--port", type=int, default=9090, help="Prometheus web port on 127.0.0.1")
    parser.add_argument("--dir", default=None, help="config + storage directory (default: a temp dir)")
    parser.add_argument(
        "--rules",
        default=None,
        help=f"PrometheusRule manifest whose alerts to load ('' = none; default: {PROMETHEUS_RULE} if present)",
    )
    parser.add_argument("--scrape-interval", default="5s")
    args = parser.parse_args(argv)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gbcosface-prom-"))
    if args.rules is None:
        rules = str(PROMETHEUS_RULE) if PROMETHEUS_RULE.exists() else None
    elif args.rules and not Path(args.rules).is_file():
        parser.error(f"--rules: no such file: {args.rules}")
    else:
        rules = args.rules or None
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    server = PrometheusServer(
        targets,
        workdir,
        port=args.port,
        scrape_interval=args.scrape_interval,
        rules_from=rules,
        log_level="info",
    )

    def on_term(*_: object) -> None:  # `kill` stops Prometheus too, not only Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        server.start()
        print(f"Prometheus at {server.url} scraping {', '.join(targets)}; alert rules: {rules or 'none'}")
        print(f"config and data in {workdir}; Ctrl-C stops it", flush=True)
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
