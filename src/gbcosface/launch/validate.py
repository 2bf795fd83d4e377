"""Offline checks of a PyTorchJob: the CRD's schema, the operator webhook's rules, and ours.

Why here and not only in tests: `gbcosface job render --crd FILE` and the pipeline can refuse a bad
job before it reaches a cluster, where the same mistakes surface as a rejected admission request
(or worse, a job that is accepted and hangs in rendezvous).

- `crd_schema_errors`: jsonschema against the CRD's `spec.versions[v1].schema.openAPIV3Schema`.
  With `strict=True` (the default) objects that list `properties` reject other keys, as the API
  server does with strict field validation (`kubectl apply` defaults to it since 1.27; without it
  unknown fields are silently pruned, which hides typos).
- `webhook_errors`: the training operator v1.9 validating webhook (pkg/webhooks/pytorch): DNS-1035
  name, replica types Master/Worker only, containers with images and one named `pytorch`,
  Master replicas exactly 1, Worker replicas >= 1, elasticPolicy only with Workers and not
  together with both nProcPerNode fields, runPolicy.managedBy values.
- `project_errors`: rules of this project's contract: a non-elastic job has a Master (the operator
  injects MASTER_ADDR/RANK only then), label keys and values are valid (the CRD schema leaves
  metadata unchecked), and the pod and Service names the operator derives (`<job>-worker-<i>`) are
  DNS-1035 labels (the webhook checks only the job name; the API server then refuses the Services).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from gbcosface.yaml_safe import read_yaml_file

from . import contract
from .names import derived_name_problems, is_dns1035_label

MANAGED_BY = ("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue")
# Go's regexp `$` (no multiline flag) matches only at the end of the text; Python's `$` also matches
# before a trailing newline, so these are used with `fullmatch` (a value "gpu\n" must not pass).
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# kubernetes apimachinery pkg/util/validation/validation.go: envVarNameFmt (the strict rule; the
# RelaxedEnvironmentVariableValidation gate allows any printable ASCII but '=', which a shell-run
# `torchrun` command line cannot use anyway).
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# An image reference as distribution/reference's grammar spells it: [domain[:port]/]path[:tag][@digest].
_IMAGE_REF = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


class JobValidationError(ValueError):
    """A job that the CRD schema, the operator's webhook or the project's contract rejects."""

    def __init__(self, errors: list[str], kind: str = "PyTorchJob"):
        self.errors = errors
        super().__init__(f"invalid {kind}:\n  " + "\n  ".join(errors))


def load_crd_schema(path: str | Path, version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of `version` from a CRD YAML file."""
    crd = read_yaml_file(path)
    for ver in crd["spec"]["versions"]:
        if ver["name"] == version:
            return ver["schema"]["openAPIV3Schema"]
    raise ValueError(f"{path}: no version {version!r} in the CRD")


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def _format_checker() -> Any:
    """jsonschema's checker with the CRDs' int formats. Imported here, not at module level: rendering
    (spec_value_errors) runs in the image's steps, which do not install jsonschema (a test extra)."""
    import jsonschema

    checker = jsonschema.FormatChecker()
    checker.checks("int32")(_int32)
    checker.checks("int64")(_int64)
    return checker


def crd_schema_errors(obj: dict[str, Any], schema: dict[str, Any], strict: bool = True) -> list[str]:
    """Schema violations as `path: message` strings (empty when valid)."""
    schema = _strict(copy.deepcopy(schema)) if strict else schema
    import jsonschema

    validator = jsonschema.Draft7Validator(schema, format_checker=_format_checker())
    errors = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{path}: {err.message}")
    return errors


