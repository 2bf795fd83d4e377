"""The quality gate between evaluation and publishing."""

from __future__ import annotations

import json
import logging
import math
import time

log = logging.getLogger(__name__)


def decide(tar: float, min_tar: float, far: float) -> str:
    """'pass' when TAR at `far` reaches `min_tar`. A missing value (NaN: too few impostor pairs for
    that FAR, or the cell was marked meaningless) never passes: the gate must not publish on a number
    that was not measured."""
    if tar is None or math.isnan(tar):
        log.warning("gate: TAR@FAR=%g was not measurable; failing the gate", far)
        return "fail"
    verdict = "pass" if tar >= min_tar else "fail"
    log.info("gate: TAR@FAR=%g is %.4f, threshold %.4f -> %s", far, tar, min_tar, verdict)
    return verdict


def record_rejection(tar: float, min_tar: float, far: float, run_uri: str, endpoint_url: str = "") -> str:
    """Write `gate.json` under the run prefix so a rejected run says why; returns its URI."""
    from gbcosface.storage import put_bytes

    record = {"decision": "fail", "far": far, "tar": None if math.isnan(tar) else tar,
              "min_tar": min_tar, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    uri = f"{run_uri.rstrip('/')}/gate.json"
    put_bytes(uri, json.dumps(record, indent=2).encode(), endpoint_url=endpoint_url or None)
    return uri
