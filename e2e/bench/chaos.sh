#!/usr/bin/env bash
# weft against HAProxy when things fail (issue #16): the same three backends, the same open-loop
# load, through weft (client weft-proxy -> mTLS -> three server weft-proxies -> backends) and
# through HAProxy (client HAProxy -> TLS -> three server HAProxies -> the same backends), all on
# loopback. One Markdown table per scenario, weft and HAProxy side by side; raw data in $OUT.
#
#   e2e/bench/chaos.sh                          # every scenario, ~3 minutes after the build
#   SCENARIOS="dies slow" e2e/bench/chaos.sh    # some of them
#   NO_BUILD=1 PROFILE=dist e2e/bench/chaos.sh
#
# Scenarios (docs/reliability.md, section "benchmark", says why each one):
#   dies      the app behind one of three server proxies dies (its proxy stays up and answers
#             502/503 fast) at DIES_AT s: time until >= 99.9 % of requests succeed again (and
#             keep doing so for HOLD s), requests lost meanwhile. Retries: 2 on both sides.
#   slow      one backend becomes 10x slower (BASE_MS -> 10*BASE_MS) at SLOW_AT s: p99 before
#             and after, and the slow backend's share of requests.
#   overload  offered load 3x the backends' capacity (each backend serves CAP_CONC requests at
#             once, CAP_MS each; the rest wait in its queue): goodput as a fraction of capacity
#             and p99 of admitted requests, without and with shedding (weft:
#             max-concurrent-requests / max-requests-per-endpoint / max-pending-requests;
#             HAProxy: server maxconn and a queue limit).
#   storm     every backend answers 503 from STORM_FROM to STORM_TO s, retries 2 enabled:
#             backend requests / client requests (amplification; #16's target is <= 1.2).
#
# Layout (NET, a /24 inside 127.0.0.0/8): .1 client weft-proxy, .11-.13 server weft-proxies,
# .21-.23 backends (app :8080, control :9000), .30 client HAProxy (one per run, so that its
# health checks load the backends only while it is measured), .31-.33 server HAProxies (:8443,
# TLS), .100 weft-operator (--manifests). CPU 1: backends and every proxy; CPU 0: load, operator.
#
# HAProxy is configured with its own health and error tracking as the reference: balance
# leastconn, `check inter 500ms fall 3 rise 2`, `observe layer7 error-limit 5 on-error
# mark-down`, and where weft retries (dies, storm) `retries 2`, `option redispatch 1`,
# `retry-on conn-failure empty-response response-timeout 502 503 504`.
#
# weft's settings are Service annotations in the manifests the operator reads; the names of
# #16's new fields are those documented in weft_common::reliability (a proxy or operator that
# predates them ignores them, and the figures are then those of weft as it was).
#
# Environment: SCENARIOS (dies slow overload storm), MESHES (weft haproxy), NET (127.77.16),
# OUT (results dir, default a kept temp dir), PROFILE (release; dist for what images ship),
# NO_BUILD=1, NO_INSTALL=1, NICE (-10 as root, else 0), WARMUP (1: seconds of load before each
# run, discarded), TIMEOUT_MS (2000: the client's time limit per request), and per scenario:
#   DIES_RATE (400) DIES_DURATION (12) DIES_AT (2) HOLD (3)
#   SLOW_RATE (300) SLOW_DURATION (12) SLOW_AT (4) BASE_MS (5)
#   CAP_CONC (2) CAP_MS (10) OVERLOAD_FACTOR (3) OVERLOAD_DURATION (8)
#   STORM_RATE (300) STORM_DURATION (14) STORM_FROM (2) STORM_TO (8)
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
SCENARIOS=${SCENARIOS:-dies slow overload storm}
MESHES=${MESHES:-weft haproxy}
NET=${NET:-127.77.16}
OUT=${OUT:-$(mktemp -d /tmp/weft-chaos.XXXXXX)}
PROFILE=${PROFILE:-release}
WARMUP=${WARMUP:-1}
TIMEOUT_MS=${TIMEOUT_MS:-2000}
DIES_RATE=${DIES_RATE:-400} DIES_DURATION=${DIES_DURATION:-12} DIES_AT=${DIES_AT:-2}
HOLD=${HOLD:-3}
SLOW_RATE=${SLOW_RATE:-300} SLOW_DURATION=${SLOW_DURATION:-12} SLOW_AT=${SLOW_AT:-4}
BASE_MS=${BASE_MS:-5}
CAP_CONC=${CAP_CONC:-2} CAP_MS=${CAP_MS:-10} OVERLOAD_FACTOR=${OVERLOAD_FACTOR:-3}
OVERLOAD_DURATION=${OVERLOAD_DURATION:-8}
STORM_RATE=${STORM_RATE:-300} STORM_DURATION=${STORM_DURATION:-14} STORM_FROM=${STORM_FROM:-2}
STORM_TO=${STORM_TO:-8}
mkdir -p "$OUT"
if [ "$(id -u)" = 0 ]; then NICE=${NICE:--10}; else NICE=${NICE:-0}; fi
export PATH="$PATH:/usr/sbin:/sbin"
# shellcheck source=e2e/bench/lib.sh
. "$ROOT/e2e/bench/lib.sh"

