#!/usr/bin/env bash
# Makes proxy/pgo/weft-proxy.profdata.gz, the profile that scripts/build-dist.sh builds the
# shipped weft-proxy with (docs/benchmarks.md, "Profile-guided optimization of the proxy"):
#
#   1. an instrumented `dist` build of weft-proxy (PGO=generate:DIR scripts/build-dist.sh), beside
#      a plain one of weft-operator, in a target folder of its own (TRAIN_TARGET, default
#      target/pgo-train: its flags differ from the shipped build's, so sharing one would rebuild
#      both every time);
#   2. the training traffic: e2e/bench/proxy-bench.sh's two weft paths (one hop to an unmeshed
#      endpoint; two hops over the mTLS HTTP/2 link, inbound authorization on the server side)
#      with 1 KiB, 5 KiB and 64 KiB bodies and with an HTTP/2 client, short rounds (the counts
#      only need the code paths and their proportions, not stable timings);
#   3. the raw profiles merged with llvm-profdata (Debian's llvm-N, N the LLVM major version of
#      this rustc; installed when missing and root), --sparse: functions the traffic never ran
#      have no record, so they are optimized as without PGO rather than as cold code;
#   4. gzip -9n (the merged profile is ~1.5 MB, ~0.3 MB gzipped) and proxy/pgo/PROFILE: the
#      toolchain, the commit and the date it was made with.
#
#   proxy/pgo/train.sh      # ~15 minutes on 2 cores; then commit proxy/pgo/
#
# Needs what proxy-bench.sh needs (nginx, wrk, oha; installed as root) and the CPU layout it
# expects (2 cores). Run it on a quiet machine: the profile records how often each branch runs,
# not times, but a proxy that falls behind takes other paths (timeouts, backpressure).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
TRAIN_TARGET=${TRAIN_TARGET:-$TARGET/pgo-train}
WORK=${WORK:-$(mktemp -d /tmp/weft-pgo.XXXXXX)}
RAW=$WORK/raw
# The proxy's code, as far as a profile is concerned (scripts/build-dist.sh reports changes to it).
PROXY_CODE=$(scripts/build-dist.sh --proxy-code)
log() { printf '[%s] train: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

llvm=$(rustc -vV | sed -n 's/^LLVM version: //p')
major=${llvm%%.*}
PROFDATA=llvm-profdata-$major
if ! command -v "$PROFDATA" >/dev/null; then
    [ "$(id -u)" = 0 ] || { log "needs $PROFDATA (apt-get install llvm-$major)"; exit 1; }
    log "installing llvm-$major for $PROFDATA"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$major" >/dev/null
fi

log "instrumented build into $TRAIN_TARGET (raw profiles: $RAW)"
rm -rf "$RAW"
mkdir -p "$RAW"
CARGO_TARGET_DIR=$TRAIN_TARGET PGO=generate:$RAW scripts/build-dist.sh weft-proxy weft-operator

# The same traffic as the benchmark's weft paths, in its variants. Every run must succeed: a
# profile of a failed run would teach the compiler the error paths.
for variant in "BODY=1k" "BODY=5k" "BODY=64k" "CLIENT_H2=1"; do
    log "training traffic: $variant"
    env "$variant" PATHS="weft-1hop weft-2hop-mtls" ROUNDS=1 OHA_DURATION=4s WRK_DURATION=4s \
        CARGO_TARGET_DIR="$TRAIN_TARGET" NO_BUILD=1 OUT="$WORK/bench-${variant//=/-}" \
        e2e/bench/proxy-bench.sh >"$WORK/bench-${variant//=/-}.log" 2>&1 ||
        { log "proxy-bench.sh $variant failed: $WORK/bench-${variant//=/-}.log"; exit 1; }
done
ls "$RAW"/*.profraw >/dev/null 2>&1 || { log "no raw profile was written in $RAW"; exit 1; }

log "merging $(du -sh "$RAW" | cut -f1) of raw profiles"
"$PROFDATA" merge --sparse -o "$WORK/weft-proxy.profdata" "$RAW"
gzip -9nc "$WORK/weft-proxy.profdata" >"$ROOT/proxy/pgo/weft-proxy.profdata.gz"
{
    echo "# Made by proxy/pgo/train.sh; read by scripts/build-dist.sh and proxy/tests/pgo_profile.rs."
    echo "llvm: $llvm"
    scripts/build-dist.sh --profile-key
    echo "commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- $PROXY_CODE 2>/dev/null || echo ' (with uncommitted changes to the proxy code)')"
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "traffic: proxy-bench.sh weft-1hop weft-2hop-mtls; BODY=1k, 5k, 64k; CLIENT_H2=1"
} >"$ROOT/proxy/pgo/PROFILE"
"$PROFDATA" show "$WORK/weft-proxy.profdata" | tail -n 6 >&2
log "wrote proxy/pgo/weft-proxy.profdata.gz ($(wc -c <"$ROOT/proxy/pgo/weft-proxy.profdata.gz") bytes) and proxy/pgo/PROFILE"
