"""The validator rejects what the CRD schema, the operator's webhook or the project contract reject
(each rule shown failing on a broken copy of a good job), and accepts the good job."""

from __future__ import annotations

import copy
import hashlib

import pytest
from launch_helpers import CRD_FILE

from gbcosface.config import load_config
from gbcosface.launch.pytorchjob import JobSpec, render_job
from gbcosface.launch.validate import (
    JobValidationError,
    check_job,
    crd_schema_errors,
    job_errors,
    project_errors,
    webhook_errors,
)


@pytest.fixture(scope="module")
def good_job():
    spec = JobSpec(name="gbc-ok", image="img:1", nnodes=2, nproc_per_node=2, gpus_per_node=2)
    return render_job(spec, load_config("paper")).job


def _broken(job, edit):
    bad = copy.deepcopy(job)
    edit(bad)
    return bad


def _replicas(job):
    return job["spec"]["pytorchReplicaSpecs"]


def test_vendored_crd_is_the_recorded_upstream_file():
    digest = hashlib.sha256(CRD_FILE.read_bytes()).hexdigest()
    assert digest in (CRD_FILE.parent / "README.md").read_text()


def test_good_job_is_accepted(good_job, crd_schema):
    check_job(good_job, crd_schema)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda j: _replicas(j)["Master"].__setitem__("replicas", "one"), "'one' is not of type 'integer'"),
        (lambda j: j["spec"].__setitem__("nprocPerNode", 8), "8 is not of type 'string'"),
        (lambda j: j["spec"]["runPolicy"].__setitem__("cleanupPolicy", "All"), "Additional properties"),
        (lambda j: _replicas(j)["Master"]["template"]["spec"]["containers"][0]["ports"][0].__setitem__("containerPort", "23456"),
         "is not of type 'integer'"),
        (lambda j: _replicas(j)["Master"].__setitem__("replicas", 2**31), "int32"),
        (lambda j: _replicas(j)["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"].__setitem__("memory", "12 GB"),
         "memory"),
        (lambda j: j["spec"].pop("pytorchReplicaSpecs"), "'pytorchReplicaSpecs' is a required property"),
    ],
)
def test_crd_schema_rejects(good_job, crd_schema, edit, message):
    errors = crd_schema_errors(_broken(good_job, edit), crd_schema)
    assert errors and any(message in e for e in errors), errors


def test_strict_mode_is_what_catches_unknown_fields(good_job, crd_schema):
    bad = _broken(good_job, lambda j: j["spec"].__setitem__("elasticPolicyy", {}))
    assert crd_schema_errors(bad, crd_schema, strict=False) == []  # the server would silently prune it
    assert crd_schema_errors(bad, crd_schema, strict=True)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda j: _replicas(j)["Master"]["template"]["spec"]["containers"][0].__setitem__("name", "trainer"),
         "must have a container named pytorch"),
        (lambda j: _replicas(j)["Master"].__setitem__("replicas", 2), "Master].replicas: must be 1"),
        (lambda j: _replicas(j)["Worker"].__setitem__("replicas", 0), "must be at least 1"),
        (lambda j: j["spec"].__setitem__("elasticPolicy", {"minReplicas": 1, "maxReplicas": 2})
         or _replicas(j).pop("Worker"), "must be configured if elastic policy is used"),
        (lambda j: j["spec"].__setitem__("elasticPolicy", {"nProcPerNode": 2}), "must not be used with spec.nprocPerNode"),
        (lambda j: _replicas(j).__setitem__("Chief", copy.deepcopy(_replicas(j)["Worker"])), "unsupported replica type"),
        (lambda j: j["metadata"].__setitem__("name", "gbc.ok"), "DNS-1035"),
        (lambda j: _replicas(j)["Worker"]["template"]["spec"]["containers"][0].__setitem__("image", ""), "image: must be required"),
        (lambda j: j["spec"]["runPolicy"].__setitem__("managedBy", "me"), "managedBy"),
    ],
)
def test_webhook_rules_reject(good_job, edit, message):
    errors = webhook_errors(_broken(good_job, edit))
    assert any(message in e for e in errors), errors
    with pytest.raises(JobValidationError):
        check_job(_broken(good_job, edit))


def test_project_rules(good_job):
    no_master = _broken(good_job, lambda j: _replicas(j).pop("Master"))
    assert webhook_errors(no_master) == []  # the webhook allows a Worker-only job...
    assert any("needs a Master" in e for e in project_errors(no_master))  # ...but nothing would set MASTER_ADDR
    bad_label = _broken(good_job, lambda j: j["metadata"]["labels"].__setitem__("gbcosface/run-id", "x" * 64))
    assert any("invalid value" in e for e in project_errors(bad_label))
    assert job_errors(good_job) == []
