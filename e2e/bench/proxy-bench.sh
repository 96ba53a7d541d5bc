#!/usr/bin/env bash
# weft-proxy latency and throughput against the direct path, HAProxy 2.6 and nginx 1.22 as proxies,
# all on loopback (127.0.0.0/8), in the CPU layout of /work/shared/BENCHMARKS.md:
#   CPU 1: the nginx backend (1 worker, 1 KiB static body) and every proxy under test (1 thread each)
#   CPU 0: the load generators (wrk, oha) and weft-operator
#
#   e2e/bench/proxy-bench.sh                 # 2 rounds, ~7 minutes
#   ROUNDS=3 e2e/bench/proxy-bench.sh
#   PATHS="direct weft-1hop" e2e/bench/proxy-bench.sh
#
# Paths: direct, weft-1hop (client proxy's outbound listener, explicit mode, to an unmeshed
# endpoint), weft-2hop-mtls (client proxy -> mTLS -> server proxy inbound -> the same nginx),
# haproxy-1hop, nginx-1hop, haproxy-2hop-tls (HAProxy -> TLS (h2, client cert verified) -> HAProxy).
# Per path and round: oha at 1,000 and 5,000 rps (open loop, latency-corrected), then wrk for
# saturation. Medians over rounds are printed as Markdown; raw numbers stay in $OUT (default a
# temp dir that is kept).
#
# Environment: ROUNDS (2), PATHS (all), NET (127.77.9: the /24 used), RATES ("1000 5000"),
# OHA_DURATION (10s), WRK_DURATION (8s), SETTLE (11: seconds after the last round before the
# "settled" memory is read), OUT (results dir), PROFILE (dist: built as images ship,
# by scripts/build-dist.sh; `release` for the quicker build), NO_BUILD=1 (skip cargo build),
# NO_INSTALL=1 (never apt-get / cargo install), NICE (-10 as root, else 0: the niceness of every
# process the benchmark starts, so that other work on a shared machine disturbs it less).
# Optional variants (issue #20; the default run is unchanged): BODY (1k: the response body the
# backend serves; 5k or 64k), CLIENT_H2=1 (the load generators speak HTTP/2 with prior knowledge
# (h2c, gRPC-like) to the path under test: the backend nginx, the nginx proxy and HAProxy get an
# h2c listener, weft-proxy detects it; every proxy still speaks HTTP/1.1 to the backend; oha also
# measures saturation then, closed loop with -c64, since wrk speaks HTTP/1.1 only).
#   BODY=64k e2e/bench/proxy-bench.sh;  CLIENT_H2=1 PATHS="direct weft-1hop haproxy-1hop" e2e/bench/proxy-bench.sh
# INSTRUCTIONS=N: instead of the timed rounds, count what each proxy executes per request, which
# a busy or shared machine cannot disturb: every proxy runs under valgrind's callgrind, and per
# path N requests are sent one at a time on one keep-alive connection (oha -c1) after 200
# warm-up requests; the counters are zeroed before and dumped after them (callgrind_control),
# and the user-space instructions of the path's proxy processes (all their threads) divided by
# N are printed beside HAProxy's. The kernel's work (the syscalls) is not counted; `strace -c`
# counts those (docs/benchmarks.md: weft makes fewer per request than HAProxy here).
# COUNT_CONNECTIONS=C (1): the counted requests go over C connections at once (closed loop),
# as concurrent clients would send them. CACHE_SIM=1 adds callgrind's simulation of this
# machine's caches and branch predictors (misses per request; each process alone, not sharing
# the core with the backend and the kernel as it does in the timed runs).
#   INSTRUCTIONS=2000 PATHS="weft-1hop haproxy-1hop nginx-1hop weft-2hop-mtls haproxy-2hop-tls" e2e/bench/proxy-bench.sh
# The dumps stay in $OUT (callgrind.<pid>.1); e2e/bench/callgrind_self.py reads one per function or
# per crate (`--by-crate`).
# linkerd-1hop (optional, never in the default PATHS): linkerd2-proxy, the closest Rust sidecar, in
# the layout weft's one hop has, but as Linkerd runs it: transparent capture (an iptables REDIRECT
# of the client's connections to LINKERD_DST:8080, a listener of the backend nginx, to the
# proxy's outbound port; the proxy runs as uid 65534, whose connections are not redirected), one
# core (LINKERD2_PROXY_CORES=1, pinned to CPU 1 like every proxy here), a stand-in control plane
# (proxy/examples/linkerd_standin.rs: plaintext on loopback, Certify answers with a certificate
# the benchmark's CA issued for the proxy's CSR, every discovery and policy lookup answers
# UNIMPLEMENTED, on which the proxy forwards to the original destination). Needs root, iptables,
# setpriv, and LINKERD_PROXY: the path of a linkerd2-proxy binary built with
# e2e/bench/build-linkerd2-proxy.sh. LINKERD_STANDIN: the stand-in's binary (default: built
# into target/release/examples).
#   LINKERD_PROXY=~/.cache/weft/linkerd2-proxy/target/release/linkerd2-proxy PATHS="direct weft-1hop haproxy-1hop linkerd-1hop" e2e/bench/proxy-bench.sh
# floor-1hop (optional, never in the default PATHS): the floor under weft's one hop,
# proxy/examples/hyper_floor.rs: hyper's HTTP/1 server and weft's upstream pool on one
# current_thread runtime, forwarding every request to the backend and doing nothing else (no
# routing, balancing, metrics, classification, header handling, deadlines, retries). The gap
# between weft-1hop and floor-1hop in one run is what weft's features cost; the gap between
# floor-1hop and haproxy-1hop is hyper's and tokio's. Built as the proxy is (scripts/build-dist.sh
# example:hyper_floor: dist profile, static, weft-proxy's PGO profile) into
# $CARGO_TARGET_DIR/dist/examples (not with NO_BUILD=1), unless FLOOR names a binary. With
# CLIENT_H2=1 it serves HTTP/2 with the proxy's HTTP/2 server (affine-1hop stays HTTP/1.1).
#   PATHS="direct weft-1hop floor-1hop haproxy-1hop" e2e/bench/proxy-bench.sh
# raw-1hop (optional, never in the default PATHS): proxy/examples/raw_floor.rs, a forwarder with
# no hyper on either side (httparse heads, Content-Length bodies, one upstream connection per
# downstream connection on the same task): how far under hyper's cost a codec of weft's own could
# go. Not a proxy (it leaves out what its doc lists). Built like floor-1hop (example:raw_floor),
# unless RAW_FLOOR names a binary.
# affine-1hop (optional, never in the default PATHS): hyper_floor in its `affine` mode, hyper's
# codec on both sides but no pool: each downstream connection drives an upstream connection of
# its own on its own task. floor-1hop -> affine-1hop is what the pool and the second task cost,
# affine-1hop -> raw-1hop what hyper's codec and dispatch cost.
#   PATHS="direct weft-1hop floor-1hop affine-1hop raw-1hop haproxy-1hop" e2e/bench/proxy-bench.sh
# floor-2hop-mtls (optional, never in the default PATHS): the floor under weft's two hops with mTLS,
# proxy/examples/mesh_floor.rs: two processes, each one current_thread runtime, built from the
# proxy's own link (its HTTP/1 and HTTP/2 servers, its mesh pool: HTTP/2 over mutual TLS with the
# proxy's TLS provider and settings, the transport header, frames coalesced; its HTTP/1.1 upstream
# pool), with the benchmark's certificates (HAProxy's pair's), doing nothing else. The gap between
# weft-2hop-mtls and floor-2hop-mtls in one run is what weft's features cost on two hops; the gap
# between floor-2hop-mtls and haproxy-2hop-tls is hyper's, h2's, rustls's and tokio's. Built like
# floor-1hop (example:mesh_floor), unless MESH_FLOOR names a binary. With CLIENT_H2=1 its client
# half serves HTTP/2 too.
#   PATHS="direct weft-2hop-mtls floor-2hop-mtls haproxy-2hop-tls" e2e/bench/proxy-bench.sh
# KERNEL=1: instead of the timed rounds, where a request's CPU goes under load: per path and rate
# (RATES; `max`: closed loop over 64 connections, as the saturation rounds load the path), oha at
# that rate for OHA_DURATION while `perf stat` (software events and syscall
# tracepoints, no hardware counters needed) watches the path's proxy processes; prints per
# request the user and system CPU (/proc/<pid>/stat), syscalls (and the main kinds, the
# allocator's brk/mmap/munmap/madvise among them), page faults, and context switches (each one a
# sleep and a wake-up of a proxy thread). Needs `perf` and root (or
# perf_event_paranoid <= -1) for the tracepoints.
#   KERNEL=1 RATES="1000 5000" PATHS="weft-1hop haproxy-1hop nginx-1hop weft-2hop-mtls haproxy-2hop-tls" e2e/bench/proxy-bench.sh
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-2}
ALL_PATHS="direct weft-1hop weft-2hop-mtls haproxy-1hop nginx-1hop haproxy-2hop-tls"
PATHS=${PATHS:-$ALL_PATHS}
NET=${NET:-127.77.9}
RATES=${RATES:-"1000 5000"}
OHA_DURATION=${OHA_DURATION:-10s}
WRK_DURATION=${WRK_DURATION:-8s}
SETTLE=${SETTLE:-11}
INSTRUCTIONS=${INSTRUCTIONS:-}
COUNT_CONNECTIONS=${COUNT_CONNECTIONS:-1}
KERNEL=${KERNEL:-}
OUT=${OUT:-$(mktemp -d /tmp/weft-proxy-bench.XXXXXX)}
PROFILE=${PROFILE:-dist}
BODY=${BODY:-1k}
CLIENT_H2=${CLIENT_H2:-}
mkdir -p "$OUT"
TOOLS="$HOME/.cache/weft/bin"
if [ "$(id -u)" = 0 ]; then NICE=${NICE:--10}; else NICE=${NICE:-0}; fi
export PATH="$TOOLS:$PATH:/usr/sbin:/sbin"
# shellcheck source=e2e/bench/lib.sh
. "$ROOT/e2e/bench/lib.sh"

