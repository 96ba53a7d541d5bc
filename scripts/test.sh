#!/usr/bin/env bash
# The test command: every test of the workspace, including the end-to-end tests.
#
# The Kubernetes end-to-end tests need a kube-apiserver built from Debian's sources (cached in
# ~/.cache/weft/, keyed by the source tarball's checksum) and root for network namespaces.
# As root, this script prepares them (a cold build takes about ten minutes, a warm one seconds);
# otherwise those tests skip, saying loudly what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && [ "${WEFT_SKIP_KUBE:-0}" != 1 ] && [ -x e2e/scripts/kube-build.sh ]; then
  e2e/scripts/kube-build.sh
fi

# Build every binary first: the end-to-end tests run weft-operator, weft-proxy and weft.
cargo build --workspace --bins --locked

# The images the Kubernetes end-to-end tests run their pods from (reused from
# ~/.cache/weft/images when the inputs did not change; docs/images.md).
if [ "$(id -u)" = 0 ] && [ "${WEFT_SKIP_KUBE:-0}" != 1 ]; then
  scripts/build-images.sh
  # In CI, the dist build (fat LTO, GBs of intermediate files) is not needed once the images
  # are in target/images and ~/.cache/weft/images; nothing else reads target/dist, nor the
  # proxy's PGO build beside it (scripts/build-dist.sh: target/<host>/dist, target/pgo).
  if [ "${CI:-}" = true ]; then
    t=${CARGO_TARGET_DIR:-target}
    rm -rf "$t/dist" "$t/$(rustc -vV | sed -n 's/^host: //p')/dist" "$t/pgo"
  fi
fi
cargo test --workspace --locked -- --test-threads="${WEFT_TEST_THREADS:-2}"