case $NET in
127.*.*) ;;
*) die "NET must be inside 127.0.0.0/8, got $NET" ;;
esac
need_tools haproxy taskset openssl curl python3
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (load on CPU 0, servers on CPU 1)"
# Overload keeps thousands of connections open (load generator, proxies, backends).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# HAProxy needs two descriptors per connection (client and server side) and refuses to start
# with a maxconn the limit cannot hold.
HAPROXY_MAXCONN=$((($(ulimit -n) - 200) / 2))
[ "$HAPROXY_MAXCONN" -le 20000 ] || HAPROXY_MAXCONN=20000

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
if [ -z "${NO_BUILD:-}" ]; then
    if [ "$PROFILE" = dist ]; then
        # As images ship them (the proxy with its PGO profile).
        log "scripts/build-dist.sh weft-proxy weft-operator chaos_backend chaos_load"
        scripts/build-dist.sh weft-proxy weft-operator chaos_backend chaos_load
    else
        log "cargo build --profile $PROFILE -p weft-proxy -p weft-operator -p weft-e2e --bins"
        cargo build --profile "$PROFILE" --quiet -p weft-proxy -p weft-operator -p weft-e2e --bins
    fi
fi
need_bins=(chaos_backend chaos_load)
case " $MESHES " in *" weft "*) need_bins+=(weft-proxy weft-operator) ;; esac
for b in "${need_bins[@]}"; do
    [ -x "$BIN/$b" ] || die "no $PROFILE build of $b in $BIN"
done

CLIENT=$NET.1
SERVERS=("$NET.11" "$NET.12" "$NET.13")
BACKENDS=("$NET.21" "$NET.22" "$NET.23")
HAC=$NET.30
HAS=("$NET.31" "$NET.32" "$NET.33")
OPERATOR=$NET.100
NS=bench
CAPACITY=$((3 * CAP_CONC * 1000 / CAP_MS)) # requests per second the three backends serve
OVERLOAD_RATE=$((OVERLOAD_FACTOR * CAPACITY))
SHED_CONCURRENT=$((3 * CAP_CONC))
SHED_PENDING=$((3 * CAP_CONC))
log "results and logs in $OUT"

# ---------------------------------------------------------------- backends
for i in 0 1 2; do
    start "backend-$i" 1 "$BIN/chaos_backend" --listen "${BACKENDS[$i]}:8080" \
        --control "${BACKENDS[$i]}:9000" --name "b$i"
done
for i in 0 1 2; do
    wait_port "${BACKENDS[$i]}" 9000
    wait_port "${BACKENDS[$i]}" 8080
done

