"""TrainJob progress reporting against a local HTTPS server that checks the path, the token and the status
bounds as Kubeflow Trainer v2.3.0's status server does (tests/tracking/trainjob_status_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gbcosface.tracking.trainjob_progress import metric_value

from .conftest import run_train, tiny_config
from .trainjob_status_server import StatusServer, make_ca_and_cert

pytestmark = pytest.mark.integration
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsidHJhaW5lci5rdWJlZmxvdy5vcmcifQ.c2ln"


def _env(server: StatusServer, ca: Path, token_file: Path) -> dict[str, str]:
    return {"KUBEFLOW_TRAINER_SERVER_URL": server.url, "KUBEFLOW_TRAINER_SERVER_CA_CERT": str(ca),
            "KUBEFLOW_TRAINER_SERVER_TOKEN": str(token_file)}


@pytest.fixture
def status_server(tmp_path: Path):
    ca, cert, key = make_ca_and_cert(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    server = StatusServer(cert, key, TOKEN).start()
    yield server, ca, token
    server.stop()


def test_rank0_reports_progress_eta_and_metrics_then_100_percent(tmp_path: Path, trainset: Path, status_server) -> None:
    server, ca, token = status_server
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path / "c.yaml", trainset, str(out), log_every=1, tensorboard=False)
    res = run_train(cfg, "schedule.max_steps=200", **_env(server, ca, token))
    assert res.returncode == 0, res.stderr[-3000:]
    assert server.rejected == [] and server.accepted
    summary = json.loads((out / "train_summary.json").read_text())
    times = [t for t, _ in server.accepted]
    assert all(b - a >= 5.0 for a, b in zip(times, times[1:], strict=False))  # at most one update per 5 s
    percents = [s["progressPercentage"] for _, s in server.accepted]
    assert percents == sorted(percents) and percents[-1] == 100
    last = server.accepted[-1][1]
    assert last["estimatedRemainingSeconds"] == 0
    metrics = {m["name"]: m["value"] for m in last["metrics"]}
    assert metrics["final/loss"] == metric_value(summary["final_loss_terms"]["loss"])
    assert metrics["step"] == "200"
    for _, s in server.accepted[:-1]:
        names = {m["name"] for m in s["metrics"]}
        assert {"loss", "cos_v", "lr", "samples_per_s", "step"} <= names


def test_a_wrong_ca_or_token_never_fails_training(tmp_path: Path, trainset: Path, status_server) -> None:
    server, ca, token = status_server
    other_ca, _, _ = make_ca_and_cert(tmp_path / "other-pki", name="other")
    bad_token = tmp_path / "bad-token"
    bad_token.write_text("not-the-token")
    cfg = tiny_config(tmp_path / "c.yaml", trainset, str(tmp_path / "a"), tensorboard=False)
    res = run_train(cfg, **_env(server, other_ca, token))  # the server's certificate is not trusted
    assert res.returncode == 0, res.stderr[-3000:]
    assert server.accepted == [] and server.rejected == []  # TLS failed before any request
    assert res.stderr.count("TrainJob progress update to") == 1
    cfg = tiny_config(tmp_path / "c2.yaml", trainset, str(tmp_path / "b"), tensorboard=False)
    res = run_train(cfg, **_env(server, ca, bad_token))
    assert res.returncode == 0, res.stderr[-3000:]
    assert server.accepted == [] and server.rejected and all(code == 403 for code, _ in server.rejected)