case $NET in
127.*.*) ;;
*) die "NET must be inside 127.0.0.0/8, got $NET" ;;
esac

# ---------------------------------------------------------------- tools
need_tools nginx haproxy wrk taskset openssl curl python3
# The proxies' command prefix: callgrind when counting instructions.
WRAP=()
if [ -n "$INSTRUCTIONS" ]; then
    need_tools valgrind
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.%p" --compress-strings=no)
    # CACHE_SIM=1: callgrind also simulates this machine's caches and branch predictors.
    [ -z "${CACHE_SIM:-}" ] || WRAP+=(--cache-sim=yes --branch-sim=yes)
fi
[ -z "$KERNEL" ] || need_tools perf
if ! command -v oha >/dev/null; then
    [ -z "${NO_INSTALL:-}" ] || die "oha missing (cargo install oha --locked --root ~/.cache/weft)"
    log "installing oha into $TOOLS"
    cargo install oha --locked --root "$HOME/.cache/weft" >"$OUT/oha-install.log" 2>&1
fi
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (load generators on CPU 0, servers on CPU 1)"

LINKERD=""
case " $PATHS " in *" linkerd-1hop "*) LINKERD=1 ;; esac
if [ -n "$LINKERD" ]; then
    [ "$(id -u)" = 0 ] || die "linkerd-1hop needs root (an iptables REDIRECT and a proxy run as another user)"
    need_tools iptables setpriv
    [ -x "${LINKERD_PROXY:-}" ] || die "linkerd-1hop needs LINKERD_PROXY, a linkerd2-proxy binary (e2e/bench/build-linkerd2-proxy.sh)"
    STANDIN=${LINKERD_STANDIN:-$ROOT/target/release/examples/linkerd_standin}
    if [ ! -x "$STANDIN" ]; then
        log "cargo build --release -p weft-proxy --example linkerd_standin"
        cargo build --release --quiet -p weft-proxy --example linkerd_standin
    fi
fi

