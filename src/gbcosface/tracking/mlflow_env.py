"""The MLflow environment contract of Kubeflow Pipelines 2.17, and what the train step passes to the job's pods.

Why written down here: KFP 2.17's MLflow plugin (kubeflow/pipelines@2.17.0:
backend/src/v2/common/plugins/mlflow/handler.go, RetrieveUserContainerEnvVars) gives each task's container
MLFLOW_RUN_ID (the task's nested run, whose `mlflow.parentRunId` tag is the pipeline run's parent run),
MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID, MLFLOW_WORKSPACE (with workspaces) and the auth variables:
MLFLOW_TRACKING_AUTH ("kubernetes" / "kubernetes-namespaced": the pod's own service-account token), or the
credentials as `valueFrom.secretKeyRef` on the fixed Secret `kfp-mlflow-credentials`
(backend/src/common/plugins/mlflow/config.go: CredentialSecretName, BuildCredentialEnvVars) under keys named
by the namespace's `credentialSecretRef` (tokenKey, usernameKey, passwordKey).

The train step's task container is not where training runs: the job's pods are. So the step forwards the
plain variables, names the task's run as the trainer's parent (PARENT_RUN_ENV: the pods must not reuse
MLFLOW_RUN_ID itself, which KFP ends when the task ends), and references the same Secret for credentials,
so a token never appears as a literal value in the job's manifest.
"""

from __future__ import annotations

from collections.abc import Mapping

TRACKING_URI = "MLFLOW_TRACKING_URI"
EXPERIMENT_ID = "MLFLOW_EXPERIMENT_ID"
EXPERIMENT_NAME = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own variable; used where KFP gives no experiment id
RUN_ID = "MLFLOW_RUN_ID"
WORKSPACE = "MLFLOW_WORKSPACE"
TRACKING_AUTH = "MLFLOW_TRACKING_AUTH"
INSECURE_TLS = "MLFLOW_TRACKING_INSECURE_TLS"
TOKEN = "MLFLOW_TRACKING_TOKEN"
USERNAME = "MLFLOW_TRACKING_USERNAME"
PASSWORD = "MLFLOW_TRACKING_PASSWORD"
#: The run the trainer nests its own run under (the train task's run).
PARENT_RUN_ENV = "GBCOSFACE_MLFLOW_PARENT_RUN_ID"
#: Lineage the trainer logs as parameters (it sees neither the manifest nor the image itself).
MANIFEST_HASH_ENV = "GBCOSFACE_DATASET_MANIFEST_HASH"
IMAGE_ENV = "GBCOSFACE_IMAGE"

#: KFP's tag for nested runs (backend/src/common/plugins/mlflow/config.go: TagNestedRunParentRunID).
PARENT_TAG = "mlflow.parentRunId"
#: KFP's fixed Secret name for bearer and basic auth.
KFP_CREDENTIAL_SECRET = "kfp-mlflow-credentials"
CREDENTIAL_ENV = (TOKEN, USERNAME, PASSWORD)
#: Plain values forwarded to the pods as they are.
PLAIN_ENV = (TRACKING_URI, EXPERIMENT_ID, WORKSPACE, TRACKING_AUTH, INSECURE_TLS)


def pod_env(environ: Mapping[str, str], parent_run_id: str | None) -> dict[str, str]:
    """Plain MLflow variables for the training pods: the task's connection settings and the parent run.

    Empty when this task has no tracking URI (MLflow off)."""
    if not environ.get(TRACKING_URI):
        return {}
    out = {k: environ[k] for k in PLAIN_ENV if environ.get(k)}
    if parent_run_id:
        out[PARENT_RUN_ENV] = parent_run_id
    return out


def credential_refs(environ: Mapping[str, str], secret_keys: Mapping[str, str],
                    secret: str = KFP_CREDENTIAL_SECRET) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Secret references for the credentials this task holds: {env name: (Secret, key)}, and the
    credentials that cannot be forwarded (no key named for them in the cluster profile's mlflow_secret_keys)."""
    refs: dict[str, tuple[str, str]] = {}
    missing: list[str] = []
    for name in CREDENTIAL_ENV:
        if not environ.get(name):
            continue
        key = secret_keys.get(name)
        if key:
            refs[name] = (secret, key)
        else:
            missing.append(name)
    return refs, missing