ctl() { # $1: backend index, $2: path and query; prints the answer
    curl -fsS --max-time 5 "http://${BACKENDS[$1]}:9000$2"
}
backends_set() { # $1: query for /set on every backend; counters zeroed
    local i
    for i in 0 1 2; do
        ctl "$i" "/set?$1" >/dev/null
        ctl "$i" /reset >/dev/null
    done
}
backends_idle() { # waits (up to 60 s) until no backend has a request in flight
    local i n
    for n in $(seq 1 600); do
        for i in 0 1 2; do
            ctl "$i" /stats | grep -q '"in_flight":0[,}]' || {
                sleep 0.1
                continue 2
            }
        done
        return 0
    done
    log "warning: backends still busy after 60 s"
}

# ---------------------------------------------------------------- weft: manifests, operator, proxies
mkdir -p "$OUT/manifests"
printf 'bench-token' >"$OUT/token"
service() { # $1: name, $2: clusterIP, $3: annotations (YAML flow map entries, may be empty)
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata:
  name: $1
  namespace: $NS
  annotations: {$3}
spec:
  clusterIP: $2
  selector: {app: server}
  ports: [{name: http, port: 8080, targetPort: http}]
EOF
}
{
    cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
  annotations:
    weft.io/default-inbound-policy: allow
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: $NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: $NS}
---
apiVersion: v1
kind: Pod
metadata:
  name: client-0
  namespace: $NS
  labels: {app: client, weft.io/proxy-version: bench}
spec:
  serviceAccountName: client
  containers: [{name: app, image: bench/load}]
status:
  phase: Running
  podIP: $CLIENT
  conditions: [{type: Ready, status: "True"}]
EOF
    for i in 0 1 2; do
        cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: server-$i
  namespace: $NS
  labels: {app: server, weft.io/proxy-version: bench}
spec:
  serviceAccountName: server
  containers: [{name: app, image: bench/chaos-backend, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: ${SERVERS[$i]}
  conditions: [{type: Ready, status: "True"}]
EOF
    done
    # One Service per scenario over the same three pods: each has its own settings and its
    # own balancer state, and no config changes in the middle of a measurement.
    service dies "$NET.201" '"weft.io/retries": "2"'
    service slow "$NET.202" ''
    service overload "$NET.203" ''
    service overload-shed "$NET.204" "\"weft.io/max-concurrent-requests\": \"$SHED_CONCURRENT\", \
\"weft.io/max-requests-per-endpoint\": \"$CAP_CONC\", \"weft.io/max-pending-requests\": \"$SHED_PENDING\""
    service storm "$NET.205" '"weft.io/retries": "2"'
} >"$OUT/manifests/bench.yaml"

case " $MESHES " in
*" weft "*)
    start_operator "$OPERATOR"
    start_proxy client-0 client "$CLIENT" 127.0.0.1
    for i in 0 1 2; do start_proxy "server-$i" server "${SERVERS[$i]}" "${BACKENDS[$i]}"; done
    for ip in "$CLIENT" "${SERVERS[@]}"; do wait_http "http://$ip:4191/ready"; done
    ;;
esac

# ---------------------------------------------------------------- HAProxy
make_pki "$OUT/pki"
haproxy_head() {
    cat <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
    ssl-server-verify required
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout queue 1s
    timeout check 1s
    timeout http-keep-alive 60s
EOF
}
for i in 0 1 2; do
    {
        haproxy_head
        cat <<EOF
frontend f
    bind ${HAS[$i]}:8443 ssl crt $OUT/pki/server.pem ca-file $OUT/pki/ca.crt verify required alpn h2,http/1.1
    default_backend b
backend b
    # Like a server weft-proxy: a dead app is answered at once (503), not retried here.
    retries 0
    server app ${BACKENDS[$i]}:8080
EOF
    } >"$OUT/haproxy-server-$i.cfg"
