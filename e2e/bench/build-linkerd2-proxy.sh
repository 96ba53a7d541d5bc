#!/usr/bin/env bash
# Builds linkerd2-proxy from source for proxy-bench.sh's optional `linkerd-1hop` path (issue #20:
# the closest Rust sidecar, measured in the same layout as weft). Never run by CI.
#
#   e2e/bench/build-linkerd2-proxy.sh <linkerd2-proxy checkout> <linkerd-kubert checkout>
#   LINKERD_PROXY=$(e2e/bench/build-linkerd2-proxy.sh ...) PATHS="direct weft-1hop haproxy-1hop linkerd-1hop" e2e/bench/proxy-bench.sh
#
# The checkouts are copied, not modified (github.com/linkerd/linkerd2-proxy and
# github.com/linkerd/linkerd-kubert; the copy goes to $WORK, default ~/.cache/weft/linkerd2-proxy).
# What building it here takes:
# - linkerd2-proxy pins two crates of linkerd-kubert by git tag (kubert-prometheus-process and
#   kubert-prometheus-tokio), which are not on crates.io at those versions: the copy's
#   Cargo.toml points them at the kubert checkout instead;
# - its rust-toolchain.toml names an exact toolchain, which rustup would download: the copy drops
#   it and builds with the installed stable toolchain;
# - RUSTFLAGS="--cfg tokio_unstable" (its runtime metrics need it), and the
#   `linkerd-app/allow-loopback` feature: without it, the proxy refuses to forward to a loopback
#   destination, and the benchmark runs everything on 127.0.0.0/8;
# - gcc and make for the C parts (aws-lc, jemalloc).
# Its release profile (lto = true) is kept. Prints the binary's path on stdout.
set -euo pipefail

[ $# -eq 2 ] || {
    echo "usage: $0 <linkerd2-proxy checkout> <linkerd-kubert checkout>" >&2
    exit 2
}
SRC=$(cd "$1" && pwd)
KUBERT=$(cd "$2" && pwd)
WORK=${WORK:-$HOME/.cache/weft/linkerd2-proxy}
[ -f "$SRC/linkerd2-proxy/Cargo.toml" ] || {
    echo "$SRC is not a linkerd2-proxy checkout" >&2
    exit 2
}
[ -d "$KUBERT/kubert-prometheus-process" ] && [ -d "$KUBERT/kubert-prometheus-tokio" ] || {
    echo "$KUBERT is not a linkerd-kubert checkout" >&2
    exit 2
}

mkdir -p "$WORK"
rm -rf "$WORK/src"
cp -a "$SRC" "$WORK/src"
rm -f "$WORK/src/rust-toolchain.toml" "$WORK/src/rust-toolchain"
python3 - "$WORK/src/Cargo.toml" "$KUBERT" <<'EOF'
import re, sys
path, kubert = sys.argv[1], sys.argv[2]
s = open(path).read()
for name in ("kubert-prometheus-process", "kubert-prometheus-tokio"):
    section = re.compile(r"(\[workspace\.dependencies\." + re.escape(name) + r"\]\n(?:(?!\[)[^\n]*\n)*)")
    m = section.search(s)
    if not m:
        sys.exit(f"no [workspace.dependencies.{name}] in {path}")
    body = re.sub(r'^(git|tag|branch|rev) = "[^"]*"\n', "", m.group(1), flags=re.M)
    body = body.rstrip("\n") + f'\npath = "{kubert}/{name}"\n\n'
    s = s[: m.start()] + body + s[m.end():]
open(path, "w").write(s)
EOF

cd "$WORK/src"
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR="$WORK/target" \
    cargo build --release -p linkerd2-proxy --features linkerd-app/allow-loopback >&2
echo "$WORK/target/release/linkerd2-proxy"
