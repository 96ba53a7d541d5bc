# Helpers shared by the benchmarks in e2e/bench (proxy-bench.sh, chaos.sh); sourced, not run.
# The caller sets OUT (results dir, existing) and NICE (niceness of every process it starts),
# and has `set -euo pipefail`.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# need_tools CMD...: apt-get installs the packages of missing commands (as root, unless
# NO_INSTALL is set), else fails naming them.
need_tools() {
    local need_apt=() c pkg
    for c in "$@"; do
        command -v "$c" >/dev/null && continue
        case $c in
        taskset) pkg=util-linux ;;
        perf) pkg=linux-perf ;;
        *) pkg=$c ;;
        esac
        need_apt+=("$pkg")
    done
    if [ ${#need_apt[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && [ -z "${NO_INSTALL:-}" ]; then
            log "installing ${need_apt[*]}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >"$OUT/apt.log"
        else
            die "missing tools: ${need_apt[*]} (run as root to install them, or apt-get install them)"
        fi
    fi
}

# ---------------------------------------------------------------- processes
pids=()
[ -n "${WRAP+x}" ] || WRAP=() # start_proxy's command prefix (none unless the caller sets one)
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # $1: name, $2: cpu, rest: command. Sets $last_pid.
    local name=$1 cpu=$2
    shift 2
    nice -n "$NICE" taskset -c "$cpu" "$@" >"$OUT/$name.log" 2>&1 &
    last_pid=$!
    pids+=("$last_pid")
}

stop() { # $1: a pid that start gave; stops it and forgets it
    local p kept=()
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
    pids=("${kept[@]}")
}

wait_http() { # $1: url; waits for a 200
    local i
    for i in $(seq 1 600); do
        if curl -fs -o /dev/null --max-time 1 "$1"; then return 0; fi
        sleep 0.1
    done
    die "no 200 from $1 within 60 s (logs in $OUT)"
}

wait_port() { # $1: host, $2: port
    local i
    for i in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on $1:$2 (logs in $OUT)"
}

# make_pki DIR: a CA and two certificates for HAProxy's TLS between proxies (server.pem for
# DNS:server.bench, client.pem for DNS:client.bench, both for server and client auth).
make_pki() {
    mkdir -p "$1"
    (
        cd "$1"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
        openssl req -x509 -new -key ca.key -subj /CN=bench-ca -days 2 -out ca.crt 2>/dev/null
        for who in server client; do
            openssl ecparam -name prime256v1 -genkey -noout -out $who.key 2>/dev/null
            openssl req -new -key $who.key -subj "/CN=$who" -out $who.csr 2>/dev/null
            printf 'subjectAltName=DNS:%s.bench\nextendedKeyUsage=serverAuth,clientAuth\n' $who >$who.ext
            openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                -extfile $who.ext -out $who.crt 2>/dev/null
            cat $who.crt $who.key >$who.pem
        done
    )
}

# start_operator ADDR_IP: weft-operator in --manifests mode on $OUT/manifests, discovery on
# ADDR_IP:8086, admin on :9990, bootstrap token $OUT/token; CPU 0. Needs $BIN.
start_operator() {
    WEFT_LOG=warn start operator 0 "$BIN/weft-operator" --manifests "$OUT/manifests" \
        --discovery-addr "$1:8086" --admin-addr "$1:9990" \
        --bootstrap-token-file "$OUT/token"
    wait_http "http://$1:9990/ready"
}

# start_proxy POD SERVICE_ACCOUNT POD_IP APP_IP [CPU]: a weft-proxy for pod $NS/POD (one
# thread; every listener on POD_IP, tap too: left on tap's default 0.0.0.0:4190 it would take
# that port on every address of the host, the CLI demo's pods included), configured by the
# operator at $OPERATOR, run under the caller's WRAP command prefix if it has one (an array;
# proxy-bench.sh's callgrind). Sets $last_pid.
start_proxy() {
    WEFT_PROXY_CONTROL_ADDR="http://$OPERATOR:8086" \
        WEFT_PROXY_POD="$NS/$1" \
        WEFT_PROXY_SERVICE_ACCOUNT="$2" \
        WEFT_PROXY_TOKEN_FILE="$OUT/token" \
        WEFT_PROXY_INBOUND_ADDR="$3:4143" \
        WEFT_PROXY_OUTBOUND_ADDR="$3:4140" \
        WEFT_PROXY_ADMIN_ADDR="$3:4191" \
        WEFT_PROXY_TAP_ADDR="$3:4190" \
        WEFT_PROXY_APP_IP="$4" \
        WEFT_PROXY_THREADS=1 \
        WEFT_LOG=warn \
        start "proxy-$1" "${5:-1}" "${WRAP[@]}" "$BIN/weft-proxy"
}