done
haproxy_client() { # $1: scenario; writes its config, prints the path
    local cfg=$OUT/haproxy-client-$1.cfg i extra=""
    [ "$1" = overload-shed ] && extra=" maxconn $CAP_CONC"
    {
        haproxy_head
        echo "frontend f"
        echo "    bind $HAC:8100"
        echo "    default_backend b"
        if [ "$1" = overload-shed ]; then
            echo "    http-request deny deny_status 503 if { queue(b) ge $SHED_PENDING }"
        fi
        echo "backend b"
        echo "    balance leastconn"
        echo "    timeout server ${TIMEOUT_MS}ms"
        echo "    option httpchk GET /healthz"
        case $1 in
        dies | storm)
            echo "    retries 2"
            echo "    option redispatch 1"
            echo "    retry-on conn-failure empty-response response-timeout 502 503 504"
            ;;
        *) echo "    retries 0" ;;
        esac
        echo "    default-server ssl verify required ca-file $OUT/pki/ca.crt crt $OUT/pki/client.pem" \
            "sni str(server.bench) verifyhost server.bench alpn h2 check-alpn http/1.1" \
            "check inter 500ms fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down$extra"
        for i in 0 1 2; do echo "    server s$i ${HAS[$i]}:8443"; done
    } >"$cfg"
    echo "$cfg"
}
case " $MESHES " in
*" haproxy "*)
    for i in 0 1 2; do start "haproxy-server-$i" 1 haproxy -db -f "$OUT/haproxy-server-$i.cfg"; done
    for i in 0 1 2; do wait_port "${HAS[$i]}" 8443; done
    ;;
esac

# ---------------------------------------------------------------- one measured run
client_pid=""
target_up() { # $1: mesh, $2: scenario (the weft Service / the HAProxy config)
    if [ "$1" = haproxy ]; then
        start "haproxy-client-$2" 1 haproxy -db -f "$(haproxy_client "$2")"
        client_pid=$last_pid
        wait_port "$HAC" 8100
        sleep 1.2 # the first health checks have passed: every server is up
    fi
}
target_down() {
    if [ -n "$client_pid" ]; then
        stop "$client_pid"
        client_pid=""
    fi
}
url_of() { if [ "$1" = weft ]; then echo "http://$CLIENT:4140/"; else echo "http://$HAC:8100/"; fi; }
host_of() { if [ "$1" = weft ]; then echo "$2.$NS.svc.cluster.local:8080"; else echo bench.local; fi; }

load() { # $1: mesh, $2: scenario, $3: run name, $4: rate, $5: duration, rest: --at ...
    local mesh=$1 scenario=$2 name=$3 rate=$4 duration=$5 i
    shift 5
    if [ "$WARMUP" != 0 ]; then
        nice -n "$NICE" taskset -c 0 "$BIN/chaos_load" run --url "$(url_of "$mesh")" \
            --host "$(host_of "$mesh" "$scenario")" --rate "$rate" --duration "$WARMUP" \
            --timeout-ms "$TIMEOUT_MS" --out "$OUT/$name.warmup.tsv" >"$OUT/$name.warmup.json"
        backends_idle
        for i in 0 1 2; do ctl "$i" /reset >/dev/null; done
    fi
    nice -n "$NICE" taskset -c 0 "$BIN/chaos_load" run --url "$(url_of "$mesh")" \
        --host "$(host_of "$mesh" "$scenario")" --rate "$rate" --duration "$duration" \
        --timeout-ms "$TIMEOUT_MS" --out "$OUT/$name.tsv" --events "$OUT/$name.events.jsonl" \
        "$@" >"$OUT/$name.json"
    for i in 0 1 2; do ctl "$i" /stats; done >"$OUT/$name.backends.jsonl"
}
report() { # $1: run name, $2: label, rest: chaos_load report flags
    local name=$1 label=$2
    shift 2
    "$BIN/chaos_load" report --in "$OUT/$name.tsv" "$@" >"$OUT/$name.$label.json"
}
at_all() { # $1: seconds, $2: control path; appends --at flags for every backend to AT
    local i
    for i in 0 1 2; do AT+=(--at "$1=http://${BACKENDS[$i]}:9000$2"); done
}