# Prints the path of the example $1 built as the proxy is (scripts/build-dist.sh example:$1),
# building it first unless NO_BUILD=1.
dist_example() {
    if [ -z "${NO_BUILD:-}" ]; then
        log "scripts/build-dist.sh example:$1"
        # `|| return`: called as $(dist_example ...), where errexit does not apply.
        scripts/build-dist.sh "example:$1" >&2 || return
    fi
    echo "${CARGO_TARGET_DIR:-$ROOT/target}/dist/examples/$1"
}

FLOOR_PATH=""
case " $PATHS " in *" floor-1hop "* | *" affine-1hop "*) FLOOR_PATH=1 ;; esac
if [ -n "$FLOOR_PATH" ]; then
    [ -n "${FLOOR:-}" ] || FLOOR=$(dist_example hyper_floor)
    [ -x "$FLOOR" ] || die "floor-1hop: no binary at $FLOOR"
fi

RAW_PATH=""
case " $PATHS " in *" raw-1hop "*) RAW_PATH=1 ;; esac
if [ -n "$RAW_PATH" ]; then
    [ -n "${RAW_FLOOR:-}" ] || RAW_FLOOR=$(dist_example raw_floor)
    [ -x "$RAW_FLOOR" ] || die "raw-1hop: no binary at $RAW_FLOOR"
fi

MESH_FLOOR_PATH=""
case " $PATHS " in *" floor-2hop-mtls "*) MESH_FLOOR_PATH=1 ;; esac
if [ -n "$MESH_FLOOR_PATH" ]; then
    [ -n "${MESH_FLOOR:-}" ] || MESH_FLOOR=$(dist_example mesh_floor)
    [ -x "$MESH_FLOOR" ] || die "floor-2hop-mtls: no binary at $MESH_FLOOR"
fi

WEFT=""
case " $PATHS " in *" weft-"*) WEFT=1 ;; esac
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
if [ -n "$WEFT" ]; then
    if [ -z "${NO_BUILD:-}" ]; then
        if [ "$PROFILE" = dist ]; then
            # As images ship them (the proxy with its PGO profile; PGO=off without it).
            log "scripts/build-dist.sh weft-proxy weft-operator"
            scripts/build-dist.sh weft-proxy weft-operator
        else
            log "cargo build --profile $PROFILE -p weft-proxy -p weft-operator"
            cargo build --profile "$PROFILE" --quiet -p weft-proxy -p weft-operator
        fi
    fi
    [ -x "$BIN/weft-proxy" ] && [ -x "$BIN/weft-operator" ] || die "no $PROFILE binaries in $BIN"
fi

# ---------------------------------------------------------------- processes (lib.sh: start, wait_*)
# Layout (one loopback address per "pod").
BACKEND=$NET.2     # nginx backend, unmeshed pod backend-0, port 8080
CLIENT=$NET.1      # meshed pod client-0: the client proxy
SERVER=$NET.3      # meshed pod server-0: the server proxy, its app is the backend nginx
OPERATOR=$NET.100
HAPROXY1=$NET.10   # :8081
NGINXP=$NET.11     # :8082
HAPROXY_C=$NET.12  # :8083, client side of the two-hop pair
HAPROXY_S=$NET.13  # :8443, TLS server side
LINKERD_DST=$NET.20 # :8080, the backend nginx as linkerd-1hop's client addresses it (redirected)
FLOOR_ADDR=$NET.21  # :8084, floor-1hop
RAW_ADDR=$NET.22    # :8085, raw-1hop
AFFINE_ADDR=$NET.23 # :8086, affine-1hop
MFLOOR_C=$NET.24    # :8087, floor-2hop-mtls's client half
MFLOOR_S=$NET.25    # :8445, floor-2hop-mtls's server half (mTLS)
L5D_UID=65534      # linkerd2-proxy's user: its own connections are not redirected
NS=bench
case $BODY in
1k) BODY_BYTES=1024 ;;
5k) BODY_BYTES=5120 ;;
64k) BODY_BYTES=65536 ;;
*) die "BODY must be 1k, 5k or 64k, got $BODY" ;;
esac
BODY_PATH=/$BODY
# CLIENT_H2=1: the h2c listeners (nginx 1.22 and HAProxy 2.6 take prior knowledge on these).
if [ -n "$CLIENT_H2" ]; then H2_LISTEN=" http2" H2_BIND=" proto h2" DIRECT_PORT=8070; else H2_LISTEN="" H2_BIND="" DIRECT_PORT=8080; fi

# ---------------------------------------------------------------- backend nginx
mkdir -p "$OUT/www" "$OUT/nginx-backend" "$OUT/nginx-proxy"
for b in 1k:1024 5k:5120 64k:65536; do
    head -c "${b#*:}" /dev/zero | tr '\0' 'x' >"$OUT/www/${b%%:*}"
done
nginx_user=""
[ "$(id -u)" = 0 ] && nginx_user="user root;"
nginx_common() { # $1: prefix dir
    cat <<EOF
$nginx_user
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
EOF
}
{
    nginx_common "$OUT/nginx-backend"
    cat <<EOF
    server {
        listen $BACKEND:8080 backlog=4096;
$([ -z "$LINKERD" ] || echo "        listen $LINKERD_DST:8080 backlog=4096;")
        location / { root $OUT/www; }
    }
EOF
    [ -z "$CLIENT_H2" ] || cat <<EOF
    server {
        listen $BACKEND:$DIRECT_PORT http2 backlog=4096;
        location / { root $OUT/www; }
    }
EOF
    cat <<EOF
}
EOF
} >"$OUT/nginx-backend/nginx.conf"
{
    # Counting instructions: one process (callgrind cannot be reached in a forked worker).
    [ -z "$INSTRUCTIONS" ] || echo "master_process off;"
    nginx_common "$OUT/nginx-proxy"
    cat <<EOF
    upstream backend { server $BACKEND:8080; keepalive 128; keepalive_requests 10000000; }
    server {
        listen $NGINXP:8082$H2_LISTEN backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
    }
}
EOF
} >"$OUT/nginx-proxy/nginx.conf"

# ---------------------------------------------------------------- HAProxy configs and TLS material
haproxy_head() {
    cat <<EOF
global
    nbthread 1
    maxconn 4000
    ssl-server-verify required
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
EOF
}
{
    haproxy_head
    cat <<EOF
frontend f
    bind $HAPROXY1:8081$H2_BIND
    default_backend b
backend b
    server backend $BACKEND:8080
EOF
} >"$OUT/haproxy-1hop.cfg"

