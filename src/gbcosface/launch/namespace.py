"""The namespace a job goes to when none is given: the one the calling pod runs in.

Why: in multi-user Kubeflow a pipeline step runs as `default-editor` in the user's profile
namespace and may create objects only there; a fixed default such as `kubeflow` is a 403. So an
empty namespace means, in this order: the service-account namespace file every pod has, the
current kubeconfig context's namespace (a person at a workstation), else "default".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(explicit: str = "", sa_file: str | Path = SERVICE_ACCOUNT_NAMESPACE,
                      kubeconfig: str | None = None) -> str:
    """`explicit` if set, else the pod's namespace, else the kubeconfig context's, else "default"."""
    if explicit and explicit.strip():
        return explicit.strip()
    path = Path(sa_file)
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    if text:
        return text
    try:
        from kubernetes import config

        # KUBECONFIG read now (the client library reads it once, at import).
        _, current = config.list_kube_config_contexts(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None)
        ns = ((current or {}).get("context") or {}).get("namespace")
        if ns:
            return ns
    except Exception as exc:  # noqa: BLE001 - no kubeconfig at all is the normal case off-cluster
        log.debug("no kubeconfig namespace: %s", exc)
    return "default"
