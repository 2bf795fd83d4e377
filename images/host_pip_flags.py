"""Print `podman build` flags that give the build this machine's pip index settings (HOST_PIP=1).

Usage: python3 images/host_pip_flags.py CONF_OUT

Why: a machine with a local PyPI mirror (pip's find-links and file:// index URLs) installs the
image's 5 GB of wheels in seconds instead of downloading them. The index settings that `pip config
list` shows (index-url, extra-index-url, find-links, trusted-host; from pip's config files and
PIP_* variables) are written to CONF_OUT in pip.conf form, and the flags mount it at /etc/pip.conf
plus every local directory it names, all read-only and for the build's RUN steps only, so nothing
of the host's configuration is left in the image. A file:// index whose last component is
`simple` is mounted with its parent, since such indexes link to `../../files/...`.
Bind mounts at build time are a podman (buildah) feature; Docker has no equivalent flag.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host")


def host_settings() -> dict[str, list[str]]:
    """The host's effective index settings; environment variables win over files, as in pip."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=True).stdout
    by_file: dict[str, list[str]] = {}
    by_env: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if key not in KEYS:
            continue
        values = value.strip().strip("'\"").split()
        (by_env if section == ":env:" else by_file)[key] = values
    return {**by_file, **by_env}


def local_dir(location: str) -> Path | None:
    """The directory to mount for a find-links/index location, or None for a remote URL."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(parsed.path if parsed.scheme else location)
    if not path.is_absolute():
        raise SystemExit(f"host pip setting {location!r}: only absolute local paths can be mounted")
    return path.parent if path.name == "simple" else path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    conf = Path(argv[0]).resolve()
    settings = host_settings()
    lines = ["[global]"] + [f"{key} = {' '.join(values)}" for key, values in sorted(settings.items())]
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("\n".join(lines) + "\n")
    mounts = {conf: Path("/etc/pip.conf")}
    for key in ("index-url", "extra-index-url", "find-links"):
        for location in settings.get(key, []):
            path = local_dir(location)
            if path is not None and path.is_dir():
                mounts[path] = path
    flags = []
    for src, dst in mounts.items():
        if any(c.isspace() or c in ",:" for c in f"{src}{dst}"):
            raise SystemExit(f"host pip path {src} cannot be passed as a mount (whitespace, ',' or ':')")
        flags.append(f"--volume={src}:{dst}:ro")
    print(" ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
