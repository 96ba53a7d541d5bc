#!/usr/bin/env bash
# Tap's cost on the request path (docs/tap.md, docs/benchmarks.md), in one run: the same open-loop
# load through the frontend proxy of a `weft demo --keep` (outbound -> mTLS -> api's inbound ->
# app), measured three times back to back:
#   idle     no tap open (the request path pays one relaxed atomic load per hook)
#   nomatch  a tap open on every proxy whose filter matches nothing (every request is matched
#            against it under the hub's lock, no event)
#   tapped   a tap open on every proxy that reports requests (100 per second per proxy, the
#            cap; the rest are matched and rate-limited), its output read and discarded
#
#   e2e/bench/tap-bench.sh                  # RATE=300 DURATION=10s, debug binaries
#   PROFILE=release e2e/bench/tap-bench.sh
#
# Environment: RATE (300 rps), DURATION (10s per phase), PREFIX (127.48.0), PROFILE (debug).
# Needs oha (~/.cache/weft/bin or PATH).
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-300}
DURATION=${DURATION:-10s}
PREFIX=${PREFIX:-127.48.0}
PROFILE=${PROFILE:-debug}
export PATH="$HOME/.cache/weft/bin:$PATH"
BIN=${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE
OUT=$(mktemp -d /tmp/weft-tap-bench.XXXXXX)
command -v oha >/dev/null || { echo "oha missing" >&2; exit 2; }

"$BIN/weft" demo --keep --plain --duration 5s --rate 20 --ip-prefix "$PREFIX" --dir "$OUT/mesh" >"$OUT/demo.out" 2>&1 &
DEMO=$!
cleanup() { kill -INT "$DEMO" 2>/dev/null || true; wait "$DEMO" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 300); do
    grep -q "the mesh keeps running" "$OUT/demo.out" && break
    sleep 0.5
done
grep -q "the mesh keeps running" "$OUT/demo.out" || { cat "$OUT/demo.out"; exit 1; }

load() { # $1: phase name
    oha --no-tui -z "$DURATION" -q "$RATE" --latency-correction \
        -H "Host: api.demo.svc.cluster.local:8080" --output-format json \
        "http://$PREFIX.10:4140/items" >"$OUT/$1.json"
    python3 - "$1" "$OUT/$1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
p = d["latencyPercentiles"]
s = d["summary"]
codes = d.get("statusCodeDistribution", {})
print(f"| {sys.argv[1]} | {s['requestsPerSec']:.0f} | {p['p50']*1000:.2f} | {p['p99']*1000:.2f} | {s['successRate']*100:.1f} % | {codes} |")
PY
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| phase | rps | p50 ms | p99 ms | success | statuses |"
echo "|---|---|---|---|---|---|"
load idle
"$BIN/weft" tap --demo --ip-prefix "$PREFIX" ns/demo --path /never-requested -o json >"$OUT/nomatch.ndjson" 2>&1 &
TAP=$!
sleep 1
load nomatch
kill "$TAP" 2>/dev/null || true
wait "$TAP" 2>/dev/null || true
"$BIN/weft" tap --demo --ip-prefix "$PREFIX" ns/demo -o json >"$OUT/tapped.ndjson" 2>&1 &
TAP=$!
sleep 1
load tapped
kill "$TAP" 2>/dev/null || true
wait "$TAP" 2>/dev/null || true
echo "tap events read while tapped: $(grep -c '"type":"response"' "$OUT/tapped.ndjson" || true) responses"
echo "dropped (frontend proxy): $(curl -s "http://$PREFIX.10:4191/metrics" | grep '^weft_proxy_tap_events_dropped_total' || echo none)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw: $OUT"
