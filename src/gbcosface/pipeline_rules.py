"""Rules a real Kubeflow Pipelines backend applies to a compiled pipeline, checked on the IR per backend version.

Why: KFP's local runner is more forgiving than any backend, and the SDK (2.17) emits features that
older backends do not have, so a DAG can pass every local run and still fail, or silently
misbehave, on a cluster. Each rule below is read from the backend's source at the tag where the
behaviour changed, and applies to the backend versions `min_version..max_version` (inclusive):

- Placeholders: the driver substitutes `{{$.pipeline_job_uuid}}`, `{{$.pipeline_job_name}}`, ... only
  when a placeholder is the WHOLE value of a task input (a `switch` on the string); embedded in a
  longer string it reaches the step literally. Before 2.5.0 it substitutes none of them.
- `{{$.pipeline_job_name}}` is the run's display name, not unique: nothing run-scoped may come from it.
- A pipeline parameter's default is a plain value: a placeholder there is never substituted.
- Kubernetes settings of a task (the platform document's executors) are parsed leniently by the
  driver: a field the backend does not know is dropped without an error, so the rule names what is
  lost (a secret name from a parameter before 2.5 leaves the pod an empty secret name; `optional`
  on a secret env before 2.15 makes a missing key a CreateContainerConfigError).
- The platform document as a whole is parsed strictly by the API server: one unknown field (the
  2.17 `pipelineConfig.resourceTtlOnCompletion` on 2.16) makes it skip the whole document, so the
  run loses every Kubernetes setting (secrets, deadlines, tolerations, volumes) at once.

`problems(ir, backend=..., platform=...)` returns one readable line per violation (empty: the IR
follows the rules of that backend); `RULES` is the table, each rule with its citation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gbcosface.pipeline_backends import Backend, get_backend

PLACEHOLDER = re.compile(r"\{\{\$[^{}]*\}\}")
RUN_PLACEHOLDER = re.compile(r"\{\{\$\.pipeline_[a-z_]+\}\}")
DISPLAY_NAME = "{{$.pipeline_job_name}}"
ANY = ((2, 0), (99, 99))


@dataclass(frozen=True)
class Rule:
    """One behaviour of a backend: applies to versions min_version..max_version (inclusive)."""

    name: str
    min_version: tuple[int, int]
    max_version: tuple[int, int]
    citation: str  # repo@tag:path (what), where the behaviour is
    check: Callable[[dict[str, Any], dict[str, Any]], list[str]]  # (ir, platform) -> problems

    def applies_to(self, backend: Backend) -> bool:
        return self.min_version <= backend.version <= self.max_version


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _dags(ir: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "root", ir.get("root", {}).get("dag", {})
    for name, comp in ir.get("components", {}).items():
        if "dag" in comp:
            yield name, comp["dag"]


def _task_constants(ir: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, text) for every string constant a task input receives."""
    for dag_name, dag in _dags(ir):
        for task_name, task in dag.get("tasks", {}).items():
            for param, spec in task.get("inputs", {}).get("parameters", {}).items():
                if "runtimeValue" in spec:
                    for text in _strings(spec["runtimeValue"].get("constant")):
                        yield f"{dag_name}/{task_name} input {param!r}", text


