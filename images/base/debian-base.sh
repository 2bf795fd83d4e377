#!/usr/bin/env bash
# A Python base image from Debian packages, for builds where no container registry is reachable.
#
# Usage: images/base/debian-base.sh ENGINE IMAGE [SUITE] [MIRROR]
#   ENGINE  podman or docker;  IMAGE  the name to import as (e.g. localhost/gbcosface-base:bookworm)
#   SUITE   Debian suite (bookworm: Python 3.11);  MIRROR  an apt mirror URL (default: mmdebstrap's,
#           i.e. deb.debian.org); a snapshot.debian.org URL makes the base reproducible.
#
# Why mmdebstrap: it builds a minimal root filesystem from the Debian archive alone (no registry),
# and `ENGINE import` turns the tarball into a one-layer image. Only what the image needs is
# installed: python3 with venv (the Dockerfile installs everything else into /opt/venv, since
# Debian's python refuses system-wide pip installs, PEP 668) and the CA certificates.
# An image that already exists under IMAGE is kept (delete it to rebuild).
set -euo pipefail

engine=${1:?usage: $0 ENGINE IMAGE [SUITE] [MIRROR]}
image=${2:?usage: $0 ENGINE IMAGE [SUITE] [MIRROR]}
suite=${3:-bookworm}
mirror=${4:-}

if "$engine" image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image exists (remove it to rebuild)"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed (make container-tools)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Documentation, man pages and locales are not needed in a container and are a quarter of the size.
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='Acquire::Retries "3"' \
    "$suite" "$tmp/base.tar" ${mirror:+"$mirror"}
"$engine" import --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$image" >/dev/null
echo "base image $image imported ($(du -h "$tmp/base.tar" | cut -f1) tarball)"
