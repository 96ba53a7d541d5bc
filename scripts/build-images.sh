#!/usr/bin/env bash
# Builds weft's container images, offline and reproducibly: weft/operator, weft/proxy (with
# weft-proxy-init and iptables) and weft/sample-app, tagged with the workspace version, as OCI
# image layouts and OCI archives under target/images/ (see docs/images.md).
#
#   scripts/build-images.sh              # build (or reuse ~/.cache/weft/images/<input key>)
#   scripts/build-images.sh --no-cache   # build again even when cached
#   scripts/build-images.sh --print-key  # the input key only
#
# Needs: cargo, python3 (3.11+), apt-get/apt-cache/dpkg-deb (Debian), network access to the
# Debian archive the first time (the .deb files are cached in ~/.cache/weft/debs).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/build_images.py "$@"
