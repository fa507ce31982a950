#!/usr/bin/env bash
# Builds the base image medfed's Dockerfile starts from, without any container registry: a minimal
# Debian (debootstrap, from the Debian package mirror) with Python 3, imported as a local image.
#
#   containers/build-base.sh [IMAGE] [SUITE] [MIRROR]
#   default: medfed-base:bookworm, bookworm, http://deb.debian.org/debian
#
# Needs root, debootstrap and docker (apt-get install -y debootstrap docker.io).
set -euo pipefail
IMAGE=${1:-medfed-base:bookworm}
SUITE=${2:-bookworm}
MIRROR=${3:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /tmp/medfed-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

# python3-venv gives pip inside a virtual environment; ca-certificates for pip's HTTPS.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR"
# Smaller image: no package lists or caches, no documentation.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/usr/share/doc/* \
    "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
tar -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$IMAGE"
echo "built $IMAGE"