pki=$OUT/pki
make_pki "$pki"
{
    haproxy_head
    cat <<EOF
frontend f
    bind $HAPROXY_C:8083$H2_BIND
    default_backend b
backend b
    server s $HAPROXY_S:8443 ssl verify required ca-file $pki/ca.crt crt $pki/client.pem sni str(server.bench) verifyhost server.bench alpn h2
EOF
} >"$OUT/haproxy-2hop-client.cfg"
{
    haproxy_head
    cat <<EOF
frontend f
    bind $HAPROXY_S:8443 ssl crt $pki/server.pem ca-file $pki/ca.crt verify required alpn h2,http/1.1
    default_backend b
backend b
    server backend $BACKEND:8080
EOF
} >"$OUT/haproxy-2hop-server.cfg"

# ---------------------------------------------------------------- weft control plane manifests
mkdir -p "$OUT/manifests"
printf 'bench-token' >"$OUT/token"
cat >"$OUT/manifests/bench.yaml" <<EOF
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
  containers: [{name: app, image: bench/client}]
status:
  phase: Running
  podIP: $CLIENT
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: server-0
  namespace: $NS
  labels: {app: server, weft.io/proxy-version: bench}
spec:
  serviceAccountName: server
  containers: [{name: app, image: bench/nginx, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: $SERVER
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: backend-0
  namespace: $NS
  labels: {app: backend}
spec:
  containers: [{name: app, image: bench/nginx, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: $BACKEND
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: $NS}
spec:
  clusterIP: $NET.200
  selector: {app: backend}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: $NS}
spec:
  clusterIP: $NET.201
  selector: {app: server}
  ports: [{name: http, port: 8080, targetPort: http}]
EOF

# ---------------------------------------------------------------- start everything
log "results and logs in $OUT"
start nginx-backend 1 nginx -p "$OUT/nginx-backend" -c "$OUT/nginx-backend/nginx.conf"
start nginx-proxy 1 "${WRAP[@]}" nginx -p "$OUT/nginx-proxy" -c "$OUT/nginx-proxy/nginx.conf"
nginx_proxy_master=$last_pid
start haproxy-1hop 1 "${WRAP[@]}" haproxy -db -f "$OUT/haproxy-1hop.cfg"
pid_haproxy1=$last_pid
start haproxy-2hop-client 1 "${WRAP[@]}" haproxy -db -f "$OUT/haproxy-2hop-client.cfg"
pid_haproxy_c=$last_pid
start haproxy-2hop-server 1 "${WRAP[@]}" haproxy -db -f "$OUT/haproxy-2hop-server.cfg"
pid_haproxy_s=$last_pid

if [ -n "$LINKERD" ]; then
    # Its identity: a key and CSR as linkerd's init would leave them, and the certificate the
    # stand-in hands out for that CSR, issued by the benchmark's CA (the trust anchor).
    l5d=$OUT/linkerd
    L5D_ID=default.$NS.serviceaccount.identity.linkerd.cluster.local
    mkdir -p "$l5d/identity"
    (
        cd "$l5d"
        openssl ecparam -name prime256v1 -genkey -noout -out key.pem 2>/dev/null
        openssl pkcs8 -topk8 -nocrypt -in key.pem -outform DER -out identity/key.p8
        openssl req -new -key key.pem -subj "/CN=$L5D_ID" -addext "subjectAltName=DNS:$L5D_ID" \
            -outform DER -out identity/csr.der 2>/dev/null
        printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$L5D_ID" >leaf.ext
        openssl x509 -req -inform DER -in identity/csr.der -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
            -CAcreateserial -days 2 -extfile leaf.ext -outform DER -out leaf.der 2>/dev/null
        printf 'bench-token' >token
    )
    # The proxy runs as $L5D_UID: it must reach its files (and write callgrind's when counting),
    # and its binary, copied here since a build under root's home is out of that user's reach.
    cp "$LINKERD_PROXY" "$l5d/linkerd2-proxy"
    chmod o+x "$OUT" "$l5d"
    chmod -R o+rX "$l5d"
    [ -z "$INSTRUCTIONS" ] || chmod o+w "$OUT"
    start linkerd-standin 0 "$STANDIN" 127.0.0.1:8089 "$l5d/leaf.der"
    wait_port 127.0.0.1 8089
    start linkerd-proxy 1 setpriv --reuid=$L5D_UID --regid=$L5D_UID --clear-groups env \
        LINKERD2_PROXY_CORES=1 \
        LINKERD2_PROXY_LOG=warn \
        LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4240 \
        LINKERD2_PROXY_INBOUND_LISTEN_ADDR=127.0.0.1:4243 \
        LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:4291 \
        LINKERD2_PROXY_CONTROL_LISTEN_ADDR=127.0.0.1:4290 \
        LINKERD2_PROXY_IDENTITY_DIR="$l5d/identity" \
        LINKERD2_PROXY_IDENTITY_TOKEN_FILE="$l5d/token" \
        LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS="$(cat "$pki/ca.crt")" \
        LINKERD2_PROXY_IDENTITY_LOCAL_NAME="$L5D_ID" \
        LINKERD2_PROXY_IDENTITY_SVC_ADDR=127.0.0.1:8089 \
        LINKERD2_PROXY_DESTINATION_SVC_ADDR=127.0.0.1:8089 \
        LINKERD2_PROXY_POLICY_SVC_ADDR=127.0.0.1:8089 \
        LINKERD2_PROXY_POLICY_WORKLOAD="{\"ns\":\"$NS\",\"pod\":\"client-0\"}" \
        LINKERD2_PROXY_DESTINATION_CONTEXT="{\"ns\":\"$NS\",\"nodeName\":\"bench\"}" \
        "${WRAP[@]}" "$l5d/linkerd2-proxy"
    pid_linkerd=$last_pid
    redirect() { # $1: -A or -D
        iptables -t nat "$1" OUTPUT -p tcp -d "$LINKERD_DST" --dport 8080 \
            -m owner ! --uid-owner "$L5D_UID" -j REDIRECT --to-ports 4240
    }
    # The rule is removed on every exit, before it exists too (-D of a missing rule fails quietly).
    trap 'redirect -D 2>/dev/null || true; cleanup' EXIT
    redirect -A
fi

if [ -n "$FLOOR_PATH" ]; then
    # With CLIENT_H2 the floor serves HTTP/2 (prior knowledge), as weft's outbound does.
    start hyper-floor 1 "${WRAP[@]}" "$FLOOR" "$FLOOR_ADDR:8084" "$BACKEND:8080" ${CLIENT_H2:+h2}
    pid_floor=$last_pid
    start affine-floor 1 "${WRAP[@]}" "$FLOOR" "$AFFINE_ADDR:8086" "$BACKEND:8080" affine
    pid_affine=$last_pid
fi
if [ -n "$MESH_FLOOR_PATH" ]; then
    # The client half serves HTTP/2 with CLIENT_H2 (prior knowledge), as weft's outbound detects.
    start mesh-floor-server 1 "${WRAP[@]}" "$MESH_FLOOR" server "$MFLOOR_S:8445" "$BACKEND:8080" "$pki"
    pid_mfloor_s=$last_pid
    start mesh-floor-client 1 "${WRAP[@]}" "$MESH_FLOOR" client "$MFLOOR_C:8087" "$MFLOOR_S:8445" \
        "$pki" ${CLIENT_H2:+h2}
    pid_mfloor_c=$last_pid
fi
if [ -n "$RAW_PATH" ]; then
    start raw-floor 1 "${WRAP[@]}" "$RAW_FLOOR" "$RAW_ADDR:8085" "$BACKEND:8080"
    pid_raw=$last_pid
fi

if [ -n "$WEFT" ]; then
    start_operator "$OPERATOR"
    start_proxy client-0 client "$CLIENT" 127.0.0.1
    pid_client=$last_pid
    start_proxy server-0 server "$SERVER" "$BACKEND"
    pid_server=$last_pid
fi

wait_port "$BACKEND" 8080
wait_port "$NGINXP" 8082
wait_port "$HAPROXY1" 8081
wait_port "$HAPROXY_C" 8083
wait_port "$HAPROXY_S" 8443
[ -z "$LINKERD" ] || wait_http "http://127.0.0.1:4291/ready"
[ -z "$FLOOR_PATH" ] || wait_port "$FLOOR_ADDR" 8084
[ -z "$FLOOR_PATH" ] || wait_port "$AFFINE_ADDR" 8086
[ -z "$RAW_PATH" ] || wait_port "$RAW_ADDR" 8085
[ -z "$MESH_FLOOR_PATH" ] || wait_port "$MFLOOR_S" 8445
[ -z "$MESH_FLOOR_PATH" ] || wait_port "$MFLOOR_C" 8087
if [ -n "$WEFT" ]; then
    wait_http "http://$CLIENT:4191/ready"
    wait_http "http://$SERVER:4191/ready"
fi
if [ -n "$INSTRUCTIONS" ]; then
    pid_nginxp=$nginx_proxy_master
else
    pid_nginxp=$(cut -d' ' -f1 "/proc/$nginx_proxy_master/task/$nginx_proxy_master/children" 2>/dev/null || true)
fi
[ -n "$pid_nginxp" ] || die "nginx proxy has no worker process"

# path -> URL, Host header, PIDs whose CPU and memory are charged to the path
url_of() {
    case $1 in
    direct) echo "http://$BACKEND:$DIRECT_PORT$BODY_PATH" ;;
    weft-1hop | weft-2hop-mtls) echo "http://$CLIENT:4140$BODY_PATH" ;;
    haproxy-1hop) echo "http://$HAPROXY1:8081$BODY_PATH" ;;
    nginx-1hop) echo "http://$NGINXP:8082$BODY_PATH" ;;
    haproxy-2hop-tls) echo "http://$HAPROXY_C:8083$BODY_PATH" ;;
    linkerd-1hop) echo "http://$LINKERD_DST:8080$BODY_PATH" ;;
    floor-1hop) echo "http://$FLOOR_ADDR:8084$BODY_PATH" ;;
    raw-1hop) echo "http://$RAW_ADDR:8085$BODY_PATH" ;;
    affine-1hop) echo "http://$AFFINE_ADDR:8086$BODY_PATH" ;;
    floor-2hop-mtls) echo "http://$MFLOOR_C:8087$BODY_PATH" ;;
    *) die "unknown path $1" ;;
    esac
}
host_of() {
    case $1 in
    weft-1hop) echo "backend.$NS.svc.cluster.local:8080" ;;
    weft-2hop-mtls) echo "server.$NS.svc.cluster.local:8080" ;;
    *) echo "bench.local" ;;
    esac
}
pids_of() {
    case $1 in
    direct) echo "" ;;
    weft-1hop) echo "$pid_client" ;;
    weft-2hop-mtls) echo "$pid_client $pid_server" ;;
    haproxy-1hop) echo "$pid_haproxy1" ;;
    nginx-1hop) echo "$pid_nginxp" ;;
    haproxy-2hop-tls) echo "$pid_haproxy_c $pid_haproxy_s" ;;
    linkerd-1hop) echo "$pid_linkerd" ;;
    floor-1hop) echo "$pid_floor" ;;
    raw-1hop) echo "$pid_raw" ;;
    affine-1hop) echo "$pid_affine" ;;
    floor-2hop-mtls) echo "$pid_mfloor_c $pid_mfloor_s" ;;
    esac
}

