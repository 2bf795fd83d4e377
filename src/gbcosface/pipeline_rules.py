"""Rules a real Kubeflow Pipelines backend applies to a compiled pipeline, checked on the IR.

Why: KFP's local runner is more forgiving than the backend, so a DAG can pass every local run and
still fail, or silently misbehave, on a cluster. These rules are read from the KFP 2.x backend's
driver (backend/src/v2/driver/resolve.go), whose placeholder substitution is a `switch` on the
WHOLE string of a task input's runtime value:
- a placeholder (`{{$.pipeline_job_uuid}}`, `{{$.pipeline_job_name}}`, `{{$.pipeline_task_name}}`,
  `{{$.inputs.parameters[...]}}`, ...) embedded in a longer string reaches the step literally
  (the local runner substitutes it anywhere, which is how an f-string path once hid the bug);
- `{{$.pipeline_job_name}}` is the run's display name, which is not unique: nothing run-scoped
  (a path, a job name) may come from it; the unique id is `{{$.pipeline_job_uuid}}`;
- a pipeline parameter's default is a plain value: a placeholder there is never substituted;
- a task's image is either a literal or one whole input-parameter placeholder.
`problems(ir)` returns one readable line per violation (empty: the IR follows the rules).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\$[^{}]*\}\}")
DISPLAY_NAME = "{{$.pipeline_job_name}}"


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


def _check_value(where: str, text: str) -> list[str]:
    found = PLACEHOLDER.findall(text)
    out = []
    if DISPLAY_NAME in text:
        out.append(f"{where}: uses the run's display name {DISPLAY_NAME} (not unique); use "
                   "dsl.PIPELINE_JOB_ID_PLACEHOLDER as a whole input")
    if found and PLACEHOLDER.fullmatch(text) is None:
        out.append(f"{where}: embeds {found[0]} in a longer string {text!r}; a real backend passes it "
                   "literally: pass the placeholder as a whole input and join inside the step")
    return out


def problems(ir: dict[str, Any]) -> list[str]:
    """Every violation of the rules above in a compiled pipeline spec (the first YAML document)."""
    out: list[str] = []
    for dag_name, dag in _dags(ir):
        for task_name, task in dag.get("tasks", {}).items():
            params = task.get("inputs", {}).get("parameters", {})
            for param, spec in params.items():
                if "runtimeValue" not in spec:
                    continue
                for text in _strings(spec["runtimeValue"].get("constant")):
                    out += _check_value(f"{dag_name}/{task_name} input {param!r}", text)
    for param, spec in ir.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).items():
        for text in _strings(spec.get("defaultValue")):
            if PLACEHOLDER.search(text):
                out.append(f"pipeline parameter {param!r}: default {text!r} holds a placeholder, which the "
                           "backend never substitutes in a default")
    for name, executor in ir.get("deploymentSpec", {}).get("executors", {}).items():
        image = executor.get("container", {}).get("image", "")
        if PLACEHOLDER.search(image) and PLACEHOLDER.fullmatch(image) is None:
            out.append(f"executor {name}: image {image!r} mixes a placeholder with text")
    return out
