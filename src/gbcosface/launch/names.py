"""Kubernetes-safe, run-scoped names for PyTorchJobs and TrainJobs, and the length rules of the
names their controllers derive from them.

Why derived from the pipeline run id (never fixed at compile time): two runs of one compiled
pipeline must not fight over one job, and a retried or cleaned-up step must find the job of its
own run again, so the name is a pure function of the run id.

Why at most 46 characters: the job name is only the start of the names the controllers make,
and those must be DNS-1035 labels (at most 63 characters) at every node count up to `MAX_NODES`:

- PyTorchJob (kubeflow/trainer@v1.9.4:pkg/controller.v1/common/util.go GenGeneralName, used for
  pods in common/pod.go and headless Services in common/service.go): `<job>-master-0` and
  `<job>-worker-<i>`, i = 0..workers-1; a Service name must be a DNS-1035 label, so a too-long
  job is accepted by the webhook (it only checks the job name) and then cannot create its Services.
- TrainJob (kubernetes-sigs/jobset@v0.12.0:pkg/webhooks/jobset_webhook.go ValidateCreate with
  pkg/util/placement/placement.go GenPodName): the JobSet (named as the TrainJob) is rejected unless
  `<job>-node-0-<numNodes-1>-abcde` (5 characters for the pod's random suffix) is a DNS-1035 label
  (the same rule in JobSet v0.11.1, which Trainer v2.2.x ships).

At 999 nodes the TrainJob rule leaves 63 - len("-node-0-998-abcde") = 46 characters, the
PyTorchJob rule 63 - len("-worker-997") = 52; `job_name_for_run` keeps to the smaller.
"""

from __future__ import annotations

import hashlib
import re

#: The largest node count whose derived names every generated job name fits.
MAX_NODES = 999
#: Room the JobSet webhook leaves for the random suffix of a pod name ("-abcde").
JOBSET_POD_SUFFIX = "-abcde"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def is_dns1035_label(name: str, max_len: int = 63) -> bool:
    return len(name) <= max_len and bool(_DNS1035.match(name))


def pytorchjob_derived_names(job: str, nnodes: int, elastic: bool = False) -> list[str]:
    """The longest pod/Service names the Training Operator v1.9.4 derives: `<job>-master-0` and the
    last Worker's `<job>-worker-<i>` (an elastic job is Worker-only: `nnodes` Workers)."""
    workers = nnodes if elastic else nnodes - 1
    names = [] if elastic else [f"{job}-master-0"]
    if workers > 0:
        names.append(f"{job}-worker-{workers - 1}")
    return names


def trainjob_derived_names(job: str, nnodes: int) -> list[str]:
    """What JobSet v0.12.0's webhook checks for our one replicated job `node` (1 replica, Indexed,
    completions = numNodes): the child Job `<job>-node-0` and the last pod `<job>-node-0-<n-1>-abcde`."""
    return [f"{job}-node-0", f"{job}-node-0-{nnodes - 1}{JOBSET_POD_SUFFIX}"]


def derived_name_problems(kind: str, job: str, nnodes: int, elastic: bool = False) -> list[str]:
    """Derived names of a `kind` ("pytorchjob" | "trainjob") job that are not DNS-1035 labels."""
    if kind == "trainjob":
        names, what = trainjob_derived_names(job, nnodes), "JobSet v0.12.0 webhook: pod/job name"
    else:
        names, what = pytorchjob_derived_names(job, nnodes, elastic), "training operator v1.9.4: pod/Service name"
    return [f"job name {job!r} ({len(job)} characters) is too long for {nnodes} node(s): {what} {n!r} "
            f"has {len(n)} characters (at most 63)" for n in names if not is_dns1035_label(n)]


def max_job_name(nnodes: int = MAX_NODES) -> int:
    """The longest job name whose derived names fit 63 characters for both kinds at `nnodes` nodes."""
    last = nnodes - 1  # the highest index either kind uses (an elastic PyTorchJob's last Worker)
    return 63 - max(len("-master-0"), len(f"-worker-{last}"), len(f"-node-0-{last}{JOBSET_POD_SUFFIX}"))


#: 46: what `job_name_for_run` produces at most, so that either kind fits up to MAX_NODES nodes.
MAX_JOB_NAME = max_job_name(MAX_NODES)


def check_job_name(name: str, max_len: int = 63) -> str:
    """Return `name` if it is a valid job name (a DNS-1035 label), else raise ValueError saying why.

    Whether the names derived from it fit is the kind's check (`derived_name_problems`), since it
    depends on the node count."""
    if not is_dns1035_label(name, max_len):
        raise ValueError(
            f"job name {name!r} must be a DNS-1035 label (lower-case letters, digits and '-', starting "
            f"with a letter, ending with a letter or digit) of at most {max_len} characters"
        )
    return name


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def job_name_for_run(run_id: str, prefix: str = "gbcosface") -> str:
    """`<prefix>-<slug of run id>-<8 hex of sha256(run id)>`, at most MAX_JOB_NAME characters.

    The hash suffix keeps distinct run ids distinct even when the slug is truncated or lossy
    (e.g. `Run_1` and `run-1`).
    """
    if not run_id or not run_id.strip():
        raise ValueError("a run id is required to name the job (it must come from the pipeline run)")
    prefix = _slug(prefix) or "job"
    if not prefix[0].isalpha():
        prefix = f"j{prefix}"
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    slug = _slug(run_id)
    if slug.startswith(prefix + "-"):
        slug = slug[len(prefix) + 1 :]  # a KFP run name often starts with the pipeline's name already
    prefix = prefix[: MAX_JOB_NAME - 9].strip("-")
    room = MAX_JOB_NAME - len(prefix) - len(digest) - 2
    slug = slug[: max(room, 0)].strip("-")
    name = "-".join(part for part in (prefix, slug, digest) if part)
    return check_job_name(name, MAX_JOB_NAME)


def label_value(text: str) -> str:
    """A valid label value (<= 63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    value = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
    if not _LABEL_VALUE.match(value):  # cannot happen by construction; guards future edits
        raise ValueError(f"cannot make a label value of {text!r}")
    return value