# The client side's HTTP version: curl's and oha's flags.
if [ -n "$CLIENT_H2" ]; then CURL_H2=(--http2-prior-knowledge) OHA_H2=(--http2); else CURL_H2=() OHA_H2=(); fi
# Every path must answer 200 with the whole body (over HTTP/2 with CLIENT_H2) before anything is
# measured.
for p in $PATHS; do
    got=$(curl -fsS "${CURL_H2[@]}" --max-time 5 -H "Host: $(host_of "$p")" -o /dev/null \
        -w '%{size_download} %{http_version}' "$(url_of "$p")") ||
        die "path $p does not answer 200 (logs in $OUT)"
    want="$BODY_BYTES $([ -n "$CLIENT_H2" ] && echo 2 || echo 1.1)"
    [ "$got" = "$want" ] || die "path $p returned '$got' (bytes, HTTP version), expected '$want'"
done
# oha's target arguments, one per line. $1: host, $2: URL. Over HTTP/2 oha would send the Host
# header beside `:authority` (nginx answers 400, weft routes by `:authority`): the authority goes
# into the URL instead, and --connect-to says where to connect.
oha_target() {
    if [ -z "$CLIENT_H2" ]; then
        printf '%s\n' --host "$1" "$2"
    elif [ "$1" = bench.local ]; then
        printf '%s\n' "$2"
    else
        local hostport=${2#http://}
        printf '%s\n' --connect-to "$1:${hostport%%/*}" "http://$1$BODY_PATH"
    fi
}
# Saturation (closed loop, 64 connections): wrk, or oha for HTTP/2. $1: duration, $2: host,
# $3: URL, $4: output file (wrk text, or oha JSON when it ends in .json).
saturate() {
    if [ -n "$CLIENT_H2" ]; then
        local target
        mapfile -t target < <(oha_target "$2" "$3")
        nice -n "$NICE" taskset -c 0 oha --no-tui --output-format json "${OHA_H2[@]}" -c 64 -z "$1" \
            "${target[@]}" >"$4" 2>"$4.err" || die "oha failed on $3 (see $4.err)"
    else
        nice -n "$NICE" taskset -c 0 wrk -t1 -c64 -d"$1" -H "Host: $2" "$3" >"$4"
    fi
}
SAT_EXT=$([ -n "$CLIENT_H2" ] && echo json || echo txt)

RESULTS=$OUT/results.tsv
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; } # round path metric value
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