def webhook_errors(job: dict[str, Any]) -> list[str]:
    """What the training operator's validating webhook would reject."""
    errors: list[str] = []
    name = (job.get("metadata") or {}).get("name", "")
    if not is_dns1035_label(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    spec = job.get("spec") or {}
    managed_by = (spec.get("runPolicy") or {}).get("managedBy")
    if managed_by is not None and managed_by not in MANAGED_BY:
        errors.append(f"spec.runPolicy.managedBy: {managed_by!r} is not one of {MANAGED_BY}")
    replicas = spec.get("pytorchReplicaSpecs")
    if not replicas:
        errors.append("spec.pytorchReplicaSpecs: must be specified")
        replicas = {}
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if contract.WORKER not in replicas:
            errors.append("spec.pytorchReplicaSpecs[Worker]: must be configured if elastic policy is used")
        if elastic.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            errors.append("spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode")
    for rtype, rspec in replicas.items():
        where = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in (contract.MASTER, contract.WORKER):
            errors.append(f"{where}: unsupported replica type (Master or Worker)")
        containers = (((rspec or {}).get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            errors.append(f"{where}.template.spec.containers: must be specified")
        for i, container in enumerate(containers):
            if not container.get("image"):
                errors.append(f"{where}.template.spec.containers[{i}].image: must be required")
        if not any(c.get("name") == contract.CONTAINER_NAME for c in containers):
            errors.append(f"{where}.template.spec.containers: must have a container named {contract.CONTAINER_NAME}")
        count = (rspec or {}).get("replicas")
        if rtype == contract.MASTER and count != 1:
            errors.append(f"{where}.replicas: must be 1 (got {count!r})")
        elif rtype == contract.WORKER and count is not None and count < 1:
            errors.append(f"{where}.replicas: must be at least 1 (got {count!r})")
    return errors


def _label_errors(where: str, labels: dict[str, Any] | None) -> list[str]:
    errors = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if not _is_label_key(key):
            errors.append(f"{where}: label key {key!r} has an invalid {'prefix' if not _key_prefix_ok(key) else 'name'}")
        if not is_label_value(value):
            errors.append(f"{where}: label {key!r} has an invalid value {value!r}")
    return errors


def _key_prefix_ok(key: str) -> bool:
    prefix, _, _ = key.rpartition("/")
    return not prefix or (len(prefix) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(prefix) is not None)


def _is_label_key(key: object) -> bool:
    """A qualified name: [DNS-1123 subdomain/]name, the name 1-63 characters (apimachinery IsQualifiedName)."""
    if not isinstance(key, str):
        return False
    name = key.rpartition("/")[2]
    return _key_prefix_ok(key) and 0 < len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def is_label_value(value: object) -> bool:
    """A label (or node selector) value: empty, or 1-63 of [-A-Za-z0-9_.] starting and ending alphanumeric."""
    return isinstance(value, str) and len(value) <= 63 and (not value or _LABEL_NAME.fullmatch(value) is not None)


def is_env_name(name: object) -> bool:
    return isinstance(name, str) and _ENV_NAME.fullmatch(name) is not None


def is_image_reference(image: object) -> bool:
    return isinstance(image, str) and len(image) <= 4096 and _IMAGE_REF.fullmatch(image) is not None


def spec_value_errors(spec: Any) -> list[str]:
    """Values of a JobSpec that no Kubernetes API server (or container runtime) would take, by field.

    Checked at render so that `job render` refuses them, instead of the API server rejecting the pod
    (or the kubelet failing to pull `img;rm`) after the job was created.
    """
    errors: list[str] = []
    if spec.image and not is_image_reference(spec.image):
        errors.append(f"image {spec.image!r} is not an image reference ([registry/]name[:tag][@digest])")
    for field_name in ("env", "nccl_env"):
        for name, value in (getattr(spec, field_name) or {}).items():
            if not is_env_name(name):
                errors.append(f"{field_name}: {name!r} is not a valid environment variable name "
                              "(letters, digits, '_', '-', '.'; not starting with a digit)")
            if not isinstance(value, str) or "\x00" in value:
                errors.append(f"{field_name}: the value of {name!r} must be a string without NUL bytes")
    for field_name in ("labels", "node_selector"):
        for key, value in (getattr(spec, field_name) or {}).items():
            if not _is_label_key(key):
                errors.append(f"{field_name}: {key!r} is not a valid label key")
            if not is_label_value(value):
                errors.append(f"{field_name}: the value {value!r} of {key!r} is not a valid label value "
                              "(at most 63 of [-A-Za-z0-9_.], starting and ending alphanumeric)")
    for key in (spec.annotations or {}, spec.pod_annotations or {}):
        for name in key:
            if not _is_label_key(name):
                errors.append(f"annotations: {name!r} is not a valid annotation key")
    for i, tol in enumerate(spec.tolerations or []):
        where = f"tolerations[{i}]"
        if tol.get("key") not in (None, "") and not _is_label_key(tol.get("key")):
            errors.append(f"{where}.key: {tol.get('key')!r} is not a valid label key")
        if tol.get("operator") not in (None, *TOLERATION_OPERATORS):
            errors.append(f"{where}.operator: {tol.get('operator')!r} is not Exists or Equal")
        if tol.get("value") is not None and not is_label_value(tol.get("value")):
            errors.append(f"{where}.value: {tol.get('value')!r} is not a valid label value")
        if tol.get("effect") not in (None, *TOLERATION_EFFECTS):
            errors.append(f"{where}.effect: {tol.get('effect')!r} is not one of {TOLERATION_EFFECTS[1:]}")
    for i, arg in enumerate(spec.extra_args or []):
        if not isinstance(arg, str) or "\x00" in arg:
            errors.append(f"extra_args[{i}]: {arg!r} must be a string without NUL bytes")
    return errors


def project_errors(job: dict[str, Any]) -> list[str]:
    """Rules of this project's PyTorchJob contract beyond the webhook's."""
    errors: list[str] = []
    spec = job.get("spec") or {}
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if spec.get("elasticPolicy") is None and contract.MASTER not in replicas:
        errors.append("spec.pytorchReplicaSpecs[Master]: a non-elastic job needs a Master (it provides MASTER_ADDR)")
    errors += _label_errors("metadata.labels", (job.get("metadata") or {}).get("labels"))
    for rtype, rspec in replicas.items():
        meta = ((rspec or {}).get("template") or {}).get("metadata") or {}
        errors += _label_errors(f"spec.pytorchReplicaSpecs[{rtype}].template.metadata.labels", meta.get("labels"))
    name = (job.get("metadata") or {}).get("name", "")
    counts = [(rspec or {}).get("replicas", 1) for rspec in replicas.values()]
    if is_dns1035_label(name) and all(isinstance(c, int) and c >= 0 for c in counts) and sum(counts) >= 1:
        elastic = spec.get("elasticPolicy") is not None or contract.MASTER not in replicas
        errors += [f"metadata.name: {p}" for p in derived_name_problems("pytorchjob", name, sum(counts), elastic)]
    return errors


def job_errors(job: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    errors = crd_schema_errors(job, schema) if schema is not None else []
    return errors + webhook_errors(job) + project_errors(job)


def check_job(job: dict[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Raise JobValidationError listing every problem; `schema` adds the CRD check."""
    errors = job_errors(job, schema)
    if errors:
        raise JobValidationError(errors)
