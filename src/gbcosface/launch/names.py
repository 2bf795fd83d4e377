"""Kubernetes-safe, run-scoped names for PyTorchJobs.

Why derived from the pipeline run id (never fixed at compile time): two runs of one compiled
pipeline must not fight over one PyTorchJob, and a retried or cleaned-up step must find the job
of its own run again, so the name is a pure function of the run id.

Why DNS-1035 and at most 48 characters: the operator's webhook requires a DNS-1035 label for the
job name, and it names pods and headless Services `<job>-worker-<i>`, which must fit in 63.
"""

from __future__ import annotations

import hashlib
import re

#: Leaves room for "-worker-NNN" (11 characters) and "-config" under the 63-character limit.
MAX_JOB_NAME = 48
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def is_dns1035_label(name: str, max_len: int = 63) -> bool:
    return len(name) <= max_len and bool(_DNS1035.match(name))


def check_job_name(name: str) -> str:
    """Return `name` if it is a valid PyTorchJob name here, else raise ValueError saying why."""
    if not is_dns1035_label(name, MAX_JOB_NAME):
        raise ValueError(
            f"job name {name!r} must be a DNS-1035 label (lower-case letters, digits and '-', starting "
            f"with a letter, ending with a letter or digit) of at most {MAX_JOB_NAME} characters"
        )
    return name


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def job_name_for_run(run_id: str, prefix: str = "gbcosface") -> str:
    """`<prefix>-<slug of run id>-<8 hex of sha256(run id)>`, at most 48 characters.

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
    room = MAX_JOB_NAME - len(prefix) - len(digest) - 2
    slug = slug[: max(room, 0)].strip("-")
    name = "-".join(part for part in (prefix[: MAX_JOB_NAME - 9], slug, digest) if part)
    return check_job_name(name)


def label_value(text: str) -> str:
    """A valid label value (<= 63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    value = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
    if not _LABEL_VALUE.match(value):  # cannot happen by construction; guards future edits
        raise ValueError(f"cannot make a label value of {text!r}")
    return value