preempted() { # involuntary context switches of every thread of the given pids, summed
    local p n=0
    for p in "$@"; do
        n=$((n + $(awk '/^nonvoluntary_ctxt_switches/ { s += $2 } END { print s + 0 }' /proc/"$p"/task/*/status)))
    done
    echo "$n"
}

utime_stime() { # summed utime and stime of the given pids, in clock ticks: "utime stime"
    local u=0 s=0 p f a b
    for p in "$@"; do
        f=$(sed 's/^.*) //' "/proc/$p/stat")
        read -r a b <<<"$(echo "$f" | awk '{print $12, $13}')"
        u=$((u + a)) s=$((s + b))
    done
    echo "$u $s"
}
ticks() { # utime+stime of the given pids, in clock ticks
    local u s
    read -r u s <<<"$(utime_stime "$@")"
    echo "$((u + s))"
}
sum_kib() { # $1: field, rest: pids
    local k=$1 t=0 p
    shift
    for p in "$@"; do t=$((t + $(kib "$p" "$k"))); done
    echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

if [ -n "$INSTRUCTIONS" ]; then
    # Per path: warm up, zero the counters, send the measured requests, dump, and read the
    # dump's total (callgrind writes one file per dump: callgrind.<pid>.<n>).
    # Runs a command as the user that owns process $1 (linkerd2-proxy runs as $L5D_UID):
    # callgrind_control talks to valgrind through FIFOs that only the same user can open.
    as_owner() {
        local uid gid
        uid=$(stat -c %u "/proc/$1") gid=$(stat -c %g "/proc/$1")
        shift
        if [ "$uid" = "$(id -u)" ]; then "$@"; else setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; fi
    }
    self_cost() { # $1: callgrind file (names uncompressed), $2: regex; the matching functions'
        # own cost (a cost line right after a `calls=` line is a callee's, not the function's)
        python3 "$ROOT/e2e/bench/callgrind_self.py" --match "$2" "$1"
    }
    count_one() { # $1: path; prints "instructions copies" per request over the path's processes
        local p=$1 pid total=0 copies=0 f n
        local -a ppids target
        read -r -a ppids <<<"$(pids_of "$p")"
        mapfile -t target < <(oha_target "$(host_of "$p")" "$(url_of "$p")")
        taskset -c 0 oha --no-tui -n 200 -c "$COUNT_CONNECTIONS" "${OHA_H2[@]}" "${target[@]}" >/dev/null
        for pid in "${ppids[@]}"; do as_owner "$pid" callgrind_control -z "$pid" >>"$OUT/callgrind_control.log" 2>&1; done
        taskset -c 0 oha --no-tui --output-format json -n "$INSTRUCTIONS" -c "$COUNT_CONNECTIONS" "${OHA_H2[@]}" \
            "${target[@]}" >"$OUT/count-$p.json"
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d.get("statusCodeDistribution",{}); sys.exit(0 if c=={"200": int(sys.argv[2])} else "non-200 answers: %s" % c)' \
            "$OUT/count-$p.json" "$INSTRUCTIONS" || die "$p did not answer every counted request with 200"
        for pid in "${ppids[@]}"; do
            as_owner "$pid" callgrind_control -d "$pid" >>"$OUT/callgrind_control.log" 2>&1
            f=$(ls -t "$OUT"/callgrind."$pid".* | head -1)
            n=$(awk '/^totals:/ {print $2}' "$f")
            [ -n "$n" ] || die "no totals in $f"
            total=$((total + n))
            # libc's memcpy/memmove: callgrind counts a `rep movsb` copy one instruction per byte.
            n=$(self_cost "$f" 'memcpy|memmove')
            copies=$((copies + n))
            [ -z "${CACHE_SIM:-}" ] || echo "$f" >>"$OUT/sim-$p.files"
        done
        echo "$((total / INSTRUCTIONS)) $((copies / INSTRUCTIONS))"
    }
    declare -A ipr cpr
    for p in $PATHS; do
        [ "$p" = direct ] && continue
        read -r ipr[$p] cpr[$p] <<<"$(count_one "$p")"
        # count_one runs in a subshell, where `die` cannot stop this script.
        [ -n "${ipr[$p]}" ] && [ -n "${cpr[$p]}" ] || die "counting $p failed (logs in $OUT)"
        record 0 "$p" instructions_per_request "${ipr[$p]}"
        record 0 "$p" copy_instructions_per_request "${cpr[$p]}"
        log "$p: ${ipr[$p]} instructions per request (${cpr[$p]} in memcpy/memmove)"
    done
    {
        echo "### User-space instructions per request (callgrind, $INSTRUCTIONS requests over $COUNT_CONNECTIONS connection(s), body $BODY)"
        echo
        echo "| path | instructions / request | vs HAProxy (same hops) | of which memcpy/memmove | without them, vs HAProxy |"
        echo "|---|---|---|---|---|"
        for p in $PATHS; do
            [ "$p" = direct ] && continue
            case $p in *2hop*) ref=haproxy-2hop-tls ;; *) ref=haproxy-1hop ;; esac
            vs="–" vs_nc="–"
            if [ -n "${ipr[$ref]:-}" ] && [ "$p" != "$ref" ]; then
                vs=$(echo "${ipr[$p]} ${ipr[$ref]}" | awk '{printf "%.2f×", $1/$2}')
                vs_nc=$(echo "${ipr[$p]} ${cpr[$p]} ${ipr[$ref]} ${cpr[$ref]}" | awk '{printf "%.2f×", ($1-$2)/($3-$4)}')
            fi
            printf '| %s | %s | %s | %s | %s |\n' "$p" "${ipr[$p]}" "$vs" "${cpr[$p]}" "$vs_nc"
        done
        echo
        echo "Two-hop rows sum both proxies. Kernel work (syscalls) is not counted. callgrind counts a"
        echo "\`rep movsb\` copy (glibc's memcpy on this CPU) one instruction per byte, where the CPU moves"
        echo "tens of bytes a cycle: the last column leaves the copies out of both sides."
        [ -n "${CACHE_SIM:-}" ] || exit 0
        echo
        echo "### Simulated cache and branch misses per request (callgrind --cache-sim --branch-sim)"
        echo
        echo "| path | L1 instruction misses | L1 data misses | last-level misses | mispredicted branches |"
        echo "|---|---|---|---|---|"
        for p in $PATHS; do
            [ "$p" = direct ] && continue
            # shellcheck disable=SC2046
            python3 - "$p" "$INSTRUCTIONS" $(cat "$OUT/sim-$p.files") <<'PY'
import sys
path, n, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tot = {}
for f in files:
    names = []
    for line in open(f):
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("totals:"):
            for k, v in zip(names, line.split()[1:]):
                tot[k] = tot.get(k, 0) + int(v)
g = lambda *ks: sum(tot.get(k, 0) for k in ks) / n
print(f"| {path} | {g('I1mr'):.0f} | {g('D1mr', 'D1mw'):.0f} | {g('ILmr', 'DLmr', 'DLmw'):.0f} | {g('Bcm', 'Bim'):.0f} |")
PY
        done
    } | tee "$OUT/summary.md"
    exit 0
fi

sleep 1
for p in $PATHS; do
    # shellcheck disable=SC2046
    if [ -n "$(pids_of "$p")" ]; then
        # shellcheck disable=SC2046
        record 0 "$p" rss_idle_kib "$(sum_kib VmRSS $(pids_of "$p"))"
        # shellcheck disable=SC2046
        # RssAnon: the process's own memory; VmRSS adds RssFile, the pages of the executable and
        # libraries mapped from the page cache, which every process of the same binary shares.
        record 0 "$p" anon_idle_kib "$(sum_kib RssAnon $(pids_of "$p"))"
    fi
done

# Warm up every path (connections, pools, allocator) before round 1.
for p in $PATHS; do
    saturate 2s "$(host_of "$p")" "$(url_of "$p")" "$OUT/warmup-$p.$SAT_EXT"
done
log "load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ -n "$KERNEL" ]; then
    # The syscalls a proxy makes on a request's path (HAProxy: recvfrom/sendto, nginx:
    # recv/writev, weft (tokio): recvfrom/writev), the waits, and what else shows up.
    # brk/mmap/munmap/madvise and page faults: the allocator growing, shrinking and re-faulting
    # its heap under load (each fault is a page the kernel zeroes).
    KINDS="epoll_wait epoll_pwait epoll_ctl read recvfrom readv write sendto writev sendmsg futex brk mmap munmap madvise"
    events="task-clock,context-switches,cpu-migrations,page-faults,raw_syscalls:sys_enter"
    for k in $KINDS; do events="$events,syscalls:sys_enter_$k"; done
    {
        echo "### Where a request's CPU goes under load (perf stat on the proxies, $OHA_DURATION per rate, body $BODY, load $(cut -d' ' -f1 /proc/loadavg))"
        echo
        echo "| path | rate | requests | user µs / req | sys µs / req | syscalls / req | context switches / req | of them preempted | page faults / req | main syscalls / req |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
    } >"$OUT/summary.md"
    for p in $PATHS; do
        [ "$p" = direct ] && continue
        read -r -a ppids <<<"$(pids_of "$p")"
        mapfile -t target < <(oha_target "$(host_of "$p")" "$(url_of "$p")")
        for rate in $RATES; do
            json=$OUT/kernel-$p-$rate.json
            read -r u0 s0 <<<"$(utime_stime "${ppids[@]}")"
            n0=$(preempted "${ppids[@]}")
            perf stat -x, -o "$OUT/perf-$p-$rate.csv" -e "$events" -p "$(IFS=,; echo "${ppids[*]}")" &
            perf_pid=$!
            sleep 0.5
            # `max`: closed loop over 64 connections, the saturation rounds' load (oha, not wrk,
            # so that every answer's status is checked the same way).
            if [ "$rate" = max ]; then load=(-c 64); else load=(-q "$rate" -c 16 --latency-correction); fi
            nice -n "$NICE" taskset -c 0 oha --no-tui --output-format json "${OHA_H2[@]}" "${load[@]}" -z "$OHA_DURATION" \
                "${target[@]}" >"$json" 2>"$json.err" || die "oha failed on $p (see $json.err)"
            kill -INT "$perf_pid"
            wait "$perf_pid" || true
            read -r u1 s1 <<<"$(utime_stime "${ppids[@]}")"
            n1=$(preempted "${ppids[@]}")
            python3 - "$OUT/perf-$p-$rate.csv" "$json" "$p" "$rate" "$((u1 - u0))" "$((s1 - s0))" "$CLK_TCK" "$OUT/results.tsv" "$((n1 - n0))" <<'PY' >>"$OUT/summary.md"
import json, sys
csv, js, path, rate, du, ds, tck, results, npre = sys.argv[1:10]
counts = {}
for line in open(csv):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and f[0][0].isdigit():
        counts[f[2]] = float(f[0])
d = json.load(open(js))
n = sum(d.get("statusCodeDistribution", {}).values())
if n == 0 or set(d.get("statusCodeDistribution", {})) != {"200"}:
    sys.exit(f"{path} at {rate}: answers {d.get('statusCodeDistribution')}")
per = lambda k: counts.get(k, 0.0) / n
kinds = sorted(((per(k), k.split("sys_enter_")[1]) for k in counts if k.startswith("syscalls:")), reverse=True)
main = ", ".join(f"{k} {v:.2f}" for v, k in kinds if v >= 0.05)
us = lambda ticks: int(ticks) / int(tck) * 1e6 / n
row = [path, rate, str(n), f"{us(du):.1f}", f"{us(ds):.1f}", f"{per('raw_syscalls:sys_enter'):.2f}",
       f"{per('context-switches'):.2f}", f"{int(npre) / n:.2f}", f"{per('page-faults'):.2f}", main]
print("| " + " | ".join(row) + " |")
with open(results, "a") as out:
    for k, v in [("user_us", us(du)), ("sys_us", us(ds)), ("syscalls", per("raw_syscalls:sys_enter")),
                 ("context_switches", per("context-switches")), ("preempted", int(npre) / n),
                 ("page_faults", per("page-faults"))]:
        out.write(f"0\t{path}\tkernel_{rate}_{k}\t{v:.3f}\n")
PY
            log "$p at $rate rps: $(tail -1 "$OUT/summary.md")"
        done
    done
    {
        echo
        echo "CPU from /proc/<pid>/stat (clock ticks of 10 ms: at 10 s × 1,000 rps one tick is 1 µs per"
        echo "request). Two-hop rows sum both proxies. A context switch is a proxy thread going to sleep"
        echo "(or being preempted) and waking again; \"of them preempted\": the involuntary ones"
        echo "(/proc/<pid>/task/*/status), where the scheduler took the core from a proxy that could run."
    } >>"$OUT/summary.md"
    cat "$OUT/summary.md"
    exit 0
fi

record 0 all loadavg_start "$(cut -d' ' -f1 /proc/loadavg)"
# The share of all CPUs' time the hypervisor stole over the timed rounds (the 8th field of
# /proc/stat's cpu line): a virtual machine's neighbours slow every path, and this shows by how much.
cpu_line() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t }' /proc/stat; }
stat0=$(cpu_line)
record 0 all nice "$NICE"
record 0 all body "$BODY"
record 0 all client_h2 "${CLIENT_H2:-0}"

for round in $(seq 1 "$ROUNDS"); do
    for p in $PATHS; do
        url=$(url_of "$p")
        host=$(host_of "$p")
        # shellcheck disable=SC2206
        ppids=($(pids_of "$p"))
        mapfile -t target < <(oha_target "$host" "$url")
        for rate in $RATES; do
            t0=$(ticks "${ppids[@]}")
            s0=$(date +%s.%N)
            json=$OUT/oha-$p-$rate-r$round.json
            nice -n "$NICE" taskset -c 0 oha --no-tui --output-format json "${OHA_H2[@]}" -q "$rate" -z "$OHA_DURATION" -c 16 \
                --latency-correction "${target[@]}" >"$json" 2>"$json.err" ||
                die "oha failed on $p (see $json.err)"
            s1=$(date +%s.%N)
            t1=$(ticks "${ppids[@]}")
            record "$round" "$p" "oha_$rate" "$json"
            record "$round" "$p" "cpu_s_$rate" "$(echo "$t0 $t1 $CLK_TCK" | awk '{printf "%.3f", ($2-$1)/$3}')"
            record "$round" "$p" "wall_s_$rate" "$(echo "$s0 $s1" | awk '{printf "%.3f", $2-$1}')"
        done
        t0=$(ticks "${ppids[@]}")
        saturate "$WRK_DURATION" "$host" "$url" "$OUT/wrk-$p-r$round.$SAT_EXT"
        t1=$(ticks "${ppids[@]}")
        record "$round" "$p" wrk "$OUT/wrk-$p-r$round.$SAT_EXT"
        record "$round" "$p" cpu_s_wrk "$(echo "$t0 $t1 $CLK_TCK" | awk '{printf "%.3f", ($2-$1)/$3}')"
        if [ ${#ppids[@]} -gt 0 ]; then
            record "$round" "$p" rss_after_load_kib "$(sum_kib VmRSS "${ppids[@]}")"
            record "$round" "$p" hwm_kib "$(sum_kib VmHWM "${ppids[@]}")"
            record "$round" "$p" anon_after_load_kib "$(sum_kib RssAnon "${ppids[@]}")"
        fi
        log "round $round: $p done"
    done
done
# Memory once the load is over: every path's processes at least SETTLE seconds after their
# last round (weft-proxy returns freed heap to the kernel when quiet after load: docs/proxy.md,
# "Memory"; its default look is every 5 s, so two looks fit in 11 s).
record 0 all settle_s "$SETTLE"
sleep "$SETTLE"
for p in $PATHS; do
    # shellcheck disable=SC2206
    ppids=($(pids_of "$p"))
    if [ ${#ppids[@]} -gt 0 ]; then
        record 1 "$p" rss_settled_kib "$(sum_kib VmRSS "${ppids[@]}")"
        record 1 "$p" anon_settled_kib "$(sum_kib RssAnon "${ppids[@]}")"
    fi
done
record 0 all loadavg_end "$(cut -d' ' -f1 /proc/loadavg)"
record 0 all steal_pct "$(echo "$stat0 $(cpu_line)" | awk '{ d = $4 - $2; printf "%.1f", (d > 0 ? 100 * ($3 - $1) / d : 0) }')"

python3 "$ROOT/e2e/bench/summarize.py" "$RESULTS" "$RATES" | tee "$OUT/summary.md"
log "raw results: $RESULTS"
