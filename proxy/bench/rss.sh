#!/usr/bin/env bash
# Idle memory of weft-proxy: a build of the `dist` profile (what images ship; PROFILE=release for
# the quicker build), connected to a real weft-operator (--manifests mode,
# everything on 127.0.0.1), measured once /ready answers 200 and again after 18 config updates (10 → 100 → 10 services).
#
#   proxy/bench/rss.sh            # threads 1 (default) and 2
#   THREADS="1" proxy/bench/rss.sh
#   SKIP_BUILD=1 proxy/bench/rss.sh   # use the binaries already in target/$PROFILE
#   IDLE=30 proxy/bench/rss.sh        # idle seconds between the "ready" and "idle" readings (12)
#
# Prints per run: threads, VmRSS and VmHWM (peak) in KiB, read from /proc/<pid>/status, and where
# the resident pages are (from /proc/<pid>/smaps).
set -euo pipefail

cd "$(dirname "$0")/../.."
THREADS=${THREADS:-"1 2"}
IDLE=${IDLE:-12} # seconds idle after ready before the second reading
BASE_PORT=${BASE_PORT:-24180}
OP_DISCOVERY=127.0.0.1:$((BASE_PORT + 0))
OP_ADMIN=127.0.0.1:$((BASE_PORT + 1))
ADMIN=127.0.0.1:$((BASE_PORT + 2))
INBOUND=127.0.0.1:$((BASE_PORT + 3))
OUTBOUND=127.0.0.1:$((BASE_PORT + 4))

PROFILE=${PROFILE:-dist}
if [ -z "${SKIP_BUILD:-}" ]; then
    if [ "$PROFILE" = dist ]; then
        scripts/build-dist.sh weft-operator weft-proxy # as images ship them (the proxy with PGO)
    else
        cargo build --profile "$PROFILE" --quiet -p weft-operator -p weft-proxy --bins
    fi
fi
bin=${CARGO_TARGET_DIR:-target}/$PROFILE

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/manifests"
printf 'bench-token' >"$tmp/token"
write_manifests() { # $1: number of services the proxy's pod may call
    {
        cat <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: bench, labels: {app: client}}
spec:
  serviceAccountName: client
  containers: [{name: app, image: app}]
status:
  podIP: 127.0.0.1
  conditions: [{type: Ready, status: "True"}]
EOF
        for i in $(seq 1 "$1"); do
            cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: svc$i-0, namespace: bench, labels: {app: svc$i}}
spec:
  containers: [{name: app, image: app}]
status:
  podIP: 127.0.$((i / 250)).$((i % 250 + 2))
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: svc$i, namespace: bench}
spec:
  selector: {app: svc$i}
  ports: [{port: 80, targetPort: 8080}]
EOF
        done
    } >"$tmp/manifests/bench.yaml.tmp"
    mv "$tmp/manifests/bench.yaml.tmp" "$tmp/manifests/bench.yaml"
}

write_manifests 10
WEFT_LOG=warn "$bin/weft-operator" --manifests "$tmp/manifests" \
    --discovery-addr "$OP_DISCOVERY" --admin-addr "$OP_ADMIN" \
    --bootstrap-token-file "$tmp/token" >"$tmp/operator.log" 2>&1 &
pids+=($!)

wait_ready() { # $1: url
    for _ in $(seq 1 300); do
        if curl -fs -o /dev/null "$1"; then return 0; fi
        sleep 0.1
    done
    echo "not ready: $1" >&2
    return 1
}
wait_ready "http://$OP_ADMIN/ready"

version() { curl -fs "http://$ADMIN/config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])'; }
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %s KiB  ", $1, $2}' "/proc/$1/status"; }
# Where VmRSS is: pages of the weft-proxy executable and of shared libraries (file pages mapped
# from the page cache, shared by every process of the same binary on the node, except the
# executable's relocated read-only data), the rest (heap, stacks); and the anonymous memory,
# the process's own.
breakdown() { # $1: pid, $2: the executable
    awk -v exe="$(readlink -f "$2")" '
        /^[0-9a-f]+-[0-9a-f]+ / { f = (NF >= 6) ? $6 : ""; next }
        $1 == "Rss:" { if (f == exe) b += $2; else if (f ~ /\.so/) l += $2; else o += $2 }
        $1 == "Anonymous:" { a += $2 }
        END { printf "RSS = executable %d + libraries %d + other %d KiB; anonymous %d KiB", b, l, o, a }
    ' "/proc/$1/smaps"
}

for threads in $THREADS; do
    write_manifests 10
    WEFT_PROXY_CONTROL_ADDR="http://$OP_DISCOVERY" \
        WEFT_PROXY_POD=bench/client-0 \
        WEFT_PROXY_SERVICE_ACCOUNT=client \
        WEFT_PROXY_TOKEN_FILE="$tmp/token" \
        WEFT_PROXY_ADMIN_ADDR="$ADMIN" \
        WEFT_PROXY_INBOUND_ADDR="$INBOUND" \
        WEFT_PROXY_OUTBOUND_ADDR="$OUTBOUND" \
        WEFT_PROXY_THREADS="$threads" \
        WEFT_LOG=warn \
        "$bin/weft-proxy" >"$tmp/proxy-$threads.log" 2>&1 &
    proxy=$!
    pids+=("$proxy")
    wait_ready "http://$ADMIN/ready"
    sleep 2 # let allocations settle
    echo "threads=$threads ready, 10 services:    $(rss "$proxy")"
    echo "    $(breakdown "$proxy" "$bin/weft-proxy")"
    # Idle for a while: the proxy's periodic work (the memory task's looks, every 5 s) has run.
    sleep "$IDLE"
    echo "threads=$threads idle ${IDLE}s more:      $(rss "$proxy")"
    echo "    $(breakdown "$proxy" "$bin/weft-proxy")"
    last=$(version)

    # 18 config changes (10 → 100 services and back, in steps of 10), then idle again.
    for n in $(seq 20 10 100) $(seq 90 -10 10); do
        write_manifests "$n"
        for _ in $(seq 1 100); do
            now=$(version)
            if [ "$now" != "$last" ]; then break; fi
            sleep 0.1
        done
        last=$now
    done
    sleep 2
    echo "threads=$threads after 18 updates (up to 100 services): $(rss "$proxy")"
    echo "    $(breakdown "$proxy" "$bin/weft-proxy")"
    kill -TERM "$proxy"
    wait "$proxy" || true
done
