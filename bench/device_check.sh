#!/usr/bin/env bash
# GPU readiness in one prepared run (<= 8 minutes on one H100/H200): prints one table (bench/device_check.py).
#
# For the device machine: Python 3.12 with torch preinstalled, no package index. Run from the repository
# root. Missing pure-Python dependencies are installed from a carried wheel directory when one is given
# (DEVICE_WHEELS, default ./device-wheels: `pip download --no-deps -d device-wheels <pkg>` on a machine
# with an index, then carry that ignored folder); the package itself is used from src/ without installing.
#   bench/device_check.sh           # on the GPU machine
#   bench/device_check.sh --cpu     # tiny sizes on a CPU: a smoke test of this script (tests run it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${DEVICE_WHEELS:-device-wheels}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LIMIT="${DEVICE_CHECK_TIMEOUT:-480}"

missing=$("$PY" - <<'PY'
import importlib.util
need = {"numpy": "numpy", "yaml": "pyyaml", "cv2": "opencv-python-headless", "prometheus_client": "prometheus-client",
        "pynvml": "nvidia-ml-py", "sklearn": "scikit-learn", "scipy": "scipy", "matplotlib": "matplotlib",
        "tqdm": "tqdm", "boto3": "boto3"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -d "$WHEELS" ]; then
    echo "installing from $WHEELS: $missing" >&2
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" $missing >&2
  else
    echo "missing modules ($missing) and no wheel directory $WHEELS: the checks that need them will FAIL" >&2
  fi
fi
exec timeout --signal=TERM --kill-after=20 "$LIMIT" "$PY" bench/device_check.py "$@"