def _executors(platform: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    k8s = (platform or {}).get("platforms", {}).get("kubernetes", {})
    yield from k8s.get("deploymentSpec", {}).get("executors", {}).items()


# --- the checks -------------------------------------------------------------------------------

def _embedded_placeholders(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    out = []
    for where, text in _task_constants(ir):
        found = PLACEHOLDER.findall(text)
        if found and PLACEHOLDER.fullmatch(text) is None:
            out.append(f"{where}: embeds {found[0]} in a longer string {text!r}; a real backend passes it "
                       "literally: pass the placeholder as a whole input and join inside the step")
    return out


def _display_name(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"{where}: uses the run's display name {DISPLAY_NAME} (not unique); use "
            "dsl.PIPELINE_JOB_ID_PLACEHOLDER as a whole input"
            for where, text in _task_constants(ir) if DISPLAY_NAME in text]


def _placeholder_defaults(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    out = []
    for param, spec in ir.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).items():
        for text in _strings(spec.get("defaultValue")):
            if PLACEHOLDER.search(text):
                out.append(f"pipeline parameter {param!r}: default {text!r} holds a placeholder, which the "
                           "backend never substitutes in a default")
    return out


def _images(ir: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for name, executor in ir.get("deploymentSpec", {}).get("executors", {}).items():
        yield name, executor.get("container", {}).get("image", "")


def _mixed_image(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"executor {name}: image {image!r} mixes a placeholder with text"
            for name, image in _images(ir) if PLACEHOLDER.search(image) and PLACEHOLDER.fullmatch(image) is None]


def _run_placeholders(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"{where}: {RUN_PLACEHOLDER.search(text).group(0)} is passed literally by this backend (it "
            "substitutes no run placeholder); take the run id from the pod label pipeline/runid instead"
            for where, text in _task_constants(ir) if RUN_PLACEHOLDER.search(text)]


def _param_image(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"executor {name}: image {image!r} comes from a parameter, which this backend does not "
            "resolve (the pod would get the placeholder as its image); compile with a static image"
            for name, image in _images(ir) if PLACEHOLDER.search(image)]


def _secret_name_params(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    out = []
    for name, ex in _executors(platform):
        for field in ("secretAsEnv", "secretAsVolume", "imagePullSecret"):
            for i, entry in enumerate(ex.get(field, [])):
                if not entry.get("secretName"):
                    out.append(f"executor {name}: {field}[{i}] names its Secret only by a parameter; this "
                               "backend reads only secretName, so the pod gets an empty Secret name: "
                               "compile the name in")
    return out


def _toleration_json(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"executor {name}: a toleration from a parameter (tolerationJson) is dropped by this backend: "
            "compile the toleration in"
            for name, ex in _executors(platform) if any("tolerationJson" in t for t in ex.get("tolerations", []))]


def _optional_secret_env(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"executor {name}: secretAsEnv[{i}] is optional, which this backend drops: a missing Secret or "
            "key leaves the step in CreateContainerConfigError until its deadline; map only keys the "
            "Secret must hold, without optional"
            for name, ex in _executors(platform)
            for i, entry in enumerate(ex.get("secretAsEnv", [])) if entry.get("optional")]


def _pipeline_ttl(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    config = (platform or {}).get("platforms", {}).get("kubernetes", {}).get("pipelineConfig", {})
    return [f"pipelineConfig.{key}: unknown to this backend's API server, which then skips the whole "
            "platform document (every secret, deadline, toleration and volume of every step is lost); "
            "leave PipelineConfig's TTLs out for this backend"
            for key in sorted(config) if key.startswith("resourceTtlOn")]


def _step_timeout(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"executor {name}: activeDeadlineSeconds (kubernetes.set_timeout) is dropped by this backend"
            for name, ex in _executors(platform) if "activeDeadlineSeconds" in ex]


def _empty_dir(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"executor {name}: emptyDirMounts (kubernetes.empty_dir_mount) are dropped by this backend"
            for name, ex in _executors(platform) if ex.get("emptyDirMounts")]


def _field_path_env(ir: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    return [f"executor {name}: fieldPathAsEnv (kubernetes.use_field_path_as_env) is dropped by this backend"
            for name, ex in _executors(platform) if ex.get("fieldPathAsEnv")]


KFP = "kubeflow/pipelines"
RULES: tuple[Rule, ...] = (
    Rule("whole-value placeholders", *ANY,
         f"{KFP}@2.5.0:backend/src/v2/driver/driver.go, {KFP}@2.17.0:backend/src/v2/driver/resolve.go "
         "(resolveInputParameter: a switch on the whole constant)", _embedded_placeholders),
    Rule("display name is not unique", *ANY,
         f"{KFP}@2.17.0:backend/src/v2/driver/resolve.go ({{{{$.pipeline_job_name}}}} -> RunDisplayName)",
         _display_name),
    Rule("no placeholder in a parameter default", *ANY,
         f"{KFP}@2.17.0:backend/src/v2/driver/resolve.go (defaults are not resolved)", _placeholder_defaults),
    Rule("an image is a literal or one placeholder", *ANY,
         f"{KFP}@2.4.0:backend/src/v2/driver/driver.go (resolvePodSpecInputRuntimeParameter)", _mixed_image),
    Rule("run placeholders need 2.5", (2, 0), (2, 4),
         f"{KFP}@2.5.0:backend/src/v2/driver/driver.go (#11599 adds the cases; "
         f"{KFP}@2.4.1:backend/src/v2/driver/driver.go has none)", _run_placeholders),
    Rule("image from a parameter needs 2.4", (2, 0), (2, 3),
         f"{KFP}@2.4.0:backend/src/v2/driver/driver.go (#11404)", _param_image),
    Rule("secret names from parameters need 2.5", (2, 0), (2, 4),
         f"{KFP}@2.4.1:backend/src/v2/driver/driver.go (GetSecretName() only; go.mod pins "
         "kubernetes_platform d911c8b73b49, which has no secret_name_parameter); "
         f"{KFP}@2.5.0:kubernetes_platform/proto/kubernetes_executor_config.proto (#11770)", _secret_name_params),
    Rule("tolerations from parameters need 2.5", (2, 0), (2, 4),
         f"{KFP}@2.5.0:kubernetes_platform/proto/kubernetes_executor_config.proto (Toleration.toleration_json)",
         _toleration_json),
    Rule("optional secret env needs 2.15", (2, 0), (2, 14),
         f"{KFP}@2.15.0:kubernetes_platform/proto/kubernetes_executor_config.proto (SecretAsEnv.optional, "
         f"#12216); older drivers parse leniently: {KFP}@2.14.0:backend/src/common/util/json.go "
         "(DiscardUnknown)", _optional_secret_env),
    Rule("pipeline TTL needs 2.17", (2, 0), (2, 16),
         f"{KFP}@2.17.0:api/v2alpha1/pipeline_spec.proto (PipelineConfig.resource_ttl_on_completion, #13184); "
         f"{KFP}@2.16.0:backend/src/apiserver/template/v2_template.go (strict protojson: "
         "IsPlatformSpecWithKubernetesConfig fails and NewV2SpecTemplate skips the document)", _pipeline_ttl),
    Rule("step timeouts need 2.1", (2, 0), (2, 0),
         f"{KFP}@2.1.0:backend/src/v2/driver/driver.go (GetActiveDeadlineSeconds, #10481)", _step_timeout),
    Rule("emptyDir mounts need 2.3", (2, 0), (2, 2),
         f"{KFP}@2.3.0:backend/src/v2/driver/driver.go (GetEmptyDirMounts, #10913)", _empty_dir),
    Rule("field-path env needs 2.1", (2, 0), (2, 0),
         f"{KFP}@2.1.0:backend/src/v2/driver/driver.go (GetFieldPathAsEnv)", _field_path_env),
)


def rules_for(backend: str | Backend | None = None) -> list[Rule]:
    """The rules that apply to `backend` (default: the oldest supported)."""
    target = get_backend(backend, supported_only=False)
    return [rule for rule in RULES if rule.applies_to(target)]


def problems(ir: dict[str, Any], backend: str | Backend | None = None,
             platform: dict[str, Any] | None = None) -> list[str]:
    """Every violation of `backend`'s rules (default: the oldest supported) in a compiled pipeline:
    `ir` is the first YAML document, `platform` the second (the Kubernetes settings), if any."""
    target = get_backend(backend, supported_only=False)
    out: list[str] = []
    for rule in rules_for(target):
        out += [f"[{rule.name}; KFP {target}] {line}" for line in rule.check(ir, platform or {})]
    return out