# The parameters, for the summary.
cat >"$OUT/params.json" <<EOF
{"scenarios": "$SCENARIOS", "meshes": "$MESHES", "profile": "$PROFILE",
 "timeout_ms": $TIMEOUT_MS, "hold_s": $HOLD, "warmup_s": $WARMUP,
 "dies": {"rate": $DIES_RATE, "duration": $DIES_DURATION, "at": $DIES_AT},
 "slow": {"rate": $SLOW_RATE, "duration": $SLOW_DURATION, "at": $SLOW_AT, "base_ms": $BASE_MS},
 "overload": {"rate": $OVERLOAD_RATE, "duration": $OVERLOAD_DURATION, "capacity_rps": $CAPACITY,
              "conc": $CAP_CONC, "ms": $CAP_MS, "factor": $OVERLOAD_FACTOR,
              "shed_concurrent": $SHED_CONCURRENT, "shed_pending": $SHED_PENDING},
 "storm": {"rate": $STORM_RATE, "duration": $STORM_DURATION, "from": $STORM_FROM, "to": $STORM_TO}}
EOF
log "load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
cut -d' ' -f1-3 /proc/loadavg >"$OUT/loadavg.start"

# ---------------------------------------------------------------- scenarios
for scenario in $SCENARIOS; do
    for mesh in $MESHES; do
        name=$scenario-$mesh
        case $scenario in
        dies)
            log "$name"
            backends_set "mode=ok&delay_ms=2"
            target_up "$mesh" dies
            load "$mesh" dies "$name" "$DIES_RATE" "$DIES_DURATION" \
                --at "$DIES_AT=http://${BACKENDS[0]}:9000/set?mode=refuse"
            target_down
            ctl 0 "/set?mode=ok" >/dev/null
            report "$name" before --from 0 --to "$DIES_AT"
            report "$name" fault --from "$DIES_AT" --to "$DIES_DURATION" --fault-at "$DIES_AT" \
                --hold "$HOLD"
            ;;
        slow)
            log "$name"
            backends_set "mode=ok&delay_ms=$BASE_MS"
            target_up "$mesh" slow
            AT=()
            at_all "$SLOW_AT" /stats
            load "$mesh" slow "$name" "$SLOW_RATE" "$SLOW_DURATION" "${AT[@]}" \
                --at "$SLOW_AT=http://${BACKENDS[0]}:9000/set?mode=ok&delay_ms=$((10 * BASE_MS))"
            target_down
            report "$name" healthy --from 0 --to "$SLOW_AT"
            report "$name" slow --from "$SLOW_AT" --to "$SLOW_DURATION"
            ;;
        overload)
            for variant in overload overload-shed; do
                name=$variant-$mesh
                log "$name"
                backends_set "mode=ok&concurrency=$CAP_CONC&delay_ms=$CAP_MS"
                target_up "$mesh" "$variant"
                load "$mesh" "$variant" "$name" "$OVERLOAD_RATE" "$OVERLOAD_DURATION"
                target_down
                backends_idle
                report "$name" all --from 0 --to "$OVERLOAD_DURATION"
            done
            ;;
        storm)
            log "$name"
            backends_set "mode=ok&delay_ms=2"
            target_up "$mesh" storm
            AT=()
            at_all "$STORM_FROM" "/set?mode=status&status=503"
            at_all "$STORM_TO" "/set?mode=ok&delay_ms=2"
            load "$mesh" storm "$name" "$STORM_RATE" "$STORM_DURATION" "${AT[@]}"
            target_down
            report "$name" failing --from "$STORM_FROM" --to "$STORM_TO"
            report "$name" after --from "$STORM_TO" --to "$STORM_DURATION" --fault-at "$STORM_TO" \
                --hold "$HOLD"
            ;;
        *) die "unknown scenario $scenario (dies slow overload storm)" ;;
        esac
    done
done
cut -d' ' -f1-3 /proc/loadavg >"$OUT/loadavg.end"

python3 "$ROOT/e2e/bench/chaos/summarize.py" "$OUT" | tee "$OUT/summary.md"
log "raw results in $OUT"
