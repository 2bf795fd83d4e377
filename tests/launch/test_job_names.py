"""Job names fit every name the controllers derive from them, for both kinds at 1..999 nodes.

The rules, re-encoded here from the upstream sources (not from gbcosface.launch.names):
- PyTorchJob (kubeflow/trainer@v1.9.4:pkg/controller.v1/common/util.go GenGeneralName, used for the
  pods in common/pod.go and the headless Services in common/service.go): `<job>-<replica type in
  lower case>-<index>`; a Service name must be a DNS-1035 label of at most 63 characters.
- TrainJob (kubernetes-sigs/jobset@v0.12.0:pkg/webhooks/jobset_webhook.go ValidateCreate with
  pkg/util/placement/placement.go): the child Job `<jobset>-<replicatedJob>-<replicas-1>` and, for an
  Indexed Job (JobSet's default), the pod `<jobset>-<replicatedJob>-<replicas-1>-<completions-1>` plus
  "-abcde" must be DNS-1035 labels; the JobSet is named as the TrainJob (kubeflow/trainer@v2.3.0:
  pkg/runtime/framework/plugins/jobset/jobset.go Build), and Trainer sets completions = numNodes.
"""

from __future__ import annotations

import functools
import re

import pytest
from launch_helpers import REPO

from gbcosface.config import load_config
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.names import job_name_for_run
from gbcosface.launch.spec import JobSpec
from gbcosface.launch.validate import load_crd_schema

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
CRDS = {"pytorchjob": (REPO / "tests/fixtures/crds/kubeflow.org_pytorchjobs.yaml", "v1"),
        "trainjob": (REPO / "tests/fixtures/crds/trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")}
# A run id as long and awkward as KFP makes them: the slug is cut, the hash keeps it unique.
RUN_ID = "gbcosface-train-eval-pipeline-with-a-very-long-experiment-name-20261203075100-" + "x" * 80


@functools.cache
def schema(kind: str) -> dict:
    return load_crd_schema(*CRDS[kind])


def dns1035(name: str) -> bool:
    return len(name) <= 63 and DNS1035.match(name) is not None


def pytorchjob_names(job: dict) -> list[str]:
    """Every pod/Service name the operator creates for a rendered PyTorchJob."""
    name = job["metadata"]["name"]
    return [f"{name}-{rtype.lower()}-{i}" for rtype, rs in job["spec"]["pytorchReplicaSpecs"].items()
            for i in range(rs["replicas"])]


def jobset_names(job: dict) -> list[str]:
    """The names JobSet's webhook checks for the TrainJob's JobSet (one replicated job `node`, 1 replica)."""
    name, nodes = job["metadata"]["name"], job["spec"]["trainer"]["numNodes"]
    return [f"{name}-node-0", f"{name}-node-0-{nodes - 1}-abcde"]


DERIVED = {"pytorchjob": pytorchjob_names, "trainjob": jobset_names}


@pytest.mark.parametrize("nnodes", [1, 16, 64, 999])
@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_run_scoped_names_fit_every_derived_name_up_to_999_nodes(kind, nnodes):
    name = job_name_for_run(RUN_ID)
    k = get_job_kind(kind)
    spec = JobSpec(name=name, image="img:1", nnodes=nnodes, shm_size="1Gi")
    job = k.render(spec, load_config("demo")).job
    assert k.problems(job, schema(kind)) == []
    derived = DERIVED[kind](job)
    assert len(derived) == (nnodes if kind == "pytorchjob" else 2)
    bad = [n for n in derived if not dns1035(n)]
    assert bad == [], f"{len(name)}-character name: {bad[:3]}"


@pytest.mark.parametrize(("kind", "nnodes", "longest"), [
    ("trainjob", 1, 48), ("trainjob", 11, 47), ("trainjob", 999, 46),
    ("pytorchjob", 1, 54), ("pytorchjob", 11, 54), ("pytorchjob", 12, 53), ("pytorchjob", 999, 52),
])
def test_a_name_one_character_too_long_is_refused_before_it_reaches_a_cluster(kind, nnodes, longest):
    """The longest name each upstream rule allows renders and validates; one more character is refused by
    the renderer, and a job edited to it is reported by the offline checks."""
    k = get_job_kind(kind)
    ok = "g" * longest
    rendered = k.render(JobSpec(name=ok, image="img:1", nnodes=nnodes, shm_size="1Gi"), load_config("demo"))
    assert all(dns1035(n) for n in DERIVED[kind](rendered.job)) and k.problems(rendered.job) == []
    long = ok + "g"
    with pytest.raises(ValueError, match="too long for"):
        k.render(JobSpec(name=long, image="img:1", nnodes=nnodes, shm_size="1Gi"), load_config("demo"))
    rendered.job["metadata"]["name"] = long
    assert not all(dns1035(n) for n in DERIVED[kind](rendered.job))
    assert any("too long for" in p for p in k.problems(rendered.job))


def test_todays_48_character_names_would_break_a_trainjob_of_11_nodes():
    """Why job_name_for_run keeps to 46: at 11 nodes a 48-character JobSet's last pod has 64 characters."""
    assert len(jobset_names({"metadata": {"name": "g" * 48}, "spec": {"trainer": {"numNodes": 11}}})[1]) == 64
    assert 40 < len(job_name_for_run(RUN_ID)) <= 46
