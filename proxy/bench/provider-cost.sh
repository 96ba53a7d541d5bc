#!/usr/bin/env bash
# What moving the proxy from rustls's *ring* provider to aws-lc-rs with post-quantum key exchange
# (X25519MLKEM768 first) would cost: binary size, idle RSS and the TLS handshake and records
# (docs/benchmarks.md, "Dependencies updated, and the key exchange pinned"; docs/identity.md,
# "Crypto provider"). Nothing here changes the checkout: the aws-lc variant is built in a
# throwaway git worktree of HEAD with the workspace's rustls, tokio-rustls and rcgen features and
# `weft_common::tls::crypto_provider` rewritten, and the worktree is removed at the end.
#
#   proxy/bench/provider-cost.sh          # ~25 minutes on 2 cores, cold (two dist builds)
#   ROUNDS=4 proxy/bench/provider-cost.sh # readings per variant, taken in turns (default 2)
#
# Both variants are built the same way, without the profile (`PGO=off scripts/build-dist.sh`: a
# profile made for one provider does not fit the other), into $TARGET/provider-cost/{ring,aws-lc}.
# Per round, in turns: `proxy/bench/rss.sh` (THREADS=1 IDLE=2) and the handshake_cost example.
# Needs git, a C compiler (aws-lc is C) and what rss.sh needs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
OUT=$TARGET/provider-cost
ROUNDS=${ROUNDS:-2}
log() { printf '[%s] provider-cost: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

WORK=$(mktemp -d /tmp/weft-provider-cost.XXXXXX)
cleanup() { git -C "$ROOT" worktree remove --force "$WORK" 2>/dev/null || rm -rf "$WORK"; }
trap cleanup EXIT
git worktree add --quiet --detach "$WORK" HEAD

# Each rewrite must apply exactly: a line that moved is an error, not a silent ring build.
rewrite() { # $1 file, $2 old text, $3 new text
    python3 - "$WORK/$1" "$2" "$3" <<'PY' || die "$1 no longer has the text this script rewrites; update the script"
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(1)
open(path, "w").write(text.replace(old, new))
PY
}
rewrite Cargo.toml 'features = ["ring", "std", "tls12", "logging"]' \
    'features = ["ring", "aws_lc_rs", "prefer-post-quantum", "std", "tls12", "logging"]'
rewrite Cargo.toml 'tokio-rustls = { version = "0.26", default-features = false, features = ["ring", "tls12"] }' \
    'tokio-rustls = { version = "0.26", default-features = false, features = ["aws_lc_rs", "tls12"] }'
rewrite Cargo.toml '"crypto", "ring"]' '"crypto", "aws_lc_rs"]'
rewrite common/src/tls.rs 'let mut provider = rustls::crypto::ring::default_provider();' \
    'let mut provider = rustls::crypto::aws_lc_rs::default_provider();'
rewrite common/src/tls.rs '    rustls::crypto::ring::kx_group::X25519,
    rustls::crypto::ring::kx_group::SECP256R1,
    rustls::crypto::ring::kx_group::SECP384R1,' '    rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
    rustls::crypto::aws_lc_rs::kx_group::X25519,
    rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
    rustls::crypto::aws_lc_rs::kx_group::SECP384R1,'
rewrite proxy/examples/handshake_cost.rs 'use rustls::crypto::ring::cipher_suite;' \
    'use rustls::crypto::aws_lc_rs::cipher_suite;'
# The lock file gains aws-lc-rs and its build dependencies (from the registry).
(cd "$WORK" && cargo fetch --quiet)

build() { # $1 variant, $2 source tree
    local t=$OUT/$1 s
    log "building $1 (PGO=off) into $t"
    s=$(date +%s)
    (cd "$2" && PGO=off CARGO_TARGET_DIR=$t scripts/build-dist.sh weft-proxy weft-operator >"$OUT/$1-build.log" 2>&1) ||
        die "$1 build failed (see $OUT/$1-build.log)"
    echo "$1: dist build $(($(date +%s) - s)) s" >>"$OUT/summary.txt"
    (cd "$2" && CARGO_TARGET_DIR=$t cargo build --quiet --release -p weft-proxy --example handshake_cost) ||
        die "$1 handshake_cost build failed"
}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
build ring "$ROOT"
build aws-lc "$WORK"

for v in ring aws-lc; do
    f=$OUT/$v/dist/weft-proxy
    echo "$v: binary $(stat -c %s "$f") bytes; $(size -A "$f" | awk '$1 == ".text" || $1 == ".rodata" { printf "%s %d ", $1, $2 }')" >>"$OUT/summary.txt"
done
for r in $(seq "$ROUNDS"); do
    for v in ring aws-lc; do
        log "round $r: $v (load $(cut -d' ' -f1 /proc/loadavg))"
        {
            echo "== $v, round $r, $(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1 /proc/loadavg)"
            CARGO_TARGET_DIR=$OUT/$v THREADS=1 IDLE=2 SKIP_BUILD=1 proxy/bench/rss.sh 2>&1 | sed -n '/idle 2s more/,+1p'
            "$OUT/$v/release/examples/handshake_cost" 1000 20000 |
                grep -E "\(the proxy's\)|negotiated between|full \(shipped\)"
        } >>"$OUT/summary.txt"
    done
done
cat "$OUT/summary.txt"
