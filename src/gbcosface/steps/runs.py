"""Run-scoped locations, built inside the steps from the run's unique id.

Why here and not in the DAG: a real KFP backend substitutes a pipeline placeholder such as
`{{$.pipeline_job_uuid}}` only when it is the whole value of a task input, so the DAG passes the
run id alone and every step joins it into paths and names itself (docs/pipeline.md). A backend
older than 2.5 substitutes no placeholder at all: there the DAG passes an empty run id and sets
RUN_ID_ENV from the pod's `pipeline/runid` label (the same id), which check_run_id reads.
"""

from __future__ import annotations

import os
import re

from gbcosface.storage import join_uri

_PLACEHOLDER = re.compile(r"\{\{\$\.[^}]*\}\}")
RUN_ID_ENV = "GBCOSFACE_RUN_ID"


def check_run_id(run_id: str) -> str:
    """The run id (an empty one: RUN_ID_ENV's), or a ValueError when it is empty or an unsubstituted
    KFP placeholder."""
    if not run_id or not run_id.strip():
        run_id = os.environ.get(RUN_ID_ENV, "")
    if not run_id or not run_id.strip():
        raise ValueError("a run id is required (the pipeline passes dsl.PIPELINE_JOB_ID_PLACEHOLDER, or on "
                         f"KFP 2.4 sets {RUN_ID_ENV} from the pod label pipeline/runid)")
    if _PLACEHOLDER.search(run_id) or "/" in run_id:
        raise ValueError(f"run id {run_id!r} is not a resolved run id: the backend left a placeholder "
                         "literal (pass it as a whole task input) or it holds a '/'")
    return run_id.strip()


def run_uri(output_uri: str, run_id: str) -> str:
    """`<output_uri>/runs/<run_id>`: where every artifact of one pipeline run lives."""
    return join_uri(output_uri, "runs", check_run_id(run_id))
