#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager from Debian bookworm's `kubernetes` source
# package (upstream v1.20.2), fully offline once the sources and packages are present.
# Idempotent: does nothing when the binaries are already cached.
#
#   sudo e2e/scripts/kube-build.sh            # build (or reuse) the binaries
#   e2e/scripts/kube-build.sh --print-dir     # print the cache folder and exit
#
# Environment:
#   WEFT_KUBE_CACHE  cache root (default ~/.cache/weft/kube)
#   WEFT_KUBE_OFFLINE=1  never touch the network (fail if something is missing)
set -euo pipefail

TARBALL_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
KUBE_VERSION=v1.20.2
CACHE_ROOT=${WEFT_KUBE_CACHE:-$HOME/.cache/weft/kube}
OUT=$CACHE_ROOT/$TARBALL_SHA256
PACKAGES=(golang-1.19-go golang-1.19-src etcd-server golang-github-modern-go-reflect2-dev rsync
  iptables iproute2 tcpdump)

if [[ ${1-} == --print-dir ]]; then
  echo "$OUT"
  exit 0
fi

log() { printf '[kube-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_binaries() {
  [[ -x $OUT/kube-apiserver && -x $OUT/kube-controller-manager ]]
}

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

[[ $(id -u) -eq 0 ]] || { have_binaries && missing=$(missing_packages) && [[ -z $missing ]] && {
  log "binaries cached in $OUT"; exit 0; }; die "must run as root (installs packages)"; }

APT_DIR=$CACHE_ROOT/apt
mkdir -p "$APT_DIR/sources" "$APT_DIR/lists/partial" "$CACHE_ROOT/src"
# A private copy of the machine's sources with deb-src added; the machine's config is untouched.
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb deb-src/' \
    /etc/apt/sources.list.d/debian.sources >"$APT_DIR/sources/debian.sources"
fi
APT=(apt-get -o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$APT_DIR/sources"
  -o "Dir::State::Lists=$APT_DIR/lists")

apt_updated=0
apt_update() {
  if [[ $apt_updated -eq 0 ]]; then
    [[ ${WEFT_KUBE_OFFLINE-} == 1 ]] && die "offline mode, but apt lists are needed"
    log "apt-get update (private lists in $APT_DIR)"
    "${APT[@]}" -q update
    apt_updated=1
  fi
}

# 1. packages
missing=$(missing_packages | tr '\n' ' ')
if [[ -n ${missing// /} ]]; then
  apt_update
  log "installing: $missing"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" -q install -y --no-install-recommends $missing
fi

# 1b. kubectl 1.20 (Debian's kubernetes-client, unpacked, not installed): the tests that check
# what users see (kubectl's output) use this one, whatever kubectl the machine has on PATH.
if [[ ! -x $CACHE_ROOT/$TARBALL_SHA256/kubectl ]]; then
  apt_update
  KDEB=$(mktemp -d)
  (cd "$KDEB" && "${APT[@]}" -q download kubernetes-client)
  dpkg-deb -x "$KDEB"/kubernetes-client_*.deb "$KDEB/x"
  mkdir -p "$OUT"
  cp "$KDEB/x/usr/bin/kubectl" "$OUT/kubectl"
  rm -rf "$KDEB"
  log "kubectl 1.20 in $OUT/kubectl"
fi

if have_binaries; then
  log "binaries cached in $OUT"
  exit 0
fi

# 2. the source tarball
cd "$CACHE_ROOT/src"
if [[ ! -f $TARBALL ]] || ! echo "$TARBALL_SHA256  $TARBALL" | sha256sum -c --quiet - 2>/dev/null; then
  apt_update
  log "apt-get source --download-only kubernetes"
  "${APT[@]}" -q source --download-only kubernetes
fi
echo "$TARBALL_SHA256  $TARBALL" | sha256sum -c --quiet - || die "$TARBALL: sha256 mismatch"

# 3. unpack and patch
BUILD=$CACHE_ROOT/build-$TARBALL_SHA256
rm -rf "$BUILD"
mkdir -p "$BUILD"
log "unpacking into $BUILD"
tar -xzf "$CACHE_ROOT/src/$TARBALL" -C "$BUILD" --strip-components=1
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
REFLECT2_DST=$BUILD/vendor/github.com/modern-go/reflect2
[[ -d $REFLECT2_SRC ]] || die "$REFLECT2_SRC missing (golang-github-modern-go-reflect2-dev)"
[[ -d $REFLECT2_DST ]] || die "$REFLECT2_DST missing in the tarball"
rm -f "$REFLECT2_DST"/*.go "$REFLECT2_DST"/*.s
find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
  -exec cp {} "$REFLECT2_DST/" \;
log "reflect2 replaced by $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"

# Version stamp (there is no .git in the tarball).
cat >"$BUILD/.weft-version" <<VERSION
KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='$KUBE_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
VERSION

# 4. build
export GOROOT=/usr/lib/go-1.19
export PATH=$GOROOT/bin:$PATH
export GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOTOOLCHAIN=local
export KUBE_GIT_VERSION_FILE=$BUILD/.weft-version
export GOCACHE=$CACHE_ROOT/gocache
unset GOPATH GO111MODULE
cd "$BUILD"
for what in cmd/kube-apiserver cmd/kube-controller-manager; do
  log "make WHAT=$what"
  make WHAT="$what"
done

mkdir -p "$OUT.tmp"
for bin in kube-apiserver kube-controller-manager; do
  path=$(find "$BUILD/_output" -type f -name "$bin" -perm -u+x | head -n1)
  [[ -n $path ]] || die "$bin not found under $BUILD/_output"
  cp "$path" "$OUT.tmp/$bin"
done
[[ -x $OUT/kubectl ]] && cp "$OUT/kubectl" "$OUT.tmp/kubectl"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
rm -rf "$BUILD"
# Go's build cache (GBs) only speeds up a rebuild of these binaries, which are now cached.
rm -rf "$GOCACHE"
log "done: $(ls "$OUT")"
"$OUT/kube-apiserver" --version >&2 || true
